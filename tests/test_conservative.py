"""Conservative mode: entering, leaving, the operator hold and the calm period (fake clock)."""

from __future__ import annotations

import pytest

from esper_tui.engine.config import ConservativeModeConfig
from esper_tui.engine.forge.conservative import ConservativeMode
from esper_tui.engine.vocabulary import Strategy


class Recorder:
    """Clock and listener in one: tests move `now` and read `calls`."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[tuple[bool, str]] = []

    def clock(self) -> float:
        return self.now

    def listener(self, active: bool, reason: str) -> None:
        self.calls.append((active, reason))


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


def mode(rec: Recorder, calm_period_s: float = 0.0) -> ConservativeMode:
    return ConservativeMode(calm_period_s=calm_period_s, clock=rec.clock, listener=rec.listener)


def test_enter_and_leave_call_the_listener_once_each(rec):
    cm = mode(rec)
    assert not cm.active and cm.since is None
    rec.now = 5.0
    assert cm.enter("memory breaker open", "breaker")
    assert cm.active and cm.reason == "memory breaker open" and cm.since == 5.0
    assert not cm.enter("gpu breaker open", "breaker")  # idempotent: reason kept, no listener call
    assert cm.reason == "memory breaker open"
    assert cm.leave("operator", "operator")
    assert not cm.leave("operator", "operator")
    assert not cm.active and cm.since is None
    assert rec.calls == [(True, "memory breaker open"), (False, "operator")]


def test_policy_while_active(rec):
    cm = mode(rec)
    assert cm.max_concurrency(2) == 2 and cm.allows_aggressive()
    assert cm.strategy(Strategy.AGGRESSIVE) is Strategy.AGGRESSIVE and cm.timeout_s(300) == 300
    cm.enter("operator", "operator")
    assert cm.max_concurrency(2) == 1 and not cm.allows_aggressive()
    assert cm.strategy(Strategy.STANDARD) is Strategy.FAST
    assert cm.strategy(Strategy.EMERGENCY) is Strategy.EMERGENCY
    assert cm.timeout_s(300) == 600


def test_calm_period_leaves_after_no_breaker_open(rec):
    cm = mode(rec, calm_period_s=60)
    cm.enter("timeout breaker open", "breaker")
    cm.tick(any_breaker_open=True)
    rec.now = 100
    cm.tick(any_breaker_open=False)  # calm starts now
    assert cm.calm_remaining_s() == 60
    rec.now = 130
    cm.tick(any_breaker_open=True)  # a breaker opened again: calm restarts
    rec.now = 140
    cm.tick(any_breaker_open=False)
    rec.now = 199
    cm.tick(any_breaker_open=False)
    assert cm.active and cm.calm_remaining_s() == pytest.approx(1)
    rec.now = 200
    cm.tick(any_breaker_open=False)
    assert not cm.active
    assert rec.calls[-1] == (False, "calm period: no breaker open for 60s")


def test_zero_calm_period_means_only_the_operator_leaves(rec):
    cm = mode(rec, calm_period_s=0)
    cm.enter("gpu breaker open", "breaker")
    for now in (10, 10_000, 1_000_000):
        rec.now = now
        cm.tick(any_breaker_open=False)
    assert cm.active and cm.calm_remaining_s() is None
    assert cm.leave("operator", "operator")


def test_operator_hold_is_not_ended_by_the_calm_period(rec):
    cm = mode(rec, calm_period_s=10)
    cm.enter("memory breaker open", "breaker")
    cm.enter("operator asked", "operator")  # takes the hold, no second listener call
    assert cm.held_by == "operator" and cm.reason == "operator asked"
    for now in (0, 100, 200):
        rec.now = now
        cm.tick(any_breaker_open=False)
    assert not cm.leave("calm", "breaker")
    assert cm.active and len(rec.calls) == 1


def test_from_config_converts_minutes(rec):
    cm = ConservativeMode.from_config(ConservativeModeConfig(calm_period_minutes=2.5), clock=rec.clock)
    assert cm.calm_period_s == 150
    cm.enter("no listener is fine", "breaker")
    assert cm.active
