"""Where the engine's memory goes: tracemalloc over a training run, in the engine and in its training process.

    python -m benchmarks.memprofile --minutes 15 --warmup-minutes 3 --config benchmarks/results/soak-training.toml \
        [--every 60] [--frames 8] [--top 10] [--json FILE] [--state-dir DIR]

Starts `esper-tui --no-ui` like benchmarks.soak, with benchmarks/memprofile_site on PYTHONPATH: its
sitecustomize starts tracemalloc in every Python process of the run that inherits the environment (the engine
and its training process; the sandboxed compile workers get a scrubbed environment and are not traced), takes a
baseline after the warm-up and keeps writing the allocation sites that grew since. At the end the engine is
stopped with SIGTERM and, per process, the growth of traced (Python) and resident memory is printed with the
sites that grew most, each named by its innermost frames inside this project (or the innermost frame when none
is). tracemalloc slows allocation-heavy code and its traces take memory of their own, so the run's RSS is not the
soak's: use benchmarks.soak for slopes, this to find their cause.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.engine_run import check_alive, headless_engine
from benchmarks.report import write_json

SITE = Path(__file__).resolve().parent / "memprofile_site"
OURS = ("esper_tui", "engine/", "benchmarks/")


def role(cmdline: str) -> str:
    """Which process of the run a command line is."""
    if "esper_tui.engine.training.process" in cmdline:
        return "training process"
    if "esper_tui.engine.forge.worker" in cmdline:
        return "compile worker"
    return "engine"


def where(frames: list[str], depth: int = 3) -> str:
    """The innermost `depth` frames that are this project's code, innermost first (else the innermost frame)."""
    ours = [f for f in reversed(frames) if any(part in f for part in OURS)]
    picked = ours[:depth] or frames[-1:]
    return " <- ".join(f.rsplit("/site-packages/", 1)[-1].rsplit("/bounded/", 1)[-1] for f in picked)


def profile(
    state_dir: Path, out: Path, minutes: float, warmup_min: float, every_s: float, frames: int, config: Path | None
) -> list[dict[str, Any]]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SITE), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "ESPER_MEMPROFILE_DIR": str(out),
        "ESPER_MEMPROFILE_WARMUP_S": str(warmup_min * 60),
        "ESPER_MEMPROFILE_EVERY_S": str(every_s),
        "ESPER_MEMPROFILE_FRAMES": str(frames),
    }
    with headless_engine(state_dir, config, env=env) as engine:
        t0 = time.monotonic()
        while time.monotonic() - t0 < minutes * 60:
            check_alive(engine)
            time.sleep(5)
    reports = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    if not reports:
        raise RuntimeError("no process wrote a profile: too short for the warm-up plus one interval?")
    return reports


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--warmup-minutes", type=float, default=3.0)
    ap.add_argument("--every", type=float, default=60.0, metavar="S", help="seconds between profiles")
    ap.add_argument("--frames", type=int, default=8, help="frames kept per allocation traceback")
    ap.add_argument("--top", type=int, default=10, help="sites printed per process")
    ap.add_argument("--state-dir", type=Path, help="state directory (default: a fresh temporary one)")
    ap.add_argument("--config", type=Path, metavar="FILE", help="the engine's TOML config (default: built-in)")
    ap.add_argument("--json", type=Path, metavar="FILE")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="esper-memprofile-") as tmp:
        out = Path(tmp) / "profiles"
        out.mkdir()
        try:
            reports = profile(
                args.state_dir or Path(tmp) / "state",
                out,
                args.minutes,
                args.warmup_minutes,
                args.every,
                args.frames,
                args.config,
            )
        except RuntimeError as exc:
            print(f"benchmarks.memprofile: {exc}", file=sys.stderr)
            return 1
    for report in reports:
        report["role"] = role(report["cmdline"])
        span = report["minutes"] - report["baseline_min"]
        print(
            f"\n{report['role']} (pid {report['pid']}), {report['baseline_min']:.1f} -> {report['minutes']:.1f} min:"
            f" traced {report['traced_baseline_mb']:.2f} -> {report['traced_mb']:.2f} MB,"
            f" RSS {report['rss_baseline_mb']:.1f} -> {report['rss_mb']:.1f} MB ({span:.1f} min)"
        )
        print(f"  {'kB grown':>10} {'blocks':>8} {'kB now':>10}  site")
        for site in report["growth"][: args.top]:
            grown, blocks, now = site["size_diff_kb"], site["count_diff"], site["size_kb"]
            print(f"  {grown:>10.1f} {blocks:>8} {now:>10.1f}  {where(site['frames'])}")
    write_json(
        args.json, {"minutes": args.minutes, "config": str(args.config) if args.config else None, "processes": reports}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
