"""Operator sub-commands that work on a state directory without starting the engine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from esper_tui.engine.config import EsperConfig, wal_directory
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.library.signing import SigningKeyError, load_key
from esper_tui.engine.library.store import Library


def library_verify(state_dir: Path, config: EsperConfig) -> int:
    """Check every stored artifact. Read-only: a key made up here would fail every artifact, so none is made."""
    if not (state_dir / "library").is_dir():
        print(f"esper-tui: no library under {state_dir} (run the engine first)", file=sys.stderr)
        return 1
    try:
        key = load_key(state_dir, config.library.signing_key)
    except SigningKeyError as exc:
        print(f"esper-tui: {exc}", file=sys.stderr)
        return 1
    library = Library(state_dir / "library", key, Catalog())
    bad = 0
    dirs = library.version_dirs()
    for path in dirs:
        reason = library.verify(path)
        print(
            f"{'ok  ' if reason is None else 'FAIL'} {path.parent.name}/{path.name}"
            + ("" if reason is None else f": {reason}")
        )
        bad += reason is not None
    print(f"{len(dirs) - bad} of {len(dirs)} artifacts verify")
    return 1 if bad else 0


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
        kept = f" (kept in {damage.kept})" if damage.kept else ""
        print(f"  damage, {damage.kind}: {damage.describe()}; {damage.bytes} bytes{kept}")
    return 0


def run_tool(args: argparse.Namespace, config: EsperConfig) -> int:
    state_dir: Path = args.state_dir
    if args.area == "library":
        return library_verify(state_dir, config)
    return wal_inspect(state_dir, config, args.json)
