"""A generic circuit breaker: closed -> open -> half-open -> closed (guide section 6, seed 000).

The forge keeps three of them (memory, gpu, timeout; see `breaker_board`). They replace asserts: a
breaker that opens does not crash anything, it pushes the forge into conservative mode and shows up
on the dashboard. Everything time-related goes through an injectable clock so tests never sleep.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from esper_tui.engine.snapshot import BreakerView
from esper_tui.engine.vocabulary import BreakerState

Clock = Callable[[], float]

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BreakerTransition:
    """One state change, handed to the listener (telemetry + event log) exactly once."""

    name: str
    previous: BreakerState
    state: BreakerState
    reason: str
    at: float


class BreakerOpenError(RuntimeError):
    """Raised by `CircuitBreaker.call`/`guard` when the breaker refuses the call."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"circuit breaker {name!r} is open: {detail}")
        self.name = name
        self.detail = detail


class CircuitBreaker:
    """A thread-safe breaker with a probe limit in half-open and an injectable clock.

    Counting policy (the choice resilience4j leaves to its user):

    * default: **consecutive** failures. `failure_threshold` failures in a row open the breaker; any
      success resets the count. Right for the seed breakers, which see few, slow calls (a compile
      takes minutes), where a rate over a window would need hours to reach a meaningful volume.
    * `window=N`: a **sliding window** of the last N outcomes while closed; the breaker opens when at
      least `min_calls` (and at least one) outcomes are recorded and the failure share reaches
      `failure_rate`. Right for chatty callers where one failure in a hundred is noise.
      `failure_threshold` is then not consulted; `failures` still reports the consecutive count.

    Slow calls (`record_slow`) count as failures because for a compiler a timeout is the failure
    that matters. In half-open at most `half_open_probes` calls are outstanding at once (Hystrix: one);
    the breaker closes once that many probes succeeded and re-opens, timer restarted, on any failure.
    OPEN -> HALF_OPEN happens lazily on the next read of `state`/`allow()` once `open_seconds` passed,
    so nothing needs a timer task.

    UNAVAILABLE means "nothing to guard" (the gpu breaker without a GPU): calls are allowed and
    outcomes ignored until `trip` or `reset` moves it again.
    """

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int,
        open_seconds: float,
        half_open_probes: int = 1,
        window: int | None = None,
        min_calls: int = 0,
        failure_rate: float = 0.5,
        clock: Clock = time.monotonic,
        listener: Callable[[BreakerTransition], None] | None = None,
        excluded: tuple[type[BaseException], ...] = (),
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if open_seconds < 0:
            raise ValueError("open_seconds must be >= 0")
        if half_open_probes < 1:
            raise ValueError("half_open_probes must be >= 1")
        if window is not None and window < 1:
            raise ValueError("window must be >= 1 (or None for consecutive counting)")
        if not 0.0 < failure_rate <= 1.0:
            raise ValueError("failure_rate must be in (0, 1]")
        self.name = name
        self.failure_threshold = failure_threshold
        self.open_seconds = open_seconds
        self.half_open_probes = half_open_probes
        self.window = window
        self.min_calls = min_calls
        self.failure_rate = failure_rate
        self.excluded = excluded
        self._clock = clock
        self._listener = listener
        # RLock: a listener may read the breaker (view()) while a transition is being announced.
        self._lock = threading.RLock()
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._failures = 0
        self._detail = ""
        self._outcomes: deque[bool] = deque(maxlen=window)  # True = failure; used in window mode only
        self._probes_in_flight = 0
        self._probe_successes = 0

    # ------------------------------------------------------------------ reading

    @property
    def state(self) -> BreakerState:
        with self._lock:
            self._refresh()
            return self._state

    @property
    def failures(self) -> int:
        """Consecutive failures (reset by any success and when the breaker closes)."""
        return self._failures

    @property
    def detail(self) -> str:
        """The last reason: a failure, a trip, a transition, or why the breaker is unavailable."""
        return self._detail

    @property
    def probes_in_flight(self) -> int:
        """Half-open permits handed out and not yet answered (for invariants and the UI)."""
        return self._probes_in_flight

    def view(self, *, reading: float | None = None, threshold: float | None = None, unit: str = "") -> BreakerView:
        """The dashboard row; readings belong to whoever feeds the breaker (see BreakerBoard)."""
        with self._lock:
            self._refresh()
            return BreakerView(
                name=self.name,
                state=self._state,
                reading=reading,
                threshold=threshold,
                unit=unit,
                failures=self._failures,
                detail=self._detail,
            )

    # ------------------------------------------------------------------ the protocol

    def allow(self) -> bool:
        """May a call go ahead now? In half-open this takes one of the limited probe permits."""
        with self._lock:
            self._refresh()
            if self._state is BreakerState.OPEN:
                return False
            if self._state is BreakerState.HALF_OPEN:
                if self._probes_in_flight >= self.half_open_probes:
                    return False
                self._probes_in_flight += 1
            return True

    def record_success(self) -> None:
        with self._lock:
            self._refresh()
            if self._state is BreakerState.UNAVAILABLE:
                return
            self._failures = 0
            if self._state is BreakerState.CLOSED and self.window is not None:
                self._outcomes.append(False)
            elif self._state is BreakerState.HALF_OPEN:
                self._probes_in_flight = max(0, self._probes_in_flight - 1)
                self._probe_successes += 1
                if self._probe_successes >= self.half_open_probes:
                    self._move(BreakerState.CLOSED, f"{self._probe_successes} probe(s) succeeded")

    def record_failure(self, reason: str = "") -> None:
        with self._lock:
            self._refresh()
            if self._state is BreakerState.UNAVAILABLE:
                return
            reason = reason or "failure"
            self._failures += 1
            self._detail = reason
            if self._state is BreakerState.HALF_OPEN:
                self._move(BreakerState.OPEN, f"probe failed: {reason}")
            elif self._state is BreakerState.CLOSED:
                self._count_closed_failure(reason)

    def record_slow(self, reason: str = "") -> None:
        """A call that finished but took too long: a failure, because for a compiler timeouts matter."""
        self.record_failure(f"slow: {reason}" if reason else "slow call")

    def trip(self, reason: str) -> None:
        """Force OPEN (a resource reading above its threshold). Tripping an open breaker restarts its
        timer without a transition: the pressure is still there, so half-open must wait."""
        with self._lock:
            self._refresh()
            self._detail = reason
            if self._state is BreakerState.OPEN:
                self._opened_at = self._clock()
            else:
                self._move(BreakerState.OPEN, reason)

    def reset(self, reason: str = "reset by operator") -> None:
        """Force CLOSED and forget all counts (operator, or a GPU that came back)."""
        with self._lock:
            self._refresh()
            self._detail = reason
            if self._state is BreakerState.CLOSED:
                self._clear_counts()
            else:
                self._move(BreakerState.CLOSED, reason)

    def mark_unavailable(self, detail: str) -> None:
        """Nothing to guard here (e.g. "no GPU: Driver Not Loaded"); allow() keeps saying yes, since
        no GPU means no GPU pressure. Repeated calls only refresh the detail."""
        with self._lock:
            self._detail = detail
            if self._state is not BreakerState.UNAVAILABLE:
                self._move(BreakerState.UNAVAILABLE, detail)

    # ------------------------------------------------------------------ helpers for callers

    @contextlib.contextmanager
    def guard(self, *, slow_after_s: float | None = None) -> Iterator[None]:
        """`with breaker.guard():` around a call (sync or `await`ed inside).

        Raises BreakerOpenError when refused. Exceptions in `excluded` and non-`Exception`
        BaseExceptions (cancellation, KeyboardInterrupt) say nothing about the guarded resource:
        they hand back the probe permit and are not counted. A call that succeeds after more than
        `slow_after_s` is recorded as slow.
        """
        if not self.allow():
            raise BreakerOpenError(self.name, self._detail)
        started = self._clock()
        try:
            yield
        except self.excluded:
            self._release_probe()
            raise
        except Exception as exc:
            self.record_failure(f"{type(exc).__name__}: {exc}")
            raise
        except BaseException:
            self._release_probe()
            raise
        elapsed = self._clock() - started
        if slow_after_s is not None and elapsed > slow_after_s:
            self.record_slow(f"{elapsed:.1f}s > {slow_after_s:g}s")
        else:
            self.record_success()

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn` under `guard()`."""
        with self.guard():
            return fn(*args, **kwargs)

    # ------------------------------------------------------------------ internals

    def _refresh(self) -> None:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.open_seconds:
            self._move(BreakerState.HALF_OPEN, f"open for {self.open_seconds:g}s: probing")

    def _count_closed_failure(self, reason: str) -> None:
        if self.window is None:
            if self._failures >= self.failure_threshold:
                self._move(BreakerState.OPEN, f"{self._failures} consecutive failures: {reason}")
            return
        self._outcomes.append(True)
        calls = len(self._outcomes)
        failed = sum(self._outcomes)
        if calls >= max(self.min_calls, 1) and failed / calls >= self.failure_rate:
            self._move(BreakerState.OPEN, f"{failed}/{calls} calls failed: {reason}")

    def _release_probe(self) -> None:
        with self._lock:
            if self._state is BreakerState.HALF_OPEN:
                self._probes_in_flight = max(0, self._probes_in_flight - 1)

    def _clear_counts(self) -> None:
        self._failures = 0
        self._outcomes.clear()

    def _move(self, state: BreakerState, reason: str) -> None:
        previous = self._state
        at = self._clock()
        self._state = state
        self._detail = reason
        if state is BreakerState.OPEN:
            self._opened_at = at
        self._probes_in_flight = 0
        self._probe_successes = 0
        if state in (BreakerState.CLOSED, BreakerState.UNAVAILABLE):
            # OPEN and HALF_OPEN keep the consecutive count on display ("3 failures") until healed.
            self._clear_counts()
        if self._listener is None:
            return
        try:
            self._listener(BreakerTransition(self.name, previous, state, reason, at))
        except Exception:
            # Telemetry must never undo or block a safety transition; the state has already moved.
            log.exception("breaker %s: listener failed on %s -> %s", self.name, previous, state)
