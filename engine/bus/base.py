"""Oona, the message bus: the interface and every rule both backends share.

The semantics (at-least-once delivery, fan-out across consumer groups, competition inside one group,
redelivery, dead-lettering, idempotency, backpressure, batching, riding out server trouble) are
implemented once here, on top of a handful of stream primitives modelled on Redis Streams (XADD,
XGROUP CREATE, XREADGROUP, XAUTOCLAIM, XACK, XREAD, SET PX). `RedisStreamsBus` maps the primitives
onto Redis; `EmbeddedBus` keeps the same bookkeeping in memory. Because the rules live here and not in
the backends, a component tested against the embedded bus behaves the same against Redis.

Telemetry is batched: `publish_event` puts the encoded event in a bounded outbox and a flusher task
writes whatever has gathered as one entry (a msgpack array of encoded events under the BATCH field; a
lone event keeps the one-message PAYLOAD form). Consumers unpack a batch and treat each event as if it had
come in an entry of its own: handled in order, deduplicated by event id, dead-lettered on its own; the
entry is acknowledged once all its events are done. Commands stay one per entry: each is signed,
verified and dead-lettered by itself.

Its plain data and configuration types live in ``types.py`` and its small reusable helpers (dedupe,
backoff, the backlog gauge, the outbox, batch packing, retention) in ``helpers.py``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec

from esper_tui.engine.bus.auth import CommandRejected
from esper_tui.engine.bus.helpers import (
    Backoff,
    Outbox,
    RecentIds,
    Retention,
    Verdict,
    _DepthGauge,
    pack_batch,
    unpack_batch,
)
from esper_tui.engine.bus.types import (
    BATCH,
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
from esper_tui.engine.snapshot import BusNote

log = logging.getLogger(__name__)

START = "0-0"
"""Cursor that starts an XAUTOCLAIM scan, and the cursor a finished scan returns."""

EMERGENCY_COMMANDS = (Shutdown, SetConservativeMode)
"""Commands that must overtake a backlog: they always travel on the emergency stream."""

DECODE_ERRORS = (msgspec.DecodeError, SchemaMismatch)
"""What a malformed or foreign entry raises: such entries are dead-lettered, never retried."""

NOTES_KEPT = 50
"""Newest dead letters and rejections kept in memory for the dashboard."""

LOG_REPEAT_S = 60.0
"""How often one and the same backend error is logged again while it lasts (it is counted every time)."""

CLOSE_DRAIN_S = 5.0
"""How long close() waits for buffered telemetry to be written before it gives up on it."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One stream entry handed to a consumer, as the backends report it."""

    stream: str
    entry_id: str
    data: bytes | None  # the payload; None when the entry was trimmed away while pending
    deliveries: int  # how many times it has been delivered, this time included
    batched: bool = False  # `data` is a BATCH field (many messages), not a PAYLOAD one

    @classmethod
    def of(cls, stream: str, entry_id: str, fields: Mapping[bytes, bytes] | None, deliveries: int) -> Delivery:
        """From an entry's fields (None: trimmed away). An entry with neither field has empty data,
        which does not decode and is dead-lettered."""
        if fields is None:
            return cls(stream, entry_id, None, deliveries)
        batch = fields.get(BATCH)
        if batch is not None:
            return cls(stream, entry_id, batch, deliveries, batched=True)
        return cls(stream, entry_id, fields.get(PAYLOAD, b""), deliveries)


@dataclass(frozen=True, slots=True)
class GroupLoad:
    """One consumer group's share of a stream, as backpressure sees it."""

    name: str
    backlog: int  # entries not yet acknowledged: undelivered + pending
    idle_s: float  # since its most recently active consumer read or claimed; inf if none ever did


Entries = list[tuple[str, dict[bytes, bytes]]]
"""Stream entries as the plain-read primitives return them: (id, fields), oldest first."""

M = TypeVar("M")
T = TypeVar("T")


@dataclass(slots=True)
class _Subscription(Generic[M]):
    """What one running consumer needs: its streams in priority order, identity, codec and handler."""

    streams: tuple[str, ...]
    group: str
    consumer: str
    decode: Callable[[bytes], M]
    key: Callable[[M], str] | None  # None: dedupe by place in the stream, never by what the message claims
    handler: Callable[[M], Awaitable[None]]
    seen: RecentIds = field(repr=False)
    batches: bool  # whether batch entries are accepted (telemetry) or dead-lettered (commands)


def _position(d: Delivery, index: int) -> str:
    """The key of a message by its place in a batch entry (stream, entry id, index): unique and unforgeable."""
    return f"{d.stream} {d.entry_id} {index}"


def _event_key(event: AnyEvent) -> str:
    return event.event_id


class Bus(abc.ABC):
    """Oona: telemetry out of the engine, commands into it, with at-least-once delivery.

    Every consumer group receives every message; consumers within a group share the work. A message
    is acknowledged only after its handler returns; one that keeps failing is moved to the dead-letter
    stream after `config.max_deliveries` deliveries. Server trouble never escapes telemetry publishing
    or a consumer loop: it is counted (`metrics().server_errors`), logged, and retried with a capped
    backoff until the server recovers. Subclasses provide the stream primitives below.
    """

    name: str
    DEFAULT_DEPTH_REFRESH_S = 0.0

    def __init__(self, config: BusConfig, options: BusOptions | None = None, *, run_id: str = "") -> None:
        self.config = config
        self.options = options or BusOptions()
        self.run_id = run_id
        self.streams = StreamNames.for_prefix(config.stream_prefix, run_id)
        self._metrics = BusMetrics()
        self._started = False
        self._closed = False
        self._seen: dict[tuple[tuple[str, ...], str], RecentIds] = {}
        self._gauges: dict[str, _DepthGauge] = {}
        self._running: set[asyncio.Task[Any]] = set()
        self._publish_backoff = Backoff()
        self._outbox = Outbox(self.options.publish_buffer)
        self._retention = Retention(config.maxlen)
        self._flusher: asyncio.Task[None] | None = None
        self._dead_notes: deque[BusNote] = deque(maxlen=NOTES_KEPT)
        self._rejection_notes: deque[BusNote] = deque(maxlen=NOTES_KEPT)
        self._logged: dict[str, float] = {}  # error line -> when it was last logged (monotonic)
        refresh = self.options.depth_refresh_s
        self._depth_refresh_s = self.DEFAULT_DEPTH_REFRESH_S if refresh is None else refresh
        claim_ms = max(1, self.options.claim_idle_ms)
        # Wake up often enough to reclaim idle entries on time, but never spin.
        self._poll_ms = min(1000, max(10, claim_ms // 2))
        self._claim_every_s = max(0.01, claim_ms / 2000)

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

    async def publish_event(self, event: AnyEvent) -> None:
        """Send telemetry. Best effort by design, and it never raises for backend trouble: when the
        backlog is above `drop_threshold`, the outbox is full, or the backend is unreachable or
        refusing writes, the event is dropped and counted, so the engine never stalls on it.

        The event is written by the flusher, batched with its neighbours; `flush()` waits for that.
        """
        self._require_started()
        metrics = self._metrics
        if not self._publish_backoff.ready() or self._outbox.full:
            metrics.dropped += 1
            return
        data = encode_msgpack(event)
        limit, per_entry = self.config.drop_threshold, self._retention.mean_size
        depth = self._depth_estimate(self.streams.telemetry, limit, per_entry)
        if depth is None:  # a fresh reading is due
            try:
                depth = await self._depth(self.streams.telemetry, limit, per_entry)
            except BusError as exc:
                self._trouble(exc, publishing=True)
                metrics.dropped += 1
                return
        if depth > limit:
            metrics.dropped += 1
            return
        self._outbox.put(data)
        if len(self._outbox) >= self.options.batch_events:
            await asyncio.sleep(0)  # a full batch is waiting: let the flusher take it

    async def flush(self) -> None:
        """Wait until every event published so far has been written to the backend or dropped."""
        self._require_started()
        await self._outbox.settle()

    async def publish_command(self, command: AnyCommand) -> None:
        """Send a command; never dropped. It goes to the engine named by `command.target` (this bus's
        own streams when empty). Shutdown and SetConservativeMode take the emergency stream, others
        too when the normal stream is backed up. Raises BusBackpressure if even that stream is above
        `drop_threshold`, BusUnavailable if the backend cannot be reached, BusServerError if the server
        refused; each with one line naming the command, the stream and the reason."""
        self._require_started()
        data = encode_msgpack(command)
        cfg = self.config
        streams = self._streams_of(command.target)
        urgent = isinstance(command, EMERGENCY_COMMANDS)
        stream = streams.emergency if urgent else streams.normal
        rerouted = False
        try:
            if not urgent and await self._depth(stream, cfg.emergency_threshold) > cfg.emergency_threshold:
                stream, rerouted = streams.emergency, True
            depth = await self._depth(stream, cfg.drop_threshold)
            if depth > cfg.drop_threshold:
                raise BusBackpressure(
                    f"{self.name}: {stream} has {depth} unhandled entries (drop_threshold "
                    f"{cfg.drop_threshold}); {type(command).__name__} was not sent"
                )
            await self._add(stream, {PAYLOAD: data}, cfg.maxlen)
        except BusBackpressure:
            raise
        except BusError as exc:
            self._trouble(exc, publishing=False)
            raise exc.retold(f"{type(command).__name__} not sent to {stream}") from exc
        self._wrote(stream, 1)
        if rerouted:
            self._metrics.rerouted += 1

    async def consume_events(self, group: str, consumer: str, handler: Callable[[AnyEvent], Awaitable[None]]) -> None:
        """Feed telemetry to `handler` until cancelled (or the bus is closed)."""
        streams = (self.streams.telemetry,)
        await self._consume(streams, group, consumer, decode_event, _event_key, handler, batches=True)

    async def consume_commands(
        self, group: str, consumer: str, handler: Callable[[AnyCommand], Awaitable[None]]
    ) -> None:
        """Feed commands to `handler` until cancelled; emergency entries are handled before normal.
        A handler that raises CommandRejected has the command dead-lettered at once (no retries).

        Commands are deduplicated by their entry, not by their id: a redelivered entry is skipped, but a
        new entry repeating an id (a replay, or a producer's retry) reaches the handler, whose replay
        cache rejects it, so it is dead-lettered, counted and shown instead of vanishing silently."""
        streams = (self.streams.emergency, self.streams.normal)
        await self._consume(streams, group, consumer, decode_command, None, handler, batches=False)

    @property
    def closed(self) -> bool:
        """close() has begun: consumers wind down, and errors from a released backend are not trouble."""
        return self._closed

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

    async def put_presence(self, key: str, value: bytes, ttl_s: float) -> None:
        """SET key value PX: a value that vanishes unless renewed within `ttl_s` (heartbeats)."""
        self._require_started()
        await self._tracked(self._put_presence(key, value, ttl_s))

    async def presence(self, prefix: str) -> dict[str, bytes]:
        """Every live presence key starting with `prefix`, with its value."""
        self._require_started()
        return await self._tracked(self._presence(prefix))

    async def drop_presence(self, key: str) -> None:
        self._require_started()
        await self._tracked(self._drop_presence(key))

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
    async def _add(self, stream: str, fields: Mapping[bytes, bytes], maxlen: int) -> str:
        """XADD with MAXLEN ~ maxlen; returns the entry id."""

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
    async def _ack(self, group: str, entry_ids: Mapping[str, Sequence[str]]) -> None:
        """XACK every listed entry (ids by stream), in as few requests as the backend allows."""

    @abc.abstractmethod
    async def _loads(self, stream: str) -> list[GroupLoad]:
        """Backlog and idleness of every group of `stream` (none if the stream does not exist)."""

    @abc.abstractmethod
    async def _tail(self, stream: str, limit: int) -> Entries:
        """The last `limit` entries of a stream, oldest first."""

    @abc.abstractmethod
    async def _read_plain(self, stream: str, after: str, count: int, block_ms: int | None) -> Entries:
        """XREAD COUNT count [BLOCK block_ms] STREAMS stream after."""

    @abc.abstractmethod
    async def _put_presence(self, key: str, value: bytes, ttl_s: float) -> None: ...

    @abc.abstractmethod
    async def _presence(self, prefix: str) -> dict[str, bytes]: ...

    @abc.abstractmethod
    async def _drop_presence(self, key: str) -> None: ...

    # ------------------------------------------------------------------ health

    def _require_started(self) -> None:
        if not self._started or self._closed:
            state = "closed" if self._closed else "not started (call start() first)"
            raise BusError(f"{self.name}: bus is {state}")

    async def _tracked(self, request: Awaitable[T]) -> T:
        """Run one request of the public primitives, keeping connected and the error counters true."""
        try:
            result = await request
        except BusError as exc:
            self._trouble(exc, publishing=False)
            raise
        self._link_up()
        return result

    def _link_up(self) -> None:
        if not self._metrics.connected and not self._closed:
            if self._started:
                log.info("%s: connected", self.name)
            self._metrics.connected = True
        self._publish_backoff.succeeded()

    def _trouble(self, exc: BusError, *, publishing: bool) -> None:
        """Count and show one failed request. A lost link, or a failed telemetry write, also holds
        telemetry back for a capped backoff (dropping and counting it meanwhile) instead of paying
        a failing round trip per event. Each distinct error is logged at most every LOG_REPEAT_S, not
        once per retry: a broken key can last for hours."""
        if isinstance(exc, GroupMissing):
            return
        metrics = self._metrics
        metrics.server_errors[exc.kind] = metrics.server_errors.get(exc.kind, 0) + 1
        metrics.last_error = str(exc)
        metrics.last_error_ts = time.time()
        if isinstance(exc, BusUnavailable):
            metrics.connected = False
        if (publishing or isinstance(exc, BusUnavailable)) and self._publish_backoff.ready():
            self._publish_backoff.failed()
        now = time.monotonic()
        if not self._closed and now - self._logged.get(metrics.last_error, -math.inf) >= LOG_REPEAT_S:
            if len(self._logged) > 100:
                self._logged.clear()
            self._logged[metrics.last_error] = now
            log.warning("%s (%s); retrying with backoff", exc, exc.kind)

    # ------------------------------------------------------------------ publishing

    def _streams_of(self, run_id: str) -> StreamNames:
        if not run_id or run_id == self.run_id:
            return self.streams
        return StreamNames.for_prefix(self.config.stream_prefix, run_id)

    def _wrote(self, stream: str, messages: int) -> None:
        self._metrics.published += messages
        self._gauge(stream).added += 1
        self._link_up()

    async def _flush_forever(self) -> None:
        """The telemetry writer: whatever has gathered in the outbox goes out as one entry, in order.
        A write that fails is dropped and counted; the rest waits out the backoff and tries again."""
        stream = self.streams.telemetry
        opts = self.options
        while True:
            await self._outbox.wait()
            await asyncio.sleep(self._publish_backoff.remaining())
            batch = self._outbox.take(opts.batch_events, opts.batch_bytes)
            if not batch:
                continue
            try:
                await self._write_batch(stream, batch)
            except BusError as exc:
                self._trouble(exc, publishing=True)
                self._metrics.dropped += len(batch)
            except Exception:  # a bug must not silence telemetry for the rest of the run
                log.exception("%s: telemetry batch of %d dropped", self.name, len(batch))
                self._metrics.dropped += len(batch)
            finally:
                await self._outbox.settled(len(batch))

    async def _write_batch(self, stream: str, batch: Sequence[bytes]) -> None:
        fields = {PAYLOAD: batch[0]} if len(batch) == 1 else {BATCH: pack_batch(batch)}
        maxlen = self._retention.entries_with(len(batch))
        try:
            await self._add(stream, fields, maxlen)
        except BaseException:
            self._retention.failed()
            raise
        self._wrote(stream, len(batch))

    def _gauge(self, stream: str) -> _DepthGauge:
        gauge = self._gauges.get(stream)
        if gauge is None:
            gauge = self._gauges[stream] = _DepthGauge()
        return gauge

    def _pressure(self, loads: Sequence[GroupLoad]) -> int:
        """The backlog publishers must respect: the largest among live groups.

        Unhandled entries, not the stream length (entries stay in a stream after they are
        acknowledged, until trimmed). Only live groups count: a group nobody reads (the configured
        one, created by start) or a control room that attached once and went away must not throttle
        the engine; memory stays bounded by maxlen regardless.
        """
        window = self.options.live_window_s
        return max((load.backlog for load in loads if load.idle_s < window), default=0)

    def _depth_estimate(self, stream: str, limit: int, per_entry: float) -> int | None:
        """The depth from the last reading plus what this bus added since, when that can be trusted
        (fresh, and under the limit or unchanged); None when a fresh reading is due."""
        gauge = self._gauge(stream)
        estimate = round((gauge.value + gauge.added) * per_entry)
        if time.monotonic() - gauge.read_at < self._depth_refresh_s and (estimate <= limit or gauge.added == 0):
            return estimate
        return None

    async def _depth(self, stream: str, limit: int, per_entry: float = 1.0) -> int:
        """The backpressure depth of `stream` in messages (entries times `per_entry`, the mean batch
        size), checked against `limit`, cheaply.

        The last reading plus what this bus added since is trusted while fresh and under the limit;
        a decision to reroute, drop or refuse is always made on a fresh reading.
        """
        estimate = self._depth_estimate(stream, limit, per_entry)
        if estimate is not None:
            return estimate
        gauge = self._gauge(stream)
        gauge.value = self._pressure(await self._loads(stream))
        gauge.added = 0
        gauge.read_at = time.monotonic()
        return round(gauge.value * per_entry)

    # ------------------------------------------------------------------ consuming

    async def _consume(
        self,
        streams: tuple[str, ...],
        group: str,
        consumer: str,
        decode: Callable[[bytes], M],
        key: Callable[[M], str] | None,
        handler: Callable[[M], Awaitable[None]],
        *,
        batches: bool,
    ) -> None:
        """Run one consumer, registered so that close() can let it finish its current read."""
        self._require_started()
        seen = self._seen.setdefault((streams, group), RecentIds(self.options.dedupe_window))
        sub = _Subscription(streams, group, consumer, decode, key, handler, seen, batches)
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
        periodically. Recovers from a lost group (recreate), a lost connection and any server error
        (count, capped backoff, retry forever until the bus is closed)."""
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
            except BusError as exc:
                if self.closed:  # the backend was released under this read: not trouble, the end
                    return
                self._trouble(exc, publishing=False)
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
        """Handle one read's entries in order, then acknowledge the finished ones in one request.
        Interrupted (cancelled, or the backend failed mid-way), it still tries, briefly, to
        acknowledge what was finished, so a restart repeats as little as possible."""
        done: dict[str, list[str]] = {}
        try:
            for delivery in batch:
                if await self._process_entry(sub, delivery):
                    done.setdefault(delivery.stream, []).append(delivery.entry_id)
        except BaseException:
            if done:
                with contextlib.suppress(BusError, TimeoutError):
                    async with asyncio.timeout(0.5):
                        await self._ack(sub.group, done)
            raise
        if done:
            await self._ack(sub.group, done)

    async def _process_entry(self, sub: _Subscription[M], d: Delivery) -> bool:
        """Handle every message of one entry; True when the entry can be acknowledged (each message
        handled, skipped as a duplicate, or dead-lettered)."""
        if d.deliveries > 1:
            self._metrics.redelivered += 1
        if d.data is None:  # trimmed while pending: nothing left to handle
            return True
        if not d.batched:
            return await self._process_message(sub, d, d.data, None)
        if not sub.batches:
            self._metrics.decode_errors += 1
            await self._dead_letter(sub, d, d.data, None, "decode error: batch entries are not accepted here")
            return True
        try:
            items = unpack_batch(d.data)
        except DECODE_ERRORS as exc:
            self._metrics.decode_errors += 1
            await self._dead_letter(sub, d, d.data, None, f"decode error: not a batch: {exc}")
            return True
        finished = True
        for index, item in enumerate(items):
            finished &= await self._process_message(sub, d, item, index)
        return finished

    async def _process_message(self, sub: _Subscription[M], d: Delivery, data: bytes, index: int | None) -> bool:
        """Decide the fate of one message: dead-letter, skip as duplicate, or handle. True when it is
        settled; False when it must come back (its handler failed, or another consumer has it)."""
        metrics = self._metrics
        # A message of a batch that was dead-lettered on an earlier delivery of its entry is settled
        # by position: its id may be unreadable, or not its own to claim.
        if index is not None and d.deliveries > 1 and sub.seen.handled(_position(d, index)):
            return True
        try:
            message = sub.decode(data)
        except DECODE_ERRORS as exc:
            metrics.decode_errors += 1
            await self._dead_letter(sub, d, data, index, f"decode error: {exc}")
            return True
        message_key = sub.key(message) if sub.key is not None else _position(d, -1 if index is None else index)
        verdict = sub.seen.begin(message_key)
        if verdict is Verdict.DUPLICATE:
            metrics.duplicates_skipped += 1
            return True
        if verdict is Verdict.BUSY:
            return False
        if d.deliveries > self.config.max_deliveries:
            sub.seen.abandon(message_key)
            await self._dead_letter(sub, d, data, index, f"delivered {d.deliveries} times without success")
            return True
        metrics.delivered += 1
        try:
            await sub.handler(message)
        except CommandRejected as exc:
            # Refused for good (forged, stale, replayed): retrying cannot help. Its id is not marked
            # handled, so a forged copy cannot shadow the genuine command that carries the same id.
            sub.seen.abandon(message_key)
            metrics.rejected += 1
            note = await self._dead_letter(sub, d, data, index, f"rejected: {exc}")
            self._rejection_notes.append(note)
            return True
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
                await self._dead_letter(sub, d, data, index, f"handler failed {d.deliveries} times: {exc!r}")
                return True
            return False
        except BaseException:  # cancelled mid-handler: leave the entry pending for a later retry
            sub.seen.abandon(message_key)
            raise
        sub.seen.finish(message_key)
        metrics.acked += 1
        return True

    async def _dead_letter(
        self, sub: _Subscription[M], d: Delivery, data: bytes, index: int | None, reason: str
    ) -> BusNote:
        """Copy the message to the dead-letter stream; its entry is acknowledged afterwards with the
        rest of the read (in that order, so a crash in between repeats the copy rather than losing
        the message)."""
        fields = {
            PAYLOAD: data,
            b"stream": d.stream.encode(),
            b"id": d.entry_id.encode(),
            b"group": sub.group.encode(),
            b"consumer": sub.consumer.encode(),
            b"reason": reason.encode("utf-8", "replace"),
            b"deliveries": str(d.deliveries).encode(),
        }
        if index is not None:
            fields[b"index"] = str(index).encode()
        await self._add(self.streams.deadletter, fields, self.config.maxlen)
        if index is not None:
            sub.seen.finish(_position(d, index))
        self._metrics.dead_lettered += 1
        note = BusNote(ts=time.time(), stream=d.stream, reason=reason)
        self._dead_notes.append(note)
        where = d.entry_id if index is None else f"{d.entry_id}[{index}]"
        log.warning("%s: dead-lettered %s %s (group %r): %s", self.name, d.stream, where, sub.group, reason)
        return note
