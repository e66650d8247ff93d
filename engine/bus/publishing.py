"""Publishing on Oona: telemetry through the outbox, commands straight to their stream, both under backpressure.

Telemetry is batched: `publish_event` puts the encoded event in a bounded outbox and a flusher task writes
whatever has gathered as one entry (a msgpack array of encoded events under the BATCH field; a lone event
keeps the one-message PAYLOAD form). Commands stay one per entry and are never dropped: each is signed,
verified and dead-lettered by itself. Backpressure reads the backlog of the live consumer groups.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from esper_tui.engine.bus.core import BusCore, GroupLoad
from esper_tui.engine.bus.helpers import Outbox, Retention, _DepthGauge, pack_batch
from esper_tui.engine.bus.types import BATCH, PAYLOAD, BusBackpressure, BusError, BusOptions, StreamNames
from esper_tui.engine.codec import encode_msgpack
from esper_tui.engine.config import BusConfig
from esper_tui.engine.contracts import AnyCommand, AnyEvent, SetConservativeMode, Shutdown

log = logging.getLogger(__name__)

EMERGENCY_COMMANDS = (Shutdown, SetConservativeMode)
"""Commands that must overtake a backlog: they always travel on the emergency stream."""


def telemetry_kept(config: BusConfig) -> int:
    """Telemetry events the stream keeps: `drop_threshold` (never more than `maxlen`).

    What its readers need: publishing stops once a live consumer group is `drop_threshold` events behind, so no
    live group ever needs an older one (a group whose consumers went away for longer than
    BusOptions.live_window_s loses what is older; it was not holding publishers back either). In the engine's own
    process nothing reads telemetry back at all, so this is also the embedded bus's memory for it: at the default
    8,000 events of about 1 KB, some 8 MB, where `maxlen` (100,000) let it grow to about 100 MB over 3.5 hours.
    """
    return min(config.drop_threshold, config.maxlen)


class Publishing(BusCore):
    """The publishing half of a bus: the outbox and its flusher, command routing, backpressure."""

    DEFAULT_DEPTH_REFRESH_S = 0.0

    def __init__(self, config: BusConfig, options: BusOptions | None = None, *, run_id: str = "") -> None:
        super().__init__(config, options, run_id=run_id)
        self._gauges: dict[str, _DepthGauge] = {}
        self._outbox = Outbox(self.options.publish_buffer)
        self._retention = Retention(telemetry_kept(config))
        self._flusher: asyncio.Task[None] | None = None
        refresh = self.options.depth_refresh_s
        self._depth_refresh_s = self.DEFAULT_DEPTH_REFRESH_S if refresh is None else refresh

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
