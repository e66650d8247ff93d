"""The shared catalog (engine/library/catalog_db.py) against a real PostgreSQL server, a fresh database per test."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import psycopg
import pytest

from esper_tui.engine.library.catalog_db import (
    APPLICATION_NAME,
    CatalogError,
    KernelRow,
    PgCatalog,
    SchemaBehind,
    display_url,
)
from esper_tui.engine.library.migrations import LATEST, MIGRATIONS

IDENTITY = "torch 2.13.0 / py 3.11 / avx2 / 4 threads / gcc 12"
OTHER_IDENTITY = "torch 2.13.0 / py 3.12 / avx512 / 8 threads / gcc 13"


SHAPE = "40-64"


def key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def signer(calls: list[int] | None = None, delay_s: float = 0.0) -> Callable[[int], tuple[bytes, str]]:
    def sign(version: int) -> tuple[bytes, str]:
        if calls is not None:
            calls.append(version)
        time.sleep(delay_s)
        meta = b'{"version": %d}' % version
        return meta, hashlib.sha256(meta).hexdigest()

    return sign


def register(
    cat: PgCatalog,
    job: str,
    artifact_key: str,
    *,
    blueprint: str = "mlp_block",
    identity: str = IDENTITY,
    shape: str = SHAPE,
    force: bool = False,
    sign: Callable[[int], tuple[bytes, str]] | None = None,
) -> tuple[KernelRow, bool]:
    return cat.register(
        blueprint_id=blueprint,
        artifact_key=artifact_key,
        job_id=job,
        identity=identity,
        shape=shape,
        step_ms_compiled=1.5,
        step_ms_eager=2.5,
        compiled_by="host-a:4242",
        force=force,
        sign=sign or signer(),
    )


@contextlib.contextmanager
def opened(url: str) -> Iterator[PgCatalog]:
    cat = PgCatalog(url)
    try:
        yield cat
    finally:
        cat.close()


@pytest.fixture
def cat(pg_url: str) -> Iterator[PgCatalog]:
    """A migrated catalog on a fresh database."""
    with opened(pg_url) as c:
        c.migrate()
        yield c


def ledger(url: str) -> list[tuple[int, str]]:
    with psycopg.connect(url) as conn:
        return [(v, n) for v, n in conn.execute("SELECT version, name FROM schema_migrations ORDER BY version")]


# ---------------------------------------------------------------------- migrations


def test_migrations_are_numbered_one_to_n_without_gaps() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert len(MIGRATIONS) == LATEST
    assert all(m.name and m.sql.strip() for m in MIGRATIONS)


def test_migrate_applies_and_records_each_version_once(pg_url: str) -> None:
    with opened(pg_url) as c:
        assert c.schema_version() == 0
        assert c.migrate() == [m.version for m in MIGRATIONS]
        assert c.schema_version() == LATEST
        assert c.migrate() == []
        c.check_schema()
    assert ledger(pg_url) == [(m.version, m.name) for m in MIGRATIONS]
    with psycopg.connect(pg_url) as conn:
        tables = {t for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"blueprints", "blueprint_tags", "kernel_versions", "schema_migrations"} <= tables


def test_migration_3_reads_rows_registered_before_shapes_as_40_64_and_then_wants_a_shape(pg_url: str) -> None:
    """Nothing already stored is lost: a version registered under schema 2 is the 40-64 kernel afterwards."""
    with psycopg.connect(pg_url, autocommit=True) as conn:  # a catalog that esper-tui's schema 2 built
        conn.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        for m in MIGRATIONS[:2]:
            conn.execute(m.sql)
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (m.version, m.name))
        conn.execute("INSERT INTO blueprints (blueprint_id) VALUES ('mlp_block')")
        conn.execute(
            """INSERT INTO kernel_versions (blueprint_id, version, artifact_key, job_id, identity, meta, signature,
                                            step_ms_compiled, step_ms_eager, compiled_by)
               VALUES ('mlp_block', 1, %s, 'old-job', %s, '{}', 'sig', 1.0, 2.0, 'old:1')""",
            (key("old"), IDENTITY),
        )
    with opened(pg_url) as c:
        assert c.migrate() == [m.version for m in MIGRATIONS[2:]]  # 3 (shapes), then any later one
        [old] = c.versions()
        assert (old.shape, old.version, old.job_id) == ("40-64", 1, "old-job")
        assert c.current("mlp_block", IDENTITY, "40-64") == old
        assert c.current("mlp_block", IDENTITY, "8x8x8-16x8x8") is None
    with psycopg.connect(pg_url, autocommit=True) as conn, pytest.raises(psycopg.errors.NotNullViolation):
        conn.execute(  # the default was only for the rows already there
            """INSERT INTO kernel_versions (blueprint_id, version, artifact_key, job_id, identity, meta, signature,
                                            step_ms_compiled, step_ms_eager, compiled_by)
               VALUES ('mlp_block', 2, %s, 'new-job', %s, '{}', 'sig', 1.0, 2.0, 'new:1')""",
            (key("new"), IDENTITY),
        )


def test_concurrent_migrations_both_succeed_and_apply_once(pg_url: str) -> None:
    barrier = threading.Barrier(2)

    def migrate() -> list[int]:
        with opened(pg_url) as c:
            barrier.wait()
            return c.migrate()

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: migrate(), range(2)))
    assert sorted(results[0] + results[1]) == [m.version for m in MIGRATIONS]
    assert ledger(pg_url) == [(m.version, m.name) for m in MIGRATIONS]


def test_check_schema_on_an_empty_database_says_how_to_migrate(pg_url: str) -> None:
    with opened(pg_url) as c, pytest.raises(SchemaBehind) as err:
        c.check_schema()
    message = str(err.value)
    assert f"is at schema 0, this esper-tui needs {LATEST}" in message
    assert f"esper-tui library migrate --library {display_url(pg_url)}" in message
    assert "\n" not in message


def test_a_database_newer_than_the_code_is_refused_not_migrated(cat: PgCatalog, pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, 'from the future')", (LATEST + 1,))
    with pytest.raises(CatalogError, match="newer than this esper-tui knows") as err:
        cat.check_schema()
    assert not isinstance(err.value, SchemaBehind)
    with pytest.raises(CatalogError, match="upgrade esper-tui"):
        cat.migrate()


def test_a_catalog_used_before_migrating_says_so(pg_url: str) -> None:
    with opened(pg_url) as c, pytest.raises(CatalogError, match="library migrate"):
        c.current("mlp_block", IDENTITY, SHAPE)


# ---------------------------------------------------------------------- register


def test_register_numbers_versions_one_two_three(cat: PgCatalog) -> None:
    calls: list[int] = []
    rows = [register(cat, f"job-{i}", key(f"k{i}"), sign=signer(calls)) for i in range(3)]
    assert [(r.version, created) for r, created in rows] == [(1, True), (2, True), (3, True)]
    assert calls == [1, 2, 3]
    row = rows[2][0]
    assert row.meta == b'{"version": 3}' and row.signature == hashlib.sha256(row.meta).hexdigest()
    assert (row.blueprint_id, row.artifact_key, row.job_id, row.identity) == ("mlp_block", key("k2"), "job-2", IDENTITY)
    assert (row.step_ms_compiled, row.step_ms_eager, row.compiled_by) == (1.5, 2.5, "host-a:4242")
    assert (row.quarantined, row.quarantine_reason) == (False, "")
    assert abs(row.created_ts - time.time()) < 60
    assert cat.versions("mlp_block") == [r for r, _ in rows]
    assert register(cat, "job-x", key("k0"), blueprint="conv_block")[0].version == 1  # numbered per blueprint


def test_the_same_job_registered_twice_returns_its_row(cat: PgCatalog) -> None:
    first, created = register(cat, "job-1", key("a"))
    calls: list[int] = []
    again, created_again = register(cat, "job-1", key("a"), force=True, sign=signer(calls))
    assert (created, created_again) == (True, False)
    assert again == first and calls == []
    assert len(cat.versions()) == 1


def test_an_existing_key_is_returned_unless_forced(cat: PgCatalog) -> None:
    first, _ = register(cat, "job-1", key("a"))
    calls: list[int] = []
    same, created = register(cat, "job-2", key("a"), sign=signer(calls))
    assert (same, created, calls) == (first, False, [])
    forced, created = register(cat, "job-3", key("a"), force=True)
    assert created and forced.version == 2
    newest, created = register(cat, "job-4", key("a"))
    assert (newest, created) == (forced, False)  # the newest live row with that key


def test_quarantine_hides_a_version_and_its_number_is_never_reused(cat: PgCatalog) -> None:
    register(cat, "job-1", key("a"))
    v2, _ = register(cat, "job-2", key("b"))
    assert cat.current("mlp_block", IDENTITY, SHAPE) == v2
    assert cat.quarantine("mlp_block", 2, "signature mismatch")
    assert not cat.quarantine("mlp_block", 2, "again")  # already out of service: nothing changes
    assert not cat.quarantine("mlp_block", 9, "no such version")
    current = cat.current("mlp_block", IDENTITY, SHAPE)
    assert current is not None and current.version == 1
    assert cat.current("mlp_block", IDENTITY, SHAPE, key("b")) is None
    hidden = cat.versions("mlp_block")[1]
    assert (hidden.quarantined, hidden.quarantine_reason) == (True, "signature mismatch")
    # The quarantined key is live nowhere, so it registers again, under a new number.
    again, created = register(cat, "job-3", key("b"))
    assert created and again.version == 3
    assert cat.quarantine("mlp_block", 3, "bad again")
    assert register(cat, "job-4", key("c"))[0].version == 4


def test_concurrent_registrations_of_one_key_make_exactly_one_row(pg_url: str, cat: PgCatalog) -> None:
    """Two engines, two connections, same key: one creates the version, the other gets it back. Also for
    a blueprint no row exists for yet (both create it) and one that exists (both lock it)."""
    register(cat, "warm-up", key("x"), blueprint="existing")
    for blueprint in ("fresh", "existing"):
        barrier = threading.Barrier(2)

        def race(i: int, blueprint: str = blueprint, barrier: threading.Barrier = barrier) -> tuple[KernelRow, bool]:
            with opened(pg_url) as c:
                barrier.wait()
                return register(c, f"{blueprint}-job-{i}", key("same"), blueprint=blueprint, sign=signer(delay_s=0.2))

        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(race, range(2)))
        assert sorted(created for _, created in results) == [False, True]
        assert results[0][0] == results[1][0]
        rows = [r for r in cat.versions(blueprint) if r.artifact_key == key("same")]
        assert len(rows) == 1


def test_a_failing_signer_registers_nothing(cat: PgCatalog) -> None:
    def broken(version: int) -> tuple[bytes, str]:
        raise RuntimeError("no signing key")

    with pytest.raises(RuntimeError, match="no signing key"):
        register(cat, "job-1", key("a"), sign=broken)
    assert cat.versions() == []
    assert register(cat, "job-1", key("a"))[0].version == 1


@pytest.mark.parametrize(
    ("field", "value", "constraint"),
    [
        ("artifact_key", "ABC", "artifact_key_is_sha256_hex"),
        ("artifact_key", key("a").upper(), "artifact_key_is_sha256_hex"),
        ("step_ms_compiled", -1.0, "step_ms_compiled_finite_not_negative"),
        ("step_ms_eager", float("nan"), "step_ms_eager_finite_not_negative"),
        ("job_id", "", "job_id_not_empty"),
        ("shape", "40x-64", "shape_is_a_tag"),
        ("shape", "", "shape_is_a_tag"),
    ],
)
def test_rows_the_schema_forbids_are_refused(cat: PgCatalog, field: str, value: object, constraint: str) -> None:
    args: dict[str, object] = {
        "blueprint_id": "mlp_block",
        "artifact_key": key("a"),
        "job_id": "job-1",
        "identity": IDENTITY,
        "shape": SHAPE,
        "step_ms_compiled": 1.0,
        "step_ms_eager": 1.0,
        "compiled_by": "h:1",
        "force": False,
        "sign": signer(),
        field: value,
    }
    with pytest.raises(CatalogError, match=constraint) as err:
        cat.register(**args)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)
    assert cat.versions() == []


def test_quarantine_needs_a_reason(cat: PgCatalog) -> None:
    register(cat, "job-1", key("a"))
    with pytest.raises(CatalogError, match="quarantine_has_reason"):
        cat.quarantine("mlp_block", 1, "")
    assert cat.current("mlp_block", IDENTITY, SHAPE) is not None


# ---------------------------------------------------------------------- reading


def test_current_filters_by_identity_and_key(cat: PgCatalog) -> None:
    here, _ = register(cat, "job-1", key("here"))
    there, _ = register(cat, "job-2", key("there"), identity=OTHER_IDENTITY)
    other_bp, _ = register(cat, "job-3", key("conv"), blueprint="conv_block")
    assert cat.current("mlp_block", IDENTITY, SHAPE) == here
    assert cat.current("mlp_block", OTHER_IDENTITY, SHAPE) == there
    assert cat.current("mlp_block", IDENTITY, SHAPE, key("here")) == here
    assert cat.current("mlp_block", IDENTITY, SHAPE, key("there")) is None
    assert cat.current("mlp_block", "unknown identity", SHAPE) is None
    assert cat.current("no_such_blueprint", IDENTITY, SHAPE) is None
    assert cat.all_current(IDENTITY) == [other_bp, here]  # by blueprint id
    assert cat.all_current(OTHER_IDENTITY) == [there]
    newer, _ = register(cat, "job-4", key("here2"))
    assert cat.all_current(IDENTITY) == [other_bp, newer]
    assert [(r.blueprint_id, r.version) for r in cat.versions()] == [
        ("conv_block", 1),
        ("mlp_block", 1),
        ("mlp_block", 2),
        ("mlp_block", 3),
    ]


def test_current_keeps_the_shapes_of_one_blueprint_apart(cat: PgCatalog) -> None:
    vector, _ = register(cat, "job-1", key("vector"))
    image, _ = register(cat, "job-2", key("image"), shape="8x8x8-16x8x8")
    newer_vector, _ = register(cat, "job-3", key("vector2"))
    assert (vector.shape, image.shape, [vector.version, image.version, newer_vector.version]) == (
        "40-64",
        "8x8x8-16x8x8",
        [1, 2, 3],  # numbered per blueprint, across shapes
    )
    assert cat.current("mlp_block", IDENTITY, "40-64") == newer_vector
    assert cat.current("mlp_block", IDENTITY, "8x8x8-16x8x8") == image  # not hidden by a newer vector kernel
    assert cat.current("mlp_block", IDENTITY, "8x8x8-16x8x8", key("vector2")) is None
    assert cat.all_current(IDENTITY) == [newer_vector, image]  # one per blueprint and shape
    cat.quarantine("mlp_block", 2, "test")
    assert cat.current("mlp_block", IDENTITY, "8x8x8-16x8x8") is None
    assert cat.current("mlp_block", IDENTITY, "40-64") == newer_vector


def test_sync_blueprints_upserts_and_replaces_tags(cat: PgCatalog, pg_url: str) -> None:
    register(cat, "job-1", key("a"))  # creates the mlp_block row with no IR hash yet
    cat.sync_blueprints([("mlp_block", "ir-1", ["dense", "baseline", "dense"]), ("conv_block", "ir-2", ("conv",))])
    assert cat.tags("mlp_block") == ["dense", "baseline"]  # in order, duplicates dropped
    assert cat.tags("conv_block") == ["conv"]
    cat.sync_blueprints(iter([("mlp_block", "ir-3", ["cheap"])]))
    cat.sync_blueprints([])
    assert cat.tags("mlp_block") == ["cheap"]
    assert cat.tags("conv_block") == ["conv"]
    assert cat.tags("unknown") == []
    with psycopg.connect(pg_url) as conn:
        hashes = dict(conn.execute("SELECT blueprint_id, ir_hash FROM blueprints").fetchall())
    assert hashes == {"mlp_block": "ir-3", "conv_block": "ir-2"}


# ---------------------------------------------------------------------- connections and errors


def test_display_url_hides_the_password() -> None:
    assert display_url("postgresql://esper:s3cret@db:5432/urza") == "postgresql://esper:***@db:5432/urza"
    assert display_url("postgres://esper@db/urza?password=s3cret&x=1") == "postgres://esper@db/urza?password=***&x=1"
    assert display_url("postgresql://esper@db/urza") == "postgresql://esper@db/urza"
    assert display_url("host=db password=s3cret dbname=urza") == "host=db password=*** dbname=urza"
    assert display_url("postgresql://esper:s3cret@[::1/urza") == "postgresql://***@[::1/urza"  # unparseable


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("mysql://root@127.0.0.1/esper", "not a PostgreSQL URL"),
        ("host=127.0.0.1 dbname=esper password=pw", "not a PostgreSQL URL"),
        ("postgresql://postgres:pw@127.0.0.1:99999/esper", "cannot connect (invalid port number"),
        ("postgresql://postgres@127.0.0.1:5432/esper?bogus=1", "cannot connect (invalid URI query parameter"),
        ("postgresql://postgres:pw@127.0.0.1:1/esper", "cannot connect (connection refused)"),
    ],
)
def test_bad_urls_and_silent_servers_fail_in_one_line(url: str, reason: str) -> None:
    with pytest.raises(CatalogError) as err:
        PgCatalog(url, connect_timeout_s=2)
    message = str(err.value)
    assert message.startswith(f"catalog {display_url(url)}: {reason}")
    assert "\n" not in message and "pw" not in message


def test_a_missing_database_fails_in_one_line(pg_admin_url: str) -> None:
    url = urlsplit(pg_admin_url)._replace(path="/esper_test_does_not_exist").geturl()
    with pytest.raises(CatalogError) as err:
        PgCatalog(url)
    assert str(err.value) == (f'catalog {url}: cannot connect (database "esper_test_does_not_exist" does not exist)')


def test_a_lost_connection_is_reopened_once(cat: PgCatalog, pg_url: str, pg_admin_url: str) -> None:
    row, _ = register(cat, "job-1", key("a"))
    db = urlsplit(pg_url).path.lstrip("/")
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            (db, APPLICATION_NAME),
        ).fetchall()
        assert killed == [(True,)]
    assert cat.current("mlp_block", IDENTITY, SHAPE) == row  # a read after the kill
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            (db, APPLICATION_NAME),
        )
    assert register(cat, "job-2", key("b"))[0].version == 2  # a write after the kill


def test_a_closed_catalog_refuses_calls(pg_url: str) -> None:
    c = PgCatalog(pg_url)
    c.close()
    with pytest.raises(CatalogError, match="closed"):
        c.schema_version()


def test_a_transaction_lost_to_a_deadlock_runs_again(cat: PgCatalog, pg_url: str) -> None:
    """Another client locks the rows in the opposite order; the catalog's transaction is the one PostgreSQL
    aborts (its deadlock check fires first), and it is run once more instead of failing."""
    cat.sync_blueprints([("a", "ir-a", ["x"]), ("b", "ir-b", ["x"])])
    errors: list[BaseException] = []
    with psycopg.connect(pg_url) as other:
        other.execute("SET deadlock_timeout = '30s'")  # so the catalog, not this client, detects the deadlock
        other.execute("SELECT 1 FROM blueprints WHERE blueprint_id = 'b' FOR UPDATE")

        def sync() -> None:
            try:
                cat.sync_blueprints([("a", "ir-a2", ["y"]), ("b", "ir-b2", ["y"])])  # locks a, then waits for b
            except BaseException as exc:
                errors.append(exc)

        worker = threading.Thread(target=sync)
        worker.start()
        time.sleep(0.3)
        other.execute("SELECT 1 FROM blueprints WHERE blueprint_id = 'a' FOR UPDATE")  # waits for a: a cycle
        other.commit()
        worker.join(timeout=30)
    assert not worker.is_alive() and errors == []
    assert cat.tags("a") == ["y"] and cat.tags("b") == ["y"]
