"""The browser door's server: textual-serve, saying in one line what it serves where once it listens.

textual-serve starts one process per browser connection (`command`, through a shell) and tells that process
to quit when its page goes away or the server stops, so SIGINT or SIGTERM leaves no room running behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading

import psutil
from aiohttp import web
from textual_serve.server import Server

ROOM_EXIT_S = 20.0
"""How long a room that was told to quit may take (its engine checkpoints and stops its forge) before SIGKILL."""


async def rooms_reaped(timeout_s: float = ROOM_EXIT_S) -> None:
    """Wait until every room process has exited and asyncio has heard so, killing any still there at the deadline.

    A session ends when its room's stdout closes, which can be before the process has exited or before asyncio's
    child watcher has reported the exit. Closing the loop then leaves the watcher reporting to a closed loop and
    the process transport printing "Event loop is closed" as it is collected (or, a room outliving the server)."""
    me = psutil.Process()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while children := me.children():
        if loop.time() >= deadline:
            for child in children:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            deadline = float("inf")  # killed: reaped within moments
        await asyncio.sleep(0.05)
    # Python 3.11's watcher reaps each child in a thread of its own ("waitpid-N") that then posts the exit to the
    # loop; 3.12's pidfd watcher reaps on the loop itself and starts no thread.
    while any(thread.name.startswith("waitpid-") for thread in threading.enumerate()):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # the posted exits run, and each transport finishes


class EsperServer(Server):
    """textual-serve's Server with esper-tui's words: one line once it listens (not its banner before it
    binds, which a taken port would then contradict), and an OSError, not a traceback, when it cannot."""

    def __init__(self, command: str, host: str, port: int, *, public_url: str) -> None:
        super().__init__(command, host=host, port=port, title="esper-tui", public_url=public_url)
        self._sessions: set[asyncio.Task[object]] = set()

    async def on_startup(self, app: web.Application) -> None:
        """Nothing before listening: `listening` speaks once the socket is bound."""

    async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
        """textual-serve's session (one browser, one room process), noted so that a shutdown can end it."""
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            return await super().handle_websocket(request)
        finally:
            self._sessions.discard(task)

    async def on_shutdown(self, app: web.Application) -> None:
        """End every session at once: cancelled, textual-serve's handler tells its room to quit, waits for the
        process to exit and closes the websocket. Left alone, aiohttp would wait for each browser to hang up."""
        sessions = list(self._sessions)
        for task in sessions:
            task.cancel()
        await asyncio.gather(*sessions, return_exceptions=True)
        await rooms_reaped()

    def listening(self, *_: object) -> None:
        print(
            f"esper-tui: serving {self.public_url} (listening on {self.host}:{self.port}); each browser "
            f"connection runs: {self.command}; ctrl+c stops",
            file=sys.stderr,
            flush=True,
        )

    def serve(self, debug: bool = False) -> None:
        """As textual-serve's, on a loop of its own, announcing itself through aiohttp's after-bind `print`."""
        self.debug = debug
        self.initialize_logging()
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.add_signal_handler(signal.SIGINT, self.request_exit)
        loop.add_signal_handler(signal.SIGTERM, self.request_exit)
        web.run_app(
            self._make_app(), host=self.host, port=self.port, handle_signals=False, loop=loop, print=self.listening
        )
