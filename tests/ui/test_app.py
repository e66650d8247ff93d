"""Dashboard behaviour through Textual's Pilot: keys send the right commands, panels follow snapshots."""

from __future__ import annotations

import msgspec
import pytest
from textual.app import App
from textual.content import Content
from textual.widgets import OptionList, Sparkline, Static
from textual.widgets._footer import FooterKey

from esper_tui.engine.contracts import AnyCommand, PauseTraining, Recompile, RecompileAll, SetConservativeMode
from esper_tui.engine.kernels.pipelines import settings_for, strategy_help
from esper_tui.engine.snapshot import LinkView, Snapshot
from esper_tui.engine.vocabulary import SCHEMA_VERSION, JobStatus, LinkState, Strategy, TrainingStatus
from esper_tui.links.base import CommandUnavailable, StaticLink
from esper_tui.ui.app import EsperApp
from esper_tui.ui.help import KEY_WIDTH, HelpScreen, KeyTable
from esper_tui.widgets import format as fmt
from esper_tui.widgets.breakers import BreakersPanel
from esper_tui.widgets.bus_panel import BusPanel, short_stream
from esper_tui.widgets.compile_queue import CompileQueue
from esper_tui.widgets.confirm import Confirm
from esper_tui.widgets.events import EventsPanel
from esper_tui.widgets.plot_panel import PlotPanel
from esper_tui.widgets.seeds import SeedsPanel
from esper_tui.widgets.status_banner import StatusBanner
from esper_tui.widgets.strategy_picker import StrategyPicker
from esper_tui.widgets.training import TrainingPanel
from esper_tui.widgets.wal_panel import WalPanel

from .conftest import SIZE, settle
from .fixtures import (
    T0,
    bus_trouble_snapshot,
    compile_disabled_snapshot,
    live_snapshot,
    remote_snapshot,
    rich_snapshot,
    silent_snapshot,
    stopped_snapshot,
    with_job,
)


def plain(app: EsperApp, selector: str | type) -> str:
    """The text a Static-based panel currently shows."""
    widget = app.screen.query_one(selector)  # type: ignore[call-overload]
    return str(widget.render())


def table_rows(app: EsperApp, selector: str) -> list[tuple[str, str]]:
    """(key, description) as a help table shows them, one cell each."""
    table = app.screen.query_one(selector, KeyTable)
    cells = [str(cell.render()) for cell in table.query(Static)]
    return list(zip(cells[::2], cells[1::2], strict=True))


def payload(command: AnyCommand) -> dict[str, object]:
    """A command without its envelope (id, timestamp, target, signature: the link's to fill), for comparison."""
    fields = msgspec.structs.asdict(command)
    for key in ("command_id", "ts", "target", "signature"):
        fields.pop(key)
    return {"type": type(command).__name__, **fields}


def sent(link: StaticLink) -> list[dict[str, object]]:
    return [payload(command) for command in link.sent]


def replaced(snapshot: Snapshot, **changes: object) -> Snapshot:
    return msgspec.structs.replace(snapshot, seq=snapshot.seq + 1, **changes)


# --------------------------------------------------------------------------- banner (seed 002)


async def test_banner_title_says_compiled(make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE):
        banner = app.screen.query_one(StatusBanner)
        assert Content.from_markup(banner.border_title).plain == "TAMIYO [compiled]"
        assert banner.has_class("-compiled")
        assert "inductor:default" in plain(app, StatusBanner)


async def test_banner_title_plain_when_compile_disabled(make_app, link) -> None:
    link.set(compile_disabled_snapshot())
    app = make_app()
    async with app.run_test(size=SIZE):
        banner = app.screen.query_one(StatusBanner)
        assert Content.from_markup(banner.border_title).plain == "TAMIYO [eager: compile off]"
        assert not banner.has_class("-compiled")
        text = plain(app, StatusBanner)
        assert "EAGER (compile off)" in text
        assert "inductor" not in text


async def test_banner_says_eager_when_compiling_but_eager_was_faster(make_app, link) -> None:
    """It read `TAMIYO [compiled]` while every seed's kernel column said `eager (faster)`."""
    snapshot = rich_snapshot()
    seeds = [
        msgspec.structs.replace(seed, kernel="eager (faster)") if seed.blueprint_id else seed
        for seed in snapshot.training.seeds
    ]
    link.set(replaced(snapshot, training=msgspec.structs.replace(snapshot.training, seeds=seeds)))
    app = make_app()
    async with app.run_test(size=SIZE):
        banner = app.screen.query_one(StatusBanner)
        assert Content.from_markup(banner.border_title).plain == "TAMIYO [eager: faster]"
        assert not banner.has_class("-compiled")
        assert "eager, measured faster than inductor:default" in plain(app, StatusBanner)


async def test_banner_and_training_panel_say_what_training_waits_for(make_app, link) -> None:
    """A compiling run read EAGER and `training waiting` for 6-15 s with no reason."""
    snapshot = rich_snapshot()
    waiting = msgspec.structs.replace(
        snapshot.training, status=TrainingStatus.WAITING, seeds=[], waiting_for="a first kernel from the forge"
    )
    link.set(replaced(snapshot, training=waiting))
    app = make_app()
    async with app.run_test(size=SIZE):
        banner = app.screen.query_one(StatusBanner)
        assert Content.from_markup(banner.border_title).plain == "TAMIYO [waiting for kernels]"
        assert "inductor:default · waiting for a first kernel from the forge" in plain(app, StatusBanner)
        status = str(app.screen.query_one("#training-status", Static).render())
        assert status == "WAITING for a first kernel from the forge"


async def test_banner_shows_run_and_forge_summary(make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE):
        text = plain(app, StatusBanner)
        for fragment in (
            "epoch 17/30",
            "acc 71.4 %",
            "412 samples/s",
            "bus embedded",
            "conservative off",
            "forge 3/6 compiled, 1 running, 1 queued, 1 failed",
            "training running",
        ):
            assert fragment in text


async def test_banner_highlights_conservative_mode_and_pause(make_app, link) -> None:
    snapshot = rich_snapshot()
    link.set(
        msgspec.structs.replace(
            snapshot,
            forge=msgspec.structs.replace(
                snapshot.forge, conservative_mode=True, conservative_reason="memory breaker open"
            ),
            training=msgspec.structs.replace(snapshot.training, status=TrainingStatus.PAUSED),
        )
    )
    app = make_app()
    async with app.run_test(size=SIZE):
        banner = app.screen.query_one(StatusBanner)
        text = plain(app, StatusBanner)
        assert "CONSERVATIVE ON (memory breaker open)" in text
        assert "training paused" in text
        assert banner.has_class("-conservative")
        assert banner.has_class("-paused")


# --------------------------------------------------------------------------- panels


async def test_panels_render_their_slices(make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE):
        breakers = plain(app, BreakersPanel)
        assert "memory" in breakers and "1.2/8.0 GiB" in breakers
        assert "n/a" in breakers and "no GPU" in breakers
        assert "half-open" in breakers and "2 fail" in breakers
        wal = plain(app, WalPanel)
        for fragment in ("var/tezzeret/wal", "2 segments", "48 KiB", "212 commits", "open 1 (7f3a9c)"):
            assert fragment in wal
        assert "checkpoint 12 s ago" in wal  # measured against snapshot.ts, not the wall clock
        seeds = plain(app, SeedsPanel)
        assert "BLENDING" in seeds and "conv1d_block" in seeds and "inductor:default" in seeds
        assert "DORMANT" in seeds
        events = plain(app, EventsPanel).splitlines()
        assert events[0].startswith("12:01:12 kasmina")  # newest first, UTC
        assert len(events) == 8
        training = app.screen.query_one(TrainingPanel)
        curves = training.query(Sparkline)
        assert [len(curve.data or []) for curve in curves] == [20, 20]
        assert "epoch 17/30" in str(training.query_one("#training-status").render())


async def test_a_tasks_own_slot_names_are_shown_whole(make_app, link) -> None:
    """A user task's slots (`features`, `head`) were cut to `f…` and `h…` by the 2-cell slot column."""
    snapshot = rich_snapshot()
    names = iter(["features", "head"])
    seeds = [msgspec.structs.replace(seed, slot=next(names)) for seed in snapshot.training.seeds]
    link.set(replaced(snapshot, training=msgspec.structs.replace(snapshot.training, seeds=seeds)))
    app = make_app()
    async with app.run_test(size=SIZE):
        rows = plain(app, SeedsPanel).splitlines()
        assert rows[1].startswith("features BLENDING") and rows[-1].startswith("head     DORMANT"), rows


async def test_compile_queue_columns(make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE):
        table = app.screen.query_one(CompileQueue)
        assert table.blueprint_ids() == [
            "mlp_block",
            "res_block",
            "conv1d_block",
            "attention_block",
            "gru_block",
            "layernorm_mlp",
        ]
        mlp = [str(cell) for cell in table.get_row("mlp_block")]
        assert mlp[:6] == ["mlp_block", "Standard", "● compiled", "7.9 s", "0.41/0.47 ms", "v2"]
        running = [str(cell) for cell in table.get_row("res_block")]
        assert running[2:4] == ["● compiling", "5.1 s"]  # started 5.1 s before snapshot.ts
        failed = [str(cell) for cell in table.get_row("gru_block")]
        assert failed[2] == "● failed #3"
        assert failed[-1].startswith("timeout after 300 s")


async def test_compile_queue_shows_one_row_per_blueprint_and_shape(make_app, link) -> None:
    """Kernels are compiled per slot shape: a blueprint serving two shapes has two rows, the shape column says
    which (it is left out while no job names a shape), and the cursor's blueprint is the row's blueprint."""
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one(CompileQueue)
        assert "shape" not in table.shown_columns()
        snapshot = rich_snapshot()
        mlp = snapshot.forge.jobs[0]
        jobs = [
            msgspec.structs.replace(mlp, shape="40-64"),
            msgspec.structs.replace(mlp, shape="8x8x8-16x8x8", status=JobStatus.QUEUED, version=None),
        ]
        link.set(replaced(snapshot, forge=msgspec.structs.replace(snapshot.forge, jobs=jobs)))
        app.poll_link()
        await pilot.pause()
        await pilot.pause()
        assert table.blueprint_ids() == ["mlp_block@40-64", "mlp_block@8x8x8-16x8x8"]
        assert table.shown_columns()[:2] == ["blueprint", "shape"]
        rows = [[str(cell) for cell in table.get_row(key)][:3] for key in table.blueprint_ids()]
        assert rows == [["mlp_block", "40-64", "Standard"], ["mlp_block", "8x8x8-16x8x8", "Standard"]]
        table.move_cursor(row=1)
        assert table.selected_blueprint() == "mlp_block"


async def test_new_snapshot_updates_rows_in_place(make_app, link) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one(CompileQueue)
        before = table.redraws
        link.set(
            with_job(
                rich_snapshot(),
                "res_block",
                status=JobStatus.COMPILED,
                duration_s=6.4,
                version=1,
                step_ms_compiled=0.6,
                step_ms_eager=0.7,
                backend="inductor",
            )
        )
        app.poll_link()
        await pilot.pause()
        assert table.redraws == before + 1
        assert table.row_count == 6
        assert len(set(table.blueprint_ids())) == 6
        row = [str(cell) for cell in table.get_row("res_block")]
        assert row[2:5] == ["● compiled", "6.4 s", "0.60/0.70 ms"]
        assert "forge 4/6 compiled" in plain(app, StatusBanner)


async def test_rows_are_added_and_removed_by_key(make_app, link) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one(CompileQueue)
        snapshot = rich_snapshot()
        jobs = [job for job in snapshot.forge.jobs if job.blueprint_id != "conv1d_block"]
        jobs.append(msgspec.structs.replace(jobs[0], blueprint_id="gated_mlp", status=JobStatus.QUEUED))
        link.set(replaced(snapshot, forge=msgspec.structs.replace(snapshot.forge, jobs=jobs)))
        app.poll_link()
        await pilot.pause()
        assert table.blueprint_ids() == [
            "mlp_block",
            "res_block",
            "attention_block",
            "gru_block",
            "layernorm_mlp",
            "gated_mlp",
        ]


async def test_same_seq_is_skipped_and_equal_slices_do_not_redraw(make_app, link) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        banner = app.screen.query_one(StatusBanner)
        table = app.screen.query_one(CompileQueue)
        banner_draws, table_draws = banner.redraws, table.redraws
        # Same seq: the app does not even look at it.
        link.set(compile_disabled_snapshot(seq=42))
        app.poll_link()
        await pilot.pause()
        assert banner.redraws == banner_draws
        assert banner.border_title != "TAMIYO"
        # New seq, identical content: every panel compares its slice and skips the redraw.
        link.set(rich_snapshot(seq=43))
        app.poll_link()
        await pilot.pause()
        assert (banner.redraws, table.redraws) == (banner_draws, table_draws)


async def test_covered_dashboard_catches_up_when_uncovered(make_app, link) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one(CompileQueue)
        draws = table.redraws
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        link.set(with_job(rich_snapshot(), "conv1d_block", status=JobStatus.COMPILING, started_ts=T0 - 1))
        app.poll_link()
        await pilot.pause()
        assert table.redraws == draws  # covered: no redraw
        await pilot.press("escape")
        await pilot.pause()
        assert table.redraws == draws + 1
        assert str(table.get_row("conv1d_block")[2]) == "● compiling"


async def test_hidden_panel_defers_redraw_until_shown(make_app, link) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        events = app.screen.query_one(EventsPanel)
        draws = events.redraws
        events.display = False
        await pilot.pause()
        snapshot = rich_snapshot()
        extra = msgspec.structs.replace(snapshot.events[-1], ts=T0, text="s0 blending alpha 0.50")
        link.set(replaced(snapshot, events=[*snapshot.events, extra]))
        app.poll_link()
        await pilot.pause()
        assert events.redraws == draws
        events.display = True
        await pilot.pause()
        assert events.redraws == draws + 1
        assert "alpha 0.50" in plain(app, EventsPanel).splitlines()[0]


async def test_polling_picks_up_new_snapshots(make_app, link) -> None:
    app = make_app(refresh_hz=50)
    async with app.run_test(size=SIZE) as pilot:
        link.set(compile_disabled_snapshot(seq=99))
        await pilot.pause(0.1)
        title = app.screen.query_one(StatusBanner).border_title
        assert Content.from_markup(title).plain == "TAMIYO [eager: compile off]"


# --------------------------------------------------------------------------- waiting state


async def test_waiting_for_engine(make_app, link) -> None:
    link.set(None)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        assert app.screen.query_one("#waiting").display
        assert not app.screen.query_one("#body").display
        assert "waiting for engine" in plain(app, StatusBanner)
        await pilot.press("r", "c", "p")
        await settle(pilot)
        assert link.sent == []
        assert "no blueprint selected" in app.spy.texts()
        assert any("waiting for engine" in text for text in app.spy.texts())
        link.set(rich_snapshot())
        app.poll_link()
        await pilot.pause()
        assert not app.screen.query_one("#waiting").display
        assert app.screen.query_one("#body").display
        assert app.screen.query_one(CompileQueue).row_count == 6


# --------------------------------------------------------------------------- keys -> commands


async def test_r_recompiles_the_cursor_row(make_app, link) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("r")
        await settle(pilot)
        await pilot.press("down", "r")
        await settle(pilot)
        envelope = {"type": "Recompile", "schema_version": SCHEMA_VERSION, "issued_by": "operator", "strategy": None}
        assert sent(link) == [
            {**envelope, "blueprint_id": "mlp_block"},
            {**envelope, "blueprint_id": "res_block"},
        ]
        assert "Recompile mlp_block (standard) requested" in app.spy.texts()


async def test_R_asks_then_recompiles_everything(make_app, link) -> None:
    """`R` queued the whole catalog again without asking."""
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("R")
        await settle(pilot)
        assert isinstance(app.screen, Confirm)
        assert "all 6 blueprints" in str(app.screen.query_one("#confirm-question", Static).render())
        await pilot.press("n")
        await settle(pilot)
        assert link.sent == [] and not isinstance(app.screen, Confirm)
        await pilot.press("R", "y")
        await settle(pilot)
        assert [type(command) for command in link.sent] == [RecompileAll]
        assert link.sent[0].strategy is None


async def test_r_in_conservative_mode_says_what_will_really_compile(make_app, link) -> None:
    """In conservative mode `r` said "(standard)" while the forge compiled Fast."""
    snapshot = rich_snapshot()
    link.set(msgspec.structs.replace(snapshot, forge=msgspec.structs.replace(snapshot.forge, conservative_mode=True)))
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("r")
        await settle(pilot)
        assert "Recompile mlp_block (fast, not standard: conservative mode) requested" in app.spy.texts()
        await pilot.press("s")
        options = app.screen.query_one(OptionList)
        assert options.get_option(Strategy.STANDARD.value).disabled
        assert "conservative mode compiles Fast" in str(options.get_option(Strategy.STANDARD.value).prompt)
        assert options.highlighted == list(Strategy).index(Strategy.FAST)


async def test_aggressive_is_refused_with_the_reason_when_its_pipeline_is_off(make_app, link) -> None:
    """`s` -> Aggressive was accepted, then silently queued as Standard with the aggressive pipeline off."""
    app = make_app()  # rich_snapshot: enable_aggressive_pipeline is false
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("s")
        options = app.screen.query_one(OptionList)
        aggressive = options.get_option(Strategy.AGGRESSIVE.value)
        assert aggressive.disabled and "enable_aggressive_pipeline is false" in str(aggressive.prompt)
        await pilot.press("escape")
        await run_palette(pilot, "recompile selected: aggressive")
        await settle(pilot)
        assert link.sent == []
        assert any(
            "Recompile mlp_block (aggressive) refused: the aggressive pipeline is off" in text
            for text in app.spy.texts()
        )


@pytest.mark.parametrize("status", [TrainingStatus.FINISHED, TrainingStatus.FAILED])
async def test_p_after_training_ended_says_so(make_app, link, status: TrainingStatus) -> None:
    """`p` after training had finished passed without a word."""
    snapshot = rich_snapshot()
    link.set(msgspec.structs.replace(snapshot, training=msgspec.structs.replace(snapshot.training, status=status)))
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p")
        await settle(pilot)
        assert link.sent == []
        assert f"training has {status.value}: nothing to pause or resume" in app.spy.texts()


@pytest.mark.parametrize(("active", "expected"), [(False, True), (True, False)])
async def test_c_toggles_conservative_mode(make_app, link, active: bool, expected: bool) -> None:
    snapshot = rich_snapshot()
    link.set(msgspec.structs.replace(snapshot, forge=msgspec.structs.replace(snapshot.forge, conservative_mode=active)))
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("c")
        await settle(pilot)
        assert len(link.sent) == 1
        command = link.sent[0]
        assert isinstance(command, SetConservativeMode)
        assert command.active is expected


@pytest.mark.parametrize(("status", "expected"), [(TrainingStatus.RUNNING, True), (TrainingStatus.PAUSED, False)])
async def test_p_pauses_and_resumes_training(make_app, link, status: TrainingStatus, expected: bool) -> None:
    snapshot = rich_snapshot()
    link.set(msgspec.structs.replace(snapshot, training=msgspec.structs.replace(snapshot.training, status=status)))
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p")
        await settle(pilot)
        assert [payload(command)["paused"] for command in link.sent] == [expected]
        assert isinstance(link.sent[0], PauseTraining)
        assert ("Pause training requested" if expected else "Resume training requested") in app.spy.texts()


async def test_s_picks_a_strategy(make_app, link) -> None:
    snapshot = rich_snapshot()
    link.set(msgspec.structs.replace(snapshot, forge=msgspec.structs.replace(snapshot.forge, aggressive_pipeline=True)))
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("s")
        assert isinstance(app.screen, StrategyPicker)
        await pilot.press("enter")  # Standard is highlighted first: the operator default
        await settle(pilot)
        await pilot.press("s", "up", "enter")  # Fast
        await settle(pilot)
        await pilot.press("s", "down", "down", "enter")  # Emergency (Aggressive is below Standard)
        await settle(pilot)
        await pilot.press("s", "escape")  # cancelled: nothing sent
        await settle(pilot)
        assert [(command.blueprint_id, command.strategy) for command in link.sent] == [  # type: ignore[union-attr]
            ("mlp_block", Strategy.STANDARD),
            ("mlp_block", Strategy.FAST),
            ("mlp_block", Strategy.EMERGENCY),
        ]
        assert not isinstance(app.screen, StrategyPicker)
        assert "Recompile mlp_block (fast) requested" in app.spy.texts()


async def test_aggressive_is_disabled_in_conservative_mode(make_app, link) -> None:
    snapshot = rich_snapshot()
    link.set(msgspec.structs.replace(snapshot, forge=msgspec.structs.replace(snapshot.forge, conservative_mode=True)))
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("s")
        picker = app.screen
        assert isinstance(picker, StrategyPicker)
        options = picker.query_one("OptionList")
        assert options.get_option(Strategy.AGGRESSIVE.value).disabled  # type: ignore[attr-defined]
        await pilot.press("down", "enter")  # skips the disabled Aggressive
        await settle(pilot)
        assert [command.strategy for command in link.sent] == [Strategy.EMERGENCY]  # type: ignore[union-attr]


async def run_palette(pilot, query: str) -> None:
    """Open the command palette, type `query` and run the best match, as an operator would."""
    await pilot.press("ctrl+p")
    await pilot.press(*query)
    await pilot.pause(0.3)
    await pilot.press("enter")
    await pilot.pause(0.1)


async def test_palette_recompile_with_strategy(make_app, link) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("down", "down")  # conv1d_block
        await run_palette(pilot, "with strategy")
        assert isinstance(app.screen, StrategyPicker)
        await pilot.press("up", "enter")
        await settle(pilot)
        assert [(command.blueprint_id, command.strategy) for command in link.sent] == [  # type: ignore[union-attr]
            ("conv1d_block", Strategy.FAST)
        ]


async def test_palette_switches_theme(make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await run_palette(pilot, "theme: esper-light")
        assert app.theme == "esper-light"


def test_palette_is_textuals_system_commands(make_app) -> None:
    """One palette source: Textual's SystemCommandsProvider over `get_system_commands`, whose built-ins
    (theme picker, keys panel, screenshot, quit) sit beside the dashboard's commands."""
    app = make_app()
    assert App.COMMANDS == EsperApp.COMMANDS  # no hand-written Provider any more
    commands = {command.title: command for command in app.get_system_commands(app.dashboard)}
    assert {"Theme", "Keys", "Screenshot", "Quit"} <= set(commands)  # from super()
    assert {
        "Recompile selected",
        "Recompile selected with strategy…",
        "Recompile all",
        "Toggle conservative mode",
        "Pause / resume training",
        "Help",
        "Theme: esper-light",
    } <= set(commands)
    for strategy in Strategy:
        assert commands[f"Recompile selected: {strategy.value.capitalize()}"].help == strategy_help(strategy)


async def test_palette_has_the_curves_and_the_next_view(make_app) -> None:
    """The palette claimed every command but lacked `v` and `t`."""
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await run_palette(pilot, "show / hide the curves")
        await pilot.pause()
        assert app.query_one(PlotPanel).display and app.dashboard.view == "training"
        await run_palette(pilot, "next view")
        await pilot.pause()
        assert app.dashboard.view == "events"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("recompile all", {"type": "RecompileAll", "strategy": None}),
        ("recompile selected: emergency", {"type": "Recompile", "blueprint_id": "mlp_block", "strategy": "emergency"}),
        ("toggle conservative", {"type": "SetConservativeMode", "active": True}),
        ("pause / resume", {"type": "PauseTraining", "paused": True}),
    ],
)
async def test_palette_commands_are_sent(make_app, link, query: str, expected: dict[str, object]) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await run_palette(pilot, query)
        await settle(pilot)
        if isinstance(app.screen, Confirm):  # recompile all asks first
            await pilot.press("y")
            await settle(pilot)
        [command] = sent(link)
        assert {key: command[key] for key in expected} == expected


async def test_palette_opens_help_and_textuals_theme_picker(make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await run_palette(pilot, "help")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await run_palette(pilot, "theme")  # the built-in: a second palette listing every theme
        await pilot.press(*"esper-light")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert app.theme == "esper-light"


# --------------------------------------------------------------------------- strategy help, from pipelines


async def test_strategy_picker_shows_each_strategys_real_settings(make_app, link) -> None:
    """Every option names the backend:mode the forge compiles that strategy with, and when it is used."""
    snapshot = rich_snapshot()  # with the aggressive pipeline on: every strategy can be chosen
    link.set(msgspec.structs.replace(snapshot, forge=msgspec.structs.replace(snapshot.forge, aggressive_pipeline=True)))
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("s")
        options = app.screen.query_one(OptionList)
        for strategy in Strategy:
            prompt = str(options.get_option(strategy.value).prompt)
            assert prompt.split(maxsplit=1)[1].strip() == strategy_help(strategy)
            assert settings_for(strategy).label in prompt


async def test_help_screen_lists_each_strategy_from_pipelines(make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f1")
        rows = table_rows(app, "#help-strategies")
        assert [name for name, _ in rows] == [s.value.capitalize() for s in Strategy]
        for (_, note), strategy in zip(rows, Strategy, strict=True):
            assert note == strategy_help(strategy)
            assert settings_for(strategy).label in note


async def test_send_failure_is_reported_not_raised(make_app, link) -> None:
    async def broken(command: AnyCommand) -> None:
        raise ConnectionError("redis down")

    link.send = broken  # type: ignore[method-assign]
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("R", "y")
        await settle(pilot)
        assert ("Recompile all (standard) failed: redis down", "error") in app.spy.messages
        await pilot.press("R", "y")  # the outbox survives a failure
        await settle(pilot)
        assert len(app.spy.messages) == 2


async def test_keymap_remaps_by_binding_id(make_app, link) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        app.set_keymap({"esper.recompile": "x"})
        await pilot.press("x")
        await settle(pilot)
        assert [type(command) for command in link.sent] == [Recompile]
        await pilot.press("f1")
        assert table_rows(app, "#help-keys")[0][0] == "x"


# --------------------------------------------------------------------------- help, quit, theme


@pytest.mark.parametrize("key", ["question_mark", "f1"])
async def test_help_opens_and_escape_closes(make_app, key: str) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(key)
        assert isinstance(app.screen, HelpScreen)
        keys = "\n".join(f"{key} {what}" for key, what in table_rows(app, "#help-keys"))
        for fragment in ("Recompile the selected blueprint", "conservative mode", "^p", "f1 / ?"):
            assert fragment in keys
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


@pytest.mark.parametrize("size", [(120, 36), (80, 24)], ids=str)
async def test_help_descriptions_wrap_inside_their_column(make_app, size: tuple[int, int]) -> None:
    """A description too long for the help box wrapped back to column 0, under the keys."""
    app = make_app()
    async with app.run_test(size=size) as pilot:
        await pilot.press("f1")
        await pilot.pause()
        for table_id in ("#help-keys", "#help-strategies"):
            table = app.screen.query_one(table_id, KeyTable)
            keys, descriptions = table.query(".key"), table.query(".description")
            assert len(keys) == len(descriptions) == len(table.rows)
            left = {key.region.x for key in keys}
            assert len(left) == 1
            assert {d.region.x for d in descriptions} == {left.pop() + KEY_WIDTH}
        wrapped = [d for d in app.screen.query("#help-keys .description") if d.region.height > 1]
        assert wrapped, "at these widths some description wraps (within its column)"


async def test_the_footer_shows_help_and_quit_at_80x24(make_app) -> None:
    """At 80x24 the footer was cut at "p Pause/", so `?` and `^q` were not visible."""
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.pause()
        whole = [key for key in app.screen.query(FooterKey) if key.region and key.region.right <= 80]
        assert {"?", "^q"} <= {key.key_display for key in whole}


async def test_ctrl_q_quits(make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert not app.is_running
    assert app.return_code == 0


async def test_themes_are_registered_and_applied(make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        assert {"esper-dark", "esper-light"} <= set(app.available_themes)
        assert app.theme == "esper-dark"
        assert app.current_theme.dark
        table = app.screen.query_one(CompileQueue)
        dark_colour = table.get_row("attention_block")[2].style
        app.theme = "esper-light"
        await pilot.pause()
        assert not app.current_theme.dark
        # Cell colours are baked into the table's Text: the queue rewrites them for the new theme.
        assert table.get_row("attention_block")[2].style != dark_colour
        assert table.row_count == 6


async def test_light_theme_from_constructor(make_app) -> None:
    app = make_app(theme="esper-light", title="room 2")
    async with app.run_test(size=SIZE):
        assert app.theme == "esper-light"
        assert app.title == "room 2"


def test_refresh_hz_must_be_positive(link) -> None:
    with pytest.raises(ValueError, match="refresh_hz"):
        EsperApp(link, refresh_hz=0)


# --------------------------------------------------------------------------- formatting


def test_formatting_is_deterministic() -> None:
    assert fmt.clock(T0) == "12:01:15"  # UTC whatever the local zone
    assert fmt.age(fmt.round_age(T0 - 12.7, T0)) == "12 s ago"
    assert fmt.age(fmt.round_age(T0 - 185, T0)) == "3m05s ago"
    assert fmt.age(None) == "never"
    assert [fmt.size(n) for n in (512, 48 * 1024, 1_300_000, 5 * 2**30)] == ["512 B", "48 KiB", "1.2 MiB", "5.0 GiB"]
    assert fmt.step_ms(0.41, 0.47) == "0.41/0.47 ms"
    assert [fmt.metric(v) for v in (0.912, 0.000123, 12.34, None)] == ["0.912", "0.000123", "12.3", "-"]
    assert fmt.reading(312.0, 300.0, "s") == "312/300 s"
    assert fmt.clip("a long error\nwith a traceback", 8) == "a long …"


# --------------------------------------------------------------------------- Oona (bus panel)


async def test_bus_panel_shows_the_bus_in_trouble(make_app, link) -> None:
    link.set(bus_trouble_snapshot())
    app = make_app()
    async with app.run_test(size=SIZE):
        panel = app.screen.query_one(BusPanel)
        lines = plain(app, BusPanel).splitlines()
        assert panel.border_title == "Oona"
        assert panel.has_class("-down")
        assert lines[:8] == [
            "redis://10.0.0.7:6379/0",
            "○ disconnected · 2 control rooms",
            "out 0.0/s · in 12.5/s · dropped 317",
            "backlog telemetry 2450 · normal 0 · emergency 1",
            "dead letters 1: decode error: unexpected end of data",
            "rejected 2: Recompile from bob@lab-1: bad signature",
            "server errors: oom 3, wrongtype 1",
            "last error: OOM command not allowed when used memory > 'maxmemory'",
        ]
        # then every note, newest first, with its stream
        assert lines[9].startswith("12:01:07 rejected normal Recompile from bob@lab-1")
        assert lines[10].startswith("12:00:45 rejected emergency Shutdown from eve@lab-3: unsigned")
        assert lines[11].startswith("12:00:25 dead letter telemetry decode error")


async def test_bus_panel_healthy_and_quiet(make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE):
        lines = plain(app, BusPanel).splitlines()
        assert not app.screen.query_one(BusPanel).has_class("-down")
        assert lines == [
            "embedded",
            "● connected · 0 control rooms",
            "out 412/s · in 410/s · dropped 0",
            "backlog telemetry 21 · normal 0 · emergency 0",
            "dead letters 0",
            "rejected 0",
            "no server errors",
        ]


def test_short_stream_names() -> None:
    assert short_stream("oona.emergency.3f2a9c", "3f2a9c") == "emergency"
    assert short_stream("oona.deadletter", "3f2a9c") == "deadletter"
    assert short_stream("lab.oona.normal", "") == "normal"


# --------------------------------------------------------------------------- remote links in the banner


def subtitle(app: EsperApp) -> str:
    """The banner's bottom border as plain words (the padding around a highlighted state squeezed)."""
    banner = app.screen.query_one(StatusBanner)
    return " ".join(Content.from_markup(banner.border_subtitle or "").plain.split())


async def test_local_banner_has_no_link_line(make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE):
        banner = app.screen.query_one(StatusBanner)
        assert banner.border_subtitle is None
        assert not banner.has_class("-silent") and not banner.has_class("-stopped")


@pytest.mark.parametrize(
    ("snapshot", "words", "css_class"),
    [
        (live_snapshot, "attached · 0.3 s", None),
        (silent_snapshot, "no word from engine for 12 s · read-only · 3 forged frames ignored", "-silent"),
        (stopped_snapshot, "engine stopped", "-stopped"),
    ],
)
async def test_banner_says_how_the_link_stands(make_app, link, snapshot, words: str, css_class: str | None) -> None:
    link.set(snapshot())
    app = make_app()
    async with app.run_test(size=SIZE):
        banner = app.screen.query_one(StatusBanner)
        assert subtitle(app) == words
        for name in ("-silent", "-stopped"):
            assert banner.has_class(name) is (name == css_class)


async def test_link_going_silent_redraws_without_a_new_seq(make_app, link) -> None:
    """The engine's seq freezes when it goes quiet: the picture must still be redrawn as SILENT."""
    link.set(live_snapshot())
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        banner = app.screen.query_one(StatusBanner)
        draws, table_draws = banner.redraws, app.screen.query_one(CompileQueue).redraws
        link.set(remote_snapshot(LinkState.LIVE, 0.31))  # same seq, same tenth: nothing to redraw
        app.poll_link()
        await pilot.pause()
        assert banner.redraws == draws
        link.set(remote_snapshot(LinkState.SILENT, 4.0))
        app.poll_link()
        await pilot.pause()
        assert banner.redraws == draws + 1
        assert banner.has_class("-silent")
        assert "no word from engine for 4 s" in subtitle(app)
        assert app.screen.query_one(CompileQueue).redraws == table_draws  # only the banner's slice changed


class ReadOnlyLink(StaticLink):
    """A control room without the operator key: every send is refused with the reason."""

    REASON = "read-only: no operator commands key at var/keys/operator.key; copy the engine's key file"

    async def send(self, command: AnyCommand) -> None:
        raise CommandUnavailable(self.REASON)


async def test_read_only_key_press_says_why() -> None:
    link = ReadOnlyLink(live_snapshot())
    app = EsperApp(link)
    from .conftest import NotificationSpy

    spy = NotificationSpy(app)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p")
        await settle(pilot)
        assert spy.messages == [(f"Pause training not sent: {ReadOnlyLink.REASON}", "warning")]
        await pilot.press("c")  # the outbox carries on after a refusal
        await settle(pilot)
        assert len(spy.messages) == 2 and spy.messages[1][0].startswith("Conservative mode on not sent: read-only")


class WaitingLink(StaticLink):
    """A remote link before its first verified frame."""

    def __init__(self, view: LinkView) -> None:
        super().__init__(None)
        self.view = view

    def link_view(self) -> LinkView:
        return self.view


async def test_waiting_says_what_a_remote_link_waits_for() -> None:
    view = LinkView(state=LinkState.WAITING, run_id="3f2a9c81d0aa", frames_rejected=2, detail="bus: connection refused")
    link = WaitingLink(view)
    app = EsperApp(link)
    async with app.run_test(size=SIZE) as pilot:
        text = str(app.screen.query_one("#waiting", Static).render())
        assert "waiting for engine" in text
        assert "run 3f2a9c81d0aa · state waiting · 2 forged frames ignored · bus: connection refused" in text
        link.set(live_snapshot())
        app.poll_link()
        await pilot.pause()
        assert not app.screen.query_one("#waiting").display
