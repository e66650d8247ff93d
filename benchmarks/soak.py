"""Soak: does the engine's memory stay flat over a long default run?

    python -m benchmarks.soak --minutes 30 --json soak.json [--state-dir DIR] [--warmup-minutes 2] [--config FILE]

Starts `esper-tui --no-ui` on the built-in defaults (no --epochs: the run trains, stops early on its own and the
engine stays up), or on `--config FILE` (e.g. training.early_stop_epochs at its maximum, so that training itself
runs for the whole soak), in a subprocess, samples the resident memory of the engine and its children every
`--every` seconds, and reports RSS after warm-up, at the end, the drift between them (issue 7's bound: within 5 %)
and the slope in MB per minute. The engine is stopped with SIGTERM at the end, as an operator would.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from benchmarks.report import write_json

BOUND = 0.05


def rss_mb(proc: psutil.Process) -> float:
    """The engine's resident memory plus its children's (the compile workers and the training process), in MB."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def soak(
    state_dir: Path, minutes: float, every_s: float, warmup_min: float, config: Path | None = None
) -> dict[str, object]:
    """Run the engine for `minutes` and sample its RSS; the drift is measured from the first post-warm-up sample."""
    command = [sys.executable, "-m", "esper_tui", "--no-ui", "--interval", "30", "--state-dir", str(state_dir)]
    engine = subprocess.Popen(
        [*command, *(["--config", str(config)] if config else [])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    proc = psutil.Process(engine.pid)
    samples: list[tuple[float, float]] = []
    t0 = time.monotonic()
    try:
        while (elapsed := time.monotonic() - t0) < minutes * 60:
            if engine.poll() is not None:
                raise RuntimeError(f"the engine exited early with {engine.returncode}")
            samples.append((elapsed / 60, rss_mb(proc)))
            print(f"{elapsed / 60:6.1f} min  {samples[-1][1]:8.1f} MB", flush=True)
            time.sleep(every_s)
    finally:
        engine.send_signal(signal.SIGTERM)
        try:
            engine.wait(60)
        except subprocess.TimeoutExpired:
            engine.kill()
    after = [mb for minute, mb in samples if minute >= warmup_min]
    if len(after) < 2:
        raise RuntimeError("too short: no samples after warm-up")
    start, end = after[0], after[-1]
    span = samples[-1][0] - warmup_min
    return {
        "minutes": minutes,
        "config": str(config) if config else None,
        "warmup_minutes": warmup_min,
        "rss_after_warmup_mb": round(start, 1),
        "rss_end_mb": round(end, 1),
        "rss_max_mb": round(max(after), 1),
        "drift": round((end - start) / start, 4),
        "mb_per_minute": round((end - start) / span, 3) if span > 0 else 0.0,
        "within_bound": abs(end - start) / start <= BOUND,
        "samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--warmup-minutes", type=float, default=2.0)
    ap.add_argument("--every", type=float, default=30.0, metavar="S", help="seconds between samples")
    ap.add_argument("--state-dir", type=Path, help="state directory (default: a fresh temporary one)")
    ap.add_argument("--config", type=Path, metavar="FILE", help="the engine's TOML config (default: built-in)")
    ap.add_argument("--json", type=Path, metavar="FILE")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="esper-soak-") as tmp:
        try:
            result = soak(args.state_dir or Path(tmp), args.minutes, args.every, args.warmup_minutes, args.config)
        except RuntimeError as exc:
            print(f"benchmarks.soak: {exc}", file=sys.stderr)
            return 1
    print()
    print(f"{'figure':<22} value")
    for key in ("minutes", "rss_after_warmup_mb", "rss_end_mb", "rss_max_mb", "drift", "mb_per_minute"):
        print(f"{key:<22} {result[key]}")
    verdict = "ok" if result["within_bound"] else "MISSED"
    print(f"{'within 5 %':<22} {verdict}")
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
