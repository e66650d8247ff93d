"""Delivery on Oona: the rules every consumer follows, implemented once for both backends.

At-least-once delivery, fan-out across consumer groups, competition inside one group, redelivery,
dead-lettering, idempotency and riding out server trouble live here and not in the backends, so a
component tested against the embedded bus behaves the same against Redis. A batch entry's events are
treated as if each had come in an entry of its own: handled in order, deduplicated by event id,
dead-lettered on its own; the entry is acknowledged once all its events are done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec

from esper_tui.engine.bus.auth import CommandRejected
from esper_tui.engine.bus.core import START, BusCore, Delivery
from esper_tui.engine.bus.helpers import Backoff, RecentIds, Verdict, unpack_batch
from esper_tui.engine.bus.types import PAYLOAD, BusError, BusOptions, GroupMissing
from esper_tui.engine.codec import SchemaMismatch, decode_command, decode_event
from esper_tui.engine.config import BusConfig
from esper_tui.engine.contracts import AnyCommand, AnyEvent
from esper_tui.engine.linequota import LineQuota
from esper_tui.engine.snapshot import BusNote

log = logging.getLogger(__name__)
DEAD_LETTERS_LOGGED = 5
DEAD_LETTER_LOG_WINDOW_S = 10.0

DECODE_ERRORS = (msgspec.DecodeError, SchemaMismatch)
"""What a malformed or foreign entry raises: such entries are dead-lettered, never retried."""

NOTES_KEPT = 50
"""Newest dead letters and rejections kept in memory for the dashboard."""

M = TypeVar("M")


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


class Delivering(BusCore):
    """The consuming half of a bus: consumer loops, redelivery, deduplication, dead letters."""

    def __init__(self, config: BusConfig, options: BusOptions | None = None, *, run_id: str = "") -> None:
        super().__init__(config, options, run_id=run_id)
        self._seen: dict[tuple[tuple[str, ...], str], RecentIds] = {}
        self._running: set[asyncio.Task[Any]] = set()
        self._dead_notes: deque[BusNote] = deque(maxlen=NOTES_KEPT)
        self._rejection_notes: deque[BusNote] = deque(maxlen=NOTES_KEPT)
        # a flood of refused commands would write a warning each to the engine's log (stderr): a few per
        # window, then "N more" with the next dead letter once the window has closed (the counters keep all)
        self._dead_log = LineQuota(DEAD_LETTERS_LOGGED, DEAD_LETTER_LOG_WINDOW_S)
        claim_ms = max(1, self.options.claim_idle_ms)
        # Wake up often enough to reclaim idle entries on time, but never spin.
        self._poll_ms = min(1000, max(10, claim_ms // 2))
        self._claim_every_s = max(0.01, claim_ms / 2000)

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
        # Shared by every run of the prefix: it goes `retention_hours` after the last dead letter of any of them.
        await self._expire([self.streams.deadletter], self.config.retention_hours * 3600)
        if index is not None:
            sub.seen.finish(_position(d, index))
        self._metrics.dead_lettered += 1
        note = BusNote(ts=time.time(), stream=d.stream, reason=reason)
        self._dead_notes.append(note)
        where = d.entry_id if index is None else f"{d.entry_id}[{index}]"
        if (held := self._dead_log.summary("messages dead-lettered")) is not None:
            log.warning("%s: %s", self.name, held)
        if self._dead_log.admit():
            log.warning("%s: dead-lettered %s %s (group %r): %s", self.name, d.stream, where, sub.group, reason)
        return note
