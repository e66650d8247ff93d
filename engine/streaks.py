"""Trouble that comes and goes in a step the engine repeats (a /proc read, a WAL checkpoint): said once.

A loop that retries every second must neither die of a passing failure (no file descriptor left for a
moment, a disk briefly full) nor write the same warning every second: the operator hears when the trouble
starts and when it ends, with how many attempts failed in between.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from esper_tui.engine.vocabulary import Level


class FailureStreak:
    """`failed` on each failed attempt (a warning on the first), `succeeded` after a good one (a line if it
    ended a streak)."""

    def __init__(
        self, what: str, say: Callable[[Level, str], None], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.what = what
        self._say = say
        self._clock = clock
        self.failures = 0
        self._since = 0.0

    def failed(self, exc: BaseException, meanwhile: str) -> None:
        """`meanwhile`: what the engine does instead until the step works again."""
        if not self.failures:
            self._since = self._clock()
            self._say(Level.WARNING, f"{self.what} failed: {exc}; {meanwhile}")
        self.failures += 1

    def succeeded(self) -> None:
        if self.failures:
            took = self._clock() - self._since
            self._say(Level.INFO, f"{self.what} back after {self.failures} failed attempt(s) in {took:.0f} s")
            self.failures = 0
