"""Headless output never blocks the engine's event loop, and a reader that leaves ends it quietly."""

from __future__ import annotations

import asyncio
import os

from esper_tui.ui.output import LineWriter


async def test_a_stalled_reader_never_blocks_the_loop() -> None:
    read_end, write_end = os.pipe()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    line = "x" * 60_000  # two of these fill a pipe's 64 KiB buffer: the write blocks until read
    try:
        async with LineWriter(write_end) as out:
            clock = asyncio.create_task(ticker())
            writing = asyncio.create_task(out.line(line + line))
            await asyncio.sleep(0.5)
            assert not writing.done()  # nobody reads: the write is stuck...
            assert ticks >= 10  # ...but the loop is not
            received = b""
            while len(received) < 2 * len(line) + 1:
                received += await asyncio.to_thread(os.read, read_end, 1 << 16)
            await writing
            clock.cancel()
        assert received == (line + line + "\n").encode()
    finally:
        os.close(read_end)
        os.close(write_end)


async def test_a_reader_that_leaves_ends_the_output_quietly() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        async with LineWriter(write_end) as out:
            await out.line("first")
            await out.line("second")
            assert out.closed_by_reader
    finally:
        os.close(write_end)
