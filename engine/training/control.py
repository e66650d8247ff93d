"""Pause and stop for a training run: shared between the engine (commands) and the training thread."""

from __future__ import annotations

import threading
from collections.abc import Callable


class TrainingControl:
    """Pause and stop, shared between the engine (commands) and the training thread.

    A Condition rather than bare Events: pause/resume/stop and the loop's waits then never race (a stop
    always wakes a paused loop, and a pause can never swallow a stop).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._paused = False
        self._stopped = False
        self._followers: list[Callable[[bool, bool], None]] = []

    def follow(self, follower: Callable[[bool, bool], None]) -> None:
        """Call `follower(paused, stopped)` now and after every change: how a trainer in a process of its own
        mirrors this control (training.process)."""
        self._followers.append(follower)
        follower(self._paused, self._stopped)

    def _changed(self) -> None:
        for follower in self._followers:
            follower(self._paused, self._stopped)

    def set_paused(self, paused: bool) -> None:
        with self._cond:
            self._paused = paused
            self._cond.notify_all()
        self._changed()

    def pause(self) -> None:
        self.set_paused(True)

    def resume(self) -> None:
        self.set_paused(False)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._changed()

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def stopped(self) -> bool:
        return self._stopped

    def wait_while_paused(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self._paused or self._stopped)

    def sleep(self, seconds: float) -> bool:
        """Sleep up to `seconds`, waking at once on stop; True if stopped."""
        with self._cond:
            return self._cond.wait_for(lambda: self._stopped, timeout=max(0.0, seconds))
