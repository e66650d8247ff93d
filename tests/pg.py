"""PostgreSQL fixtures for the shared-catalog tests: a real server, a fresh database per test.

- `pg_admin_url` (session): ESPER_TEST_PG_URL (default the local server's `postgres` database); fails,
  never skips, when no server answers (`make test` runs scripts/ensure-postgres.sh, which starts one).
- `pg_url` (function): a new empty database `esper_test_<hex>` on that server, dropped WITH (FORCE) after,
  so a test may leave connections open or kill them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _admin(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(url, autocommit=True, connect_timeout=3)


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """The test server's maintenance database: where test databases are created and dropped."""
    url = os.environ.get("ESPER_TEST_PG_URL") or DEFAULT_PG_URL
    try:
        _admin(url).close()
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        pytest.fail(
            f"no PostgreSQL answers at {url} ({first}); run `. scripts/ensure-postgres.sh` or set ESPER_TEST_PG_URL"
        )
    return url


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database for one test, on the same server and as the same user as the admin URL."""
    name = f"esper_test_{secrets.token_hex(6)}"
    with _admin(pg_admin_url) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    parts = urlsplit(pg_admin_url)
    try:
        yield parts._replace(path=f"/{name}").geturl()
    finally:
        with _admin(pg_admin_url) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
