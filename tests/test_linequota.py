"""The event log's quota for lines from outside (refused commands): a few shown, the rest summed up."""

from __future__ import annotations

from esper_tui.engine.linequota import LineQuota


def test_a_flood_gives_a_few_lines_then_one_summary_per_window_and_a_quiet_window_restores_them(fake_clock):
    quota = LineQuota(3, 10.0, clock=fake_clock)
    assert [quota.admit() for _ in range(100)] == [True] * 3 + [False] * 97
    assert quota.summary("commands rejected") is None  # the window is still open
    fake_clock.advance(10.0)
    assert quota.summary("commands rejected") == "97 more commands rejected in the last 10 s"
    assert [quota.admit() for _ in range(50)] == [False] * 50  # the flood goes on: no more single lines
    fake_clock.advance(10.0)
    assert quota.summary("commands rejected") == "50 more commands rejected in the last 10 s"
    fake_clock.advance(10.0)
    assert quota.summary("commands rejected") is None  # a quiet window
    assert [quota.admit() for _ in range(4)] == [True] * 3 + [False]
