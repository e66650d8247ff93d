"""/metrics, /healthz (alias /health) and /api/v1/status, served by aiohttp in the engine's own loop.

No thread: prometheus_client's `make_aiohttp_handler` renders the registry on the loop, where every value
it reads is written, so a scrape never sees a half-applied event. A port that cannot be bound is a
`PortInUse` with one line for the operator.

The port shares the engine's file descriptors, so a client must not be able to hold them: a connection that
sends no whole request within `header_timeout_s` is closed, a kept-alive one idle for `idle_timeout_s` too
(aiohttp's keep-alive timer), and at most `max_connections` stay open. Past the cap the connection quiet
longest is closed rather than the newcomer refused: a slow loris churns its own connections while a scraper,
whose request follows its connect at once, is served. (Measured: 1,142 never-finished requests under
`ulimit -n 1024` took the engine down before these limits.)
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Callable
from typing import Any, cast

import msgspec
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from prometheus_client.aiohttp import make_aiohttp_handler

from esper_tui.engine.config import NissaConfig
from esper_tui.engine.nissa.metrics import EngineFacts, NissaMetrics
from esper_tui.engine.snapshot import Snapshot
from esper_tui.engine.vocabulary import TrainingStatus


class PortInUse(RuntimeError):
    """The metrics port is taken (or not ours to bind): a usage problem, exit code 2."""


def health(snapshot: Snapshot | None, facts: EngineFacts) -> tuple[int, dict[str, Any]]:
    """Seed 000's health fields, and why the engine is unhealthy: 503 when the forge is fatal, training
    failed or the bus is down (the three things an operator must act on), else 200."""
    reasons: list[str] = []
    if facts.forge_fatal:
        reasons.append(f"forge fatal: {facts.forge_fatal}")
    elif facts.failure:
        reasons.append(f"engine failed: {facts.failure}")
    body: dict[str, Any] = {"run_id": facts.run_id}
    if snapshot is None:
        body.update(status="starting")
    else:
        h, bus = snapshot.forge.health, snapshot.bus
        if snapshot.training.status is TrainingStatus.FAILED:
            reasons.append("training failed")
        if not bus.connected:
            reasons.append(f"bus down: {bus.last_error or bus.backend}")
        body.update(
            concurrency=h.concurrency,
            max_concurrency=h.max_concurrency,
            queue_depth=h.queue_depth,
            last_wal_checkpoint_ts=h.last_checkpoint_ts,
            conservative_mode=snapshot.forge.conservative_mode,
            training=snapshot.training.status.value,
            bus_connected=bus.connected,
            alerts=[a.alertname for a in snapshot.alerts],
        )
    body.update(status="unhealthy" if reasons else body.get("status", "ok"), reasons=reasons)
    return (503 if reasons else 200), body


class Connections:
    """The open connections, least recently active first: the cap, the header deadline, and who makes room."""

    def __init__(self, limit: int, header_timeout_s: float) -> None:
        self.limit = limit
        self.header_timeout_s = header_timeout_s
        self._open: dict[asyncio.Transport, asyncio.TimerHandle | None] = {}  # -> its header deadline
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._open)

    def opened(self, transport: asyncio.Transport) -> None:
        """A new connection: the quietest ones close until it fits, and its first request is on a clock."""
        while len(self._open) >= self.limit:
            self.evicted += 1
            self._drop(next(iter(self._open))).abort()
        deadline = asyncio.get_running_loop().call_later(self.header_timeout_s, self._late, transport)
        self._open[transport] = deadline

    def active(self, transport: asyncio.Transport | None) -> None:
        """A request began or ended on `transport`: its deadline is met and it is now the last to go."""
        if transport is not None and transport in self._open:
            self._drop(transport)
            self._open[transport] = None

    def closed(self, transport: asyncio.Transport) -> None:
        if transport in self._open:
            self._drop(transport)

    def _drop(self, transport: asyncio.Transport) -> asyncio.Transport:
        deadline = self._open.pop(transport)
        if deadline is not None:
            deadline.cancel()
        return transport

    def _late(self, transport: asyncio.Transport) -> None:
        if self._open.get(transport) is not None:  # still waiting for its first whole request
            self._drop(transport).abort()


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the connection counted in `Connections` while it is open."""

    def __init__(self, inner: RequestHandler, connections: Connections) -> None:
        self._inner = inner
        self._connections = connections
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a TCP server's transports are Transports
        self._connections.opened(self._transport)
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._connections.closed(self._transport)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        self._inner.eof_received()
        return None

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class MetricsServer:
    """The three endpoints on the configured host and port; `start` binds (or raises PortInUse), `stop` closes."""

    def __init__(
        self,
        metrics: NissaMetrics,
        latest: Callable[[], Snapshot | None],
        facts: Callable[[], EngineFacts],
        config: NissaConfig,
    ) -> None:
        self._latest, self._facts = latest, facts
        self.host, self.port = config.host, config.port
        self._connections = Connections(config.max_connections, config.header_timeout_s)
        app = web.Application(middlewares=[self._activity])
        app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/health", self._health)  # seed 003's name
        app.router.add_get("/api/v1/status", self._status)
        self._runner = web.AppRunner(app, access_log=None, keepalive_timeout=config.idle_timeout_s)
        self._server: asyncio.Server | None = None

    @property
    def connections(self) -> int:
        return len(self._connections)

    @property
    def evicted(self) -> int:
        """Connections closed to make room for newer ones (a sign that something holds idle connections)."""
        return self._connections.evicted

    async def start(self) -> None:
        await self._runner.setup()
        handlers = self._runner.server
        assert handlers is not None  # set by setup()
        connections = self._connections
        try:
            self._server = await asyncio.get_running_loop().create_server(
                lambda: _Guarded(handlers(), connections),
                self.host,
                self.port,
                reuse_address=True,
                backlog=min(128, connections.limit),
            )
        except OSError as exc:
            await self._runner.cleanup()
            why = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise PortInUse(f"--metrics-port {self.port}: {why}") from None

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._runner.cleanup()

    @web.middleware
    async def _activity(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self._connections.active(request.transport)
        try:
            return await handler(request)
        finally:
            self._connections.active(request.transport)

    async def _health(self, _request: web.Request) -> web.Response:
        code, body = health(self._latest(), self._facts())
        return web.json_response(body, status=code)

    async def _status(self, _request: web.Request) -> web.Response:
        snapshot = self._latest()
        if snapshot is None:
            return web.json_response({"status": "starting"}, status=503)
        return web.Response(body=msgspec.json.encode(snapshot), content_type="application/json")
