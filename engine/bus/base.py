"""Oona, the message bus: the interface and every rule both backends share.

The semantics (at-least-once delivery, fan-out across consumer groups, competition inside one group,
redelivery, dead-lettering, idempotency, backpressure) are implemented once here, on top of a handful
of stream primitives modelled on Redis Streams (XADD, XGROUP CREATE, XREADGROUP, XAUTOCLAIM, XACK).
`RedisStreamsBus` maps the primitives onto Redis; `EmbeddedBus` keeps the same bookkeeping in memory.
Because the rules live here and not in the backends, a component tested against the embedded bus
behaves the same against Redis.

Its plain data and configuration types live in ``types.py`` and its small reusable helpers (dedupe,
backoff, the backlog gauge) in ``helpers.py``; both are imported here, so ``base`` still offers every
name it did.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec

from esper_tui.engine.bus.helpers import Backoff, RecentIds, Verdict, _DepthGauge
from esper_tui.engine.bus.types import (
    PAYLOAD,
    BusBackpressure,
    BusError,
    BusMetrics,
    BusOptions,
    BusUnavailable,
    DeadLetter,
    GroupMissing,
    StreamNames,
)
from esper_tui.engine.codec import SchemaMismatch, decode_command, decode_event, encode_msgpack
from esper_tui.engine.config import BusConfig
from esper_tui.engine.contracts import AnyCommand, AnyEvent, SetConservativeMode, Shutdown

log = logging.getLogger(__name__)

START = "0-0"
"""Cursor that starts an XAUTOCLAIM scan, and the cursor a finished scan returns."""

EMERGENCY_COMMANDS = (Shutdown, SetConservativeMode)
"""Commands that must overtake a backlog: they always travel on the emergency stream."""

DECODE_ERRORS = (msgspec.DecodeError, SchemaMismatch)
"""What a malformed or foreign entry raises: such entries are dead-lettered, never retried."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One stream entry handed to a consumer, as the backends report it."""

    stream: str
    entry_id: str
    data: bytes | None  # the payload field; None when the entry was trimmed away while pending
    deliveries: int  # how many times it has been delivered, this time included


@dataclass(frozen=True, slots=True)
class GroupLoad:
    """One consumer group's share of a stream, as backpressure sees it."""

    name: str
    backlog: int  # entries not yet acknowledged: undelivered + pending
    idle_s: float  # since its most recently active consumer read or claimed; inf if none ever did


M = TypeVar("M")


@dataclass(slots=True)
class _Subscription(Generic[M]):
    """What one running consumer needs: its streams in priority order, identity, codec and handler."""

    streams: tuple[str, ...]
    group: str
    consumer: str
    decode: Callable[[bytes], M]
    key: Callable[[M], str]
    handler: Callable[[M], Awaitable[None]]
    seen: RecentIds = field(repr=False)


def _event_key(event: AnyEvent) -> str:
    return event.event_id


def _command_key(command: AnyCommand) -> str:
    return command.command_id


class Bus(abc.ABC):
    """Oona: telemetry out of the engine, commands into it, with at-least-once delivery.

    Every consumer group receives every message; consumers within a group share the work. A message
    is acknowledged only after its handler returns; one that keeps failing is moved to the dead-letter
    stream after `config.max_deliveries` deliveries. Subclasses provide the stream primitives below.
    """

    name: str
    DEFAULT_DEPTH_REFRESH_S = 0.0

    def __init__(self, config: BusConfig, options: BusOptions | None = None) -> None:
        self.config = config
        self.options = options or BusOptions()
        self.streams = StreamNames.for_prefix(config.stream_prefix)
        self._metrics = BusMetrics()
        self._started = False
        self._closed = False
        self._seen: dict[tuple[tuple[str, ...], str], RecentIds] = {}
        self._gauges: dict[str, _DepthGauge] = {}
        self._running: set[asyncio.Task[Any]] = set()
        self._publish_backoff = Backoff()
        refresh = self.options.depth_refresh_s
        self._depth_refresh_s = self.DEFAULT_DEPTH_REFRESH_S if refresh is None else refresh
        claim_ms = max(1, self.options.claim_idle_ms)
        # Wake up often enough to reclaim idle entries on time, but never spin.
        self._poll_ms = min(1000, max(10, claim_ms // 2))
        self._claim_every_s = max(0.01, claim_ms / 2000)

    # ------------------------------------------------------------------ public API

    async def start(self) -> None:
        """Connect and create the streams with the engine's group; idempotent."""
        if self._closed:
            raise BusError(f"{self.name}: bus is closed")
        await self._open()
        for stream in (self.streams.telemetry, self.streams.normal, self.streams.emergency):
            await self._ensure_group(stream, self.config.group)
        self._started = True
        self._link_up()

    async def close(self) -> None:
        """Release the backend. Running consumers return (after their current read, at most one poll
        interval) rather than reconnect; they are let out first so no request is cut off mid-way."""
        if self._closed:
            return
        self._closed = True
        self._metrics.connected = False
        self._wake_consumers()
        others = self._running - {asyncio.current_task()}
        if others:
            await asyncio.wait(others, timeout=self._poll_ms / 1000 + 1.0)
        await self._close()

    async def publish_event(self, event: AnyEvent) -> None:
        """Send telemetry. Best effort by design: when the backlog is above `drop_threshold` or the
        backend is unreachable the event is dropped and counted, so the engine never stalls on it."""
        self._require_started()
        if not self._publish_backoff.ready():
            self._metrics.dropped += 1
            return
        stream = self.streams.telemetry
        try:
            if await self._depth(stream, self.config.drop_threshold) > self.config.drop_threshold:
                self._metrics.dropped += 1
                return
            await self._append(stream, encode_msgpack(event))
        except BusUnavailable as exc:
            self._link_down(exc)
            self._metrics.dropped += 1

    async def publish_command(self, command: AnyCommand) -> None:
        """Send a command; never dropped. Shutdown and SetConservativeMode take the emergency stream,
        others too when the normal stream is backed up. Raises BusBackpressure if even that stream is
        above `drop_threshold`, BusUnavailable if the backend cannot be reached."""
        self._require_started()
        data = encode_msgpack(command)
        cfg = self.config
        urgent = isinstance(command, EMERGENCY_COMMANDS)
        stream = self.streams.emergency if urgent else self.streams.normal
        rerouted = False
        try:
            if not urgent and await self._depth(stream, cfg.emergency_threshold) > cfg.emergency_threshold:
                stream, rerouted = self.streams.emergency, True
            depth = await self._depth(stream, cfg.drop_threshold)
            if depth > cfg.drop_threshold:
                raise BusBackpressure(
                    f"{self.name}: {stream} has {depth} unhandled entries (drop_threshold "
                    f"{cfg.drop_threshold}); {type(command).__name__} was not sent"
                )
            await self._append(stream, data)
        except BusUnavailable as exc:
            self._link_down(exc)
            raise
        if rerouted:
            self._metrics.rerouted += 1

    async def consume_events(self, group: str, consumer: str, handler: Callable[[AnyEvent], Awaitable[None]]) -> None:
        """Feed telemetry to `handler` until cancelled (or the bus is closed)."""
        await self._consume((self.streams.telemetry,), group, consumer, decode_event, _event_key, handler)

    async def consume_commands(
        self, group: str, consumer: str, handler: Callable[[AnyCommand], Awaitable[None]]
    ) -> None:
        """Feed commands to `handler` until cancelled; emergency entries are handled before normal."""
        streams = (self.streams.emergency, self.streams.normal)
        await self._consume(streams, group, consumer, decode_command, _command_key, handler)

    def metrics(self) -> BusMetrics:
        return dataclasses.replace(self._metrics)

    async def backlog(self, stream: str, group: str | None = None) -> int:
        """Entries of `stream` that `group` has not acknowledged yet; without a group, the depth that
        backpressure acts on (the largest backlog among live groups). For the dashboard and tests."""
        self._require_started()
        loads = await self._loads(stream)
        if group is None:
            return self._pressure(loads)
        return next((load.backlog for load in loads if load.name == group), 0)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The most recent dead letters, oldest first: what the operator needs to see and replay."""
        self._require_started()
        entries = await self._tail(self.streams.deadletter, limit)
        return [DeadLetter.from_fields(entry_id, fields) for entry_id, fields in entries]

    # ------------------------------------------------------------------ backend primitives

    @abc.abstractmethod
    async def _open(self) -> None:
        """Connect (raise BusUnavailable if the backend does not answer)."""

    @abc.abstractmethod
    async def _close(self) -> None: ...

    @abc.abstractmethod
    def _wake_consumers(self) -> None:
        """Interrupt blocked reads, where the backend can, so consumers notice the bus closing."""

    @abc.abstractmethod
    async def _add(self, stream: str, fields: Mapping[bytes, bytes]) -> None:
        """XADD with MAXLEN ~ config.maxlen."""

    @abc.abstractmethod
    async def _ensure_group(self, stream: str, group: str) -> None:
        """XGROUP CREATE stream group 0 MKSTREAM, ignoring BUSYGROUP.

        A new group starts at the oldest retained entry, so nothing published before its first
        consumer attached (or while Redis was restarting) is lost to it.
        """

    @abc.abstractmethod
    async def _read(
        self, starts: Mapping[str, str], group: str, consumer: str, count: int, block_ms: int | None
    ) -> list[Delivery]:
        """XREADGROUP: start ">" reads new entries, an id reads this consumer's pending entries after
        it. Results follow the order of `starts`. Raises GroupMissing on NOGROUP."""

    @abc.abstractmethod
    async def _claim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, cursor: str, count: int
    ) -> tuple[str, list[Delivery]]:
        """XAUTOCLAIM: take over entries idle longer than `min_idle_ms`; returns the next cursor
        (START when the scan is complete). Entries trimmed away are dropped from the pending list."""

    @abc.abstractmethod
    async def _ack(self, stream: str, group: str, entry_id: str) -> None: ...

    @abc.abstractmethod
    async def _loads(self, stream: str) -> list[GroupLoad]:
        """Backlog and idleness of every group of `stream` (none if the stream does not exist)."""

    @abc.abstractmethod
    async def _tail(self, stream: str, limit: int) -> list[tuple[str, dict[bytes, bytes]]]:
        """The last `limit` entries of a stream, oldest first."""

    # ------------------------------------------------------------------ publishing

    def _require_started(self) -> None:
        if not self._started or self._closed:
            state = "closed" if self._closed else "not started (call start() first)"
            raise BusError(f"{self.name}: bus is {state}")

    async def _append(self, stream: str, data: bytes) -> None:
        await self._add(stream, {PAYLOAD: data})
        self._metrics.published += 1
        self._gauge(stream).added += 1
        self._link_up()

    def _gauge(self, stream: str) -> _DepthGauge:
        return self._gauges.setdefault(stream, _DepthGauge())

    def _pressure(self, loads: Sequence[GroupLoad]) -> int:
        """The backlog publishers must respect: the largest among live groups.

        Unhandled entries, not the stream length (entries stay in a stream after they are
        acknowledged, until trimmed). Only live groups count: a group nobody reads (the configured
        one, created by start) or a control room that attached once and went away must not throttle
        the engine; memory stays bounded by maxlen regardless.
        """
        window = self.options.live_window_s
        return max((load.backlog for load in loads if load.idle_s < window), default=0)

    async def _depth(self, stream: str, limit: int) -> int:
        """The backpressure depth of `stream`, checked against `limit`, cheaply.

        The last reading plus what this bus added since is trusted while fresh and under the limit;
        a decision to reroute, drop or refuse is always made on a fresh reading.
        """
        gauge = self._gauge(stream)
        estimate = gauge.value + gauge.added
        age = time.monotonic() - gauge.read_at
        if age < self._depth_refresh_s and (estimate <= limit or gauge.added == 0):
            return estimate
        gauge.value = self._pressure(await self._loads(stream))
        gauge.added = 0
        gauge.read_at = time.monotonic()
        return gauge.value

    def _link_up(self) -> None:
        if not self._metrics.connected and not self._closed:
            if self._started:
                log.info("%s: connected", self.name)
            self._metrics.connected = True
        self._publish_backoff.succeeded()

    def _link_down(self, exc: BaseException) -> None:
        if self._metrics.connected:
            log.warning("%s: connection lost: %s", self.name, exc)
        self._metrics.connected = False
        if self._publish_backoff.ready():
            self._publish_backoff.failed()

    # ------------------------------------------------------------------ consuming

    async def _consume(
        self,
        streams: tuple[str, ...],
        group: str,
        consumer: str,
        decode: Callable[[bytes], M],
        key: Callable[[M], str],
        handler: Callable[[M], Awaitable[None]],
    ) -> None:
        """Run one consumer, registered so that close() can let it finish its current read."""
        self._require_started()
        seen = self._seen.setdefault((streams, group), RecentIds(self.options.dedupe_window))
        sub = _Subscription(streams, group, consumer, decode, key, handler, seen)
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            await self._consume_until_closed(sub)
        finally:
            if task is not None:
                self._running.discard(task)

    async def _consume_until_closed(self, sub: _Subscription[M]) -> None:
        """The consumer loop: replay own pending entries, then read new ones, reclaiming idle ones
        periodically. Recovers from a lost group (recreate) and a lost connection (capped backoff)."""
        streams, group, consumer = sub.streams, sub.group, sub.consumer
        backoff = Backoff()
        recovering = True
        next_claim = 0.0
        while not self._closed:
            try:
                if recovering:
                    for stream in streams:
                        await self._ensure_group(stream, group)
                    for stream in streams:
                        await self._replay_pending(sub, stream)
                    recovering = False
                if time.monotonic() >= next_claim:
                    for stream in streams:
                        await self._reclaim(sub, stream)
                    next_claim = time.monotonic() + self._claim_every_s
                starts = dict.fromkeys(streams, ">")
                batch = await self._read(starts, group, consumer, self.options.batch_size, self._poll_ms)
                self._link_up()
                backoff.succeeded()
                await self._process(sub, batch)
            except GroupMissing as exc:
                log.warning("%s: %s; recreating group %r", self.name, exc, group)
                recovering = True
            except BusUnavailable as exc:
                if self._closed:
                    return
                self._link_down(exc)
                await asyncio.sleep(backoff.failed())
                recovering = True

    async def _replay_pending(self, sub: _Subscription[M], stream: str) -> None:
        """Read this consumer's own pending entries (id 0): what it received before a crash or
        cancellation but never acknowledged."""
        start = "0"
        while True:
            batch = await self._read({stream: start}, sub.group, sub.consumer, self.options.batch_size, None)
            if not batch:
                return
            await self._process(sub, batch)
            start = batch[-1].entry_id

    async def _reclaim(self, sub: _Subscription[M], stream: str) -> None:
        """Take over entries idle longer than claim_idle_ms: from dead consumers, and this
        consumer's own failed ones, which is how a failed handler gets its retry."""
        cursor = START
        while True:
            cursor, batch = await self._claim(
                stream, sub.group, sub.consumer, self.options.claim_idle_ms, cursor, self.options.batch_size
            )
            await self._process(sub, batch)
            if cursor == START:
                return

    async def _process(self, sub: _Subscription[M], batch: Sequence[Delivery]) -> None:
        for delivery in batch:
            await self._process_one(sub, delivery)

    async def _process_one(self, sub: _Subscription[M], d: Delivery) -> None:
        """Decide the fate of one entry: dead-letter, skip as duplicate, or handle then acknowledge."""
        metrics = self._metrics
        if d.deliveries > 1:
            metrics.redelivered += 1
        if d.data is None:  # trimmed while pending: nothing left to handle
            await self._ack(d.stream, sub.group, d.entry_id)
            return
        try:
            message = sub.decode(d.data)
        except DECODE_ERRORS as exc:
            metrics.decode_errors += 1
            await self._dead_letter(sub, d, f"decode error: {exc}")
            return
        message_key = sub.key(message)
        verdict = sub.seen.begin(message_key)
        if verdict is Verdict.DUPLICATE:
            await self._ack(d.stream, sub.group, d.entry_id)
            metrics.duplicates_skipped += 1
            return
        if verdict is Verdict.BUSY:
            return
        if d.deliveries > self.config.max_deliveries:
            sub.seen.abandon(message_key)
            await self._dead_letter(sub, d, f"delivered {d.deliveries} times without success")
            return
        metrics.delivered += 1
        try:
            await sub.handler(message)
        except Exception as exc:
            sub.seen.abandon(message_key)
            metrics.handler_errors += 1
            log.warning(
                "%s: handler of group %r failed on %s %s (delivery %d of %d)",
                self.name,
                sub.group,
                d.stream,
                d.entry_id,
                d.deliveries,
                self.config.max_deliveries,
                exc_info=True,
            )
            if d.deliveries >= self.config.max_deliveries:
                await self._dead_letter(sub, d, f"handler failed {d.deliveries} times: {exc!r}")
            return
        except BaseException:  # cancelled mid-handler: leave the entry pending for a later retry
            sub.seen.abandon(message_key)
            raise
        sub.seen.finish(message_key)
        await self._ack(d.stream, sub.group, d.entry_id)
        metrics.acked += 1

    async def _dead_letter(self, sub: _Subscription[M], d: Delivery, reason: str) -> None:
        """Copy the entry to the dead-letter stream, then acknowledge it (in that order, so a crash
        in between repeats the copy rather than losing the entry)."""
        fields = {
            PAYLOAD: d.data or b"",
            b"stream": d.stream.encode(),
            b"id": d.entry_id.encode(),
            b"group": sub.group.encode(),
            b"consumer": sub.consumer.encode(),
            b"reason": reason.encode("utf-8", "replace"),
            b"deliveries": str(d.deliveries).encode(),
        }
        await self._add(self.streams.deadletter, fields)
        await self._ack(d.stream, sub.group, d.entry_id)
        self._metrics.dead_lettered += 1
        log.warning("%s: dead-lettered %s %s (group %r): %s", self.name, d.stream, d.entry_id, sub.group, reason)
