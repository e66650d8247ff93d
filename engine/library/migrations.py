"""The shared catalog's schema, as versioned migrations applied in order (`PgCatalog.migrate`).

A migration, once released, is never edited: a database records which versions it has applied
(`schema_migrations`), so a change to the schema is always a new, higher version. Versions run 1..N
without gaps (a test checks), and each runs in its own transaction.
"""

from __future__ import annotations

from typing import LiteralString, NamedTuple


class Migration(NamedTuple):
    version: int
    name: str
    sql: LiteralString  # one or more statements, no parameters


_0001_CATALOG: LiteralString = """
CREATE TABLE blueprints (
    blueprint_id TEXT PRIMARY KEY CONSTRAINT blueprint_id_not_empty CHECK (blueprint_id <> ''),
    ir_hash TEXT NOT NULL DEFAULT '',  -- '' until sync_blueprints: register may create the row first
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE blueprint_tags (
    blueprint_id TEXT NOT NULL REFERENCES blueprints ON DELETE CASCADE,
    position INTEGER NOT NULL,  -- the catalog's order
    tag TEXT NOT NULL,
    PRIMARY KEY (blueprint_id, position),
    UNIQUE (blueprint_id, tag)
);

CREATE TABLE kernel_versions (
    blueprint_id TEXT NOT NULL REFERENCES blueprints,
    version INTEGER NOT NULL CONSTRAINT version_from_one CHECK (version >= 1),
    artifact_key TEXT NOT NULL CONSTRAINT artifact_key_is_sha256_hex CHECK (artifact_key ~ '^[0-9a-f]{64}$'),
    job_id TEXT NOT NULL CONSTRAINT job_id_not_empty CHECK (job_id <> ''),
    identity TEXT NOT NULL,
    meta BYTEA NOT NULL,  -- the signed metadata document, verbatim
    signature TEXT NOT NULL,
    -- >= 0 and finite: NaN compares greater than every number in PostgreSQL, so `>= 0` alone admits it
    step_ms_compiled DOUBLE PRECISION NOT NULL
        CONSTRAINT step_ms_compiled_finite_not_negative CHECK (step_ms_compiled >= 0 AND step_ms_compiled < 'Infinity'),
    step_ms_eager DOUBLE PRECISION NOT NULL
        CONSTRAINT step_ms_eager_finite_not_negative CHECK (step_ms_eager >= 0 AND step_ms_eager < 'Infinity'),
    compiled_by TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    quarantined BOOLEAN NOT NULL DEFAULT false,
    quarantine_reason TEXT NOT NULL DEFAULT '',
    quarantined_at TIMESTAMPTZ,
    CONSTRAINT quarantine_has_reason CHECK (NOT quarantined OR quarantine_reason <> ''),
    PRIMARY KEY (blueprint_id, version),  -- version numbers are unique per blueprint
    CONSTRAINT job_registered_once UNIQUE (job_id)
);

-- current(): newest live version of a blueprint for an identity (and key); all_current(): per identity.
CREATE INDEX kernel_versions_live_by_identity
    ON kernel_versions (blueprint_id, identity, version DESC) WHERE NOT quarantined;
CREATE INDEX kernel_versions_live_by_key
    ON kernel_versions (blueprint_id, artifact_key, version DESC) WHERE NOT quarantined;
CREATE INDEX kernel_versions_live_per_identity
    ON kernel_versions (identity, blueprint_id, version DESC) WHERE NOT quarantined;
"""

_0002_LIBRARY_KEY: LiteralString = """
-- Whose library this is: the fingerprint (never the key) of the key its versions are signed with, recorded by
-- the first engine or worker that opens it. A process with another key is refused at start, and a signature
-- failure quarantines a version for every machine only when the verifying key is this one.
CREATE TABLE library_key (
    only_row BOOLEAN PRIMARY KEY DEFAULT true CONSTRAINT one_library_key CHECK (only_row),
    fingerprint TEXT NOT NULL CONSTRAINT fingerprint_is_hex CHECK (fingerprint ~ '^[0-9a-f]{16}$'),
    recorded_by TEXT NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
"""

_0003_KERNEL_SHAPES: LiteralString = """
-- A version is the kernel of a blueprint for one slot shape (SlotShape.tag: '40-64', '8x8x8-16x8x8') on one
-- identity (whose fingerprint names the device). Every row registered before this migration was compiled for
-- the MNIST-1D host's slots and is read as '40-64' (library.meta.LEGACY_SHAPE): the default fills it in for
-- them, and is then dropped, so a new registration must name its shape.
ALTER TABLE kernel_versions ADD COLUMN shape TEXT NOT NULL DEFAULT '40-64'
    CONSTRAINT shape_is_a_tag CHECK (shape ~ '^[0-9]+(x[0-9]+)*-[0-9]+(x[0-9]+)*$');
ALTER TABLE kernel_versions ALTER COLUMN shape DROP DEFAULT;

DROP INDEX kernel_versions_live_by_identity;
DROP INDEX kernel_versions_live_per_identity;
-- current(): newest live version of a blueprint for an identity and shape; all_current(): per identity.
CREATE INDEX kernel_versions_live_by_identity_shape
    ON kernel_versions (blueprint_id, identity, shape, version DESC) WHERE NOT quarantined;
CREATE INDEX kernel_versions_live_per_identity_shape
    ON kernel_versions (identity, blueprint_id, shape, version DESC) WHERE NOT quarantined;
"""

_0004_USER_BLUEPRINTS: LiteralString = """
-- User blueprints (`esper-tui blueprint add`): the signed record document, verbatim, and the columns an operator
-- queries; the source itself lives in the object store under source_sha256. Status and reason are copies of the
-- signed document's, for reading only: nothing trusts them before the signature is checked.
CREATE TABLE user_blueprints (
    name TEXT PRIMARY KEY CONSTRAINT user_blueprint_name CHECK (name ~ '^[a-z][a-z0-9_]{0,47}$'),
    source_sha256 TEXT NOT NULL CONSTRAINT source_sha256_is_hex CHECK (source_sha256 ~ '^[0-9a-f]{64}$'),
    record BYTEA NOT NULL,
    signature TEXT NOT NULL,
    status TEXT NOT NULL CONSTRAINT user_blueprint_status CHECK (status IN ('unvalidated', 'compiled', 'refused')),
    reason TEXT NOT NULL DEFAULT '',
    submitted_by TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
"""

_0005_POLICIES: LiteralString = """
-- Simic's learned policies: one row per version (the signed file lives in the object store under sha256, never
-- changed), and the one signed pointer to the version Tamiyo follows. Nothing here is trusted unsigned.
CREATE TABLE policies (
    version TEXT PRIMARY KEY CONSTRAINT policy_version CHECK (version ~ '^v[0-9]{4,9}$'),
    sha256 TEXT NOT NULL CONSTRAINT policy_sha256_is_hex CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE policy_pointer (
    id INT PRIMARY KEY CONSTRAINT one_pointer CHECK (id = 1),
    document BYTEA NOT NULL,
    signature TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "catalog: blueprints, tags, kernel versions", _0001_CATALOG),
    Migration(2, "library_key: the fingerprint of the key that signs the library", _0002_LIBRARY_KEY),
    Migration(3, "kernel_versions.shape: kernels per slot shape", _0003_KERNEL_SHAPES),
    Migration(4, "user_blueprints: signed records of the blueprints users add", _0004_USER_BLUEPRINTS),
    Migration(5, "policies: Simic's learned policy versions and the published pointer", _0005_POLICIES),
)

LATEST = MIGRATIONS[-1].version
