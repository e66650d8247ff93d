"""Throughput with the dashboard open: the whole engine's host-only epochs against a bare PyTorch loop, in one run.

    python -m benchmarks.dashboard [--task mnist1d|digits] [--pairs 7] [--epochs 40] [--warmup 20] [--headless]
                                   [--json FILE]

What runs: the engine itself (`esper_tui.engine.runtime.Engine`, as `esper-tui` starts it: bus, forge and its
idle workers, recorder, broadcaster, alerts, and the training process with its signed checkpoints), training
the host alone (growth off: `plateau_epochs` at its maximum; eager; no forge scan, so nothing compiles), with
the real dashboard open on it. `EsperApp.run_test()` is the real Textual app with its real refresh loop: it
polls the engine's snapshots at `ui.refresh_hz` and redraws every panel whose slice changed, exactly as on a
terminal, except that Textual's headless driver writes the composed frames to no terminal (a terminal's own
cost is not counted). `snapshots_drawn` says how many snapshots the dashboard drew while the engine was timed.

Pairing: after `--warmup` epochs, `--pairs` times: `--epochs` engine epochs with the dashboard drawing (timed from
one EpochCompleted's time stamp to that of the one `--epochs` later, both taken in the training process as it
emits them, so neither a start, a pause nor the pipe's latency is counted); then training pauses and the bare
loop (benchmarks.growth.bare_host_epochs: the same host, data, optimizer, threads and per-epoch work) runs as
many epochs on the event loop's thread, which holds the dashboard and the engine's tasks still meanwhile.
Each pair gives bare/engine; the median is `bare_loop_ratio_dashboard` (issue 7's target: >= 0.95).
`--headless` times the same engine with no dashboard (`bare_loop_ratio_engine`): the dashboard's own share is
the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.growth import bare_host_epochs, paired_ratio
from benchmarks.report import write_json
from benchmarks.workload import TASKS, Workload
from esper_tui.engine.config import EsperConfig, load_config
from esper_tui.engine.contracts import AnyEvent, EpochCompleted, TrainingPaused
from esper_tui.engine.runtime import Engine
from esper_tui.ui.app import EsperApp

CONFIG = """\
[tezzeret.polling]
initial_full_scan = false  # nothing to compile: the forge stays idle
[training]
compile = false
plateau_epochs = 10000     # its maximum: Tamiyo never germinates, the host trains alone
early_stop_epochs = 100000 # and never stops on its own while timed
"""
KEY = "bare_loop_ratio_dashboard"
SIZE = (160, 50)
"""The terminal the dashboard is drawn for (the size its layout is designed for, every panel shown)."""


class TimedEngine(Engine):
    """The engine, noting when each epoch ends and when training has paused (its own events say so)."""

    def __init__(self, config: EsperConfig, state_dir: Path) -> None:
        super().__init__(config, state_dir)
        self.epoch_ends: list[float] = []  # each EpochCompleted's own time stamp, taken in the training process
        self.paused = threading.Event()

    def emit(self, event: AnyEvent) -> None:
        if isinstance(event, EpochCompleted):
            self.epoch_ends.append(event.ts)
        elif isinstance(event, TrainingPaused):
            (self.paused.set if event.paused else self.paused.clear)()
        super().emit(event)


async def _until(condition: Any, what: str, timeout_s: float = 300.0) -> None:
    """Poll `condition()` without holding the loop (the dashboard keeps drawing); a clear error on timeout."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _engine_epochs(engine: TimedEngine, app: EsperApp | None, epochs: int) -> tuple[float, int]:
    """Resume training and time `epochs` epochs with the dashboard drawing; (ms per epoch, snapshots drawn)."""
    start = len(engine.epoch_ends)
    engine.control.resume()
    drawn: set[int] = set()

    def done() -> bool:
        if app is not None and app.snapshot is not None:
            drawn.add(app.snapshot.seq)
        return len(engine.epoch_ends) > start + epochs

    await _until(done, f"{epochs} epochs")
    engine.control.pause()
    await _until(engine.paused.is_set, "training to pause")
    ends = engine.epoch_ends
    return (ends[start + epochs] - ends[start]) * 1000 / epochs, len(drawn)


async def measure(
    state_dir: Path, pairs: int, epochs: int, warmup: int, *, headless: bool = False, task: str = "mnist1d"
) -> dict[str, Any]:
    """Start the engine on `task` with the dashboard open (not with `headless`), alternate timed engine epochs and
    bare epochs, stop it."""
    (state_dir / "dashboard.toml").write_text(CONFIG + f'task = "{task}"\n')
    config = load_config(state_dir / "dashboard.toml")
    engine = TimedEngine(config, state_dir)
    workload = Workload.named(task, config.training, state_dir / "data")
    app = None if headless else EsperApp(engine, refresh_hz=config.ui.refresh_hz, theme=config.ui.theme)
    timed: list[tuple[float, float]] = []
    drawn = 0
    await engine.start()
    try:
        async with app.run_test(size=SIZE) if app is not None else contextlib.nullcontext():
            await _until(lambda: len(engine.epoch_ends) >= warmup, f"{warmup} warm-up epochs")
            engine.control.pause()
            await _until(engine.paused.is_set, "training to pause")
            for r in range(pairs):
                engine_ms, seen = await _engine_epochs(engine, app, epochs)
                drawn += seen
                timed.append((engine_ms, bare_host_epochs(workload, epochs, seed=r)))
                print(f"  pair {r + 1}: engine {engine_ms:.2f} ms/epoch, bare {timed[-1][1]:.2f}", flush=True)
    finally:
        engine.control.resume()
        engine.request_stop("benchmark done")
        await engine.stop()
    return {
        **paired_ratio(timed),
        "task": task,
        "dashboard": not headless,
        "epochs_per_pair": epochs,
        "warmup_epochs": warmup,
        "snapshots_drawn": drawn,
        "refresh_hz": config.ui.refresh_hz,
        "checkpoint_every_epochs": config.training.checkpoint_every_epochs,
        "checkpoint_min_interval_s": config.training.checkpoint_min_interval_s,
        "per_pair": [{"engine_epoch_ms": e, "bare_epoch_ms": b} for e, b in timed],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=7, help="engine/bare pairs (the median pair is reported)")
    ap.add_argument("--epochs", type=int, default=40, help="epochs timed per side of a pair")
    ap.add_argument("--warmup", type=int, default=20, help="engine epochs before the first pair (not timed)")
    ap.add_argument("--headless", action="store_true", help="the same engine without the dashboard")
    ap.add_argument("--task", choices=TASKS, default="mnist1d", help="the built-in task the host trains")
    ap.add_argument("--json", type=Path, metavar="FILE")
    args = ap.parse_args(argv)
    if min(args.pairs, args.epochs, args.warmup) < 1:
        print("benchmarks.dashboard: --pairs, --epochs and --warmup must be at least 1", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="esper-dashboard-") as tmp:
        try:
            result = asyncio.run(
                measure(Path(tmp), args.pairs, args.epochs, args.warmup, headless=args.headless, task=args.task)
            )
        except RuntimeError as exc:
            print(f"benchmarks.dashboard: {exc}", file=sys.stderr)
            return 1
    ratio = result["bare_loop_ratio"]
    name, engine = ("bare_loop_ratio_engine", "headless") if args.headless else (KEY, "with the dashboard open")
    print(
        f"\n{name} {ratio:.3f} (median of {result['pairs']} pairs, range "
        f"{result['ratio_min']:.3f}-{result['ratio_max']:.3f}; engine {engine} "
        f"{result['engine_epoch_ms']:.2f} ms/epoch, bare {result['bare_epoch_ms']:.2f} ms/epoch, host only; "
        f"{result['snapshots_drawn']} snapshots drawn at {result['refresh_hz']:g} Hz; task {args.task})"
    )
    print(f"target >= 0.95: {'ok' if ratio >= 0.95 else 'MISSED'}")
    write_json(args.json, {name: ratio, "measurement": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
