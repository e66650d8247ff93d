"""The `esper-tui` command: the control room (default), `--no-ui`, `attach`, and the operator sub-commands.

Exit codes: 0 success, 1 runtime failure (or artifacts that fail verification), 2 usage/config errors.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from esper_tui.commands.fail import fail
from esper_tui.commands.flags import add_library_flags, redis_url_problem, with_flags
from esper_tui.engine.config import (
    ConfigError,
    config_reference,
    load_config,
    shared_forge_problem,
)

EPILOG = """examples:
  esper-tui                                   the dashboard on built-in defaults, state in ./var
  esper-tui --no-ui --epochs 30 --json        headless, one JSON snapshot per line
  esper-tui --task digits                     train the built-in digits task (8x8 images, a conv host)
  esper-tui --task examples/waveforms.py:factory   train your own task: a factory returning a Task
  esper-tui --redis-url redis://127.0.0.1:6379/0   telemetry and commands over Redis Streams
  esper-tui attach --redis-url redis://box:6379/0  the dashboard of an engine running elsewhere
  esper-tui attach --list --redis-url URL          the engines live on that Redis
  esper-tui library verify                    check every stored kernel's signature
  esper-tui blueprint add examples/blueprints.py:GatedResidual   your own blueprint, compiled in the sandbox
  esper-tui blueprint list                    user blueprints: unvalidated, compiled or refused (and why)
  esper-tui wal inspect --json                the forge's write-ahead log
  esper-tui runs                              the recorded runs in ./var/runs
  esper-tui reports                           Tamiyo's field reports: each decision and its outcome
  esper-tui simic train --quick               Simic: learn Tamiyo's policy, gate it, publish it if it passes
  esper-tui --no-ui --epochs 30 --policy learned   Tamiyo follows the published learned policy
  esper-tui replay var/runs/RUN.esrec         the dashboard over a recording (space, arrows, [ ], g/G)
  esper-tui plot var/runs/RUN.esrec --out run.png   loss and metric curves for a report
  esper-tui compare RUN_A RUN_B               two runs side by side (--no-ui --json: as data; --out x.png)
  esper-tui serve --port 8000                 the control room in a browser, on localhost (serve -- ARGS)
  esper-tui --no-ui --eager --epochs 12 --inject-fault nan-loss@6   chaos test: watch a rollback
  esper-tui library migrate --library postgresql://db/esper   create or upgrade a shared catalog
  esper-tui --redis-url URL --library postgresql://db/esper --artifacts s3://bucket/esper --forge-workers 0
                                              an engine whose compiles run on forge workers elsewhere
  esper-tui forge-worker --redis-url URL --library postgresql://db/esper --artifacts s3://bucket/esper
  esper-tui config reference                  every config key with its default and range (markdown)
  esper-tui bus prune --older-than 48 --redis-url URL   remove what runs finished 2 days ago left on Redis
"""


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be >= 0 and finite, got {text}")
    return value


def policy_file_problem(policy: str) -> str | None:
    """A policy file that is not there when the run starts is a typo, said before anything starts (one that goes
    missing later falls back to the heuristic, as any policy error does while training)."""
    if policy in ("heuristic", "learned") or Path(policy).is_file():
        return None
    return f"policy {policy}: no such file (give heuristic, learned or a signed *.policy file)"


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="esper-tui",
        description="Esper-Lite control room: forge, library, "
        "training loop and bus in one engine, watched by a Textual dashboard.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, metavar="FILE", help="TOML config (built-in defaults otherwise)")
    p.add_argument("--state-dir", type=Path, default=Path("var"), metavar="DIR", help="state directory (default ./var)")
    p.add_argument("--redis-url", metavar="URL", help="use Redis Streams for the bus (default: in-process)")
    p.add_argument(
        "--epochs",
        type=int,
        metavar="N",
        help="stop after N training epochs, once the forge queue is empty too (default: run until stopped)",
    )
    p.add_argument(
        "--task",
        metavar="SPEC",
        help="what to train: mnist1d (default), digits, path/to/file.py:factory or package.module:factory "
        "(training.task; README: tasks)",
    )
    p.add_argument(
        "--policy",
        metavar="heuristic|learned|FILE",
        help="Tamiyo's policy: the heuristic (default), the learned one Simic published, or a signed FILE.policy "
        "(training.policy; a file not there at start exits 2, any error while training falls back to the heuristic)",
    )
    p.add_argument("--no-ui", action="store_true", help="run headless")
    p.add_argument("--json", action="store_true", help="with --no-ui: one JSON snapshot per line on stdout")
    p.add_argument(
        "--interval",
        type=float,
        metavar="S",
        help="with --no-ui: seconds between status lines (default ui.status_interval_s, 1)",
    )
    p.add_argument(
        "--forge-only",
        action="store_true",
        help="compile whatever is queued, no training; exits 0 when the queue is empty",
    )
    p.add_argument(
        "--recompile-all",
        action="store_true",
        help="compile every blueprint again (new versions), e.g. after a compiler upgrade",
    )
    p.add_argument("--eager", action="store_true", help="train seeds eagerly (compile_enabled false)")
    p.add_argument(
        "--device",
        metavar="DEV",
        help="auto, cpu, cuda or cuda:N: where training runs and the forge compiles (training.device)",
    )
    p.add_argument(
        "--inject-fault",
        action="append",
        default=[],
        metavar="KIND@EPOCH",
        help="chaos testing, repeatable: nan-loss@E, seed-explode@E or kernel-crash@E makes epoch E unstable "
        "once, so the rollback path runs (restore, prune and embargo, conservative mode, resume)",
    )
    add_library_flags(p)
    p.add_argument(
        "--forge-workers",
        type=int,
        metavar="N",
        help="compiles at once in this engine's own sandbox (tezzeret.compilation.max_concurrent_jobs); "
        "0: none, forge workers elsewhere take the jobs (needs --library, --artifacts and --redis-url)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve /metrics, /healthz and /api/v1/status on this port (Prometheus; default: nissa.port, 0 = off)",
    )
    return p


def _tool_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="esper-tui", description="operator sub-commands")
    sub = p.add_subparsers(dest="area", required=True)
    lib = sub.add_parser("library", help="the kernel library (Urza)").add_subparsers(dest="action", required=True)
    verify = lib.add_parser("verify", help="check every stored artifact; exit 1 listing failures")
    add_library_flags(verify)
    listing = lib.add_parser(
        "list", help="the kernels this machine would serve: one per blueprint and slot shape, for its device"
    )
    add_library_flags(listing)
    migrate = lib.add_parser("migrate", help="apply the shared catalog's pending schema migrations")
    migrate.add_argument("--library", required=True, metavar="URL", help="the shared catalog, postgresql://…")
    migrate.add_argument("--config", type=Path, metavar="FILE")
    wal = sub.add_parser("wal", help="the forge's write-ahead log").add_subparsers(dest="action", required=True)
    inspect = wal.add_parser("inspect", help="segments, transactions, open ones (read-only)")
    inspect.add_argument("--json", action="store_true")
    for q in (verify, listing, inspect):
        q.add_argument("--state-dir", type=Path, default=Path("var"), metavar="DIR")
        q.add_argument("--config", type=Path, metavar="FILE")
    config = sub.add_parser("config", help="the TOML configuration").add_subparsers(dest="action", required=True)
    config.add_parser("reference", help="every key's type, default, range and meaning, as markdown (docs/CONFIG.md)")
    bus = sub.add_parser("bus", help="the Redis the engines share").add_subparsers(dest="action", required=True)
    prune = bus.add_parser(
        "prune",
        help="remove the keys finished runs left on the Redis (never a live run's), saying what went",
        description="Remove the streams, heartbeat and room keys of every run that is not live and was last seen "
        "more than --older-than hours ago, and its dead letters older than that. Retention (bus.retention_hours) "
        "removes them on its own; this is for getting the space back sooner, or for keys without an expiry.",
    )
    prune.add_argument(
        "--older-than",
        type=_non_negative_float,
        default=0.0,
        metavar="H",
        help="only runs last seen more than H hours ago (default 0: every finished run)",
    )
    prune.add_argument("--redis-url", metavar="URL", help="the Redis (default: bus.redis_url of the config)")
    prune.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    prune.add_argument("--config", type=Path, metavar="FILE", help="TOML config ([bus] redis_url, stream_prefix)")
    return p


ATTACH_EPILOG = """examples (HEX: the engine's frame key, which it prints at start as "frames signed by HEX"):
  esper-tui attach --redis-url redis://box:6379/0 --engine-key HEX     the only engine there, in the dashboard
  esper-tui attach --redis-url URL --engine-key HEX --run 3f2a9c81d0aa --read-only   watch one run, never steer
  esper-tui attach --redis-url URL --engine-key HEX --no-ui --json     one JSON snapshot per line until it stops
  esper-tui attach --redis-url URL --engine-key HEX --list             run id, host, pid, uptime, state of each
  esper-tui attach --redis-url URL --state-dir DIR                     on the engine's machine: the key from DIR

keys: frames are checked against the engine's public key (--engine-key, bus.engine_key, or derived from
<state>/keys/frames.key when readable); commands are signed with the operator key (ESPER_OPERATOR_KEY,
bus.operator_key or <state>/keys/operator.key); without it the room is read-only.
"""


def _attach_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="esper-tui attach",
        description="Watch, and with the operator key steer, an engine running in another process or on another "
        "machine, over Redis alone. Attaching and detaching never disturb the engine.",
        epilog=ATTACH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--redis-url", metavar="URL", help="the engine's Redis (default: bus.redis_url of the config)")
    p.add_argument("--run", metavar="RUN_ID", help="the engine's run id (default: the only live engine)")
    p.add_argument("--list", action="store_true", help="list the engines on that Redis and prefix, then exit")
    p.add_argument("--read-only", action="store_true", help="never send commands, even with an operator key")
    p.add_argument("--no-ui", action="store_true", help="print snapshots instead of the dashboard")
    p.add_argument("--json", action="store_true", help="with --no-ui: one JSON snapshot per line; with --list: JSON")
    p.add_argument("--engine-key", metavar="HEX", help="the engine's frame public key (64 hex digits) to pin")
    p.add_argument(
        "--state-dir", type=Path, default=Path("var"), metavar="DIR", help="where key files are looked for (./var)"
    )
    p.add_argument("--config", type=Path, metavar="FILE", help="TOML config ([bus] prefix, keys; [ui])")
    p.add_argument(
        "--interval",
        type=float,
        metavar="S",
        help="with --no-ui: seconds between lines (default ui.status_interval_s, 1)",
    )
    return p


def _attach(argv: list[str]) -> int:
    parser = _attach_parser()
    args = parser.parse_args(argv)
    if args.json and not (args.no_ui or args.list):
        parser.error("--json needs --no-ui or --list")
    if (problem := redis_url_problem(args.redis_url)) is not None:
        return fail(problem, 2)
    try:
        config = with_flags(load_config(args.config), args)
    except ConfigError as exc:
        return fail(f"config error: {exc}", 2)
    from esper_tui.commands.attach import attach_main

    return attach_main(args, config)


def _recordings_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="esper-tui", description="recorded runs (<state>/runs/<run_id>.esrec)")
    sub = p.add_subparsers(dest="area", required=True)
    replay = sub.add_parser(
        "replay",
        help="the dashboard over a recording, no engine needed",
        description="Keys: space play/pause, left/right step, [ ] speed, g/G start/end. Commands are disabled.",
    )
    replay.add_argument("file", type=Path, metavar="RUN", help="a recording (.esrec), or a run id as `runs` lists it")
    replay.add_argument(
        "--state-dir", type=Path, default=Path("var"), metavar="DIR", help="where a run id is looked up (./var)"
    )
    replay.add_argument("--no-ui", action="store_true", help="print the recorded snapshots instead")
    replay.add_argument("--json", action="store_true", help="with --no-ui: one JSON snapshot per line")
    replay.add_argument("--config", type=Path, metavar="FILE", help="TOML config ([ui] refresh rate, theme)")
    runs = sub.add_parser(
        "runs", help="list the recordings: run, start, duration, epochs, task, metric, final validation and test values"
    )
    runs.add_argument("--state-dir", type=Path, default=Path("var"), metavar="DIR", help="state directory (./var)")
    runs.add_argument("--json", action="store_true", help="one JSON object per recording")
    runs.add_argument("--all", action="store_true", help="list the --forge-only runs too (they train nothing)")
    plot = sub.add_parser("plot", help="a recording's loss and metric curves as an image (.png or .svg)")
    plot.add_argument("file", type=Path, metavar="RUN", help="a recording (.esrec), or a run id as `runs` lists it")
    plot.add_argument(
        "--state-dir", type=Path, default=Path("var"), metavar="DIR", help="where a run id is looked up (./var)"
    )
    plot.add_argument("--out", type=Path, required=True, metavar="IMAGE", help="run.png or run.svg")
    compare = sub.add_parser(
        "compare",
        help="two recorded runs side by side: curves overlaid per split, decisions, final metric, params, epochs",
    )
    compare.add_argument("file", type=Path, metavar="A", help="a recording (.esrec), or a run id as `runs` lists it")
    compare.add_argument("other", type=Path, metavar="B", help="the run to set beside it, the same way")
    compare.add_argument(
        "--state-dir", type=Path, default=Path("var"), metavar="DIR", help="where run ids are looked up (./var)"
    )
    compare.add_argument("--no-ui", action="store_true", help="print the comparison instead of the screen")
    compare.add_argument("--json", action="store_true", help="with --no-ui: the comparison as one JSON object")
    compare.add_argument("--out", type=Path, metavar="IMAGE", help="draw both runs' curves to a .png or .svg")
    compare.add_argument("--config", type=Path, metavar="FILE", help="TOML config ([ui] theme)")
    return p


def _reports(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="esper-tui reports",
        description="Tamiyo's field reports (<state>/tamiyo/field_reports.jsonl): every decision with its "
        "measured outcome (the validation metric's gain, seed kept or pruned)",
    )
    p.add_argument("--state-dir", type=Path, default=Path("var"), metavar="DIR", help="state directory (./var)")
    p.add_argument("--json", action="store_true", help="one JSON object per report")
    p.add_argument("--run", metavar="RUN_ID", help="only this run's reports (its id, or the start of it)")
    args = p.parse_args(argv)
    from esper_tui.commands.reports import reports_main

    return reports_main(args.state_dir, args.json, run=args.run)


def _recordings(argv: list[str]) -> int:
    parser = _recordings_parser()
    args = parser.parse_args(argv)
    if args.area == "runs":
        from esper_tui.commands.recordings import runs_main

        return runs_main(args.state_dir, args.json, show_all=args.all)
    from esper_tui.commands.recordings import find_recording
    from esper_tui.engine.recorder import BadRecording

    try:
        args.file = find_recording(args.file, args.state_dir)
        if args.area == "compare":
            args.other = find_recording(args.other, args.state_dir)
    except BadRecording as exc:
        return fail(str(exc), 1)
    if args.area == "plot":
        from esper_tui.commands.plot import plot_main

        return plot_main(args.file, args.out)
    if args.json and not args.no_ui:
        parser.error("--json needs --no-ui")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return fail(f"config error: {exc}", 2)
    if args.area == "compare":
        from esper_tui.commands.compare import compare_main

        return compare_main(
            args.file, args.other, no_ui=args.no_ui, as_json=args.json, out=args.out, theme=config.ui.theme
        )
    from esper_tui.commands.recordings import replay_main

    return replay_main(args, config.ui)


def _serve(argv: list[str]) -> int:
    """`esper-tui serve [...] [-- ESPER ARGS]`: the ESPER ARGS are parsed here, as their own command would, so a
    mistyped flag is refused now rather than in every browser that connects."""
    from esper_tui.commands.serve import serve_main, serve_parser, served_problem, split_esper_args

    own, esper = split_esper_args(argv)
    args = serve_parser().parse_args(own)
    if (problem := served_problem(esper)) is not None:
        return fail(problem, 2)
    if esper and esper[0] == "attach":
        _attach_parser().parse_args(esper[1:])
    elif esper and esper[0] in ("replay", "compare"):
        served = _recordings_parser().parse_args(esper)
        from esper_tui.commands.recordings import find_recording
        from esper_tui.engine.recorder import BadRecording

        try:  # a recording that is not there is one line now, not a closed page in every browser
            for given in (served.file, getattr(served, "other", None)):
                if given is not None and not find_recording(given, served.state_dir).is_file():
                    return fail(f"{given}: no such recording", 1)
        except BadRecording as exc:
            return fail(str(exc), 1)
    else:
        _run_parser().parse_args(esper)
    return serve_main(args, esper)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "attach":
        return _attach(argv[1:])
    if argv and argv[0] == "reports":
        return _reports(argv[1:])
    if argv and argv[0] == "simic":
        from esper_tui.commands.simic import simic_main

        return simic_main(argv[1:])
    if argv and argv[0] in ("replay", "runs", "plot", "compare"):
        return _recordings(argv)
    if argv and argv[0] == "serve":
        return _serve(argv[1:])
    if argv and argv[0] == "blueprint":
        from esper_tui.commands.blueprints import blueprint_main

        return blueprint_main(argv[1:])
    if argv and argv[0] == "forge-worker":
        from esper_tui.commands.forge_worker import forge_worker_main

        return forge_worker_main(argv[1:])
    if argv and argv[0] in ("library", "wal", "config", "bus"):
        args = _tool_parser().parse_args(argv)
        if args.area == "config":
            print(config_reference(), end="")
            return 0
        if args.area == "bus" and (problem := redis_url_problem(args.redis_url)) is not None:
            return fail(problem, 2)
        from esper_tui.commands.tools import run_tool

        try:
            config = with_flags(load_config(args.config), args)
        except ConfigError as exc:
            return fail(f"config error: {exc}", 2)
        return run_tool(args, config)
    parser = _run_parser()
    args = parser.parse_args(argv)
    if args.json and not args.no_ui:
        parser.error("--json needs --no-ui")
    from esper_tui.engine.training.task_spec import spec_problem

    if args.task is not None and (problem := spec_problem(args.task)) is not None:
        return fail(problem, 2)  # before the config's pattern check: this line says what a spec looks like
    try:
        config = with_flags(load_config(args.config), args, {"training.compile": False} if args.eager else None)
    except ConfigError as exc:
        return fail(f"config error: {exc}", 2)
    if (
        problem := redis_url_problem(args.redis_url)
        or shared_forge_problem(config, args.redis_url)
        or policy_file_problem(config.training.policy)
    ) is not None:
        return fail(problem, 2)
    from esper_tui.engine.training.faults import FaultPlan, FaultSpecError

    try:
        faults = FaultPlan.parse(args.inject_fault)
    except FaultSpecError as exc:
        return fail(f"--inject-fault: {exc}", 2)
    if never := faults.beyond(config.training.epochs):
        epochs = config.training.epochs
        return fail(
            f"--inject-fault {never[0]}: the run stops after epoch {epochs} (--epochs), so it would never fire", 2
        )
    from esper_tui.engine.runtime import Engine, EngineError

    engine = Engine(
        config,
        args.state_dir,
        redis_url=args.redis_url,
        forge_only=args.forge_only,
        recompile_all=args.recompile_all,
        faults=faults,
    )
    try:
        if args.no_ui or args.forge_only:
            from esper_tui.ui.headless import run_headless

            return asyncio.run(
                run_headless(
                    engine, epochs=config.training.epochs, as_json=args.json, interval_s=config.ui.status_interval_s
                )
            )
        from esper_tui.ui.runner import run_ui

        return asyncio.run(run_ui(engine, config))
    except EngineError as exc:
        return fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
