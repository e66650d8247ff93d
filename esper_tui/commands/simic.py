"""`esper-tui simic train|status`: train Tamiyo's policy headless (resumable), and say where Simic stands."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import msgspec

from esper_tui.commands.fail import fail
from esper_tui.engine.config import ConfigError, EsperConfig, load_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="esper-tui simic", description="Simic: Tamiyo's learned policy")
    sub = p.add_subparsers(dest="action", required=True)
    train = sub.add_parser("train", help="run episodes, train the policy, gate it and publish it if it passes")
    train.add_argument("--episodes", type=int, metavar="N", help="training episodes (default simic.episodes)")
    train.add_argument("--quick", action="store_true", help="short episodes and a small gate (about 10 minutes)")
    train.add_argument("--task", default="mnist1d", help="the task episodes train (mnist1d only, for now)")
    status = sub.add_parser("status", help="episodes, learning curve, policy versions and the last verdict")
    status.add_argument("--json", action="store_true", help="the status as one JSON object")
    for q in (train, status):
        q.add_argument("--state-dir", type=Path, default=Path("var"), metavar="DIR", help="state directory (./var)")
        q.add_argument("--config", type=Path, metavar="FILE", help="TOML config (simic.*, library.*, bus.*)")
    return p


def simic_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return fail(f"config error: {exc}", 2)
    if args.action == "train":
        return _train(args, config)
    return _status(args.state_dir, config, args.json)


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = width * done // max(1, total)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _train(args: argparse.Namespace, config: EsperConfig) -> int:
    if args.task != "mnist1d":
        return fail(f"--task {args.task}: Simic's episodes train mnist1d only for now", 2)
    if args.episodes is not None and not 1 <= args.episodes <= 100_000:
        return fail("--episodes: expected 1 to 100000", 2)
    from esper_tui.engine.library.policy_file import PolicyInvalid
    from esper_tui.engine.library.signing import SigningKeyError, load_or_create_key
    from esper_tui.engine.simic.status import Progress, SimicError
    from esper_tui.engine.simic.trainer import Plan, Simic, process_pool

    try:
        args.state_dir.mkdir(parents=True, exist_ok=True)
        key = load_or_create_key(args.state_dir, config.library.signing_key)
    except (OSError, SigningKeyError) as exc:
        return fail(f"signing key: {exc}", 2)
    plan = Plan.from_config(config, episodes=args.episodes, quick=args.quick)
    started = time.monotonic()
    tty = sys.stderr.isatty()

    def show(p: Progress) -> None:
        ret = f"return {p.returns[-1]:+.2f}" if p.returns else ""
        loss = f"loss {p.losses[-1]:.3f}" if p.losses else ""
        line = (
            f"{_bar(p.episodes_done, p.episodes_total)} {p.episodes_done}/{p.episodes_total} episodes  {ret}  {loss}  "
        )
        line += f"{time.monotonic() - started:.0f} s"
        print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)

    print(
        f"simic: {plan.episodes} episodes of {plan.epochs} epochs (mnist1d, eager seeds), {plan.workers} worker "
        f"process(es); state {args.state_dir / 'simic'}",
        file=sys.stderr,
    )
    pool, close = process_pool(plan.workers)
    try:
        progress = Simic(config, args.state_dir, key, plan, on_round=show).train(pool)
    except (SimicError, PolicyInvalid) as exc:
        return fail(str(exc), 1)
    except KeyboardInterrupt:
        print("\nsimic: interrupted; `simic train` again resumes from the last round", file=sys.stderr)
        return 130
    finally:
        close()
    if tty:
        print(file=sys.stderr)
    v = progress.verdict
    if v is not None:
        word = "passed: published" if v.published else "failed: not published" if not v.passed else "passed"
        print(f"candidate {v.candidate} {word} (against {v.current})")
        for reason in v.reasons:
            print(f"  {reason}")
    return 0


def _status(state_dir: Path, config: EsperConfig, as_json: bool) -> int:
    from esper_tui.engine.library.policies import open_policies
    from esper_tui.engine.library.policy_file import PolicyInvalid
    from esper_tui.engine.library.signing import SigningKeyError, load_key
    from esper_tui.engine.simic.status import SimicError, read_status

    try:
        progress = read_status(state_dir)
    except SimicError as exc:
        return fail(str(exc), 1)
    versions: list[str] = []
    published = "none"
    try:
        policies = open_policies(config.library, state_dir, load_key(state_dir, config.library.signing_key))
        versions = policies.versions()
        pointer = policies.published()
        published = pointer.version if pointer is not None else "none"
    except (SigningKeyError, PolicyInvalid, OSError) as exc:
        published = f"unreadable ({exc})"
    if as_json:
        out = {"progress": msgspec.to_builtins(progress), "versions": versions, "published": published}
        print(msgspec.json.encode(out).decode())
        return 0
    if progress is None:
        print(f"simic: never trained in {state_dir} (esper-tui simic train)")
    else:
        mean = sum(progress.returns[-5:]) / max(1, len(progress.returns[-5:]))
        print(
            f"episodes {progress.episodes_done}/{progress.episodes_total} · {progress.wall_s:.0f} s · "
            f"return (last 5) {mean:+.2f} · loss {progress.losses[-1] if progress.losses else float('nan'):.3f}"
        )
        if progress.verdict is not None:
            v = progress.verdict
            print(f"last verdict: {v.candidate} {'passed' if v.passed else 'failed'} against {v.current}")
            for reason in v.reasons:
                print(f"  {reason}")
    print(f"policies: {', '.join(versions) or 'none'} · published: {published}")
    return 0
