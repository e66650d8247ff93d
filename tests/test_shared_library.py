"""Urza shared by several machines: SharedLibrary on a real PostgreSQL catalog and a real S3 server (moto).

Every "machine" here is a SharedLibrary with a cache directory of its own on the same catalog and bucket.
Artifacts are copies of the session's one real inductor compile (conftest `compiled_kernel`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
import torch
from psycopg import sql

from esper_tui.engine.config import LibraryConfig
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.kernels.compiled import KernelError, LoadedKernel
from esper_tui.engine.kernels.shapes import vector
from esper_tui.engine.keys import fingerprint
from esper_tui.engine.library.catalog_db import APPLICATION_NAME, KernelRow, PgCatalog
from esper_tui.engine.library.factory import CACHE_DIR, LibraryUnavailable, open_library
from esper_tui.engine.library.meta import ArtifactMeta
from esper_tui.engine.library.objects import S3Store, open_store
from esper_tui.engine.library.shared import SharedLibrary
from esper_tui.engine.library.store import ArtifactInvalid, Identity, Library
from tests.conftest import IN_FEATURES, KERNEL_BLUEPRINT, OUT_FEATURES, SessionKernel, kernel_build

MNIST1D = vector(40, 64)  # the shape the session kernel was compiled for

KEY = bytes(range(32))
K1 = hashlib.sha256(b"one").hexdigest()
K2 = hashlib.sha256(b"two").hexdigest()
K3 = hashlib.sha256(b"three").hexdigest()

Quarantined = list[tuple[str, str, str]]


@dataclass(frozen=True)
class Services:
    """The shared parts every machine of one test points at: a migrated catalog and a bucket."""

    catalog_url: str
    artifacts_url: str
    endpoint: str


@dataclass(frozen=True)
class Machine:
    """One engine's view of the shared library, and what it reported as quarantined."""

    lib: SharedLibrary
    quarantined: Quarantined

    @property
    def s3(self) -> S3Store:
        assert isinstance(self.lib.store, S3Store)
        return self.lib.store


@pytest.fixture
def services(pg_url: str, s3_url: tuple[str, str]) -> Services:
    db = PgCatalog(pg_url)
    try:
        db.migrate()
    finally:
        db.close()
    return Services(pg_url, *s3_url)


def shared_config(services: Services) -> LibraryConfig:
    return LibraryConfig(
        catalog_url=services.catalog_url, artifacts_url=services.artifacts_url, artifacts_endpoint=services.endpoint
    )


@pytest.fixture
def machine(services: Services, tmp_path: Path, identity: Identity) -> Iterator[Callable[..., Machine]]:
    """machine(name, identity=...) -> a Machine opened through open_library, as the engine opens it."""
    opened: list[Machine] = []

    def open_machine(name: str, *, identity: Identity = identity) -> Machine:
        quarantined: Quarantined = []
        lib = open_library(
            shared_config(services),
            tmp_path / name,
            KEY,
            Catalog(),
            identity=identity,
            on_quarantine=lambda *args: quarantined.append(args),
        )
        assert isinstance(lib, SharedLibrary)
        opened.append(Machine(lib, quarantined))
        return opened[-1]

    yield open_machine
    for m in opened:
        m.lib.close()


def label(meta: ArtifactMeta) -> str:
    return f"{meta.blueprint_id}/v{meta.version:04d}-{meta.slot_shape.tag}-{meta.artifact_id[:12]}"


def only_row(lib: SharedLibrary) -> KernelRow:
    rows = lib.db.versions()
    assert len(rows) == 1, rows
    return rows[0]


def commit(
    lib: SharedLibrary,
    kernel: SessionKernel,
    *,
    key: str,
    blueprint_id: str = KERNEL_BLUEPRINT,
    job_id: str = "",
    force: bool = False,
    extra: dict[str, bytes] | None = None,
    shape: str = MNIST1D.tag,
) -> ArtifactMeta:
    """Commit a copy of the session kernel, as a forge worker does after a compile (`extra`: files of its own)."""
    staged = kernel.copy_to(lib.new_staging_dir(blueprint_id))
    for name, data in (extra or {}).items():
        (staged / name).write_bytes(data)
    return lib.commit(
        staged, blueprint_id=blueprint_id, key=key, build=kernel_build(kernel, shape=shape), job_id=job_id, force=force
    )


def assert_runs(kernel: LoadedKernel) -> None:
    """The loaded kernel computes what the eager module does."""
    module = Catalog().get(KERNEL_BLUEPRINT).build(vector(IN_FEATURES, OUT_FEATURES))
    x = torch.randn(5, IN_FEATURES)
    assert torch.allclose(kernel(module, x), module(x), atol=1e-5)


def test_two_shapes_of_one_blueprint_are_kept_apart_across_machines(machine, compiled_kernel) -> None:
    a, b = machine("a"), machine("b")
    small = vector(12, 8)
    m1 = commit(a.lib, compiled_kernel, key=K1)
    m2 = commit(a.lib, compiled_kernel, key=K2, shape=small.tag)
    m3 = commit(a.lib, compiled_kernel, key=K3)  # a newer 40-64 kernel must not hide the 12-8 one
    assert [(r.version, r.shape) for r in b.lib.db.versions()] == [(1, "40-64"), (2, "12-8"), (3, "40-64")]
    assert (m2.shape, m2.slot_shape) == ("12-8", small)
    assert b.lib.current(KERNEL_BLUEPRINT, MNIST1D) == m3 and b.lib.current(KERNEL_BLUEPRINT, small) == m2
    assert b.lib.current(KERNEL_BLUEPRINT, small, key=K1) is None
    assert b.lib.current(KERNEL_BLUEPRINT, vector(12, 9)) is None
    assert sorted(m.artifact_id for m in b.lib.ranked()) == sorted([K2, K3])
    assert b.lib.ranked(small) == [m2] and b.lib.ranked(MNIST1D) == [m3]
    assert b.lib.load(KERNEL_BLUEPRINT, small)[1] == m2 and b.lib.load(KERNEL_BLUEPRINT, MNIST1D)[1] == m3
    assert [lbl for lbl, reason in b.lib.verify_all() if reason is None] == [label(m) for m in (m1, m2, m3)]
    b.lib.quarantine_row(b.lib.db.versions()[1], "test")  # the 12-8 kernel, for every machine
    assert a.lib.current(KERNEL_BLUEPRINT, small) is None and a.lib.current(KERNEL_BLUEPRINT, MNIST1D) == m3


def execute(url: str, query: Any, params: tuple[object, ...]) -> None:
    """A statement run behind the library's back, as an operator (or an attacker) with database access would."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(query, params)


def catalog_outage(url: str) -> None:
    """PostgreSQL stops serving the catalog's database: its connections are cut and new ones refused."""
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert text and "\n" not in text and text.strip() == text, text
    return text


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# ---------------------------------------------------------------------------------- commit and load


def test_commit_then_load_serves_a_working_verified_kernel(machine, compiled_kernel, kernel_threads):
    a = machine("a")
    meta = commit(a.lib, compiled_kernel, key=K1)
    assert (meta.blueprint_id, meta.version, meta.artifact_id) == (KERNEL_BLUEPRINT, 1, K1)
    assert sorted(f.name for f in meta.files) == sorted(compiled_kernel.files)
    assert list((a.lib.blobs.root.parent / "staging").iterdir()) == []  # the staged copy is gone

    row = only_row(a.lib)
    assert row.identity == a.lib.identity().fingerprint() and row.compiled_by == a.lib.compiled_by
    assert not row.quarantined and row.artifact_key == K1
    for f in meta.files:  # content-addressed in the bucket, and kept in this machine's cache
        data = a.s3.get(f.sha256)
        assert hashlib.sha256(data).hexdigest() == f.sha256 and len(data) == f.size
        assert a.lib.blobs.has(f.sha256)

    kernel, loaded = a.lib.load(KERNEL_BLUEPRINT, MNIST1D)
    assert loaded == meta and kernel.label == "inductor:default"
    assert_runs(kernel)
    assert a.lib.load(KERNEL_BLUEPRINT, MNIST1D)[0] is kernel  # the TTL cache
    assert (a.lib.stats.cache_hits, a.lib.stats.cache_misses) == (1, 1)
    assert a.lib.current(KERNEL_BLUEPRINT, MNIST1D) == meta and a.lib.ranked() == [meta]
    assert a.lib.verify_all() == [(label(meta), None)]
    assert a.quarantined == []


def test_another_machine_downloads_once_then_loads_from_its_blob_cache(machine, compiled_kernel, kernel_threads):
    meta = commit(machine("a").lib, compiled_kernel, key=K1)
    b = machine("b")
    digests = [f.sha256 for f in meta.files]
    assert not any(b.lib.blobs.has(d) for d in digests)

    first, loaded = b.lib.load(KERNEL_BLUEPRINT, MNIST1D)  # downloads, verifies, keeps
    assert loaded == meta
    assert_runs(first)
    assert all(b.lib.blobs.has(d) for d in digests)

    assert b.lib.drop_cache() == 1
    client = b.s3.client
    for d in digests:  # the store loses every blob: the cached load must not need it
        client.delete_object(Bucket=b.s3.bucket, Key=b.s3.key(d))
    assert not any(b.s3.has(d) for d in digests)
    again, loaded = b.lib.load(KERNEL_BLUEPRINT, MNIST1D)
    assert again is not first and loaded == meta
    assert_runs(again)
    assert b.lib.stats.cache_misses == 2 and b.quarantined == []
    assert not only_row(b.lib).quarantined


def test_commit_is_idempotent_by_job_id_and_by_key_unless_forced(machine, compiled_kernel):
    a, b = machine("a"), machine("b")
    first = commit(a.lib, compiled_kernel, key=K1, job_id="job-1")
    assert first.version == 1
    again = commit(a.lib, compiled_kernel, key=K1, job_id="job-1")
    reclaimed = commit(b.lib, compiled_kernel, key=K1, job_id="job-1", force=True)  # another worker, same job
    assert again == first and reclaimed == first
    assert only_row(a.lib).job_id == "job-1"

    same_key = commit(b.lib, compiled_kernel, key=K1, job_id="job-2")  # a racing compile of the same key
    assert same_key == first
    assert len(a.lib.db.versions()) == 1

    forced = commit(b.lib, compiled_kernel, key=K1, job_id="job-3", force=True)
    assert forced.version == 2 and forced.artifact_id == K1
    assert [r.version for r in a.lib.db.versions()] == [1, 2]
    assert a.lib.current(KERNEL_BLUEPRINT, MNIST1D) == forced
    for m in (a, b):
        assert list((m.lib.blobs.root.parent / "staging").iterdir()) == []


# ---------------------------------------------------------------------------------- tampering


def test_altered_metadata_is_refused_and_quarantined_for_every_machine(machine, compiled_kernel, services):
    a = machine("a")
    meta = commit(a.lib, compiled_kernel, key=K1)
    doc = json.loads(only_row(a.lib).meta)
    doc["step_ms_compiled"] = 0.001  # a faster lie, so the ranking would prefer it
    execute(
        services.catalog_url,
        "UPDATE kernel_versions SET meta = %s WHERE blueprint_id = %s AND version = 1",
        (json.dumps(doc).encode(), KERNEL_BLUEPRINT),
    )
    assert a.lib.ranked() == []  # left out before anything loads it

    with pytest.raises(ArtifactInvalid, match="signature mismatch") as exc:
        a.lib.load(KERNEL_BLUEPRINT, MNIST1D)
    assert one_line(exc).startswith(label(meta))
    row = only_row(a.lib)
    assert row.quarantined and "signature mismatch" in row.quarantine_reason
    assert a.quarantined == [(KERNEL_BLUEPRINT, label(meta).split("/")[1], row.quarantine_reason)]
    assert a.lib.stats.quarantined == 1

    b = machine("b")  # another engine sees the quarantine without loading anything
    assert b.lib.current(KERNEL_BLUEPRINT, MNIST1D) is None
    with pytest.raises(ArtifactInvalid, match="no compiled kernel for 40-64 on this machine"):
        b.lib.load(KERNEL_BLUEPRINT, MNIST1D)
    assert b.quarantined == []
    assert b.lib.verify_all() == []  # quarantined versions are not listed


def test_a_validly_signed_row_replayed_as_a_newer_version_is_quarantined(machine, compiled_kernel, services):
    a = machine("a")
    v1 = commit(a.lib, compiled_kernel, key=K1)
    v2 = commit(a.lib, compiled_kernel, key=K2)
    execute(
        services.catalog_url,
        """UPDATE kernel_versions SET meta = old.meta, signature = old.signature
           FROM kernel_versions AS old
           WHERE kernel_versions.version = 2 AND old.version = 1 AND old.blueprint_id = kernel_versions.blueprint_id""",
        (),
    )
    with pytest.raises(ArtifactInvalid, match="signed as mlp_block v1"):
        a.lib.load(KERNEL_BLUEPRINT, MNIST1D)
    assert [(r.version, r.quarantined) for r in a.lib.db.versions()] == [(1, False), (2, True)]
    assert [q[1] for q in a.quarantined] == [label(v2).split("/")[1]]
    assert a.lib.load(KERNEL_BLUEPRINT, MNIST1D)[1] == v1  # the newest live version serves again


def test_a_blob_overwritten_in_the_store_is_refused_on_a_fresh_cache(machine, compiled_kernel, s3_client):
    a = machine("a")
    meta = commit(a.lib, compiled_kernel, key=K1)
    victim = max(meta.files, key=lambda f: f.size)
    s3_client.put_object(Bucket=a.s3.bucket, Key=a.s3.key(victim.sha256), Body=b"not the kernel")

    b = machine("b")
    with pytest.raises(ArtifactInvalid, match=f"{victim.name}: .*holds bytes that hash to") as exc:
        b.lib.load(KERNEL_BLUEPRINT, MNIST1D)
    one_line(exc)
    assert not b.lib.blobs.has(victim.sha256)  # the bad bytes never reached the cache
    row = only_row(b.lib)
    assert row.quarantined and victim.name in row.quarantine_reason
    assert len(b.quarantined) == 1 and b.quarantined[0][:2] == (KERNEL_BLUEPRINT, label(meta).split("/")[1])
    assert a.lib.current(KERNEL_BLUEPRINT, MNIST1D) is None  # the machine that committed it sees the quarantine too


def test_verify_all_reads_the_store_and_names_only_the_corrupt_version(machine, compiled_kernel, s3_client):
    a = machine("a")
    good = commit(a.lib, compiled_kernel, key=K1)
    notes = b"bytes only this version holds"
    digest = hashlib.sha256(notes).hexdigest()
    bad = commit(a.lib, compiled_kernel, key=K2, blueprint_id="gated_block", extra={"notes.txt": notes})
    also_good = commit(a.lib, compiled_kernel, key=K3, blueprint_id="residual_block")
    assert a.lib.verify_all() == [(label(bad), None), (label(good), None), (label(also_good), None)]

    s3_client.put_object(Bucket=a.s3.bucket, Key=a.s3.key(digest), Body=b"something else")
    report = dict(a.lib.verify_all())
    assert report[label(good)] is None and report[label(also_good)] is None
    reason = report[label(bad)]
    assert reason is not None and "notes.txt" in reason and "hash" in reason and "\n" not in reason
    assert a.lib.blobs.get(digest) == notes  # this machine's cache is intact: the store was read
    assert not any(r.quarantined for r in a.lib.db.versions())  # verify reports, it does not quarantine


def test_an_unreachable_store_is_a_kernel_error_not_a_cluster_wide_quarantine(
    machine, compiled_kernel, services, identity, tmp_path
):
    """One engine that cannot reach S3 (its network, its proxy) must not take a good kernel away from all."""
    a = machine("a")
    meta = commit(a.lib, compiled_kernel, key=K1)
    quarantined: Quarantined = []
    offline = SharedLibrary(
        PgCatalog(services.catalog_url),
        open_store(services.artifacts_url, endpoint_url=f"http://127.0.0.1:{free_port()}"),
        tmp_path / "offline",
        KEY,
        Catalog(),
        identity=identity,
        on_quarantine=lambda *args: quarantined.append(args),
    )
    try:
        with pytest.raises(KernelError, match="cannot connect"):
            offline.load(KERNEL_BLUEPRINT, MNIST1D)
    finally:
        offline.close()
    assert quarantined == []
    assert not only_row(a.lib).quarantined and a.lib.current(KERNEL_BLUEPRINT, MNIST1D) == meta


def test_an_unreachable_catalog_at_load_is_a_kernel_error(machine, compiled_kernel, services, kernel_threads):
    """The trainer falls back to eager on a KernelError; nothing is quarantined (nothing could be)."""
    a = machine("a")
    commit(a.lib, compiled_kernel, key=K1)
    catalog_outage(services.catalog_url)
    with pytest.raises(KernelError, match="cannot connect") as exc:
        a.lib.load(KERNEL_BLUEPRINT, MNIST1D)
    one_line(exc)
    assert a.quarantined == [] and a.lib.stats.quarantined == 0


# ---------------------------------------------------------------------------------- identity partition


def test_another_identity_sees_nothing_and_quarantines_nothing(machine, compiled_kernel, identity, kernel_threads):
    a = machine("a")
    mine = commit(a.lib, compiled_kernel, key=K1)
    other = dataclasses.replace(identity, threads=identity.threads + 7)
    b = machine("b", identity=other)

    assert b.lib.current(KERNEL_BLUEPRINT, MNIST1D) is None and b.lib.current(KERNEL_BLUEPRINT, MNIST1D, key=K1) is None
    assert b.lib.ranked() == [] and a.lib.ranked() == [mine]
    with pytest.raises(ArtifactInvalid, match="no compiled kernel for 40-64 on this machine"):
        b.lib.load(KERNEL_BLUEPRINT, MNIST1D)
    assert b.quarantined == [] and not only_row(a.lib).quarantined

    theirs = b.lib.commit(
        compiled_kernel.copy_to(b.lib.new_staging_dir(KERNEL_BLUEPRINT)),
        blueprint_id=KERNEL_BLUEPRINT,
        key=K2,
        build=kernel_build(compiled_kernel, threads=other.threads),
    )
    assert theirs.version == 2  # one numbering per blueprint, whoever built it
    assert a.lib.current(KERNEL_BLUEPRINT, MNIST1D) == mine and b.lib.current(KERNEL_BLUEPRINT, MNIST1D) == theirs
    assert a.lib.ranked() == [mine] and b.lib.ranked() == [theirs]
    kernel, loaded = a.lib.load(KERNEL_BLUEPRINT, MNIST1D)
    assert loaded == mine
    assert_runs(kernel)
    assert a.quarantined == [] and b.quarantined == []


# ---------------------------------------------------------------------------------- open_library


def test_open_library_without_urls_is_the_file_library(state_dir):
    lib = open_library(LibraryConfig(), state_dir, KEY, Catalog())
    assert isinstance(lib, Library) and lib.location == str(state_dir / "library")


def test_open_library_with_both_urls_is_the_shared_one(services, state_dir):
    lib = open_library(shared_config(services), state_dir, KEY, Catalog())
    try:
        assert isinstance(lib, SharedLibrary)
        assert services.artifacts_url in lib.location and "postgresql://" in lib.location
        assert lib.blobs.root == state_dir / CACHE_DIR / "blobs"
        assert lib.db.tags(KERNEL_BLUEPRINT) == list(Catalog().get(KERNEL_BLUEPRINT).tags)  # the catalog is synced
    finally:
        lib.close()


@pytest.mark.parametrize("given", ["catalog", "artifacts"])
def test_open_library_with_one_url_only_is_one_clear_line(given, services, state_dir):
    if given == "catalog":
        config = LibraryConfig(catalog_url=services.catalog_url)
    else:
        config = LibraryConfig(artifacts_url=services.artifacts_url, artifacts_endpoint=services.endpoint)
    with pytest.raises(LibraryUnavailable) as exc:
        open_library(config, state_dir, KEY, Catalog())
    assert "needs both" in one_line(exc)


def live_connections(url: str) -> int:
    """Connections the catalog code holds open to the database of `url` (as seen by the server)."""
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            (name, APPLICATION_NAME),
        ).fetchone()
    assert row is not None
    return int(row[0])


def wait_no_connections(url: str) -> None:
    deadline = time.monotonic() + 5.0
    while live_connections(url) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live_connections(url) == 0, "open_library left a catalog connection open"


def test_open_library_on_an_unmigrated_catalog_names_the_migrate_command(pg_url, s3_url, state_dir):
    url, endpoint = s3_url
    config = LibraryConfig(catalog_url=pg_url, artifacts_url=url, artifacts_endpoint=endpoint)
    with pytest.raises(LibraryUnavailable) as exc:
        open_library(config, state_dir, KEY, Catalog())
    text = one_line(exc)
    assert "esper-tui library migrate" in text and "schema 0" in text
    wait_no_connections(pg_url)


def test_open_library_with_an_unreachable_s3_endpoint_is_one_clear_line(services, state_dir):
    endpoint = f"http://127.0.0.1:{free_port()}"
    config = msgspec.structs.replace(shared_config(services), artifacts_endpoint=endpoint)
    with pytest.raises(LibraryUnavailable) as exc:
        open_library(config, state_dir, KEY, Catalog())
    text = one_line(exc)
    assert services.artifacts_url in text and f"cannot connect to {endpoint}" in text
    wait_no_connections(services.catalog_url)


def test_open_library_with_a_missing_bucket_is_one_clear_line(services, state_dir):
    config = msgspec.structs.replace(shared_config(services), artifacts_url="s3://esper-no-such-bucket/urza")
    with pytest.raises(LibraryUnavailable) as exc:
        open_library(config, state_dir, KEY, Catalog())
    assert "NoSuchBucket" in one_line(exc)


def test_open_library_with_an_unreachable_catalog_is_one_clear_line(services, state_dir):
    config = msgspec.structs.replace(
        shared_config(services), catalog_url=f"postgresql://u:secret@127.0.0.1:{free_port()}/x"
    )
    with pytest.raises(LibraryUnavailable) as exc:
        open_library(config, state_dir, KEY, Catalog())
    text = one_line(exc)
    assert "cannot connect" in text and "secret" not in text


# ---------------------------------------------------------------------------------- whose library (finding 1)

OTHER_KEY = bytes(range(100, 132))  # what a keyless engine made up for itself


def test_an_engine_with_another_key_is_refused_and_quarantines_nothing(machine, compiled_kernel, services, tmp_path):
    """Issue 18: an engine started without ESPER_SIGNING_KEY on a shared library made up its own key, failed
    every signature in its start-up scan and quarantined every version, for every machine."""
    a = machine("a")
    meta = commit(a.lib, compiled_kernel, key=K1)
    with pytest.raises(LibraryUnavailable) as exc:
        open_library(shared_config(services), tmp_path / "keyless", OTHER_KEY, Catalog())
    text = one_line(exc)
    assert fingerprint(KEY) in text and fingerprint(OTHER_KEY) in text
    assert KEY.hex() not in text and OTHER_KEY.hex() not in text  # fingerprints only, never a key
    assert not only_row(a.lib).quarantined and a.lib.current(KERNEL_BLUEPRINT, MNIST1D) == meta


def test_a_foreign_key_never_quarantines_even_past_the_start_check(machine, compiled_kernel, services, identity):
    """A library process with another key (the start check bypassed, or the library re-keyed while it ran)
    finds every signature failing: that says nothing about the kernels, so nothing is quarantined."""
    a = machine("a")
    meta = commit(a.lib, compiled_kernel, key=K1)
    quarantined: Quarantined = []
    stranger = SharedLibrary(
        PgCatalog(services.catalog_url),
        open_store(services.artifacts_url, endpoint_url=services.endpoint),
        a.lib.blobs.root.parent.parent / "stranger",
        OTHER_KEY,
        Catalog(),
        identity=identity,
        on_quarantine=lambda *args: quarantined.append(args),
    )
    try:
        with pytest.raises(KernelError, match=f"{fingerprint(OTHER_KEY)}.*{fingerprint(KEY)}"):
            stranger.current(KERNEL_BLUEPRINT, MNIST1D)
        with pytest.raises(KernelError, match="not the library's"):
            stranger.load(KERNEL_BLUEPRINT, MNIST1D)
        assert stranger.ranked() == []
    finally:
        stranger.close()
    assert quarantined == [] and not only_row(a.lib).quarantined
    assert a.lib.current(KERNEL_BLUEPRINT, MNIST1D) == meta


def test_the_first_process_records_the_library_key(machine, services):
    a = machine("a")
    assert a.lib.db.library_key() == fingerprint(KEY)
    machine("b")  # the same key: adopted again, nothing changes
    assert a.lib.db.library_key() == fingerprint(KEY)


def test_an_unrecorded_catalog_is_adopted_only_by_a_key_its_versions_verify_with(
    machine, compiled_kernel, services, tmp_path
):
    """A catalog from before the key was recorded (schema 1, upgraded): the first key to open it is recorded
    only if it verifies what is stored, so a keyless engine cannot claim a library full of kernels."""
    a = machine("a")
    commit(a.lib, compiled_kernel, key=K1)
    execute(services.catalog_url, "DELETE FROM library_key", ())
    with pytest.raises(LibraryUnavailable) as exc:
        open_library(shared_config(services), tmp_path / "keyless", OTHER_KEY, Catalog())
    assert f"none of its 1 versions verifies with signing key {fingerprint(OTHER_KEY)}" in one_line(exc)
    assert a.lib.db.library_key() is None and not only_row(a.lib).quarantined
    machine("b")  # the library's own key adopts it
    assert a.lib.db.library_key() == fingerprint(KEY)
