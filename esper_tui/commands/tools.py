"""Operator sub-commands that work on a state directory without starting the engine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from esper_tui.engine.config import EsperConfig, wal_directory
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.library.base import KernelLibrary
from esper_tui.engine.library.factory import LibraryUnavailable, is_shared, open_library
from esper_tui.engine.library.signing import SigningKeyError, load_key
from esper_tui.engine.vocabulary import compile_label


def _open_readonly(state_dir: Path, config: EsperConfig) -> KernelLibrary | None:
    """The library of a state directory (or the shared one) for a read-only tool; None (said on stderr) when
    there is none or it cannot be opened."""
    if not is_shared(config.library) and not (state_dir / "library").is_dir():
        print(f"esper-tui: no library under {state_dir} (run the engine first)", file=sys.stderr)
        return None
    try:
        key = load_key(state_dir, config.library.signing_key)
        return open_library(config.library, state_dir, key, Catalog(), claim_key=False)
    except (SigningKeyError, LibraryUnavailable) as exc:
        print(f"esper-tui: {exc}", file=sys.stderr)
        return None


def library_list(state_dir: Path, config: EsperConfig) -> int:
    """The current kernel of every blueprint and slot shape built for this machine (its device included), fastest
    served step first, as each version's metadata says (`library verify` checks signatures and bytes). Exit 1 when
    the library cannot be read."""
    library = _open_readonly(state_dir, config)
    if library is None:
        return 1
    try:
        metas = library.ranked()
    finally:
        library.close()
    rows = [
        (
            m.blueprint_id,
            m.slot_shape.tag,
            m.device,
            f"v{m.version}",
            compile_label(m.backend, m.mode),
            f"{m.step_ms_compiled:.2f}/{m.step_ms_eager:.2f} ms",
        )
        for m in metas
    ]
    header = ("blueprint", "shape", "device", "ver", "backend", "compiled/eager")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(f"{len(rows)} kernels ({library.location})")
    return 0


def library_verify(state_dir: Path, config: EsperConfig) -> int:
    """Check every stored artifact, in the file library or the shared one (signature, then every file's
    bytes, from the shared store itself). Read-only: a key made up here would fail every artifact, so
    none is made, and an unrecorded library's key is not recorded. Exit 1 when anything fails, or nothing
    was checked."""
    library = _open_readonly(state_dir, config)
    if library is None:
        return 1
    try:
        results = library.verify_all()
    finally:
        library.close()
    for label, reason in results:
        print(f"{'ok  ' if reason is None else 'FAIL'} {label}" + ("" if reason is None else f": {reason}"))
    bad = sum(reason is not None for _, reason in results)
    print(f"{len(results) - bad} of {len(results)} artifacts verify ({library.location})")
    if not results:  # nothing checked is no pass: a library emptied (or all quarantined) must not look sound
        print(f"esper-tui: checked nothing: no live artifact in {library.location}", file=sys.stderr)
        return 1
    return 1 if bad else 0


def library_migrate(config: EsperConfig) -> int:
    """Bring a shared catalog's schema up to this version of esper-tui (idempotent; safe to run twice)."""
    from esper_tui.engine.library.catalog_db import CatalogError, PgCatalog

    try:
        db = PgCatalog(config.library.catalog_url)
        try:
            applied = db.migrate()
            version = db.schema_version()
        finally:
            db.close()
    except CatalogError as exc:
        print(f"esper-tui: {exc}", file=sys.stderr)
        return 1
    done = f"applied {', '.join(f'{v:04d}' for v in applied)}" if applied else "nothing to apply"
    print(f"catalog {db.url_for_display}: schema version {version} ({done})")
    return 0


def wal_inspect(state_dir: Path, config: EsperConfig, as_json: bool) -> int:
    """Print what recovery would see in the forge's WAL (read-only); `--json` prints the InspectReport."""
    import msgspec

    from esper_tui.engine.wal.writer import WalError, inspect

    directory = wal_directory(config, state_dir)
    if not directory.is_dir():
        print(f"esper-tui: no WAL at {directory}", file=sys.stderr)
        return 1
    try:
        report = inspect(directory)
    except (WalError, OSError) as exc:
        print(f"esper-tui: {directory}: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(msgspec.json.format(msgspec.json.encode(report), indent=2).decode())
        return 0
    print(f"WAL {directory} (id {report.wal_id or 'none yet'})")
    for seg in report.segments:
        print(f"  segment {seg.name}: {seg.size} bytes, {seg.records} records, {seg.role}")
    print(f"  transactions: {len(report.transactions)}; open: {', '.join(report.open_transactions) or 'none'}")
    for damage in report.damage:
        print(f"  damage, {damage.kind}: {damage.describe()}; {damage.bytes} bytes{kept_words(directory, damage.kept)}")
    return 0


def kept_words(directory: Path, kept: str | None) -> str:
    """Where the damaged bytes are kept. Inspect is read-only: the copy exists only once recovery made it, so a
    name that is not there yet is what recovery will write (it read "kept in wal-….corrupt", a missing file)."""
    if kept is None:
        return ""
    if (directory / kept).exists():
        return f" (kept in {kept})"
    return f" (not kept yet: the engine's next start keeps a copy in {kept}; inspect changes nothing)"


def bus_prune(config: EsperConfig, redis_url: str | None, older_than_h: float, dry_run: bool) -> int:
    """Remove what finished runs left on the Redis (engine/bus/prune.py) and say what went; exit 1 when the
    Redis cannot be reached or refuses, 2 when there is no Redis to prune."""
    import asyncio
    import time

    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    from esper_tui.engine.bus.prune import describe, prune
    from esper_tui.engine.bus.redis_streams import redact_url

    url = redis_url or config.bus.redis_url
    if not url:
        print("esper-tui: bus prune: no Redis: pass --redis-url or set bus.redis_url", file=sys.stderr)
        return 2
    now = time.time()

    async def run() -> list[str]:
        client = aioredis.Redis.from_url(url, socket_connect_timeout=5.0, socket_timeout=30.0)
        try:
            report = await prune(client, config.bus.stream_prefix, older_than_h * 3600, dry_run=dry_run, now=now)
        finally:
            await client.aclose()
        return list(describe(report, now, older_than_h * 3600))

    try:
        lines = asyncio.run(run())
    except (RedisError, OSError) as exc:
        print(f"esper-tui: bus prune: {redact_url(url)}: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def run_tool(args: argparse.Namespace, config: EsperConfig) -> int:
    if args.area == "bus":
        return bus_prune(config, args.redis_url, args.older_than, args.dry_run)
    if args.area == "library" and args.action == "migrate":
        return library_migrate(config)
    if args.area == "library" and args.action == "list":
        return library_list(args.state_dir, config)
    if args.area == "library":
        return library_verify(args.state_dir, config)
    return wal_inspect(args.state_dir, config, args.json)
