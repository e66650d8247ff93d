"""The shared library's policies: a PostgreSQL row per version (migration 5) naming the signed file's sha256, the
file in the object store under that sha256 like every kernel file, and the signed published pointer in one row."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from esper_tui.engine.config import LibraryConfig
from esper_tui.engine.library.catalog_db import CatalogError, PgCatalog
from esper_tui.engine.library.objects import ObjectStore, StoreError, open_store, sha256_hex
from esper_tui.engine.library.policy_file import PolicyInvalid

T = TypeVar("T")


def _one_line(call: Callable[[], T]) -> T:
    """The catalog's and the store's failures as PolicyInvalid (their messages are one line already)."""
    try:
        return call()
    except (CatalogError, StoreError) as exc:
        raise PolicyInvalid(str(exc)) from None


class SharedPolicies:
    """A `PolicyBackend` over a shared library's catalog and object store."""

    def __init__(self, db: PgCatalog, store: ObjectStore) -> None:
        self.db = db
        self.store = store

    def put(self, version: str, data: bytes) -> bool:
        digest = sha256_hex(data)
        _one_line(lambda: self.store.put(digest, data))  # the bytes first: a row never names none
        return _one_line(lambda: self.db.add_policy(version, digest))

    def get(self, version: str) -> bytes | None:
        digest = _one_line(lambda: self.db.policy(version))
        return None if digest is None else _one_line(lambda: self.store.get(digest))

    def versions(self) -> list[str]:
        return _one_line(self.db.policy_versions)

    def set_pointer(self, document: bytes, signature: str) -> None:
        _one_line(lambda: self.db.set_policy_pointer(document, signature))

    def pointer(self) -> tuple[bytes, str] | None:
        return _one_line(self.db.policy_pointer)


def shared_policies(config: LibraryConfig) -> SharedPolicies:
    """The shared library's policies (its catalog and object store as configured); PolicyInvalid when either fails."""
    if not (config.catalog_url and config.artifacts_url):
        raise PolicyInvalid("a shared library needs both a catalog URL and an artifacts URL")
    db = _one_line(lambda: PgCatalog(config.catalog_url))
    store = _one_line(lambda: open_store(config.artifacts_url, endpoint_url=config.artifacts_endpoint or None))
    return SharedPolicies(db, store)
