"""`esper-tui --no-ui`: the same engine, reporting on stdout (JSON lines or a status line)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

from esper_tui.engine.runtime import Engine
from esper_tui.ui.output import LineWriter
from esper_tui.ui.status_line import report_line


async def _report(engine: Engine, out: LineWriter, as_json: bool, interval_s: float, done: asyncio.Event) -> None:
    """A line per new snapshot every `interval_s`, until `done`: never cancelled mid-line. A status line the
    same as the one before is not printed again (a finished run printed about 19 identical ones)."""
    last, said = -1, ""
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), interval_s)
        snap = engine.latest()
        if snap is not None and snap.seq != last and not done.is_set():
            last = snap.seq
            line = report_line(snap, as_json)
            if line != said:
                said = line
                await out.line(line)


async def run_headless(engine: Engine, *, epochs: int | None, as_json: bool, interval_s: float) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, engine.request_stop, f"signal {signal.Signals(sig).name}")
    async with LineWriter(sys.stdout.fileno()) as out:
        done = asyncio.Event()
        reporter: asyncio.Task[None] | None = None
        try:
            await engine.start()
            print(f"esper-tui: {engine.identity_line()}", file=sys.stderr, flush=True)
            reporter = asyncio.create_task(_report(engine, out, as_json, interval_s, done))
            await engine.run_until_done(epochs)
        finally:
            done.set()
            if reporter is not None:
                await asyncio.gather(reporter, return_exceptions=True)
            await engine.stop()
        final = engine.latest()
        if final is not None:
            await out.line(report_line(final, as_json))
    if engine.failure:
        print(f"esper-tui: {engine.failure}", file=sys.stderr)
        return engine.failure_code
    return 0
