"""Which library a process uses: the folder under its state directory, or a shared one named by URLs.

One function for the engine, `esper-tui forge-worker` and the operator tools, so all three accept the
same URLs and fail the same way: one line naming what did not answer, before anything is compiled.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from esper_tui.engine.config import LibraryConfig
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.library.base import KernelLibrary
from esper_tui.engine.library.ownkey import LibraryKeyError
from esper_tui.engine.library.store import Identity, Library

CACHE_DIR = "library-cache"  # under the state directory: a shared library's verified local copies


class LibraryUnavailable(Exception):
    """The configured library cannot be used; the message is one line for the operator."""


def is_shared(config: LibraryConfig) -> bool:
    return bool(config.catalog_url or config.artifacts_url)


def open_library(
    config: LibraryConfig,
    state_dir: Path,
    key: bytes,
    catalog: Catalog,
    *,
    identity: Identity | None = None,
    on_quarantine: Callable[[str, str, str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    claim_key: bool = True,
) -> KernelLibrary:
    """The file library by default; with catalog and artifacts URLs, the shared one (schema checked,
    store reachable); either way `key` must be the library's own (library/ownkey.py: recorded on first use
    unless `claim_key` is False, as for a read-only tool). Blocking (it connects): call it from a thread in
    async code."""
    common: dict[str, Any] = {
        "identity": identity,
        "cache_ttl_s": config.cache_ttl_seconds,
        "clock": clock,
        "on_quarantine": on_quarantine,
    }
    if not is_shared(config):
        return _adopted(Library(state_dir / "library", key, catalog, **common), claim_key)
    if not (config.catalog_url and config.artifacts_url):
        raise LibraryUnavailable("a shared library needs both a catalog URL and an artifacts URL")
    from esper_tui.engine.library.catalog_db import CatalogError, PgCatalog
    from esper_tui.engine.library.objects import StoreError, open_store
    from esper_tui.engine.library.shared import SharedLibrary

    try:
        db = PgCatalog(config.catalog_url)
    except CatalogError as exc:
        raise LibraryUnavailable(str(exc)) from None
    try:
        db.check_schema()
        store = open_store(config.artifacts_url, endpoint_url=config.artifacts_endpoint or None)
        store.check()
        library = SharedLibrary(db, store, state_dir / CACHE_DIR, key, catalog, **common)
    except (CatalogError, StoreError) as exc:
        db.close()
        raise LibraryUnavailable(str(exc)) from None
    return _adopted(library, claim_key)


def _adopted(library: KernelLibrary, claim: bool) -> KernelLibrary:
    """`library` once its key is confirmed as this process's; else closed, and LibraryUnavailable."""
    try:
        library.adopt_key(claim)
    except LibraryKeyError as exc:
        library.close()
        raise LibraryUnavailable(str(exc)) from None
    return library
