"""The metrics port under abuse, over real sockets: connections that never finish their headers are closed
at the header deadline, idle keep-alive connections at the idle deadline, and beyond the connection cap
the connection quiet longest makes room for a newcomer, so a slow loris
can hold neither the port nor the engine's file descriptors. Waits only guard against hangs."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from esper_tui.engine.config import NissaConfig
from esper_tui.engine.nissa import AlertEvaluator, EngineFacts, MetricsServer, NissaMetrics
from esper_tui.engine.snapshot import Snapshot
from tests.waits import eventually

PARTIAL = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"  # the request line and one header: never finished
WHOLE = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def server() -> AsyncIterator[MetricsServer]:
    """A metrics server with short deadlines and a cap of 4, as the engine builds it from [nissa]."""
    config = NissaConfig(port=free_port(), max_connections=4, header_timeout_s=0.5, idle_timeout_s=1.0)
    metrics = NissaMetrics(AlertEvaluator(config), Snapshot, lambda: EngineFacts(run_id="r1"))
    srv = MetricsServer(metrics, Snapshot, lambda: EngineFacts(run_id="r1"), config)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


async def connect(srv: MetricsServer, send: bytes = b"") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    if send:
        writer.write(send)
        await writer.drain()
    return reader, writer


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (a hang fails the test at the deadline)."""
    async with asyncio.timeout(30):
        return await reader.read()


async def response(reader: asyncio.StreamReader) -> bytes:
    """One whole response's head (its body read and dropped), leaving the connection ready for the next."""
    async with asyncio.timeout(30):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.startswith(b"Content-Length"))
        await reader.readexactly(length)
    return head


async def healthz(srv: MetricsServer) -> bytes:
    reader, writer = await connect(srv, WHOLE)
    try:
        return await response(reader)
    finally:
        writer.close()


async def test_headers_never_finished_are_cut_at_the_header_deadline(server: MetricsServer) -> None:
    reader, writer = await connect(server, PARTIAL)
    assert await closed_by_server(reader) == b""  # no response, just closed
    writer.close()
    reader, writer = await connect(server)  # a connection that sends nothing at all
    assert await closed_by_server(reader) == b""
    writer.close()


async def test_an_idle_keep_alive_connection_is_cut_at_the_idle_deadline(server: MetricsServer) -> None:
    reader, writer = await connect(server, WHOLE)
    assert (await response(reader)).startswith(b"HTTP/1.1 200")
    assert await closed_by_server(reader) == b""  # closed once the connection sat idle
    writer.close()


async def test_a_slow_loris_past_the_cap_cannot_keep_the_port_from_serving(server: MetricsServer) -> None:
    loris = [await connect(server, PARTIAL) for _ in range(20)]  # five times the cap, never finished
    await eventually(lambda: server.evicted >= 16, "every loris past the cap accepted")
    assert server.connections <= 4
    assert (await healthz(server)).startswith(b"HTTP/1.1 200")  # the oldest silent one made room
    for _, writer in loris:
        writer.close()


async def test_past_the_cap_the_connection_quiet_longest_goes_first(server: MetricsServer) -> None:
    """A scraper that keeps its connection and uses it outlives loris connections opened after it."""
    scraper = await connect(server, WHOLE)
    await response(scraper[0])
    loris = [await connect(server, PARTIAL) for _ in range(3)]
    await eventually(lambda: server.connections == 4, "the cap full: the scraper and 3 loris accepted")
    scraper[1].write(WHOLE)  # the scraper speaks again: now the loris are the quiet ones
    await response(scraper[0])
    newcomer = await connect(server, WHOLE)
    assert (await response(newcomer[0])).startswith(b"HTTP/1.1 200")
    assert await closed_by_server(loris[0][0]) == b""  # the oldest loris made room, not the scraper
    assert server.evicted == 1
    scraper[1].write(WHOLE)
    assert (await response(scraper[0])).startswith(b"HTTP/1.1 200")
    for _, writer in (scraper, newcomer, *loris):
        writer.close()
