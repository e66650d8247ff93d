"""Soak: does the engine's memory stay flat over a long run, process by process?

    python -m benchmarks.soak --minutes 60 --json soak.json [--state-dir DIR] [--warmup-minutes 2] [--config FILE]
                              [--every S] [--redis-url URL]

Starts `esper-tui --no-ui` on the built-in defaults (no --epochs: the run trains, stops early on its own and the
engine stays up), or on `--config FILE` (e.g. training.early_stop_epochs at its maximum, so that training itself
runs for the whole soak), in a subprocess, and samples the resident memory of every process of the run every
`--every` seconds, by role: the engine, its training process, its compile workers (together). It reports RSS after
warm-up, at the end, the drift of the total between them (issue 7's bound: within 5 %), and per role the slope
after warm-up (a least-squares fit, MB per minute) extrapolated to 24 hours (issue 19's goal: under 50 MB a day for
the engine and for the training process), and the largest total sampled while no compile worker was alive (issue
18's idle footprint: at most 700 MB once the forge queue is empty and the workers have left). The engine is stopped
with SIGTERM at the end, as an operator would.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import psutil

from benchmarks.engine_run import check_alive, headless_engine
from benchmarks.report import write_json

BOUND = 0.05
IDLE_GOAL_MB = 700.0
"""Issue 18: the engine and its children once the forge queue is empty (compile workers leave when idle)."""
DAY_GOAL_MB = 50.0
"""Issue 19: growth a day allowed to the engine and to the training process, each."""
ROLES = ("engine", "training process", "compile workers")
GOAL_ROLES = ("engine", "training process")


def role(proc: psutil.Process, engine_pid: int) -> str | None:
    """Which part of the run a process is (None: a helper of those, e.g. a compiler a worker runs, counted with it)."""
    if proc.pid == engine_pid:
        return "engine"
    try:
        cmdline = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    if "esper_tui.engine.training.process" in cmdline:
        return "training process"
    if "esper_tui.engine.forge.worker" in cmdline:
        return "compile workers"
    return None


def rss_by_role(proc: psutil.Process) -> dict[str, float]:
    """Resident memory in MB of the engine, its training process and its compile workers (with their children)."""
    totals = dict.fromkeys(ROLES, 0.0)
    try:
        family = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return totals
    for p in family:
        r = role(p, proc.pid)
        if r is None:  # a child of a worker (g++): its worker's share
            r = "compile workers"
        try:
            totals[r] += p.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            continue
    return totals


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minute, MB) points, MB per minute (0 for fewer than two)."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0


def soak(
    state_dir: Path,
    minutes: float,
    every_s: float,
    warmup_min: float,
    config: Path | None = None,
    redis_url: str | None = None,
) -> dict[str, object]:
    """Run the engine for `minutes` and sample RSS per role; drift and slopes are measured after the warm-up."""
    samples: list[tuple[float, dict[str, float]]] = []
    with headless_engine(state_dir, config, *(["--redis-url", redis_url] if redis_url else [])) as engine:
        proc = psutil.Process(engine.pid)
        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < minutes * 60:
            check_alive(engine)
            by_role = rss_by_role(proc)
            samples.append((elapsed / 60, by_role))
            parts = "  ".join(f"{r} {mb:8.1f}" for r, mb in by_role.items())
            print(f"{elapsed / 60:6.1f} min  {sum(by_role.values()):8.1f} MB  ({parts})", flush=True)
            time.sleep(every_s)
    after = [(minute, by_role) for minute, by_role in samples if minute >= warmup_min]
    if len(after) < 2:
        raise RuntimeError("too short: no samples after warm-up")
    totals = [sum(by_role.values()) for _, by_role in after]
    start, end = totals[0], totals[-1]
    span = after[-1][0] - after[0][0]
    processes = {}
    for r in ROLES:
        points = [(minute, by_role[r]) for minute, by_role in after]
        per_min = slope(points)
        processes[r] = {
            "rss_after_warmup_mb": round(points[0][1], 1),
            "rss_end_mb": round(points[-1][1], 1),
            "mb_per_minute": round(per_min, 4),
            "mb_per_day": round(per_min * 1440, 1),
            "within_goal": per_min * 1440 < DAY_GOAL_MB if r in GOAL_ROLES else None,
        }
    idle = [by_role for _, by_role in samples if by_role["engine"] and not by_role["compile workers"]]
    idle_max = max(idle, key=lambda by_role: sum(by_role.values()), default=None)
    return {
        "minutes": minutes,
        "config": str(config) if config else None,
        "redis": bool(redis_url),
        "warmup_minutes": warmup_min,
        "measured_minutes": round(span, 2),
        "rss_after_warmup_mb": round(start, 1),
        "rss_end_mb": round(end, 1),
        "rss_max_mb": round(max(totals), 1),
        "drift": round((end - start) / start, 4),
        "mb_per_minute": round(slope([(minute, t) for (minute, _), t in zip(after, totals, strict=True)]), 4),
        "within_bound": abs(end - start) / start <= BOUND,
        "processes": processes,
        # the largest total among samples with no compile worker alive: the footprint once the queue is empty
        "idle_samples": len(idle),
        "idle_rss_max_mb": None if idle_max is None else round(sum(idle_max.values()), 1),
        "idle_rss_by_role_mb": None if idle_max is None else {r: round(mb, 1) for r, mb in idle_max.items()},
        "samples": [[minute, by_role] for minute, by_role in samples],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--warmup-minutes", type=float, default=2.0)
    ap.add_argument("--every", type=float, default=30.0, metavar="S", help="seconds between samples")
    ap.add_argument("--state-dir", type=Path, help="state directory (default: a fresh temporary one)")
    ap.add_argument("--config", type=Path, metavar="FILE", help="the engine's TOML config (default: built-in)")
    ap.add_argument("--redis-url", metavar="URL", help="run the engine on this Redis (default: the in-process bus)")
    ap.add_argument("--json", type=Path, metavar="FILE")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="esper-soak-") as tmp:
        try:
            result = soak(
                args.state_dir or Path(tmp), args.minutes, args.every, args.warmup_minutes, args.config, args.redis_url
            )
        except RuntimeError as exc:
            print(f"benchmarks.soak: {exc}", file=sys.stderr)
            return 1
    print()
    print(f"{'figure':<22} value")
    for key in ("minutes", "measured_minutes", "rss_after_warmup_mb", "rss_end_mb", "rss_max_mb", "drift"):
        print(f"{key:<22} {result[key]}")
    print(f"{'within 5 %':<22} {'ok' if result['within_bound'] else 'MISSED'}")
    idle_mb = result["idle_rss_max_mb"]
    if idle_mb is None:
        print(f"{'no worker alive':<22} never sampled (goal <= {IDLE_GOAL_MB:g} MB)")
    else:
        ok = "ok" if float(idle_mb) <= IDLE_GOAL_MB else "MISSED"  # type: ignore[arg-type]
        print(f"{'no worker alive, max':<22} {idle_mb} MB {result['idle_rss_by_role_mb']}  <= {IDLE_GOAL_MB:g} {ok}")
    print()
    header = f"{'process':<18} {'after warm-up MB':>16} {'end MB':>9} {'MB/min':>9} {'MB/24 h':>9}"
    print(f"{header}  goal < {DAY_GOAL_MB:g} MB/day")
    processes = result["processes"]
    assert isinstance(processes, dict)
    for r, p in processes.items():
        goal = "-" if p["within_goal"] is None else ("ok" if p["within_goal"] else "MISSED")
        print(
            f"{r:<18} {p['rss_after_warmup_mb']:>16.1f} {p['rss_end_mb']:>9.1f} {p['mb_per_minute']:>9.4f}"
            f" {p['mb_per_day']:>9.1f}  {goal}"
        )
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
