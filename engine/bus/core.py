"""The core every part of Oona's bus shares: its state, the stream primitives a backend implements, health.

The primitives are modelled on Redis Streams (XADD, XGROUP CREATE, XREADGROUP, XAUTOCLAIM, XACK, XREAD);
`RedisStreamsBus` maps them onto Redis, `EmbeddedBus` keeps the same bookkeeping in memory. Health is
counted here, in one place, because every request of every part of the bus can meet server trouble.
"""

from __future__ import annotations

import abc
import logging
import math
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from esper_tui.engine.bus.helpers import Backoff
from esper_tui.engine.bus.types import (
    BATCH,
    PAYLOAD,
    BusError,
    BusMetrics,
    BusOptions,
    BusUnavailable,
    GroupMissing,
    StreamNames,
)
from esper_tui.engine.config import BusConfig

log = logging.getLogger(__name__)

START = "0-0"
"""Cursor that starts an XAUTOCLAIM scan, and the cursor a finished scan returns."""

LOG_REPEAT_S = 60.0
"""How often one and the same backend error is logged again while it lasts (it is counted every time)."""


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

T = TypeVar("T")


class BusCore(abc.ABC):
    """What the parts of a bus (publishing, delivery, presence) build on: configuration, metrics, the
    backend's stream primitives and the health bookkeeping around every request."""

    name: str
    readable_elsewhere: bool
    """Whether anything outside this process can read the streams (Redis: control rooms, other consumers)."""

    def __init__(self, config: BusConfig, options: BusOptions | None = None, *, run_id: str = "") -> None:
        self.config = config
        self.options = options or BusOptions()
        self.run_id = run_id
        self.streams = StreamNames.for_prefix(config.stream_prefix, run_id)
        self._metrics = BusMetrics()
        self._started = False
        self._closed = False
        self._publish_backoff = Backoff()
        self._logged: dict[str, float] = {}  # error line -> when it was last logged (monotonic)

    @property
    def closed(self) -> bool:
        """close() has begun: consumers wind down, and errors from a released backend are not trouble."""
        return self._closed

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
    async def _expire(self, keys: Sequence[str], ttl_s: float) -> None:
        """PEXPIRE every key that exists in `ttl_s` (replacing any expiry it had); missing keys are skipped."""

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
