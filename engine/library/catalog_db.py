"""Urza's shared catalog in PostgreSQL: which signed kernel versions exist, for what, and which are quarantined.

The artifact bytes live elsewhere (an object store); the caller uploads and verifies them, then calls
`register`, whose one transaction makes the version visible. The blueprint row is the lock that serialises
registrations of one blueprint, so version numbers come out 1, 2, 3 across processes and hosts, are never
reused (quarantined rows stay and count), and a retried job or a racing compile of the same key gets the
existing row back instead of a second version.

One connection serves the whole engine, behind a lock (the trainer thread loads while the event loop's
pool commits): reads run in autocommit, one round trip each; writes run in explicit transactions. A lost
connection is reopened once before the operation fails with `CatalogError`.
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import LiteralString, TypeVar
from urllib.parse import urlsplit

import psycopg
import psycopg.errors
from psycopg.rows import TupleRow, kwargs_row

from esper_tui.engine.library.migrations import LATEST, MIGRATIONS
from esper_tui.engine.vocabulary import Struct

T = TypeVar("T")
Conn = psycopg.Connection[TupleRow]

SCHEMES = ("postgresql", "postgres")
MIGRATE_LOCK = 0x7572_7A61_6D69_6772  # pg_advisory_xact_lock key ("urzamigr"): one migrator at a time
APPLICATION_NAME = "esper-tui catalog"


class CatalogError(Exception):
    """The catalog could not do what was asked; the message is one line naming the URL (never its password)."""


class SchemaBehind(CatalogError):
    """The database lacks migrations this esper-tui needs; the message says which command applies them."""


class KernelRow(Struct, frozen=True, kw_only=True):
    """One registered kernel version, as the catalog stores it."""

    blueprint_id: str
    version: int
    artifact_key: str  # sha256 hex of what was compiled (blueprint IR + options + identity)
    job_id: str
    identity: str  # fingerprint of torch/python/device/cpu/threads/compiler (opaque here)
    shape: str  # the slot shape's tag; '40-64' for rows registered before kernels were kept per shape
    meta: bytes  # the signed metadata document (JSON bytes), verbatim
    signature: str  # its HMAC hex, verbatim
    step_ms_compiled: float
    step_ms_eager: float
    compiled_by: str  # "host:pid" of the worker/engine that compiled it
    created_ts: float  # unix time, from the database clock
    quarantined: bool
    quarantine_reason: str  # "" when not quarantined


_ROW: LiteralString = """
    SELECT blueprint_id, version, artifact_key, job_id, identity, shape, meta, signature, step_ms_compiled,
           step_ms_eager, compiled_by, extract(epoch FROM created_at)::float8 AS created_ts, quarantined,
           quarantine_reason
    FROM kernel_versions"""
_LIVE_NEWEST: LiteralString = " AND NOT quarantined ORDER BY version DESC LIMIT 1"
_CURRENT: LiteralString = _ROW + " WHERE blueprint_id = %s AND identity = %s AND shape = %s" + _LIVE_NEWEST
_CURRENT_FOR_KEY: LiteralString = (
    _ROW + " WHERE blueprint_id = %s AND identity = %s AND shape = %s AND artifact_key = %s" + _LIVE_NEWEST
)
_ALL_CURRENT: LiteralString = (
    "SELECT DISTINCT ON (blueprint_id, shape) * FROM ("
    + _ROW
    + " WHERE identity = %s AND NOT quarantined) AS live ORDER BY blueprint_id, shape, version DESC"
)
_VERSIONS: LiteralString = _ROW + " ORDER BY blueprint_id, version"
_VERSIONS_OF: LiteralString = _ROW + " WHERE blueprint_id = %s ORDER BY version"
_BY_JOB: LiteralString = _ROW + " WHERE job_id = %s"
_LIVE_BY_KEY: LiteralString = _ROW + " WHERE blueprint_id = %s AND artifact_key = %s" + _LIVE_NEWEST
_INSERT: LiteralString = """
    INSERT INTO kernel_versions (blueprint_id, version, artifact_key, job_id, identity, shape, meta, signature,
                                 step_ms_compiled, step_ms_eager, compiled_by)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
    RETURNING blueprint_id, version, artifact_key, job_id, identity, shape, meta, signature, step_ms_compiled,
              step_ms_eager, compiled_by, extract(epoch FROM created_at)::float8 AS created_ts, quarantined,
              quarantine_reason"""
_LEDGER: LiteralString = """
    CREATE TABLE IF NOT EXISTS schema_migrations (
        version INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )"""

# A deadlock or serialization failure rolled the transaction back: running it again is the remedy, after a
# short random pause, so the transaction that won gets its locks first instead of meeting ours again.
_ROLLED_BACK = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
ROLLBACK_PAUSE_S = (0.05, 0.15)

_CONNECT_NOISE = re.compile(
    r"^(?:connection (?:failed|is bad): )?(?:connection to server (?:at|on) .*? failed: )?(?:(?:FATAL|ERROR):\s+)?"
)


def display_url(url: str) -> str:
    """The URL with any password (in the user part or a `password=` parameter) replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or "://" not in url:  # not a URL (a key=value string, garbage): mask what looks like one
        return re.sub(r"(?i)(password\s*=\s*)\S+", r"\1***", re.sub(r"//[^/@]*@", "//***@", url))
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    query = re.sub(r"(?i)(^|&)password=[^&]*", r"\1password=***", parts.query)
    return parts._replace(netloc=netloc, query=query).geturl()


def _is_postgres_url(url: str) -> bool:
    try:
        return urlsplit(url).scheme in SCHEMES
    except ValueError:
        return False


def _reason(exc: BaseException) -> str:
    """One line saying what went wrong, without libpq's hints, server prefixes or traceback text."""
    diag = getattr(exc, "diag", None)
    primary = diag.message_primary if diag is not None else None
    text = primary or next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    text = _CONNECT_NOISE.sub("", text)
    if text[:1].isupper() and text[1:2].islower():  # "Connection refused", not "SSL"
        text = text[0].lower() + text[1:]
    return text


class PgCatalog:
    """The catalog of one PostgreSQL database; connects at once, raising CatalogError if it cannot."""

    def __init__(self, url: str, *, connect_timeout_s: float = 5.0) -> None:
        self.url_for_display = display_url(url)
        self._url = url
        self._connect_timeout = max(1, math.ceil(connect_timeout_s))  # libpq takes whole seconds
        self._lock = threading.Lock()
        self._closed = False
        if not _is_postgres_url(url):
            raise self._fail("not a PostgreSQL URL (postgresql://user@host:port/db)")
        self._conn: Conn | None = self._connect()

    # ------------------------------------------------------------------ plumbing

    def _fail(self, what: str) -> CatalogError:
        return CatalogError(f"catalog {self.url_for_display}: {what}")

    def _connect(self) -> Conn:
        try:
            return psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=self._connect_timeout,
                application_name=APPLICATION_NAME,
            )
        except psycopg.Error as exc:
            raise self._fail(f"cannot connect ({_reason(exc)})") from None

    def _run(self, what: str, op: Callable[[Conn], T]) -> T:
        """Run `op` on the connection under the lock; reconnect and retry once when the connection was lost
        (or a deadlock/serialization failure rolled the transaction back), else raise CatalogError."""
        with self._lock:
            for attempt in (1, 2):
                if self._closed:
                    raise self._fail(f"{what}: the catalog is closed")
                if self._conn is None:
                    self._conn = self._connect()
                conn = self._conn
                try:
                    return op(conn)
                except psycopg.OperationalError as exc:
                    if conn.closed:
                        self._conn = None
                    if attempt == 1 and conn.closed:
                        continue
                    if attempt == 1 and isinstance(exc, _ROLLED_BACK):
                        time.sleep(random.uniform(*ROLLBACK_PAUSE_S))
                        continue
                    raise self._fail(f"{what} failed ({_reason(exc)})") from None
                except psycopg.errors.UndefinedTable as exc:
                    hint = f"run `esper-tui library migrate --library {self.url_for_display}`"
                    raise self._fail(f"{what} failed ({_reason(exc)}; {hint})") from None
                except psycopg.Error as exc:
                    raise self._fail(f"{what} failed ({_reason(exc)})") from None
        raise AssertionError("unreachable")

    @staticmethod
    def _applied(conn: Conn) -> set[int]:
        """The migration versions this database has recorded (none before the first migrate)."""
        ledger = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
        if not (ledger and ledger[0]):
            return set()
        return {v for (v,) in conn.execute("SELECT version FROM schema_migrations").fetchall()}

    def _newer(self, applied: set[int]) -> CatalogError | None:
        if max(applied, default=0) <= LATEST:
            return None
        return CatalogError(
            f"catalog {self.url_for_display} is at schema {max(applied)}, newer than this esper-tui knows "
            f"({LATEST}): upgrade esper-tui"
        )

    # ------------------------------------------------------------------ schema

    def migrate(self) -> list[int]:
        """Apply pending migrations in order, each in its own transaction under an advisory lock (so two
        processes migrating at once apply each exactly once); returns the versions this call applied."""
        applied_now: list[int] = []

        def op(conn: Conn) -> list[int]:
            for m in MIGRATIONS:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
                    conn.execute(_LEDGER)
                    done = self._applied(conn)
                    if (newer := self._newer(done)) is not None:
                        raise newer
                    if m.version in done:
                        continue
                    conn.execute(m.sql)
                    conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (m.version, m.name))
                applied_now.append(m.version)
            return applied_now

        return self._run("migrate", op)

    def schema_version(self) -> int:
        """The highest migration applied; 0 on an empty database."""
        return max(self._run("read the schema version", self._applied), default=0)

    def check_schema(self) -> None:
        """Raise SchemaBehind when migrations are pending, CatalogError when the database is newer than this code."""
        applied = self._run("read the schema version", self._applied)
        if (newer := self._newer(applied)) is not None:
            raise newer
        if {m.version for m in MIGRATIONS} - applied:
            raise SchemaBehind(
                f"catalog {self.url_for_display} is at schema {max(applied, default=0)}, this esper-tui needs "
                f"{LATEST}: run `esper-tui library migrate --library {self.url_for_display}`"
            )

    # ------------------------------------------------------------------ writing

    def sync_blueprints(self, blueprints: Iterable[tuple[str, str, Sequence[str]]]) -> None:
        """Upsert (blueprint_id, ir_hash, tags) in one transaction; each blueprint's tags are replaced.

        Rows are locked in id order, so two engines syncing at once cannot deadlock each other.
        """
        items = sorted((bid, ir_hash, list(dict.fromkeys(tags))) for bid, ir_hash, tags in blueprints)
        if not items:
            return

        def op(conn: Conn) -> None:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(
                    """INSERT INTO blueprints (blueprint_id, ir_hash) VALUES (%s, %s)
                       ON CONFLICT (blueprint_id) DO UPDATE SET ir_hash = EXCLUDED.ir_hash, updated_at = now()
                       WHERE blueprints.ir_hash IS DISTINCT FROM EXCLUDED.ir_hash""",
                    [(bid, ir_hash) for bid, ir_hash, _ in items],
                )
                cur.execute("DELETE FROM blueprint_tags WHERE blueprint_id = ANY(%s)", ([bid for bid, _, _ in items],))
                cur.executemany(
                    "INSERT INTO blueprint_tags (blueprint_id, position, tag) VALUES (%s, %s, %s)",
                    [(bid, i, tag) for bid, _, tags in items for i, tag in enumerate(tags)],
                )

        self._run("sync blueprints", op)

    def register(
        self,
        *,
        blueprint_id: str,
        artifact_key: str,
        job_id: str,
        identity: str,
        shape: str,
        step_ms_compiled: float,
        step_ms_eager: float,
        compiled_by: str,
        force: bool,
        sign: Callable[[int], tuple[bytes, str]],
    ) -> tuple[KernelRow, bool]:
        """Make a verified upload visible as the blueprint's next version, in one transaction; returns
        (row, created).

        The blueprint row is locked first (created when missing), so concurrent registrations of one
        blueprint queue up: a job already registered returns its row, and unless `force`, a live version
        with this key is returned instead of a new one. `sign(version)` gives (meta, signature) for the
        number chosen; it runs with the lock held, so it must be quick, and what it raises propagates.
        """

        def attempt(conn: Conn) -> tuple[KernelRow, bool]:
            with conn.transaction(), conn.cursor(row_factory=kwargs_row(KernelRow)) as cur:
                conn.execute(
                    "INSERT INTO blueprints (blueprint_id) VALUES (%s) ON CONFLICT (blueprint_id) DO NOTHING",
                    (blueprint_id,),
                )
                conn.execute("SELECT 1 FROM blueprints WHERE blueprint_id = %s FOR UPDATE", (blueprint_id,))
                if (row := cur.execute(_BY_JOB, (job_id,)).fetchone()) is not None:
                    return row, False
                if not force and (row := cur.execute(_LIVE_BY_KEY, (blueprint_id, artifact_key)).fetchone()):
                    return row, False
                top = conn.execute(
                    "SELECT coalesce(max(version), 0) FROM kernel_versions WHERE blueprint_id = %s", (blueprint_id,)
                ).fetchone()
                version = (top[0] if top else 0) + 1
                meta, signature = sign(version)
                values = (blueprint_id, version, artifact_key, job_id, identity, shape, meta, signature)
                row = cur.execute(_INSERT, (*values, step_ms_compiled, step_ms_eager, compiled_by)).fetchone()
                assert row is not None  # INSERT ... RETURNING gives the row or raises
                return row, True

        def op(conn: Conn) -> tuple[KernelRow, bool]:
            try:
                return attempt(conn)
            except psycopg.errors.UniqueViolation as exc:
                if exc.diag.constraint_name != "job_registered_once":
                    raise
                # The same job registered under another blueprint committed first: now the lookup finds it.
                return attempt(conn)

        return self._run(f"register {blueprint_id}", op)

    def quarantine(self, blueprint_id: str, version: int, reason: str) -> bool:
        """Take a version out of service (its number stays taken); True if it was live until now."""

        def op(conn: Conn) -> bool:
            cur = conn.execute(
                """UPDATE kernel_versions SET quarantined = true, quarantine_reason = %s, quarantined_at = now()
                   WHERE blueprint_id = %s AND version = %s AND NOT quarantined""",
                (reason, blueprint_id, version),
            )
            return cur.rowcount > 0

        return self._run(f"quarantine {blueprint_id} v{version}", op)

    def record_library_key(self, fingerprint: str, recorded_by: str) -> str:
        """Record `fingerprint` as the library's key unless one is recorded already; returns the one that
        stands (the first process's, when two race)."""

        def op(conn: Conn) -> str:
            conn.execute(
                "INSERT INTO library_key (fingerprint, recorded_by) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (fingerprint, recorded_by),
            )
            row = conn.execute("SELECT fingerprint FROM library_key").fetchone()
            assert row is not None  # inserted, or there already
            return str(row[0])

        return self._run("record the library key", op)

    def create_user_blueprint(
        self, name: str, source_sha256: str, record: bytes, signature: str, status: str, submitted_by: str
    ) -> bool:
        """Insert a user blueprint's signed record; False when the name is taken (nothing is overwritten)."""

        def op(conn: Conn) -> bool:
            cur = conn.execute(
                """INSERT INTO user_blueprints (name, source_sha256, record, signature, status, submitted_by)
                   VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING""",
                (name, source_sha256, record, signature, status, submitted_by),
            )
            return cur.rowcount > 0

        return self._run(f"add user blueprint {name}", op)

    def replace_user_blueprint(self, name: str, record: bytes, signature: str, status: str, reason: str) -> bool:
        """Replace a user blueprint's signed record (a status change); False when it is gone."""

        def op(conn: Conn) -> bool:
            cur = conn.execute(
                """UPDATE user_blueprints SET record = %s, signature = %s, status = %s, reason = %s, updated_at = now()
                   WHERE name = %s""",
                (record, signature, status, reason, name),
            )
            return cur.rowcount > 0

        return self._run(f"update user blueprint {name}", op)

    def delete_user_blueprint(self, name: str) -> bool:
        def op(conn: Conn) -> bool:
            return conn.execute("DELETE FROM user_blueprints WHERE name = %s", (name,)).rowcount > 0

        return self._run(f"remove user blueprint {name}", op)

    def user_blueprint(self, name: str) -> tuple[bytes, str, str] | None:
        """(signed record, signature, source sha256) as stored, unverified; None when there is none."""

        def op(conn: Conn) -> tuple[bytes, str, str] | None:
            row = conn.execute(
                "SELECT record, signature, source_sha256 FROM user_blueprints WHERE name = %s", (name,)
            ).fetchone()
            return None if row is None else (bytes(row[0]), str(row[1]), str(row[2]))

        return self._run(f"read user blueprint {name}", op)

    def user_blueprint_names(self) -> list[str]:
        def op(conn: Conn) -> list[str]:
            return [str(n) for (n,) in conn.execute("SELECT name FROM user_blueprints ORDER BY name").fetchall()]

        return self._run("list user blueprints", op)

    def add_policy(self, version: str, sha256: str) -> bool:
        """Record a policy version stored under `sha256`; False when the version exists (never overwritten)."""

        def op(conn: Conn) -> bool:
            cur = conn.execute(
                "INSERT INTO policies (version, sha256) VALUES (%s, %s) ON CONFLICT (version) DO NOTHING",
                (version, sha256),
            )
            return cur.rowcount > 0

        return self._run(f"add policy {version}", op)

    def policy(self, version: str) -> str | None:
        def op(conn: Conn) -> str | None:
            row = conn.execute("SELECT sha256 FROM policies WHERE version = %s", (version,)).fetchone()
            return None if row is None else str(row[0])

        return self._run(f"read policy {version}", op)

    def policy_versions(self) -> list[str]:
        def op(conn: Conn) -> list[str]:
            return [str(v) for (v,) in conn.execute("SELECT version FROM policies ORDER BY version").fetchall()]

        return self._run("list policies", op)

    def set_policy_pointer(self, document: bytes, signature: str) -> None:
        def op(conn: Conn) -> None:
            conn.execute(
                """INSERT INTO policy_pointer (id, document, signature) VALUES (1, %s, %s)
                   ON CONFLICT (id) DO UPDATE SET document = EXCLUDED.document, signature = EXCLUDED.signature,
                   updated_at = now()""",
                (document, signature),
            )

        self._run("publish a policy", op)

    def policy_pointer(self) -> tuple[bytes, str] | None:
        def op(conn: Conn) -> tuple[bytes, str] | None:
            row = conn.execute("SELECT document, signature FROM policy_pointer WHERE id = 1").fetchone()
            return None if row is None else (bytes(row[0]), str(row[1]))

        return self._run("read the published policy", op)

    # ------------------------------------------------------------------ reading

    def library_key(self) -> str | None:
        """The fingerprint of the key the library is signed with; None before any process recorded one."""

        def op(conn: Conn) -> str | None:
            row = conn.execute("SELECT fingerprint FROM library_key").fetchone()
            return None if row is None else str(row[0])

        return self._run("read the library key", op)

    def _rows(self, what: str, query: LiteralString, params: tuple[object, ...]) -> list[KernelRow]:
        def op(conn: Conn) -> list[KernelRow]:
            with conn.cursor(row_factory=kwargs_row(KernelRow)) as cur:
                return cur.execute(query, params).fetchall()

        return self._run(what, op)

    def current(
        self, blueprint_id: str, identity: str, shape: str, artifact_key: str | None = None
    ) -> KernelRow | None:
        """The newest live version of a blueprint built for `identity` and a slot shape (and with that key, if
        given)."""
        if artifact_key is None:
            rows = self._rows(f"read {blueprint_id}", _CURRENT, (blueprint_id, identity, shape))
        else:
            params = (blueprint_id, identity, shape, artifact_key)
            rows = self._rows(f"read {blueprint_id}", _CURRENT_FOR_KEY, params)
        return rows[0] if rows else None

    def all_current(self, identity: str) -> list[KernelRow]:
        """The newest live version of every blueprint and shape built for `identity`, by blueprint id and shape."""
        return self._rows("read current versions", _ALL_CURRENT, (identity,))

    def versions(self, blueprint_id: str | None = None) -> list[KernelRow]:
        """Every registered version, quarantined included, by blueprint then version."""
        if blueprint_id is None:
            return self._rows("list versions", _VERSIONS, ())
        return self._rows(f"list versions of {blueprint_id}", _VERSIONS_OF, (blueprint_id,))

    def tags(self, blueprint_id: str) -> list[str]:
        """A blueprint's tags in the order last synced."""

        def op(conn: Conn) -> list[str]:
            rows = conn.execute(
                "SELECT tag FROM blueprint_tags WHERE blueprint_id = %s ORDER BY position", (blueprint_id,)
            ).fetchall()
            return [tag for (tag,) in rows]

        return self._run(f"read tags of {blueprint_id}", op)

    def close(self) -> None:
        """Close the connection; later calls raise CatalogError."""
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None
