"""When a signed time may be believed: one check for every signed message, and one replay window.

A signature says who wrote a message, never when it may be acted on: a copy replayed an hour later is
signed just as well. So every signed message carries the time it was made (commands, frames, heartbeats,
forge jobs, news, bounds and worker beats), and a receiver refuses it when that time is not a finite
number, is too old, too far ahead of its own clock, or earlier than the receiver's start. NaN needs the
first rule: it compares false with everything, so `age > limit` alone would let it through, forever.

Two kinds of message need more than a fresh time:
- what is obeyed once (a command, a compile job, a job's news) carries a unique id, and `ReplayWindow`
  refuses an id it has already admitted for as long as the message could still pass the time check;
- what states a current value (a heartbeat, the forge's bounds) is read again and again, so `Newest`
  refuses only a value older than the newest one already seen from the same source.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

REPLAY_CACHE_LIMIT = 100_000
"""Ids held at once; beyond it a window refuses rather than forgets (forgetting would admit a replay)."""


class Stale(Exception):
    """A signed message that must not be acted on now; the message is the reason, in a few words."""


class Replayed(Stale):
    """A copy of a message already accepted (or older than one already seen from its source)."""


def time_problem(
    ts: float, now: float, *, max_age_s: float, max_ahead_s: float, not_before: float | None = None
) -> str | None:
    """Why a message stamped `ts` must not be believed at `now`, or None when it may."""
    if not math.isfinite(ts):
        return f"its time is not a finite number ({ts!r})"
    age = now - ts
    if age > max_age_s:
        return f"stale: issued {age:.0f} s ago (limit {max_age_s:.0f} s)"
    if -age > max_ahead_s:
        return f"issued {-age:.0f} s in the future (limit {max_ahead_s:.0f} s)"
    if not_before is not None and ts < not_before:
        return "issued before this engine started"
    return None


def check_time(ts: float, now: float, *, max_age_s: float, max_ahead_s: float, not_before: float | None = None) -> None:
    """`time_problem`, raised as Stale."""
    if problem := time_problem(ts, now, max_age_s=max_age_s, max_ahead_s=max_ahead_s, not_before=not_before):
        raise Stale(problem)


class ReplayWindow:
    """Admits each message id once while its time is fresh: the gate for what is obeyed once."""

    def __init__(
        self,
        *,
        max_age_s: float,
        max_ahead_s: float,
        not_before: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_age_s = max_age_s
        self.max_ahead_s = max_ahead_s
        self.not_before = not_before
        self._clock = clock
        self._seen: OrderedDict[str, tuple[float, str]] = OrderedDict()  # id -> (forget after, where found)

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, message_id: str, ts: float, where: str = "") -> None:
        """Raise Stale with the reason, or return: then the id is held until it could no longer pass.

        `where` names the place this copy was found (a stream entry id): the same copy found again at the
        same place is a redelivery of one message, not a replay of it.
        """
        now = self._clock()
        check_time(ts, now, max_age_s=self.max_age_s, max_ahead_s=self.max_ahead_s, not_before=self.not_before)
        self._forget(now)
        seen = self._seen.get(message_id)
        if seen is not None and not (where and seen[1] == where):
            raise Replayed("replayed: this id was already accepted")
        if seen is None and len(self._seen) >= REPLAY_CACHE_LIMIT:
            raise Stale("too many messages inside the window; refusing rather than forgetting")
        # held past the age limit by the ahead margin too: a clock stepped back must not readmit it
        self._seen[message_id] = (ts + self.max_age_s + self.max_ahead_s, where)

    def _forget(self, now: float) -> None:
        """Drop ids whose message can no longer pass the time check anyway."""
        while self._seen:
            oldest, (until, _where) = next(iter(self._seen.items()))
            if until > now:
                # ids arrive roughly in time order; a later-expiring head keeps the rest until it expires
                return
            del self._seen[oldest]


class Newest:
    """Per source, the newest time admitted: a current value older than one already seen is a replay.

    For what is re-read while it stands (a heartbeat, the forge's bounds): the same value read twice
    passes, an older one from the same source does not, and none passes the time check once stale.
    """

    def __init__(self, *, max_age_s: float, max_ahead_s: float, clock: Callable[[], float] = time.time) -> None:
        self.max_age_s = max_age_s
        self.max_ahead_s = max_ahead_s
        self._clock = clock
        self._newest: dict[str, float] = {}

    def admit(self, source: str, ts: float, not_before: float | None = None) -> None:
        """Raise Stale with the reason, or return: then `ts` is the source's newest time."""
        now = self._clock()
        check_time(ts, now, max_age_s=self.max_age_s, max_ahead_s=self.max_ahead_s, not_before=not_before)
        newest = self._newest.get(source)
        if newest is not None and ts < newest:
            raise Replayed(f"replayed: older than the last one seen from {source} by {newest - ts:.1f} s")
        self._newest[source] = ts
        if len(self._newest) > REPLAY_CACHE_LIMIT:  # sources that went quiet long ago: nothing of theirs passes
            horizon = now - self.max_age_s
            self._newest = {s: t for s, t in self._newest.items() if t >= horizon}
