"""Small reusable pieces of Oona's delivery logic: the dedupe LRU, backoff, the backlog gauge, the
telemetry outbox, batch packing and event-count retention.

Self-contained state machines with no knowledge of backends, kept out of ``base.py`` so they can be
read and tested on their own.
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec


class Verdict(enum.Enum):
    NEW = "new"  # handle it
    DUPLICATE = "duplicate"  # already handled by this group: acknowledge, do not handle
    BUSY = "busy"  # another consumer of this group is handling it now: leave it pending


class RecentIds:
    """The ids one consumer group handled recently (bounded LRU) or is handling right now.

    At-least-once delivery repeats messages and a retried XADD can store one message twice, so the
    group skips ids it has already handled. An id in flight is neither handled again nor acknowledged
    (if the first attempt fails, the copy is still there to be retried).
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = max(1, capacity)
        self._done: OrderedDict[str, None] = OrderedDict()
        self._busy: set[str] = set()

    def begin(self, key: str) -> Verdict:
        if key in self._done:
            self._done.move_to_end(key)
            return Verdict.DUPLICATE
        if key in self._busy:
            return Verdict.BUSY
        self._busy.add(key)
        return Verdict.NEW

    def handled(self, key: str) -> bool:
        """Whether `key` is in the window of finished ids (without touching its place in it)."""
        return key in self._done

    def finish(self, key: str) -> None:
        self._busy.discard(key)
        done = self._done
        if key in done:
            done.move_to_end(key)
            return
        done[key] = None
        if len(done) > self._capacity:
            done.popitem(last=False)

    def abandon(self, key: str) -> None:
        self._busy.discard(key)


class Backoff:
    """Capped exponential backoff: retry a lost backend quickly at first, then at most every `cap` s."""

    def __init__(self, base: float = 0.05, cap: float = 2.0) -> None:
        self._base = base
        self._cap = cap
        self._failures = 0
        self._retry_at = 0.0

    def failed(self) -> float:
        """Record a failure; returns how long to wait before the next attempt."""
        delay = min(self._cap, self._base * 2.0 ** min(self._failures, 16))
        self._failures += 1
        self._retry_at = time.monotonic() + delay
        return delay

    def succeeded(self) -> None:
        self._failures = 0
        self._retry_at = 0.0

    def ready(self) -> bool:
        return time.monotonic() >= self._retry_at

    def remaining(self) -> float:
        """Seconds until the next attempt is due (0 when it is)."""
        return max(0.0, self._retry_at - time.monotonic())


@dataclass(slots=True)
class _DepthGauge:
    """A backlog reading plus what this bus added since, so most publishes cost no extra request."""

    value: int = 0
    added: int = 0
    read_at: float = -math.inf


# ----------------------------------------------------------------------------- telemetry batching


_batch_encoder = msgspec.msgpack.Encoder()
_batch_decoder = msgspec.msgpack.Decoder(list[bytes])


def pack_batch(items: Sequence[bytes]) -> bytes:
    """Many encoded messages as one payload: a msgpack array of bin, each message opaque, so a
    consumer splits the batch without parsing the messages and one malformed message spoils only
    itself."""
    return _batch_encoder.encode(items)


def unpack_batch(data: bytes) -> list[bytes]:
    """The messages of a batch entry, still encoded, so each decodes (and can fail) on its own.
    Raises msgspec.DecodeError when the entry is not such an array at all."""
    return _batch_decoder.decode(data)


class Outbox:
    """Encoded telemetry waiting for the flusher: bounded, in publish order, with a way to wait until
    everything put so far has been written or dropped (`settle`)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._items: deque[bytes] = deque()
        self._put = 0  # messages ever put
        self._settled = 0  # messages ever taken and then written or dropped
        self._nonempty = asyncio.Event()
        self._progress = asyncio.Condition()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        return len(self._items) >= self.capacity

    def put(self, data: bytes) -> None:
        self._items.append(data)
        self._put += 1
        self._nonempty.set()

    async def wait(self) -> None:
        """Until there is something to take."""
        await self._nonempty.wait()

    def take(self, max_items: int, max_bytes: int) -> list[bytes]:
        """The oldest messages up to either limit (always at least one when any is waiting)."""
        items: list[bytes] = []
        size = 0
        while self._items and len(items) < max_items:
            nbytes = len(self._items[0])
            if items and size + nbytes > max_bytes:
                break
            items.append(self._items.popleft())
            size += nbytes
        if not self._items:
            self._nonempty.clear()
        return items

    async def settled(self, count: int) -> None:
        """`count` taken messages were written or dropped."""
        self._settled += count
        async with self._progress:
            self._progress.notify_all()

    async def settle(self) -> None:
        """Until every message put before this call has been written or dropped."""
        target = self._put
        async with self._progress:
            await self._progress.wait_for(lambda: self._settled >= target)


class Retention:
    """How many stream entries hold the newest `limit` messages this publisher wrote, so the telemetry
    stream keeps about `limit` events however they were batched (MAXLEN counts entries).

    Until this publisher has written `limit` messages it knows nothing about older entries (a previous
    run's), so it keeps `limit` entries, exactly as without batching.
    """

    def __init__(self, limit: int) -> None:
        self._limit = max(1, limit)
        self._sizes: deque[int] = deque()
        self._total = 0
        self._dropped: list[int] = []  # what the last entries_with() let go of, for failed()

    def entries_with(self, size: int) -> int:
        """Record an entry of `size` messages about to be added; returns the MAXLEN to add it with."""
        self._sizes.append(size)
        self._total += size
        self._dropped = []
        while self._total - self._sizes[0] >= self._limit:
            self._dropped.append(self._sizes.popleft())
            self._total -= self._dropped[-1]
        return len(self._sizes) if self._total >= self._limit else self._limit

    def failed(self) -> None:
        """The entry just recorded was not added after all: forget it, keep what it displaced."""
        if self._sizes:
            self._total -= self._sizes.pop()
        for size in reversed(self._dropped):
            self._sizes.appendleft(size)
            self._total += size
        self._dropped = []

    @property
    def mean_size(self) -> float:
        """Messages per entry over the retained window: turns an entry backlog into a message backlog."""
        return self._total / len(self._sizes) if self._sizes else 1.0
