"""The compare screen: its keys (Pilot) and its looks at 80x24 and 160x50 (SVG snapshots)."""

from __future__ import annotations

import pytest
from textual.pilot import Pilot
from textual.widgets import Static

from esper_tui.ui.compare_app import CompareApp, CompareScreen
from esper_tui.ui.comparison import Comparison, compare, read_run
from esper_tui.widgets.compare_curves import CompareCurves, overlay
from esper_tui.widgets.compare_table import CompareTable
from tests.recorded_runs import RUN_A, RUN_B, two_runs

from .conftest import SIZE

TINY = (80, 24)


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory) -> Comparison:
    a, b = two_runs(tmp_path_factory.mktemp("runs"))
    return compare(read_run(a, "A")[0], read_run(b, "B")[0])


async def _steady(pilot: Pilot[object]) -> None:
    await pilot.pause()


def test_compare_screen(snap_compare, comparison: Comparison) -> None:
    """160x50: the final table beside the curves, both runs' decisions below."""
    assert snap_compare(CompareApp(comparison), terminal_size=SIZE, run_before=_steady)


def test_compare_screen_80x24(snap_compare, comparison: Comparison) -> None:
    """80x24: the table above the curves; the decisions are a scroll away."""
    assert snap_compare(CompareApp(comparison), terminal_size=TINY, run_before=_steady)


def test_compare_screen_80x24_at_the_end(snap_compare, comparison: Comparison) -> None:
    """G at 80x24 scrolls to both runs' decisions."""
    assert snap_compare(CompareApp(comparison), terminal_size=TINY, press=["G"], run_before=_steady)


async def test_keys_scroll_the_body_and_q_quits(comparison: Comparison) -> None:
    app = CompareApp(comparison)
    async with app.run_test(size=TINY) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        body = screen.body
        assert body.max_scroll_y > 3  # 80x24 cannot show it all: there is somewhere to scroll to
        await pilot.press("j", "j", "j")
        assert body.scroll_y == 3
        await pilot.press("k")
        assert body.scroll_y == 2
        await pilot.press("G")
        assert body.scroll_y == body.max_scroll_y
        await pilot.press("g")
        assert body.scroll_y == 0
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0 and not app.is_running


async def test_ctrl_q_quits(comparison: Comparison) -> None:
    app = CompareApp(comparison)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+q")
        await pilot.pause()
    assert not app.is_running


async def test_the_title_names_both_runs_and_the_layout_follows_the_width(comparison: Comparison) -> None:
    app = CompareApp(comparison)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        title = str(app.screen.query_one("#compare-title", Static).render())
        assert f"A {RUN_A}" in title and f"B {RUN_B}" in title and "task mnist1d" in title
        table, curves = app.screen.query_one(CompareTable), app.screen.query_one(CompareCurves)
        assert not app.screen.has_class("-narrow") and curves.region.x > table.region.x  # side by side
        await pilot.resize_terminal(*TINY)
        await pilot.pause()
        assert app.screen.has_class("-narrow")
        assert curves.region.x == table.region.x and curves.region.y > table.region.y  # stacked


def test_overlaid_curves_share_one_scale(comparison: Comparison) -> None:
    """Run B's accuracy ends higher than A's: on one scale B's last block is the top one and A's is lower, and
    B's curve runs 4 epochs further along the one epoch axis."""
    lines = overlay(comparison, 60).plain.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("val acc"))
    val_a, val_b = lines[at], lines[at + 1]
    assert val_a[10:13] == " A " and val_b[10:13] == " B "
    curve_a, curve_b = val_a[13:-8].rstrip(), val_b[13:-8].rstrip()
    assert curve_b[-1] == "█" and curve_a[-1] < "█"
    assert len(curve_b) == 39 and len(curve_a) == int(14 / (18 / 39))  # epochs 1-14 of 1-18
