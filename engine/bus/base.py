"""Oona, the message bus: the interface and every rule both backends share.

The semantics (at-least-once delivery, fan-out across consumer groups, competition inside one group,
redelivery, dead-lettering, idempotency, backpressure, batching, riding out server trouble) are
implemented once, on top of a handful of stream primitives modelled on Redis Streams (XADD,
XGROUP CREATE, XREADGROUP, XAUTOCLAIM, XACK, XREAD, SET PX). `RedisStreamsBus` maps the primitives
onto Redis; `EmbeddedBus` keeps the same bookkeeping in memory. Because the rules live in the bus and not
in the backends, a component tested against the embedded bus behaves the same against Redis.

`Bus` is assembled from its parts: ``core.py`` (state, the backend primitives, health), ``publishing.py``
(the telemetry outbox, command routing, backpressure), ``delivery.py`` (the consumer rules) and
``presence.py`` (heartbeat keys). Its plain data and configuration types live in ``types.py`` and its small
reusable helpers (dedupe, backoff, the backlog gauge, the outbox, batch packing, retention) in ``helpers.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Mapping

from esper_tui.engine.bus.core import Entries
from esper_tui.engine.bus.delivery import Delivering
from esper_tui.engine.bus.presence import PresenceKeys
from esper_tui.engine.bus.publishing import Publishing
from esper_tui.engine.bus.types import BusError, BusMetrics, DeadLetter
from esper_tui.engine.snapshot import BusNote

CLOSE_DRAIN_S = 5.0
"""How long close() waits for buffered telemetry to be written before it gives up on it."""


class Bus(Delivering, Publishing, PresenceKeys):
    """Oona: telemetry out of the engine, commands into it, with at-least-once delivery.

    Every consumer group receives every message; consumers within a group share the work. A message
    is acknowledged only after its handler returns; one that keeps failing is moved to the dead-letter
    stream after `config.max_deliveries` deliveries. Server trouble never escapes telemetry publishing
    or a consumer loop: it is counted (`metrics().server_errors`), logged, and retried with a capped
    backoff until the server recovers. Subclasses provide the stream primitives (core.py).
    """

    # ------------------------------------------------------------------ public API

    async def start(self, *, create_groups: bool = True) -> None:
        """Connect, create the streams with the engine's group (unless `create_groups` is False: a
        control room must not create groups on an engine's streams) and start the telemetry flusher;
        idempotent."""
        if self._closed:
            raise BusError(f"{self.name}: bus is closed")
        await self._open()
        if create_groups:
            for stream in (self.streams.telemetry, self.streams.normal, self.streams.emergency):
                await self._ensure_group(stream, self.config.group)
        self._started = True
        self._link_up()
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_forever(), name=f"oona-flusher {self.name}")

    async def close(self) -> None:
        """Write what telemetry is buffered (for CLOSE_DRAIN_S at most), then release the backend.
        Running consumers return (after their current read, at most one poll interval) rather than
        reconnect; they are let out first so no request is cut off mid-way."""
        if self._closed:
            return
        if self._started:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_DRAIN_S):
                    await self._outbox.settle()
        self._closed = True
        self._metrics.connected = False
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        self._wake_consumers()
        others = self._running - {asyncio.current_task()}
        if others:
            await asyncio.wait(others, timeout=self._poll_ms / 1000 + 1.0)
        await self._close()

    def metrics(self) -> BusMetrics:
        return dataclasses.replace(self._metrics, server_errors=dict(self._metrics.server_errors))

    def recent_dead_letters(self) -> list[BusNote]:
        """The newest dead letters this bus wrote (newest last), without asking the backend."""
        return list(self._dead_notes)

    def recent_rejections(self) -> list[BusNote]:
        """The newest commands a handler rejected (newest last): reason, time, stream."""
        return list(self._rejection_notes)

    async def backlog(self, stream: str, group: str | None = None) -> int:
        """Entries of `stream` that `group` has not acknowledged yet; without a group, the depth that
        backpressure acts on (the largest backlog among live groups). For the dashboard and tests.
        A telemetry entry may carry a batch of events."""
        self._require_started()
        loads = await self._tracked(self._loads(stream))
        if group is None:
            return self._pressure(loads)
        return next((load.backlog for load in loads if load.name == group), 0)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The most recent dead letters, oldest first: what the operator needs to see and replay."""
        entries = await self.tail(self.streams.deadletter, limit)
        return [DeadLetter.from_fields(entry_id, fields) for entry_id, fields in entries]

    # ------------------------------------------------------------------ primitives for control rooms

    async def add_entry(self, stream: str, fields: Mapping[bytes, bytes], *, maxlen: int) -> str:
        """XADD MAXLEN ~ maxlen: one entry on any stream (frames, for one); returns its id."""
        self._require_started()
        return await self._tracked(self._add(stream, fields, maxlen))

    async def read_entries(self, stream: str, after: str, *, count: int, block_ms: int | None) -> Entries:
        """Plain XREAD, no group: up to `count` entries after id `after` ("$": only entries added from
        now on), waiting up to `block_ms` for one to arrive (None or 0: do not wait; there is no
        waiting forever, a request always has a deadline)."""
        self._require_started()
        return await self._tracked(self._read_plain(stream, after, count, block_ms))

    async def tail(self, stream: str, limit: int) -> Entries:
        """The newest `limit` entries of `stream`, oldest first."""
        self._require_started()
        return await self._tracked(self._tail(stream, limit))

    async def expire_run(self, ttl_s: float) -> None:
        """Let the streams this run owns (`streams.owned`) expire in `ttl_s`, replacing the expiry they had.

        Retention: the engine renews it with every heartbeat while it runs and sets the last one (bus.retention_hours)
        when it stops, so a finished run's streams leave the Redis on their own, and a dead run's too once it stops
        renewing. Only the engine that owns the streams calls it: a control room must not keep a run alive.
        """
        self._require_started()
        await self._tracked(self._expire(self.streams.owned, ttl_s))
