"""CircuitBreaker state machine and the BreakerBoard policy, on a fake clock (no sleeps)."""

from __future__ import annotations

import logging

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from esper_tui.engine.config import BreakersConfig, ConservativeModeConfig, MemoryManagementConfig
from esper_tui.engine.forge.board import BreakerBoard
from esper_tui.engine.forge.breakers import BreakerOpenError, BreakerTransition, CircuitBreaker
from esper_tui.engine.forge.resources import GpuReading, MemoryReading
from esper_tui.engine.vocabulary import BreakerState

CLOSED, OPEN, HALF_OPEN, UNAVAILABLE = (
    BreakerState.CLOSED,
    BreakerState.OPEN,
    BreakerState.HALF_OPEN,
    BreakerState.UNAVAILABLE,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def seen() -> list[BreakerTransition]:
    return []


def make(clock: FakeClock, seen: list[BreakerTransition], **kwargs) -> CircuitBreaker:
    options = {"failure_threshold": 3, "open_seconds": 30.0} | kwargs
    return CircuitBreaker("b", clock=clock, listener=seen.append, **options)


def moves(seen: list[BreakerTransition]) -> list[tuple[BreakerState, BreakerState]]:
    return [(t.previous, t.state) for t in seen]


def opened(clock: FakeClock, seen: list[BreakerTransition], **kwargs) -> CircuitBreaker:
    breaker = make(clock, seen, **kwargs)
    breaker.trip("test")
    return breaker


# --------------------------------------------------------------------------- consecutive counting


def test_opens_on_n_consecutive_failures(clock, seen):
    breaker = make(clock, seen)
    breaker.record_failure("one")
    breaker.record_failure("two")
    assert breaker.state is CLOSED and breaker.failures == 2 and breaker.allow()
    breaker.record_failure("three")
    assert breaker.state is OPEN
    assert not breaker.allow()
    assert moves(seen) == [(CLOSED, OPEN)]
    assert seen[0].name == "b" and seen[0].at == clock.now and "three" in seen[0].reason


def test_success_resets_the_consecutive_count(clock, seen):
    breaker = make(clock, seen)
    for _ in range(5):
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()
    assert breaker.state is CLOSED and breaker.failures == 0 and seen == []


def test_open_moves_to_half_open_lazily_after_open_seconds(clock, seen):
    breaker = opened(clock, seen)
    clock.advance(29.9)
    assert breaker.state is OPEN and not breaker.allow()
    clock.advance(0.1)
    assert breaker.state is HALF_OPEN
    assert moves(seen) == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]


def test_half_open_admits_one_probe_and_success_closes(clock, seen):
    breaker = opened(clock, seen)
    clock.advance(30)
    assert breaker.allow()
    assert not breaker.allow()  # the one probe is still outstanding
    breaker.record_success()
    assert breaker.state is CLOSED and breaker.allow()
    assert moves(seen)[-1] == (HALF_OPEN, CLOSED)


def test_half_open_probe_failure_reopens_with_timer_restarted(clock, seen):
    breaker = opened(clock, seen)
    clock.advance(30)
    assert breaker.allow()
    clock.advance(5)
    breaker.record_failure("still broken")
    assert breaker.state is OPEN
    clock.advance(29)
    assert breaker.state is OPEN  # 64 s after the trip but only 29 s after the re-open
    clock.advance(1)
    assert breaker.state is HALF_OPEN
    assert moves(seen) == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN), (OPEN, HALF_OPEN)]


def test_several_probes_must_all_succeed(clock, seen):
    breaker = opened(clock, seen, half_open_probes=2)
    clock.advance(30)
    assert breaker.allow() and breaker.allow() and not breaker.allow()
    breaker.record_success()
    assert breaker.state is HALF_OPEN
    breaker.record_success()
    assert breaker.state is CLOSED


def test_slow_calls_count_as_failures(clock, seen):
    breaker = make(clock, seen, failure_threshold=2)
    breaker.record_slow("compile 301s > 300s")
    assert breaker.detail == "slow: compile 301s > 300s"
    breaker.record_slow()
    assert breaker.state is OPEN


def test_trip_reset_and_trip_while_open_restarts_timer(clock, seen):
    breaker = opened(clock, seen)
    clock.advance(20)
    breaker.trip("still over budget")  # no transition, but the timer restarts
    assert breaker.detail == "still over budget"
    clock.advance(20)
    assert breaker.state is OPEN
    breaker.reset()
    assert breaker.state is CLOSED and breaker.failures == 0
    breaker.reset()  # already closed: no transition
    assert moves(seen) == [(CLOSED, OPEN), (OPEN, CLOSED)]


def test_unavailable_allows_everything_and_ignores_outcomes(clock, seen):
    breaker = make(clock, seen, failure_threshold=1)
    breaker.mark_unavailable("no GPU: Driver Not Loaded")
    breaker.mark_unavailable("no GPU: Driver Not Loaded")
    breaker.record_failure()
    assert breaker.state is UNAVAILABLE and breaker.allow()
    view = breaker.view()
    assert view.state is UNAVAILABLE and view.detail == "no GPU: Driver Not Loaded"
    assert moves(seen) == [(CLOSED, UNAVAILABLE)]


# --------------------------------------------------------------------------- sliding window


def test_sliding_window_needs_minimum_volume(clock, seen):
    breaker = make(clock, seen, window=10, min_calls=5, failure_rate=0.5)
    for _ in range(4):
        breaker.record_failure()
    assert breaker.state is CLOSED  # 4/4 failed, but below the minimum volume
    breaker.record_failure()
    assert breaker.state is OPEN


def test_sliding_window_rate_forgets_old_calls(clock, seen):
    breaker = make(clock, seen, failure_threshold=1, window=4, min_calls=4, failure_rate=0.5)
    for ok in (False, True, True, True, True):  # one early failure falls out of the window
        breaker.record_success() if ok else breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is CLOSED  # 1 of the last 4 failed: 25 % < 50 %; threshold 1 is not consulted
    breaker.record_failure()
    assert breaker.state is OPEN  # 2 of the last 4


# --------------------------------------------------------------------------- call / guard


class Expected(Exception):
    pass


def test_call_counts_failures_but_not_excluded_exceptions(clock, seen):
    breaker = make(clock, seen, failure_threshold=1, excluded=(Expected,))

    def raise_(exc: BaseException) -> None:
        raise exc

    assert breaker.call(lambda x: x * 2, 21) == 42
    with pytest.raises(Expected):
        breaker.call(raise_, Expected("caller's fault"))
    assert breaker.state is CLOSED and breaker.failures == 0
    with pytest.raises(ValueError):
        breaker.call(raise_, ValueError("boom"))
    assert breaker.state is OPEN and breaker.detail.endswith("ValueError: boom")
    with pytest.raises(BreakerOpenError, match="'b' is open"):
        breaker.call(lambda: None)


def test_excluded_exception_hands_the_probe_back(clock, seen):
    breaker = opened(clock, seen, excluded=(Expected,))
    clock.advance(30)
    with pytest.raises(Expected), breaker.guard():
        raise Expected
    assert breaker.state is HALF_OPEN and breaker.probes_in_flight == 0
    with breaker.guard():
        pass
    assert breaker.state is CLOSED


def test_guard_records_slow_calls(clock, seen):
    breaker = make(clock, seen, failure_threshold=1)
    with breaker.guard(slow_after_s=10):
        clock.advance(5)
    assert breaker.state is CLOSED
    with breaker.guard(slow_after_s=10):
        clock.advance(11)
    assert breaker.state is OPEN and "slow: 11.0s > 10s" in seen[-1].reason


def test_listener_failure_does_not_block_the_transition(clock, caplog):
    def broken(_: BreakerTransition) -> None:
        raise RuntimeError("telemetry down")

    breaker = CircuitBreaker("b", failure_threshold=1, open_seconds=1, clock=clock, listener=broken)
    with caplog.at_level(logging.ERROR):
        breaker.record_failure()
    assert breaker.state is OPEN
    assert "listener failed" in caplog.text


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_threshold": 0},
        {"open_seconds": -1},
        {"half_open_probes": 0},
        {"window": 0},
        {"failure_rate": 0.0},
    ],
)
def test_rejects_nonsense_configuration(kwargs):
    with pytest.raises(ValueError):
        CircuitBreaker("b", **({"failure_threshold": 1, "open_seconds": 1.0} | kwargs))


# --------------------------------------------------------------------------- stateful invariants


class BreakerMachine(RuleBasedStateMachine):
    """Random call sequences: the state stays in the enum, half-open never has more than
    `half_open_probes` calls outstanding, and the listener's transitions form one chain."""

    @initialize(
        threshold=st.integers(1, 4),
        probes=st.integers(1, 3),
        window=st.none() | st.integers(1, 6),
        min_calls=st.integers(0, 4),
    )
    def build(self, threshold: int, probes: int, window: int | None, min_calls: int) -> None:
        self.clock = FakeClock()
        self.seen: list[BreakerTransition] = []
        self.breaker = CircuitBreaker(
            "prop",
            failure_threshold=threshold,
            open_seconds=10.0,
            half_open_probes=probes,
            window=window,
            min_calls=min_calls,
            clock=self.clock,
            listener=self._on_transition,
        )
        self.outstanding = 0  # probes granted in the current half-open period and not yet answered

    def _on_transition(self, transition: BreakerTransition) -> None:
        self.seen.append(transition)
        self.outstanding = 0  # every state starts without outstanding probes

    def _answered(self) -> None:
        self.outstanding = max(0, self.outstanding - 1)

    @rule()
    def allow(self) -> None:
        granted = self.breaker.allow()
        if granted and self.breaker.state is HALF_OPEN:
            self.outstanding += 1

    @rule()
    def success(self) -> None:
        self.breaker.record_success()
        self._answered()

    @rule()
    def failure(self) -> None:
        self.breaker.record_failure("f")
        self._answered()

    @rule()
    def slow(self) -> None:
        self.breaker.record_slow("s")
        self._answered()

    @rule()
    def trip(self) -> None:
        self.breaker.trip("t")

    @rule()
    def reset(self) -> None:
        self.breaker.reset()

    @rule()
    def unavailable(self) -> None:
        self.breaker.mark_unavailable("u")

    @rule(seconds=st.floats(0, 15))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def state_is_known(self) -> None:
        assert self.breaker.state in set(BreakerState)

    @invariant()
    def half_open_probe_limit(self) -> None:
        assert self.breaker.probes_in_flight <= self.breaker.half_open_probes
        assert self.outstanding <= self.breaker.half_open_probes

    @invariant()
    def transitions_chain(self) -> None:
        state = self.breaker.state  # read first: it may fire a lazy transition
        last = CLOSED
        for t in self.seen:
            assert t.previous is last and t.state is not t.previous
            last = t.state
        assert last is state

    @invariant()
    def closed_means_below_threshold(self) -> None:
        if self.breaker.window is None and self.breaker.state is CLOSED:
            assert self.breaker.failures < self.breaker.failure_threshold


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


# --------------------------------------------------------------------------- the board


def memory_reading(mb: float) -> MemoryReading:
    return MemoryReading(rss_bytes=int(mb * 1024 * 1024), system_available_bytes=1, system_total_bytes=2)


def gpu_reading(percent: float) -> GpuReading:
    return GpuReading(True, percent, 1, 2, "Fake GPU", f"Fake GPU: {percent}%")


NO_GPU = GpuReading.unavailable("Driver Not Loaded")


@pytest.fixture
def board(clock, seen) -> BreakerBoard:
    return BreakerBoard(
        BreakersConfig(failure_threshold=2, open_seconds=30.0, half_open_probes=1),
        MemoryManagementConfig(memory_budget_mb=1000),
        ConservativeModeConfig(gpu_threshold_percent=25.0, threshold_duration_minutes=5.0),
        clock=clock,
        listener=seen.append,
    )


def test_board_views_in_fixed_order(board):
    board.poll(memory_reading(100), NO_GPU)
    views = board.views()
    assert [v.name for v in views] == ["memory", "gpu", "timeout"]
    memory, gpu, timeout = views
    assert memory.state is CLOSED and memory.reading == pytest.approx(100) and memory.threshold == 1000
    assert memory.unit == "MB"
    assert gpu.state is UNAVAILABLE and gpu.detail == "no GPU: Driver Not Loaded" and gpu.reading is None
    assert timeout.state is CLOSED and timeout.threshold == 2
    assert not board.any_open
    with pytest.raises(KeyError):
        board["disk"]


def test_board_memory_trips_over_budget_and_heals_through_half_open(board, clock, seen):
    board.poll(memory_reading(1200), NO_GPU)
    assert board.memory.state is OPEN and board.any_open
    assert "1200 MB" in board.memory.detail and "budget 1000 MB" in board.memory.detail
    clock.advance(20)
    board.poll(memory_reading(1100), NO_GPU)  # still over: timer restarts
    clock.advance(20)
    board.poll(memory_reading(500), NO_GPU)
    assert board.memory.state is OPEN  # healthy, but not yet open_seconds since the last bad reading
    clock.advance(10)
    assert board.any_open  # half-open still counts as open for the calm period
    board.poll(memory_reading(500), NO_GPU)
    assert board.memory.state is CLOSED and not board.any_open
    memory_moves = [(t.previous, t.state) for t in seen if t.name == "memory"]
    assert memory_moves == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


def test_board_gpu_trips_only_after_sustained_duration(board, clock):
    board.poll(memory_reading(1), gpu_reading(90))
    clock.advance(299)
    board.poll(memory_reading(1), gpu_reading(90))
    assert board.gpu.state is CLOSED
    clock.advance(1)
    board.poll(memory_reading(1), gpu_reading(90))
    assert board.gpu.state is OPEN and "90% > 25% for 5 min" in board.gpu.detail
    assert board.view("gpu").reading == 90


def test_board_gpu_dip_restarts_the_sustain_window(board, clock):
    for percent in (90, 90, 10, 90, 90):
        board.poll(memory_reading(1), gpu_reading(percent))
        clock.advance(100)
    assert board.gpu.state is CLOSED  # only 200 s above since the dip


def test_board_gpu_comes_back_from_unavailable(board, seen):
    board.poll(memory_reading(1), NO_GPU)
    board.poll(memory_reading(1), gpu_reading(5))
    assert board.gpu.state is CLOSED
    assert [(t.previous, t.state) for t in seen] == [(CLOSED, UNAVAILABLE), (UNAVAILABLE, CLOSED)]


def test_board_timeout_is_fed_by_the_forge(board):
    board.timeout.record_slow("compile took 301 s")
    assert board.view("timeout").reading == 1
    board["timeout"].record_slow("compile took 302 s")
    assert board.timeout.state is OPEN and board.any_open


def test_board_from_config_uses_defaults():
    from esper_tui.engine.config import TezzeretConfig

    board = BreakerBoard.from_config(TezzeretConfig())
    assert board.memory_budget_mb == 8192 and board.gpu_threshold_percent == 25.0
    assert board.timeout.failure_threshold == 3
