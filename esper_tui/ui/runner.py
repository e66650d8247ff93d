"""`esper-tui` with the dashboard: the engine and the Textual app share one asyncio loop.

`attach` runs the same app over a RemoteLink instead of an engine: nothing to start or stop but the app.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import TYPE_CHECKING

from esper_tui.engine.config import EsperConfig
from esper_tui.links.base import EngineLink

if TYPE_CHECKING:  # an attached control room must not pay for importing the engine (torch)
    from esper_tui.engine.runtime import Engine
    from esper_tui.ui.app import EsperApp


def _app(link: EngineLink, config: EsperConfig, **title: str) -> EsperApp:
    """The dashboard with the configured refresh rate and theme (Textual is imported only when needed)."""
    from esper_tui.ui.app import EsperApp

    return EsperApp(link, refresh_hz=config.ui.refresh_hz, theme=config.ui.theme, settle_heap=True, **title)


async def run_ui(engine: Engine, config: EsperConfig) -> int:
    await engine.start()
    app = _app(engine, config)
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
        return engine.failure_code
    return 0


async def run_remote_ui(link: EngineLink, config: EsperConfig, run_id: str) -> int:
    """The dashboard over a link to an engine elsewhere; it stays open after the engine stops (showing so)
    until the operator quits. Quitting never touches the engine."""
    app = _app(link, config, title=f"Esper control room · attached to {run_id}")
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, app.exit)
    try:
        await app.run_async()
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    return 0
