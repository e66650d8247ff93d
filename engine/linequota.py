"""A quota of lines for the event log, so a flood from outside cannot push out what an operator needs.

Anyone who can write to the engine's command streams can send thousands of unsigned commands; each is
refused, counted and dead-lettered by the bus, but a line for each would fill the event log (it keeps the
last few hundred) and bury everything else. `LineQuota` lets the first few of a window through as lines,
counts the rest, and says "N more ... in the last T s" once the window closes. While a flood lasts, each
later window gives only that one summary line; a quiet window restores the allowance.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class LineQuota:
    """At most `shown` lines per `window_s`; the rest counted and summed up once the window closes."""

    def __init__(self, shown: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.shown = shown
        self.window_s = window_s
        self._clock = clock
        self._started = clock()
        self._allowance = shown
        self._used = 0
        self._held = 0

    def admit(self) -> bool:
        """True when this line may be shown; False when it is only counted (for the next summary)."""
        if self._used < self._allowance:
            self._used += 1
            return True
        self._held += 1
        return False

    def summary(self, what: str) -> str | None:
        """Once the window has closed: the line for what was held back ("N more {what} in the last T s"), or
        None when nothing was; then a new window starts (with no allowance while the flood goes on)."""
        now = self._clock()
        if now - self._started < self.window_s:
            return None
        held, self._held = self._held, 0
        self._started, self._used = now, 0
        self._allowance = 0 if held else self.shown
        return f"{held} more {what} in the last {self.window_s:.0f} s" if held else None
