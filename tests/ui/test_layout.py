"""Every terminal size: at 80x24 each panel is one key away; at 120x36 and up, all are on screen at once.

A panel counts as reachable when it and its ancestors are displayed and its whole frame lies on screen
above the footer (not clipped by the terminal's edge, nor pushed out by a sibling).
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from textual.geometry import Size
from textual.widget import Widget
from textual.widgets import Footer, Tabs

from esper_tui.engine.recorder import Recording, RecordingWriter
from esper_tui.engine.snapshot import AlertView
from esper_tui.links.base import StaticLink
from esper_tui.links.replay import ReplayLink
from esper_tui.ui.app import CURVES_BELOW_FROM, VIEWS, EsperApp, is_compact
from esper_tui.ui.replay_app import ReplayApp
from esper_tui.widgets.alert_strip import AlertStrip
from esper_tui.widgets.compile_queue import NOTE_MIN, PRIORITY, CompileQueue, column_plan
from esper_tui.widgets.plot_panel import PlotPanel
from esper_tui.widgets.training import TrainingPanel

from .conftest import SIZE
from .fixtures import forge_workers_snapshot, rich_snapshot

TINY = (80, 24)
"""What k9s and htop users live in: the compact, tabbed layout."""

SMALL = (120, 36)
"""The smallest terminal checked with the full layout."""

PANEL_IDS = {panel_id for _, _, ids in VIEWS for panel_id in ids}


def reachable(widget: Widget) -> bool:
    """Displayed, and its whole frame on screen above the footer."""
    if not all(node.display for node in widget.ancestors_with_self if isinstance(node, Widget)):
        return False
    screen = widget.screen
    footer = screen.query_one(Footer).region
    region = widget.region
    return bool(region) and screen.region.contains_region(region) and region.bottom <= footer.y


def panels(app: EsperApp) -> dict[str, Widget]:
    """The snapshot panels that live in the tabs, by id (the banner row and alert strip sit above them)."""
    found = {widget.id: widget for widget in app.dashboard.panels if isinstance(widget, Widget) and widget.id}
    return {panel_id: found[panel_id] for panel_id in PANEL_IDS}


def test_every_panel_belongs_to_one_tab() -> None:
    ids = [panel_id for _, _, view_ids in VIEWS for panel_id in view_ids]
    assert len(ids) == len(set(ids))


def test_compact_threshold() -> None:
    assert is_compact(Size(*TINY))
    assert is_compact(Size(160, 24)) and is_compact(Size(80, 50))
    assert not is_compact(Size(*SMALL)) and not is_compact(Size(*SIZE))


async def test_every_panel_is_reachable_by_keys_at_80x24() -> None:
    app = EsperApp(StaticLink(forge_workers_snapshot()))  # every panel has something to show
    async with app.run_test(size=TINY) as pilot:
        await pilot.pause()
        screen = app.dashboard
        assert screen.compact
        assert reachable(screen.query_one("#views", Tabs))
        all_panels = panels(app)
        assert set(all_panels) == PANEL_IDS, "every snapshot panel is on some tab"
        seen: dict[str, str] = {}
        for _ in VIEWS:
            for panel_id, panel in all_panels.items():
                if reachable(panel):
                    seen.setdefault(panel_id, screen.view)
            await pilot.press("t")
            await pilot.pause()
        assert screen.view == "forge", "t cycles back to the first tab"
        assert "plot" not in seen, "the curves stay closed until asked for"
        await pilot.press("v")
        await pilot.pause()
        assert screen.view == "training", "v opens the curves where they are shown"
        assert reachable(app.query_one(PlotPanel))
        seen["plot"] = screen.view
        assert seen == {panel_id: key for key, _, ids in VIEWS for panel_id in ids}
        # Only one tab at a time: the events never share the screen with the compile queue.
        await pilot.press("t")
        await pilot.pause()
        assert screen.view == "events"
        assert reachable(all_panels["events"]) and not reachable(all_panels["compile-queue"])


async def test_banner_and_alerts_stay_above_the_tabs_at_80x24() -> None:
    alert = AlertView(alertname="oona_queue_depth", severity="warning", summary="telemetry backlog 2450", since_ts=0.0)
    app = EsperApp(StaticLink(msgspec.structs.replace(rich_snapshot(), alerts=[alert])))
    async with app.run_test(size=TINY) as pilot:
        await pilot.pause()
        assert reachable(app.query_one("#banner")) and reachable(app.query_one("#forge-health"))
        assert reachable(app.query_one(AlertStrip))
        for _ in VIEWS:
            assert any(reachable(panel) for panel in panels(app).values())
            await pilot.press("t")
            await pilot.pause()


@pytest.mark.parametrize("size", [SMALL, SIZE], ids=["120x36", "160x50"])
async def test_full_layout_shows_every_panel_at_once(size: tuple[int, int]) -> None:
    app = EsperApp(StaticLink(forge_workers_snapshot()))  # every panel has something to show
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        assert not app.dashboard.compact
        assert not reachable(app.query_one("#views", Tabs))
        hidden = {panel_id for panel_id, panel in panels(app).items() if not reachable(panel)}
        assert hidden == {"plot"}
        await pilot.press("t")  # nothing to switch: the full layout stays as it is
        await pilot.pause()
        assert {panel_id for panel_id, panel in panels(app).items() if not reachable(panel)} == {"plot"}


@pytest.mark.parametrize("size", [SMALL, (140, 36), (120, 39), (120, 40), SIZE], ids=str)
@pytest.mark.parametrize("replay", [False, True], ids=["live", "replay"])
async def test_v_shows_the_curves_and_keeps_the_other_panels_at_every_full_size(
    size: tuple[int, int], replay: bool, tmp_path: Path
) -> None:
    """At 120x36 and 140x36 `v` pushed the seeds, training, events and Oona panels off the screen and showed no
    curves either (it worked from 40 rows); a replay, with its position bar, had the same trouble. Under 40
    rows the curves take the training summary's place."""
    snapshot = forge_workers_snapshot()  # every panel has something to show
    if replay:
        path = tmp_path / "run.esrec"
        writer = RecordingWriter(path)
        writer.write(snapshot)
        writer.close()
        app: EsperApp = ReplayApp(ReplayLink(Recording(path)))
    else:
        app = EsperApp(StaticLink(snapshot))
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        await pilot.press("v")
        await pilot.pause()
        plot = app.query_one(PlotPanel)
        assert reachable(plot)
        assert "train loss" in str(plot.render()), "the curves are drawn, not an empty frame"
        hidden = {panel_id for panel_id, panel in panels(app).items() if not reachable(panel)}
        assert hidden == ({"training"} if size[1] < CURVES_BELOW_FROM else set())
        await pilot.press("v")
        await pilot.pause()
        assert {panel_id for panel_id, panel in panels(app).items() if not reachable(panel)} == {"plot"}


async def test_the_forge_workers_panel_appears_only_with_workers() -> None:
    app = EsperApp(StaticLink(rich_snapshot()))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert not reachable(panels(app)["forge-workers"])  # one engine, its own sandbox: nothing to list
    app = EsperApp(StaticLink(forge_workers_snapshot()))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert reachable(panels(app)["forge-workers"])


async def test_resizing_switches_layouts_and_keeps_the_selection() -> None:
    app = EsperApp(StaticLink(rich_snapshot()))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        queue = app.query_one(CompileQueue)
        queue.move_cursor(row=4)
        assert queue.selected_blueprint() == "gru_block"
        await pilot.resize_terminal(*TINY)
        await pilot.pause()
        assert app.dashboard.compact
        assert "note" not in queue.shown_columns()
        assert queue.selected_blueprint() == "gru_block", "rebuilding the columns keeps the cursor"
        await pilot.resize_terminal(*SIZE)
        await pilot.pause()
        assert not app.dashboard.compact
        assert queue.shown_columns() == ["blueprint", "strategy", "state", "time", "step", "ver", "note"]
        assert queue.selected_blueprint() == "gru_block"


async def test_clicking_a_tab_shows_it() -> None:
    app = EsperApp(StaticLink(rich_snapshot()))
    async with app.run_test(size=TINY) as pilot:
        await pilot.pause()
        await pilot.click("#view-oona")
        await pilot.pause()
        assert app.dashboard.view == "oona"
        assert reachable(panels(app)["bus"]) and not reachable(panels(app)["events"])


async def test_curves_replace_the_training_summary_in_the_compact_layout() -> None:
    app = EsperApp(StaticLink(rich_snapshot()))
    async with app.run_test(size=TINY) as pilot:
        await pilot.pause()
        training = app.query_one(TrainingPanel)
        await pilot.press("t")
        await pilot.pause()
        assert reachable(training)
        await pilot.press("v")
        await pilot.pause()
        assert reachable(app.query_one(PlotPanel)) and not reachable(training)
        await pilot.press("v")
        await pilot.pause()
        assert reachable(training)


async def test_queue_columns_are_whole_at_80_columns() -> None:
    app = EsperApp(StaticLink(rich_snapshot()))
    async with app.run_test(size=TINY) as pilot:
        await pilot.pause()
        queue = app.query_one(CompileQueue)
        shown = queue.shown_columns()
        assert shown[:3] == ["blueprint", "strategy", "state"]
        used = sum(column.get_render_width(queue) for column in queue.ordered_columns)
        assert used <= queue.scrollable_content_region.width, "no column runs past the table's edge"
        widths = queue.content_widths()
        for column in queue.ordered_columns:
            assert column.width >= widths[str(column.key.value)], f"{column.key.value} is shown whole"


NO_SHAPE = frozenset({"shape"})


def test_column_plan_drops_the_least_useful_first() -> None:
    # a queue whose jobs name no slot shape (the shape column is left out, as the widget leaves it out)
    widths = {"blueprint": 15, "strategy": 10, "state": 11, "time": 6, "step": 14, "ver": 3, "note": 41}
    everything = column_plan(widths, 200, without=NO_SHAPE)
    assert [key for key, _ in everything] == ["blueprint", "strategy", "state", "time", "step", "ver", "note"]
    assert sum(width + 2 for _, width in everything) == 200, "the note stretches over the rest"
    assert [key for key, _ in column_plan(widths, 78, without=NO_SHAPE)] == [
        "blueprint",
        "strategy",
        "state",
        "time",
        "step",
        "ver",
    ]
    assert [key for key, _ in column_plan(widths, 42, without=NO_SHAPE)] == ["blueprint", "strategy", "state"]
    assert [key for key, _ in column_plan(widths, 40, without=NO_SHAPE)] == ["blueprint", "state", "time"], (
        "what fits, by value"
    )
    assert [key for key, _ in column_plan(widths, 5, without=NO_SHAPE)] == ["blueprint", "state"], (
        "a row keeps its name and state"
    )
    note = dict(column_plan(widths, 71 + NOTE_MIN + 2, without=NO_SHAPE))["note"]
    assert note == NOTE_MIN
    assert PRIORITY[:2] == ("blueprint", "state")


async def test_the_queue_keeps_focus_and_arrow_keys_at_80x24() -> None:
    app = EsperApp(StaticLink(rich_snapshot()))
    async with app.run_test(size=TINY) as pilot:
        await pilot.pause()
        queue = app.query_one(CompileQueue)
        assert app.focused is queue
        await pilot.press("down", "down")
        assert queue.selected_blueprint() == "conv1d_block"
        await pilot.press("t", "t", "t", "t")  # round the tabs and back to the Forge
        await pilot.pause()
        assert app.focused is queue
        await pilot.press("down")
        assert queue.selected_blueprint() == "attention_block"
