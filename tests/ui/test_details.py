"""The detail screens and the event log's keys, driven with Pilot over a link that holds a real aggregator's
snapshot and details (the story in benchmarks/story.py), plus SVG snapshots of every new screen."""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets._footer import FooterKey

from benchmarks.story import T0, story
from esper_tui.engine.aggregator import Aggregator
from esper_tui.engine.history import Details
from esper_tui.engine.recorder import Recording, RecordingWriter
from esper_tui.engine.snapshot import Snapshot
from esper_tui.engine.vocabulary import Subsystem
from esper_tui.links.base import StaticLink
from esper_tui.links.replay import ReplayLink
from esper_tui.ui.app import EsperApp
from esper_tui.ui.details.base import DetailScreen
from esper_tui.ui.details.decision import DecisionDetail
from esper_tui.ui.details.event import EventDetail
from esper_tui.ui.details.job import JobDetail
from esper_tui.ui.details.run_info import RunInfoScreen
from esper_tui.ui.details.seed import SeedDetail
from esper_tui.ui.help import HelpScreen
from esper_tui.ui.replay_app import ReplayApp
from esper_tui.widgets.compile_queue import CompileQueue
from esper_tui.widgets.events import EventsPanel, FilterInput

from .conftest import SIZE

TINY = (80, 24)


def story_state(epochs: int = 120) -> tuple[Snapshot, Details]:
    agg = Aggregator(clock=lambda: T0 + 1000)
    for event in story(epochs):
        agg.apply(event)
    return agg.snapshot(), agg.details()


@pytest.fixture(scope="module")
def state() -> tuple[Snapshot, Details]:
    return story_state()


def story_app(state: tuple[Snapshot, Details], **kwargs: Any) -> EsperApp:
    return EsperApp(StaticLink(*state), **kwargs)


def screen_text(app: EsperApp) -> str:
    screen = app.screen
    assert isinstance(screen, DetailScreen), screen
    return screen.text


async def focus(pilot: Pilot[object], selector: str) -> None:
    pilot.app.screen.query_one(selector).focus()
    await pilot.pause()


async def test_enter_on_a_seed_row_opens_its_history_and_f_shows_every_slot(state) -> None:
    app = story_app(state)
    async with app.run_test(size=SIZE) as pilot:
        await focus(pilot, "#seeds")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, SeedDetail) and app.screen.slot == "s0"
        text = screen_text(app)
        for words in ("Lifecycle", "germinate: accuracy flat", "Kernel served", "Field reports", "Graveyard"):
            assert words in text
        assert "s1 " not in text
        await pilot.press("f")
        await pilot.pause()
        assert app.screen.all_slots and "s1 " in screen_text(app)
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.dashboard
        await pilot.press("down", "enter")
        await pilot.pause()
        assert isinstance(app.screen, SeedDetail) and app.screen.slot == "s1"


async def test_enter_on_a_queue_row_opens_every_attempt(state) -> None:
    app = story_app(state)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        queue = app.dashboard.query_one(CompileQueue)
        assert queue.has_focus
        queue.move_cursor(row=queue.get_row_index("residual_block@40-64"))
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, JobDetail) and app.screen.blueprint_id == "residual_block"
        text = screen_text(app)
        assert "attempt 3" in text and "attempt 1" in text and "worker forge-2:4242" in text
        assert "timeout half_open" in text and "WAL transaction 7f3a9c0000000001" in text
        assert "error: timeout after 30 s" in text


async def test_event_log_keys_filter_and_open(state) -> None:
    app = story_app(state)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("slash")
        await pilot.pause()
        prompt = app.dashboard.query_one(FilterInput)
        assert prompt.display and prompt.has_focus
        await pilot.press(*"tamiyo")
        await pilot.pause()
        panel = app.dashboard.query_one(EventsPanel)
        _, details = state
        tamiyo = [e for e in details.log if e.line.source is Subsystem.TAMIYO]
        snapshot, _ = state
        shown = [line for line in snapshot.events if line.source is Subsystem.TAMIYO]
        assert len(panel.rows) == len(tamiyo) > len(shown), "the filter searches the whole scrollback"
        assert all(e.line.source is Subsystem.TAMIYO for e in panel.rows)
        await pilot.press("enter")  # keeps the filter, back to the log
        await pilot.pause()
        assert panel.has_focus and not prompt.display
        assert panel.cursor_entry == tamiyo[-1]
        await pilot.press("j", "j")
        assert panel.cursor_entry == tamiyo[-3]
        await pilot.press("k")
        assert panel.cursor_entry == tamiyo[-2]
        await pilot.press("G")
        assert panel.cursor_entry == tamiyo[0]
        await pilot.press("g")
        assert panel.cursor_entry == tamiyo[-1]
        await pilot.press("pagedown")
        height = panel.content_region.height
        assert panel.cursor_entry == tamiyo[-1 - height]
        await pilot.press("pageup")
        assert panel.cursor_entry == tamiyo[-1]
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, DecisionDetail)
        text = screen_text(app)
        assert "Options weighed" in text and "Validation it decided on" in text and "Slots it saw" in text
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("escape")  # clears the filter
        await pilot.pause()
        assert len(panel.rows) == len(details.log)
        await pilot.press("slash", *"tezzeret", "enter", "enter")
        await pilot.pause()
        newest = [e for e in details.log if e.line.source is Subsystem.TEZZERET][-1]
        assert isinstance(app.screen, EventDetail) and app.screen.entry == newest
        assert "Fields of the JobCompiled" in screen_text(app) and "wal_txn" in screen_text(app)


async def test_filter_by_level_and_words_and_esc_in_the_prompt(state) -> None:
    app = story_app(state)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("slash", *"warning slow")
        await pilot.pause()
        panel = app.dashboard.query_one(EventsPanel)
        assert panel.rows and all("slow step" in e.line.text for e in panel.rows)
        await pilot.press("escape")
        await pilot.pause()
        assert panel.filter.empty and not app.dashboard.query_one(FilterInput).display


async def test_enter_on_the_newest_tamiyo_event_opens_its_decision(state) -> None:
    app = story_app(state)
    async with app.run_test(size=SIZE) as pilot:
        await focus(pilot, "#events")
        panel = app.dashboard.query_one(EventsPanel)
        while panel.cursor_entry is not None and panel.cursor_entry.line.source is not Subsystem.TAMIYO:
            await pilot.press("j")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, DecisionDetail)
        _, details = state
        assert app.screen.entry.event_id == details.decisions[-1].event_id


async def test_i_shows_run_info(state) -> None:
    app = story_app(state)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("i")
        await pilot.pause()
        assert isinstance(app.screen, RunInfoScreen)
        text = screen_text(app)
        assert "run run-0001" in text and "CPU ISA avx2" in text and "Python 3.11.7" in text
        assert "operator key: 88c1d4e2f0a3b915" in text
        assert "* training.epochs = 120" in text and "(default null)" in text
        assert "state directory /var/esper" in text


async def test_the_covered_dashboard_keeps_its_footer_while_its_keys_stay_the_same(state) -> None:
    """Rebuilding the hidden dashboard's footer, key by key, was most of a detail screen's opening time; and Textual
    kept every rebuilt key alive (its data binding), so each open and close left nine widgets behind for good."""
    app = story_app(state)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        dashboard = app.screen
        keys = list(dashboard.query(FooterKey))
        await pilot.press("i")
        await pilot.pause()
        assert isinstance(app.screen, RunInfoScreen)
        assert list(dashboard.query(FooterKey)) == keys  # the very same widgets: nothing rebuilt while covered
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is dashboard
        assert list(dashboard.query(FooterKey)) == keys  # shown again with the same keys: still not rebuilt
        gc.collect()
        alive = sum(type(o) is FooterKey for o in gc.get_objects())
        for _ in range(5):
            await pilot.press("i")
            await pilot.pause()
            await pilot.press("escape")
            await pilot.pause()
        gc.collect()
        assert sum(type(o) is FooterKey for o in gc.get_objects()) == alive


async def test_detail_screens_say_when_there_is_no_history(state) -> None:
    snapshot, _ = state
    app = EsperApp(StaticLink(snapshot))
    async with app.run_test(size=SIZE) as pilot:
        await focus(pilot, "#seeds")
        await pilot.press("enter")
        await pilot.pause()
        assert "no history here yet" in screen_text(app)
        await pilot.press("escape", "i")
        await pilot.pause()
        assert "run run-0001" in screen_text(app) and "not known here" in screen_text(app)


async def test_help_and_palette_list_the_new_keys(state) -> None:
    app = story_app(state)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        keys = dict(app.screen.keys)
        assert keys["i"].startswith("Run info") and keys["/"].startswith("Filter the event log")
        assert "enter" in keys and "f" in keys and "j k g G" in keys and "J" in keys
        await pilot.press("escape")
        titles = {command.title for command in app.get_system_commands(app.screen)}
        assert {"Run info", "Filter the event log", "Open the selected seed slot"} <= titles
        footer = {binding.key for _, binding, enabled, _ in app.dashboard.active_bindings.values() if binding.show}
        assert {"i", "slash"} <= footer


# --------------------------------------------------------------------------- SVG snapshots


def opener(*keys: str, focus_on: str | None = None) -> Callable[[Pilot[object]], Awaitable[None]]:
    """Open a screen as an operator would; in the compact layout, the tab of the panel to focus comes first."""

    async def run_before(pilot: Pilot[object]) -> None:
        await pilot.pause()
        app = pilot.app
        assert isinstance(app, EsperApp)
        if focus_on is not None:
            if app.dashboard.compact:
                app.dashboard.show_view("training" if focus_on == "#seeds" else "events")
                await pilot.pause()
            app.screen.query_one(focus_on).focus()
            await pilot.pause()
        await pilot.press(*keys)
        await pilot.pause()

    return run_before


SCREENS = {
    "seed": opener("enter", focus_on="#seeds"),
    "seed_all": opener("enter", "f", focus_on="#seeds"),
    "job": opener("down", "enter"),
    "decision": opener("slash", *"germinate", "enter", "G", "enter"),
    "event": opener("slash", *"failed", "enter", "enter"),
    "run_info": opener("i"),
    "log_filtered": opener("slash", *"tamiyo", "enter"),
}


@pytest.mark.parametrize("size", [SIZE, TINY], ids=["160x50", "80x24"])
@pytest.mark.parametrize("name", sorted(SCREENS))
def test_detail_screen_snapshots(snap_compare, state, name: str, size: tuple[int, int]) -> None:
    assert snap_compare(story_app(state), terminal_size=size, run_before=SCREENS[name])


# --------------------------------------------------------------------------- replay


def record_story(path: Path, epochs: int = 40) -> None:
    """The story as a recording: a snapshot after each event, stamped with the event's time."""
    now = [T0]
    agg = Aggregator(clock=lambda: now[0])
    writer = RecordingWriter(path)
    for event in story(epochs):
        now[0] = event.ts
        agg.apply(event)
        writer.write(agg.snapshot())
    writer.close()


async def test_replay_has_the_same_depth_and_J_jumps_to_the_moment(tmp_path: Path) -> None:
    record_story(tmp_path / "run.esrec")
    with Recording(tmp_path / "run.esrec") as recording:
        link = ReplayLink(recording)
        app = ReplayApp(link)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("G")  # the end of the recording (the log is not focused)
            await pilot.pause()
            assert link.position == len(recording) - 1
            assert link.wait_for_history(timeout_s=30) is not None
            await pilot.press("slash", *"germinate", "enter")
            await pilot.pause()
            panel = app.dashboard.events_panel
            first = panel.rows[-1]
            await pilot.press("G")  # focused, the log's oldest line (not the recording's end)
            assert panel.cursor_entry == first and link.position == len(recording) - 1
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, DecisionDetail)
            assert "Slots it saw" in screen_text(app) and "J jump to this moment" in str(
                app.screen.query_one("#detail-box").border_subtitle
            )
            await pilot.press("J")
            await pilot.pause()
            assert app.screen is app.dashboard
            assert not link.playing and link.moment == first.line.ts
            shown = app.snapshot
            assert shown is not None and any(line.text == first.line.text for line in shown.events)
