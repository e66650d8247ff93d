"""Lines to stdout without blocking the event loop.

`esper-tui --no-ui --json | jq` is a pipe: when its reader stalls (a paused terminal, a slow consumer) a
plain write blocks once the pipe's buffer is full, and with it the whole asyncio loop: the forge, the
bus and the training thread's event delivery would stop behind a print. Writing through aiofiles moves
the blocking call to a worker thread, so a stalled reader delays the output only. The reporter awaits
each line, so it never queues snapshots either: it prints the newest one when the pipe has room.
A reader that went away (`| head -1`) ends the output quietly, as it does for any Unix filter.
"""

from __future__ import annotations

import contextlib
import os
from types import TracebackType

import aiofiles
from aiofiles.threadpool.text import AsyncTextIOWrapper


class LineWriter:
    """An async line writer over a duplicate of `fd` (closing it leaves the original open)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._file: AsyncTextIOWrapper | None = None
        self.closed_by_reader = False

    async def __aenter__(self) -> LineWriter:
        self._file = await aiofiles.open(os.dup(self._fd), "w", encoding="utf-8", closefd=True)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._file is not None:
            with contextlib.suppress(BrokenPipeError):
                await self._file.close()
            self._file = None

    async def line(self, text: str) -> None:
        assert self._file is not None, "use LineWriter as an async context manager"
        if self.closed_by_reader:
            return
        try:
            await self._file.write(text + "\n")
            await self._file.flush()
        except BrokenPipeError:
            self.closed_by_reader = True
