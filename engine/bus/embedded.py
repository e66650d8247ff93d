"""The in-process Oona bus: Redis Streams bookkeeping kept in memory, asyncio only.

Each stream is a log of entries trimmed to the MAXLEN each XADD asks for, with consumer groups that
hold a delivery cursor and a pending-entries list, exactly the state Redis keeps, so redelivery,
reclaiming and dead-lettering behave the same on both backends. Entry ids look like Redis ids
("0-<seq>"). Presence keys expire like Redis keys with a PX expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from esper_tui.engine.bus.base import Bus
from esper_tui.engine.bus.core import START, Delivery, Entries, GroupLoad
from esper_tui.engine.bus.types import BusOptions, GroupMissing
from esper_tui.engine.config import BusConfig

R = TypeVar("R")


def _entry_id(seq: int) -> str:
    return f"0-{seq}"


def _seq(entry_id: str) -> int:
    return int(entry_id.rpartition("-")[2])


@dataclass(slots=True)
class _Pending:
    consumer: str
    deliveries: int
    delivered_at: float


@dataclass(slots=True)
class _Group:
    next_seq: int  # the first entry not yet delivered to the group
    pending: dict[int, _Pending] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)  # consumer -> when it last read or claimed


class _Stream:
    """A log of entries numbered 1, 2, ...; trimming drops the oldest."""

    def __init__(self) -> None:
        self.entries: deque[dict[bytes, bytes]] = deque()
        self.last_seq = 0
        self.groups: dict[str, _Group] = {}

    @property
    def first_seq(self) -> int:
        return self.last_seq - len(self.entries) + 1

    def append(self, fields: Mapping[bytes, bytes], maxlen: int) -> int:
        self.entries.append(dict(fields))
        self.last_seq += 1
        while len(self.entries) > max(1, maxlen):
            self.entries.popleft()
        return self.last_seq

    def get(self, seq: int) -> dict[bytes, bytes] | None:
        index = seq - self.first_seq
        return self.entries[index] if 0 <= index < len(self.entries) else None

    def after(self, seq: int, count: int) -> Entries:
        """Up to `count` entries with a number above `seq`, oldest first (XREAD/XRANGE)."""
        first = max(seq + 1, self.first_seq)
        last = min(self.last_seq, first + count - 1)
        return [(_entry_id(n), dict(self.get(n) or {})) for n in range(first, last + 1)]

    def group(self, name: str, consumer: str) -> _Group:
        """The group, with `consumer` marked active now (as Redis does on XREADGROUP/XAUTOCLAIM)."""
        try:
            group = self.groups[name]
        except KeyError:
            raise GroupMissing(f"NOGROUP no consumer group {name!r}") from None
        group.seen[consumer] = time.monotonic()
        return group


class EmbeddedBus(Bus):
    """The default bus: no server, no threads.

    Its memory is bounded by what each stream's readers need, through the MAXLEN each writer asks for: telemetry
    keeps `publishing.telemetry_kept` events (drop_threshold: no live consumer is further behind); frames a few
    seconds of them (broadcast.frames_maxlen); the command streams and dead letters `config.maxlen` entries, written
    by hand or on failures only. A group's pending list holds entries delivered and not yet acknowledged (trimmed
    ones are dropped when reclaimed), its `seen` one time per consumer name; presence keys are the engine's own
    heartbeat (control rooms cannot reach an embedded bus), each dropped when read after it expired.
    """

    def __init__(self, config: BusConfig, options: BusOptions | None = None, *, run_id: str = "") -> None:
        super().__init__(config, options, run_id=run_id)
        self.name = "embedded"
        self.readable_elsewhere = False
        self._streams: dict[str, _Stream] = {}
        self._keys: dict[str, tuple[bytes, float]] = {}  # presence key -> (value, monotonic expiry)
        self._wakeup = asyncio.Event()

    def _stream(self, name: str) -> _Stream:
        stream = self._streams.get(name)
        if stream is None:
            stream = self._streams[name] = _Stream()
        return stream

    def _notify(self) -> None:
        """Wake every blocked reader: set the current event and start a fresh one for the next wait."""
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    async def _blocking(self, fetch: Callable[[], list[R]], block_ms: int | None) -> list[R]:
        """Call `fetch` until it returns something, the bus closes, or `block_ms` has passed
        (None or 0: once), waking up whenever an entry is added."""
        deadline = time.monotonic() + block_ms / 1000 if block_ms else None
        while True:
            wakeup = self._wakeup
            found = fetch()
            remaining = 0.0 if deadline is None else deadline - time.monotonic()
            if found or remaining <= 0 or self._closed:
                return found
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await wakeup.wait()

    async def _open(self) -> None:
        return None

    async def _close(self) -> None:
        return None

    def _wake_consumers(self) -> None:
        self._notify()

    async def _add(self, stream: str, fields: Mapping[bytes, bytes], maxlen: int) -> str:
        seq = self._stream(stream).append(fields, maxlen)
        self._notify()
        return _entry_id(seq)

    async def _ensure_group(self, stream: str, group: str) -> None:
        s = self._stream(stream)
        s.groups.setdefault(group, _Group(next_seq=s.first_seq))

    async def _read(
        self, starts: Mapping[str, str], group: str, consumer: str, count: int, block_ms: int | None
    ) -> list[Delivery]:
        def fetch() -> list[Delivery]:
            batch: list[Delivery] = []
            for stream, start in starts.items():
                if start == ">":
                    batch += self._take_new(stream, group, consumer, count)
                else:
                    batch += self._take_own_pending(stream, group, consumer, _seq(start), count)
            return batch

        return await self._blocking(fetch, block_ms)

    def _take_new(self, stream: str, group: str, consumer: str, count: int) -> list[Delivery]:
        s = self._stream(stream)
        g = s.group(group, consumer)
        first = max(g.next_seq, s.first_seq)
        last = min(s.last_seq, first + count - 1)
        now = time.monotonic()
        batch = []
        for seq in range(first, last + 1):
            g.pending[seq] = _Pending(consumer, 1, now)
            batch.append(Delivery.of(stream, _entry_id(seq), s.get(seq), 1))
        g.next_seq = max(g.next_seq, last + 1)
        return batch

    def _take_own_pending(self, stream: str, group: str, consumer: str, after: int, count: int) -> list[Delivery]:
        s = self._stream(stream)
        g = s.group(group, consumer)
        mine = sorted(seq for seq, p in g.pending.items() if p.consumer == consumer and seq > after)
        now = time.monotonic()
        batch = []
        for seq in mine[:count]:
            entry = g.pending[seq]
            entry.deliveries += 1
            entry.delivered_at = now
            batch.append(Delivery.of(stream, _entry_id(seq), s.get(seq), entry.deliveries))
        return batch

    async def _claim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, cursor: str, count: int
    ) -> tuple[str, list[Delivery]]:
        s = self._stream(stream)
        g = s.group(group, consumer)
        now = time.monotonic()
        batch: list[Delivery] = []
        for seq in sorted(seq for seq in g.pending if seq >= _seq(cursor)):
            if len(batch) == count:
                return _entry_id(seq), batch
            entry = g.pending[seq]
            if (now - entry.delivered_at) * 1000 < min_idle_ms:
                continue
            fields = s.get(seq)
            if fields is None:  # trimmed away: Redis 7 drops such entries from the pending list
                del g.pending[seq]
                continue
            entry.consumer = consumer
            entry.deliveries += 1
            entry.delivered_at = now
            batch.append(Delivery.of(stream, _entry_id(seq), fields, entry.deliveries))
        return START, batch

    async def _ack(self, group: str, entry_ids: Mapping[str, Sequence[str]]) -> None:
        for stream, ids in entry_ids.items():
            s = self._streams.get(stream)
            g = None if s is None else s.groups.get(group)
            if g is not None:
                for entry_id in ids:
                    g.pending.pop(_seq(entry_id), None)

    async def _loads(self, stream: str) -> list[GroupLoad]:
        s = self._streams.get(stream)
        if s is None:
            return []
        now = time.monotonic()
        return [
            GroupLoad(
                name,
                max(0, s.last_seq - max(g.next_seq, s.first_seq) + 1) + len(g.pending),
                now - max(g.seen.values()) if g.seen else math.inf,
            )
            for name, g in s.groups.items()
        ]

    async def _tail(self, stream: str, limit: int) -> Entries:
        s = self._streams.get(stream)
        if s is None or limit <= 0:
            return []
        return s.after(s.last_seq - limit, limit)

    async def _read_plain(self, stream: str, after: str, count: int, block_ms: int | None) -> Entries:
        s = self._stream(stream)
        seq = s.last_seq if after == "$" else _seq(after)
        return await self._blocking(lambda: s.after(seq, count), block_ms)

    async def _expire(self, keys: Sequence[str], ttl_s: float) -> None:
        """Nothing to do: an embedded bus's streams live in its process and end with it; nothing else can read them
        once the run is over."""

    # ------------------------------------------------------------------ presence keys

    def _live(self, key: str) -> bytes | None:
        """The value of a presence key, or None once it expired (then it is forgotten)."""
        item = self._keys.get(key)
        if item is None:
            return None
        value, expires = item
        if time.monotonic() >= expires:
            del self._keys[key]
            return None
        return value

    async def _put_presence(self, key: str, value: bytes, ttl_s: float) -> None:
        self._keys[key] = (bytes(value), time.monotonic() + max(0.001, ttl_s))

    async def _presence(self, prefix: str) -> dict[str, bytes]:
        found = {}
        for key in [k for k in self._keys if k.startswith(prefix)]:
            value = self._live(key)
            if value is not None:
                found[key] = value
        return found

    async def _drop_presence(self, key: str) -> None:
        self._keys.pop(key, None)
