"""/metrics, /healthz (alias /health) and /api/v1/status, served by aiohttp in the engine's own loop.

No thread: prometheus_client's `make_aiohttp_handler` renders the registry on the loop, where every value
it reads is written, so a scrape never sees a half-applied event. A port that cannot be bound is a
`PortInUse` with one line for the operator.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

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


class MetricsServer:
    """The three endpoints on host:port; `start` binds (or raises PortInUse), `stop` closes."""

    def __init__(
        self,
        metrics: NissaMetrics,
        latest: Callable[[], Snapshot | None],
        facts: Callable[[], EngineFacts],
        host: str,
        port: int,
    ) -> None:
        self._latest, self._facts = latest, facts
        self.host, self.port = host, port
        app = web.Application()
        app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/health", self._health)  # seed 003's name
        app.router.add_get("/api/v1/status", self._status)
        self._runner = web.AppRunner(app, access_log=None)

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            why = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise PortInUse(f"--metrics-port {self.port}: {why}") from None

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _health(self, _request: web.Request) -> web.Response:
        code, body = health(self._latest(), self._facts())
        return web.json_response(body, status=code)

    async def _status(self, _request: web.Request) -> web.Response:
        snapshot = self._latest()
        if snapshot is None:
            return web.json_response({"status": "starting"}, status=503)
        return web.Response(body=msgspec.json.encode(snapshot), content_type="application/json")
