"""`esper-tui --no-ui`: the same engine, reporting on stdout (JSON lines or a status line)."""

from __future__ import annotations

import asyncio
import signal
import sys

from esper_tui.engine.codec import encode_json
from esper_tui.engine.runtime import Engine
from esper_tui.engine.snapshot import Snapshot
from esper_tui.status_line import status_line


def _print(snapshot: Snapshot, as_json: bool) -> None:
    sys.stdout.write((encode_json(snapshot).decode() if as_json else status_line(snapshot)) + "\n")
    sys.stdout.flush()


async def _report(engine: Engine, as_json: bool, interval_s: float) -> None:
    last = -1
    while True:
        await asyncio.sleep(interval_s)
        snap = engine.latest()
        if snap is not None and snap.seq != last:
            last = snap.seq
            _print(snap, as_json)


async def run_headless(engine: Engine, *, epochs: int | None, as_json: bool, interval_s: float) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, engine.request_stop, f"signal {signal.Signals(sig).name}")
    try:
        await engine.start()
        print(f"esper-tui: {engine.identity_line()}", file=sys.stderr, flush=True)
        reporter = asyncio.create_task(_report(engine, as_json, interval_s))
        await engine.run_until_done(epochs)
        reporter.cancel()
    finally:
        await engine.stop()
    final = engine.latest()
    if final is not None:
        _print(final, as_json)
    if engine.failure:
        print(f"esper-tui: {engine.failure}", file=sys.stderr)
        return 1
    return 0
