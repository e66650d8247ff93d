"""`esper-tui` with the dashboard: the engine and the Textual app share one asyncio loop."""

from __future__ import annotations

import asyncio
import signal
import sys

from esper_tui.engine.config import EsperConfig
from esper_tui.engine.runtime import Engine


async def run_ui(engine: Engine, config: EsperConfig) -> int:
    from esper_tui.app import EsperApp

    await engine.start()
    app = EsperApp(engine, refresh_hz=config.ui.refresh_hz, theme=config.ui.theme)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, engine.request_stop, "signal SIGTERM")
    ui = asyncio.create_task(app.run_async())
    stopped = asyncio.create_task(engine.stopped.wait())
    try:
        await asyncio.wait({ui, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not ui.done():
            app.exit()
            await ui
        engine.request_stop("dashboard closed")
    finally:
        stopped.cancel()
        await engine.stop()
    if engine.failure:
        print(f"esper-tui: {engine.failure}", file=sys.stderr)
        return 1
    return 0
