"""`esper-tui blueprint add|list|show|remove`: the user's own blueprints in the library.

`add` reads the file and never runs it: the class and its `serves` are found with `ast`
(kernels/usercode.describe), and the source is stored signed, as `unvalidated`. The forge of the next engine
that opens the library (or of a running one, at its next look: tezzeret.polling) compiles it in the sandboxed
worker, which sets it to `compiled` or `refused` with a reason. Exit codes: 0 done, 1 the library failed,
2 what the user must fix (a bad file, class, name, tag or risk).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from esper_tui.commands.fail import fail
from esper_tui.commands.flags import add_library_flags, with_flags
from esper_tui.engine.config import ConfigError, EsperConfig, load_config
from esper_tui.engine.library.base import KernelLibrary
from esper_tui.engine.library.userbp import (
    MAX_SOURCE_BYTES,
    UserBlueprintError,
    UserBlueprintInvalid,
    UserBlueprintRecord,
)

EPILOG = """examples:
  esper-tui blueprint add examples/blueprints.py:GatedResidual --tags dense,gating --risk 0.2
  esper-tui blueprint list                  each user blueprint's status (unvalidated, compiled, refused) and why
  esper-tui blueprint show gated_residual   its record and source
  esper-tui blueprint remove gated_residual

Who runs a user blueprint's code: the sandboxed compile worker, and the training process of an engine that
grafts it. Never the engine process, and never this command (it reads the file without running it).
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="esper-tui blueprint",
        description="Your own blueprints: stored signed in the library, compiled by the forge in its sandbox.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="store FILE.py:CLASS as an unvalidated blueprint (never runs it)")
    add.add_argument("target", metavar="FILE.py:CLASS", help="a module file and the nn.Module class in it")
    add.add_argument("--name", help="the blueprint's id (default: the class name in snake_case)")
    add.add_argument("--tags", default="", metavar="a,b", help="comma-separated tags (lower case, digits, - and _)")
    add.add_argument("--risk", type=float, default=0.3, metavar="R", help="0 (safe) .. 1 (risky); default 0.3")
    listing = sub.add_parser("list", help="every user blueprint with its status and the reason for it")
    listing.add_argument("--json", action="store_true", help="one JSON object per blueprint")
    show = sub.add_parser("show", help="one blueprint's record and source")
    show.add_argument("name")
    remove = sub.add_parser("remove", help="remove a user blueprint (its compiled kernels stay, unused)")
    remove.add_argument("name")
    for q in (add, listing, show, remove):
        q.add_argument("--state-dir", type=Path, default=Path("var"), metavar="DIR", help="state directory (./var)")
        q.add_argument("--config", type=Path, metavar="FILE", help="TOML config ([library])")
        add_library_flags(q)
    return p


def snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])|(?<=[A-Z])([A-Z][a-z])", r"_\1\2", name).lower()


def _open(state_dir: Path, config: EsperConfig, *, writing: bool) -> KernelLibrary:
    """The library the engine of this state directory uses. Writing may make the file library's key (as the engine
    would); reading never does, and a shared library's key is never made up."""
    from esper_tui.engine.kernels.catalog import Catalog
    from esper_tui.engine.library.factory import LibraryUnavailable, is_shared, open_library
    from esper_tui.engine.library.signing import SigningKeyError, load_key, load_or_create_key

    shared = is_shared(config.library)
    if not shared and not writing and not (state_dir / "library").is_dir():
        raise UserBlueprintError(f"no library under {state_dir} (add a blueprint or run the engine first)")
    try:
        make = load_or_create_key if writing and not shared else load_key
        key = make(state_dir, config.library.signing_key)
        return open_library(config.library, state_dir, key, Catalog(), claim_key=writing)
    except (SigningKeyError, LibraryUnavailable) as exc:
        raise UserBlueprintError(str(exc)) from None
    except OSError as exc:
        raise UserBlueprintError(f"{state_dir}: {exc.strerror or exc}") from None


def _add(args: argparse.Namespace, config: EsperConfig) -> int:
    from esper_tui.engine.kernels.catalog import Catalog
    from esper_tui.engine.kernels.usercode import UserCodeRefused, describe
    from esper_tui.engine.library.userbp import new_record

    file_part, sep, class_name = str(args.target).rpartition(":")
    if not sep or not file_part or not class_name.isidentifier():
        return fail(f"blueprint add: expected FILE.py:CLASS, got {args.target!r}", 2)
    path = Path(file_part)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return fail(f"blueprint add: {path}: {exc.strerror or exc}", 2)
    if len(raw) > MAX_SOURCE_BYTES:
        return fail(f"blueprint add: {path}: {len(raw)} bytes, more than a blueprint module's {MAX_SOURCE_BYTES}", 2)
    try:
        facts = describe(raw.decode(), class_name, str(path))
    except UnicodeDecodeError:
        return fail(f"blueprint add: {path}: not UTF-8 text", 2)
    except UserCodeRefused as exc:
        return fail(f"blueprint add: {exc}", 2)
    name = args.name or snake_case(class_name)
    if name in Catalog():
        return fail(f"blueprint add: {name!r} is a built-in blueprint; choose another --name", 2)
    tags = [t.strip() for t in args.tags.split(",") if t.strip()]
    try:
        record = new_record(
            name=name,
            class_name=class_name,
            source=raw,
            source_file=str(path),
            description=facts.doc,
            serves=facts.serves,
            tags=tags,
            risk=args.risk,
        )
    except UserBlueprintError as exc:
        return fail(f"blueprint add: --{exc}" if str(exc).startswith(("name", "tags", "risk")) else str(exc), 2)
    try:
        library = _open(args.state_dir, config, writing=True)
    except UserBlueprintError as exc:
        return fail(f"blueprint add: {exc}", 1)
    try:
        library.blueprints.add(record, raw)
    except UserBlueprintError as exc:
        return fail(f"blueprint add: {exc}", 2)
    finally:
        library.close()
    print(
        f"added {name} ({class_name} from {path}, serves {', '.join(facts.serves)}): unvalidated; "
        f"an engine on {library.location} compiles it in its sandbox (a running one within "
        "tezzeret.polling.refresh_interval_minutes)"
    )
    return 0


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _row(record: UserBlueprintRecord) -> dict[str, object]:
    return {
        "name": record.name,
        "status": record.status.value,
        "reason": record.reason,
        "class": record.class_name,
        "serves": record.serves,
        "tags": record.tags,
        "risk": record.risk,
        "submitted_by": record.submitted_by,
        "submitted_host": record.submitted_host,
        "submitted": _when(record.submitted_ts),
        "source_sha256": record.source_sha256,
    }


def _list(library: KernelLibrary, as_json: bool) -> int:
    entries = library.blueprints.entries()
    if as_json:
        for e in entries:
            row = _row(e.record) if e.record else {"name": e.name, "status": "invalid", "reason": e.problem}
            print(json.dumps(row))
        return 0
    if not entries:
        print(f"no user blueprints in {library.location}")
        return 0
    print(f"{'NAME':<24} {'STATUS':<12} {'CLASS':<24} {'SERVES':<16} {'RISK':>4}  SUBMITTED / REASON")
    for e in entries:
        r = e.record
        if r is None:
            print(f"{e.name:<24} {'INVALID':<12} {'-':<24} {'-':<16} {'-':>4}  {e.problem} (never used)")
            continue
        why = f"  {r.reason}" if r.reason else ""
        serves = ",".join(r.serves)
        print(
            f"{r.name:<24} {r.status.value:<12} {r.class_name:<24} {serves:<16} {r.risk:>4.2f}  "
            f"{r.submitted_by} {_when(r.submitted_ts)}{why}"
        )
    return 0


def _show(library: KernelLibrary, name: str) -> int:
    record, source = library.blueprints.get(name)
    for key, value in _row(record).items():
        print(f"{key + ':':<16}{value}")
    print(f"{'source:':<16}{record.source_file}\n")
    print(source, end="" if source.endswith("\n") else "\n")
    return 0


def _remove(library: KernelLibrary, name: str) -> int:
    if not library.blueprints.remove(name):
        return fail(f"blueprint remove: no user blueprint {name!r} in {library.location}", 2)
    print(f"removed {name}; an engine running now keeps it until it restarts (its kernels stay, unused)")
    return 0


def blueprint_main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        config = with_flags(load_config(args.config), args)
    except ConfigError as exc:
        return fail(f"config error: {exc}", 2)
    if args.action == "add":
        return _add(args, config)
    try:
        library = _open(args.state_dir, config, writing=False)
    except UserBlueprintError as exc:
        return fail(f"blueprint {args.action}: {exc}", 1)
    action: Callable[[], int] = {
        "list": lambda: _list(library, args.json),
        "show": lambda: _show(library, args.name),
        "remove": lambda: _remove(library, args.name),
    }[args.action]
    try:
        return action()
    except UserBlueprintInvalid as exc:  # a record that fails its signature: the library's trouble, not the input's
        return fail(f"blueprint {args.action}: {exc}", 1)
    except UserBlueprintError as exc:
        return fail(f"blueprint {args.action}: {exc}", 2)
    finally:
        library.close()
