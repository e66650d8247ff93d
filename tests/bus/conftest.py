"""Fixtures for the Oona bus tests.

Redis tests talk to a real redis-server through tests/conftest.py's `redis_url` (they fail, never skip,
when none answers). Every test gets its own stream prefix and its keys are deleted afterwards. Tests
that disturb a server start their own (`private_redis`, benchmarks.bus.RedisServer).
Waits are bounded (asyncio.wait_for) and poll briefly; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio as aioredis

from benchmarks.bus import RedisServer
from esper_tui.engine.bus import Bus, BusOptions, EmbeddedBus, RedisStreamsBus
from esper_tui.engine.config import BusConfig

WAIT_S = 10.0

BusFactory = Callable[..., Awaitable[Bus]]


@pytest.fixture
def prefix() -> str:
    """A stream prefix no other test (or run) shares."""
    return f"test-oona-{uuid.uuid4().hex}"


async def _delete_keys(url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}.*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def redis_client(redis_url: str, prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A second, raw client: to inspect streams (XPENDING, XRANGE) and to break things on purpose."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()
        await _delete_keys(redis_url, prefix)


# ----------------------------------------------------------------------------- bus factories


@contextlib.asynccontextmanager
async def _factory(default_url: str | None, prefix: str, *, cleanup: bool = True) -> AsyncIterator[BusFactory]:
    """make(options=None, url=None, run_id="", start=True, **bus_config): a bus on this test's prefix
    (started unless start=False); all are closed (and their Redis keys deleted, with `cleanup`) at the end."""
    buses: list[Bus] = []

    async def make(
        options: BusOptions | None = None, url: str | None = None, run_id: str = "", start: bool = True, **config: Any
    ) -> Bus:
        cfg = BusConfig(stream_prefix=prefix, **config)
        target = url or default_url
        bus: Bus = (
            RedisStreamsBus(cfg, target, options, run_id=run_id) if target else EmbeddedBus(cfg, options, run_id=run_id)
        )
        if start:
            await bus.start()
        buses.append(bus)
        return bus

    try:
        yield make
    finally:
        for bus in buses:
            await bus.close()
        if default_url and cleanup:
            await _delete_keys(default_url, prefix)


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def bus_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        request.getfixturevalue("redis_url")  # fail here, before any bus is made
    return request.param


@pytest.fixture
async def make_bus(bus_kind: str, prefix: str, request: pytest.FixtureRequest) -> AsyncIterator[BusFactory]:
    """Factory for the contract tests: the same test runs over the embedded bus and over Redis."""
    url = request.getfixturevalue("redis_url") if bus_kind == "redis" else None
    async with _factory(url, prefix) as make:
        yield make


@pytest.fixture
async def make_redis_bus(redis_url: str, prefix: str) -> AsyncIterator[BusFactory]:
    async with _factory(redis_url, prefix) as make:
        yield make


@pytest.fixture
async def make_embedded_bus(prefix: str) -> AsyncIterator[BusFactory]:
    async with _factory(None, prefix) as make:
        yield make


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, on a free port, for tests that fill its memory, make it a
    replica, pause, break or kill it: the shared server is never disturbed. Discarded afterwards."""
    workdir = tmp_path / "redis"
    workdir.mkdir()
    with RedisServer(workdir=workdir) as server:
        yield server


@pytest.fixture
async def make_private_bus(private_redis: RedisServer, prefix: str) -> AsyncIterator[BusFactory]:
    """Buses on `private_redis`; its keys are not cleaned up (the server is discarded, maybe broken)."""
    async with _factory(private_redis.url, prefix, cleanup=False) as make:
        yield make


# ----------------------------------------------------------------------------- helpers


def message_id(message: Any) -> str:
    return getattr(message, "event_id", None) or message.command_id


class Inbox:
    """A handler that records what it saw, can fail or stall on purpose, and lets a test await a state.

    fail_times: the first N attempts of each message raise (math.inf: every attempt).
    gate: when given, each call waits for it after recording the attempt (a slow or stuck handler).
    """

    def __init__(self, fail_times: float = 0, gate: asyncio.Event | None = None) -> None:
        self.fail_times = fail_times
        self.gate = gate
        self.attempts: list[Any] = []
        self.items: list[Any] = []
        self._tries: Counter[str] = Counter()
        self._changed = asyncio.Condition()

    async def __call__(self, message: Any) -> None:
        self.attempts.append(message)
        self._tries[message_id(message)] += 1
        await self._notify()
        if self._tries[message_id(message)] <= self.fail_times:
            raise RuntimeError("handler failed on purpose")
        if self.gate is not None:
            await self.gate.wait()
        self.items.append(message)
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def until(self, predicate: Callable[[], bool], timeout: float = WAIT_S) -> None:
        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)

        await asyncio.wait_for(wait(), timeout)


@pytest.fixture
def inbox() -> type[Inbox]:
    return Inbox


async def _publish_apart(bus: Bus, events: Any) -> None:
    for event in events:
        await bus.publish_event(event)
        await bus.flush()


@pytest.fixture
def publish_apart() -> Callable[[Bus, Any], Awaitable[None]]:
    """publish_apart(bus, events): telemetry one entry per event (flushing after each), for tests that
    count entries: competition inside a group, backlogs, trimming. Left alone, the flusher batches
    neighbours into one entry."""
    return _publish_apart


async def _eventually(check: Callable[[], Any], timeout: float = WAIT_S, interval: float = 0.01) -> Any:
    """Poll `check` (sync or async) until it returns something truthy; bounded by `timeout`."""

    async def poll() -> Any:
        while True:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
            await asyncio.sleep(interval)

    return await asyncio.wait_for(poll(), timeout)


@pytest.fixture
def eventually() -> Callable[..., Awaitable[Any]]:
    return _eventually


@contextlib.asynccontextmanager
async def _consuming(consumer: Coroutine[Any, Any, None]) -> AsyncIterator[asyncio.Task[None]]:
    """Run a consume_* coroutine as a task; at exit cancel it and check it ended by cancellation
    (a consumer that died with an error re-raises it here and fails the test)."""
    task = asyncio.create_task(consumer)
    try:
        yield task
    finally:
        if task.done():
            task.result()  # re-raise a crash
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, WAIT_S)
        assert task.cancelled(), "consumer swallowed its cancellation"


@pytest.fixture
def consuming() -> Callable[[Coroutine[Any, Any, None]], contextlib.AbstractAsyncContextManager[Any]]:
    return _consuming


# ----------------------------------------------------------------------------- connection loss


class CuttableProxy:
    """A TCP proxy in front of Redis that a test can cut and restore: connection loss without
    restarting the shared server."""

    def __init__(self, upstream_url: str) -> None:
        self._upstream = urlsplit(upstream_url)
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    @property
    def url(self) -> str:
        netloc = f"127.0.0.1:{self.port}"
        return urlunsplit((self._upstream.scheme, netloc, self._upstream.path, self._upstream.query, ""))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self._upstream.hostname, self._upstream.port or 6379)
        except OSError:
            writer.close()
            return
        self._writers += [writer, up_writer]
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def redis_proxy(redis_url: str) -> AsyncIterator[CuttableProxy]:
    proxy = CuttableProxy(redis_url)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.cut()
