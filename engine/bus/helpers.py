"""Small reusable pieces of Oona's delivery logic: the dedupe LRU, backoff and the backlog gauge.

Self-contained state machines with no knowledge of streams or backends, kept out of ``base.py`` so
they can be read and tested on their own.
"""

from __future__ import annotations

import enum
import math
import time
from collections import OrderedDict
from dataclasses import dataclass


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

    def finish(self, key: str) -> None:
        self._busy.discard(key)
        self._done[key] = None
        self._done.move_to_end(key)
        while len(self._done) > self._capacity:
            self._done.popitem(last=False)

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


@dataclass(slots=True)
class _DepthGauge:
    """A backlog reading plus what this bus added since, so most publishes cost no extra request."""

    value: int = 0
    added: int = 0
    read_at: float = -math.inf
