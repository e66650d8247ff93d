"""The Textual dashboard (Sanctum style): renders engine snapshots, sends operator commands back.

Data flows one way (guide section 2): the app polls `EngineLink.latest()` at `refresh_hz`, skips a
snapshot it has already drawn, and hands new ones to the panels, each of which redraws only when its own
slice changed. Commands go back through a single ordered outbox worker, so the UI never blocks on a
slow link and two quick key presses reach the engine in the order they were made. A control room that
may not send (attached read-only, no operator key) says why when a command key is pressed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, ClassVar

from textual import events, on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.geometry import Size
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import DataTable, Footer, Input, Static, Tab, Tabs
from textual.widgets._footer import FooterKey

from esper_tui.engine.contracts import (
    AnyCommand,
    ControllerDecision,
    PauseTraining,
    Recompile,
    RecompileAll,
    SetConservativeMode,
    SetPolicy,
)
from esper_tui.engine.history import Details, LogEntry
from esper_tui.engine.kernels.pipelines import aggressive_refusal, conservative_strategy
from esper_tui.engine.snapshot import LinkView, Snapshot
from esper_tui.engine.vocabulary import ACCURACY, MetricInfo, Strategy, Subsystem, TrainingStatus
from esper_tui.links.base import CommandUnavailable, DetailsLink, EngineLink, ReportsLink
from esper_tui.themes import CSS_PATH, DEFAULT_THEME, THEMES, register_themes
from esper_tui.ui.details.base import DetailScreen
from esper_tui.ui.details.decision import DecisionDetail
from esper_tui.ui.details.event import EventDetail
from esper_tui.ui.details.job import JobDetail
from esper_tui.ui.details.run_info import RunInfoScreen
from esper_tui.ui.details.seed import SeedDetail
from esper_tui.ui.heap import settle_heap
from esper_tui.ui.help import HelpScreen, strategy_notes
from esper_tui.widgets.alert_strip import AlertStrip
from esper_tui.widgets.breakers import BreakersPanel
from esper_tui.widgets.bus_panel import BusPanel
from esper_tui.widgets.compile_queue import CompileQueue
from esper_tui.widgets.confirm import Confirm
from esper_tui.widgets.events import EventsPanel, FilterInput
from esper_tui.widgets.forge_health import ForgeHealthLine
from esper_tui.widgets.forge_workers import ForgeWorkersPanel
from esper_tui.widgets.panel import SnapshotPanel
from esper_tui.widgets.plot_panel import PlotPanel
from esper_tui.widgets.seeds import SeedsPanel
from esper_tui.widgets.simic_panel import SimicPanel
from esper_tui.widgets.status_banner import StatusBanner
from esper_tui.widgets.strategy_picker import StrategyPicker
from esper_tui.widgets.training import TrainingPanel
from esper_tui.widgets.wal_panel import WalPanel

WAITING_TEXT = (
    "[b]waiting for engine…[/b]\n\n"
    "[$foreground-muted]No snapshot has arrived yet. The panels appear with the first one;\n"
    "F1 shows the keys, ctrl+q quits.[/]"
)


def waiting_text(view: LinkView | None) -> Content:
    """The placeholder before the first snapshot; for a remote link, also what it is waiting on."""
    text = Content.from_markup(WAITING_TEXT)
    if view is None:
        return text
    facts = [f"run {view.run_id or '-'}", f"state {view.state.value}"]
    if view.frames_rejected:
        facts.append(f"{view.frames_rejected} forged frames ignored")
    if view.detail:
        facts.append(view.detail)
    return text + Content.styled("\n\n" + " · ".join(facts), "$warning")


HELP_ORDER: tuple[str, ...] = (
    "esper.recompile",
    "esper.recompile_strategy",
    "esper.recompile_all",
    "esper.toggle_conservative",
    "esper.toggle_pause",
    "esper.plot",
    "esper.next_view",
    "esper.run_info",
    "esper.filter_events",
    "esper.help",
    "esper.quit",
)
"""Binding ids listed on the help screen, in this order (their keys come from the live keymap)."""

VIEWS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("forge", "Forge", ("compile-queue", "breakers", "forge-workers", "wal")),
    ("training", "Training", ("seeds", "training", "plot")),
    ("events", "Events", ("events",)),
    ("oona", "Oona", ("bus",)),
)
"""The compact layout's tabs: (key, label, ids of the panels the tab shows), in cycling order."""

COMPACT_BELOW = Size(100, 32)
"""Narrower or shorter than this, the panels cannot all fit side by side: show them one tab at a time."""


def is_compact(size: Size) -> bool:
    """Whether a terminal of `size` gets the tabbed layout (80x24 does; 120x36 and up keep every panel)."""
    return size.width < COMPACT_BELOW.width or size.height < COMPACT_BELOW.height


CURVES_BELOW_FROM = 40
"""Rows from which the full layout has room for the curves (`v`) under the seeds, at full width. Below it the
panels' minimum heights already fill the screen (at 120x36 the curves squeezed the seeds, training, events and
Oona off it and showed nothing themselves), so the curves take the training summary's place, beside the seeds."""


def curves_beside(size: Size) -> bool:
    """Whether `v` puts the curves beside the seeds (a full layout shorter than `CURVES_BELOW_FROM`)."""
    return not is_compact(size) and size.height < CURVES_BELOW_FROM


LIVE_COMMANDS = frozenset({"recompile", "pick_strategy", "recompile_all", "toggle_conservative", "toggle_pause"})
"""The app's actions that send a command to an engine (a replay has no engine: it hides them)."""

FOOTER_FIRST = frozenset({"app.quit", "quit", "app.help", "help"})
"""Actions a narrow footer shows first, so that no cut at its right edge can hide how to get help or quit."""


class EsperFooter(Footer):
    """Textual's footer; in the compact layout it is compact too and starts with quit and help, which an
    80-column terminal otherwise cut off ("p Pause/" was the last thing it showed)."""

    _drawn: tuple[object, ...] | None = None
    """The keys last composed (`_keys()`): a footer asked to show the same keys again leaves them."""

    def _keys(self) -> tuple[object, ...]:
        shown = self.screen.active_bindings.values()
        return (self.compact, *((b.key, b.action, b.description, on, tip) for _, b, on, tip in shown if b.show))

    def bindings_changed(self, screen: Screen[Any]) -> None:
        """Recompose only while this footer's screen is the one shown, and only when its keys changed.

        A detail screen pushed over the dashboard blurs it, and its return focuses it again: each a bindings change
        with the same keys. Rebuilding them cost every open 20-40 ms (their CSS, key by key), and Textual keeps
        every rebuilt key alive through its data binding, so each open and close left nine widgets for the
        collector to walk for good (benchmarks/detail.py: full collections grew from 6 to 100 ms over 200 opens)."""
        if self.is_attached and self.screen is not self.app.screen:
            self._bindings_ready = True
            return
        if self.is_attached and screen is self.screen and self._drawn is not None and self._keys() == self._drawn:
            return
        super().bindings_changed(screen)

    def compose(self) -> ComposeResult:
        self._drawn = self._keys() if self._bindings_ready else None
        keys = list(super().compose())
        if self.compact:
            keys.sort(key=lambda key: not (isinstance(key, FooterKey) and key.action in FOOTER_FIRST))
        yield from keys


EXTRA_HELP: tuple[tuple[str, str], ...] = (
    ("^p", "Command palette: every command above, strategies, themes"),
    ("↑ ↓ / pgup pgdn", "Move the compile-queue cursor (the selected blueprint)"),
    ("tab", "Move focus between panels"),
    ("enter", "Open what is selected: a job's attempts, a seed slot's history, an event or a Tamiyo decision"),
    ("j k g G", "Event log (focused): older, newer, newest, oldest line; pgdn / pgup a page"),
    ("/  esc", "Filter the whole event log by words, subsystem (tamiyo) or level (warning); esc clears"),
    ("f", "Seed detail: this slot or every slot"),
    ("esc q", "Close a detail screen"),
    ("J", "Replay, on an event's or a decision's detail: jump to the moment it happened"),
)


class DashboardScreen(Screen[None]):
    """The one main screen: banner on top, forge in the middle, training and events below."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "r",
            "app.recompile",
            "Recompile",
            tooltip="Recompile the selected blueprint (Standard)",
            id="esper.recompile",
        ),
        Binding(
            "s",
            "app.pick_strategy",
            "Strategy…",
            tooltip="Recompile the selected blueprint with a chosen strategy",
            id="esper.recompile_strategy",
        ),
        Binding(
            "R",
            "app.recompile_all",
            "Recompile all",
            tooltip="Queue every blueprint of the catalog again",
            key_display="R",
            id="esper.recompile_all",
        ),
        Binding(
            "c",
            "app.toggle_conservative",
            "Conservative",
            tooltip="Toggle conservative mode (concurrency 1, Fast, no Aggressive)",
            id="esper.toggle_conservative",
        ),
        Binding(
            "p",
            "app.toggle_pause",
            "Pause/resume",
            tooltip="Pause or resume the training loop",
            id="esper.toggle_pause",
        ),
        Binding(
            "v",
            "toggle_plot",
            "Curves",
            tooltip="Show or hide the loss and metric curves (G/F/P/R mark decisions)",
            show=False,  # listed in the help; the footer stays as wide as an 80-column terminal allows
            id="esper.plot",
        ),
        Binding(
            "t",
            "next_view",
            "Next view",
            tooltip="Small terminal: next tab (Forge, Training, Events, Oona)",
            show=False,  # the tab bar itself says "t next"
            id="esper.next_view",
        ),
        Binding(
            "i",
            "app.run_info",
            "Run info",
            tooltip="Run info: identity, config (non-defaults marked), key fingerprints, state dir, uptime, run id",
            id="esper.run_info",
        ),
        Binding(
            "slash",
            "filter_events",
            "Filter",
            tooltip="Filter the event log (all of its scrollback) by words, subsystem or level",
            key_display="/",
            id="esper.filter_events",
        ),
    ]

    def __init__(self, extras: tuple[Widget, ...] = ()) -> None:
        super().__init__(id="dashboard")
        self._extras = extras  # mounted above the footer (a replay's position bar)
        self._pending: Snapshot | None = None
        self._composed = False
        self._panels: list[SnapshotPanel[object]] = []
        self._waiting_view: LinkView | None = None
        self.has_snapshot = False

    def compose(self) -> ComposeResult:
        with Horizontal(id="top"):
            yield StatusBanner(id="banner")
            yield ForgeHealthLine(id="forge-health")
        yield AlertStrip(id="alerts")
        yield Static(WAITING_TEXT, id="waiting")
        with Vertical(id="body"):
            with Horizontal(id="views-bar"):  # shown only in the compact layout
                tabs = Tabs(*(Tab(label, id=f"view-{key}") for key, label, _ in VIEWS), id="views")
                tabs.can_focus = False  # focus stays on the queue, whose arrow keys move the selection
                yield tabs
                yield Static("t next", id="views-hint")
            with Horizontal(id="main-row"):
                yield CompileQueue(id="compile-queue")
                with Vertical(id="side"):
                    yield BreakersPanel(id="breakers")
                    yield ForgeWorkersPanel(id="forge-workers")
                    yield WalPanel(id="wal")
            with Vertical(id="training-view"):
                with Horizontal(id="growth-row"):
                    yield SeedsPanel(id="seeds")
                    yield TrainingPanel(id="training")
                yield PlotPanel(id="plot")
            with Horizontal(id="log-row"):
                with Vertical(id="events-col"):
                    yield EventsPanel(id="events")
                    yield FilterInput(
                        placeholder="filter: words, tamiyo, warning… (enter keeps, esc clears)", id="events-filter"
                    )
                yield SimicPanel(id="simic")
                yield BusPanel(id="bus")
        yield from self._extras
        yield EsperFooter()

    @property
    def events_panel(self) -> EventsPanel:
        return self.query_one(EventsPanel)

    def action_filter_events(self) -> None:
        """`/`: the filter prompt under the event log (the Events tab brought forward in the compact layout)."""
        if self.compact:
            self.show_view("events")
        prompt = self.query_one(FilterInput)
        prompt.display = True
        prompt.value = self.events_panel.filter_text
        prompt.focus()

    @on(Input.Changed, "#events-filter")
    def _filter_typed(self, event: Input.Changed) -> None:
        self.events_panel.set_filter(event.value)

    @on(Input.Submitted, "#events-filter")
    def _filter_kept(self, _event: Input.Submitted) -> None:
        self.query_one(FilterInput).display = False
        self.events_panel.focus()

    @on(FilterInput.Cancelled)
    def _filter_cancelled(self, _event: FilterInput.Cancelled) -> None:
        self.events_panel.set_filter("")
        self.query_one(FilterInput).display = False
        self.events_panel.focus()

    def action_toggle_plot(self) -> None:
        """Show or hide the curves; hidden, the panel still gathers points, so it opens up to date.

        In the compact layout the curves take the training summary's place on the Training tab, which
        is brought forward so the key always shows what it opened.
        """
        plot = self.query_one(PlotPanel)
        plot.display = not plot.display
        self.set_class(plot.display, "-plot")
        if plot.display and self.compact:
            self.show_view("training")

    # ------------------------------------------------------------------ compact layout (small terminals)

    @property
    def compact(self) -> bool:
        """True while the terminal is too small for every panel: one tab of panels at a time."""
        return self.has_class("-compact")

    @property
    def view(self) -> str:
        """The compact layout's current tab ("forge", "training", "events" or "oona")."""
        return next((key for key, _, _ in VIEWS if self.has_class(f"-view-{key}")), VIEWS[0][0])

    def show_view(self, key: str) -> None:
        """Bring tab `key` forward (CSS shows its panels); the tab bar follows, clicks come back here."""
        for other, _, _ in VIEWS:
            self.set_class(other == key, f"-view-{other}")
        tabs = self.query_one("#views", Tabs)
        if tabs.active != f"view-{key}":
            tabs.active = f"view-{key}"
        if key == "forge" and self.has_snapshot:
            self.compile_queue.focus()  # the arrow keys move the selection again

    def action_next_view(self) -> None:
        """Cycle the tabs; with every panel on screen there is nothing to switch, so the key is quiet."""
        keys = [key for key, _, _ in VIEWS]
        self.show_view(keys[(keys.index(self.view) + 1) % len(keys)])

    @on(Tabs.TabActivated, "#views")
    def _tab_clicked(self, event: Tabs.TabActivated) -> None:
        if event.tab.id is not None:
            self.show_view(event.tab.id.removeprefix("view-"))

    def _fit_layout(self, size: Size) -> None:
        """Tabs below `COMPACT_BELOW`, today's full layout above it (curves beside the seeds when short)."""
        self.set_class(is_compact(size), "-compact")
        self.query_one(EsperFooter).compact = is_compact(size)
        self.set_class(curves_beside(size), "-curves-beside")

    def on_resize(self, event: events.Resize) -> None:
        self._fit_layout(event.size)

    def on_mount(self) -> None:
        self.show_view(VIEWS[0][0])
        self._fit_layout(self.app.size)
        self.query_one("#body").display = False
        self._panels = [widget for widget in self.query("*") if isinstance(widget, SnapshotPanel)]
        self.query_one(FilterInput).display = False
        self.events_panel.scrollback_source = self.app_event_log
        self._composed = True
        if self._waiting_view is not None:
            self.query_one("#waiting", Static).update(waiting_text(self._waiting_view))
        if self._pending is not None:
            self.show_snapshot(self._pending)

    @property
    def panels(self) -> list[SnapshotPanel[object]]:
        """Every widget on this screen that renders a slice of the snapshot (found once, at mount)."""
        return list(self._panels)

    @property
    def compile_queue(self) -> CompileQueue:
        return self.query_one(CompileQueue)

    def app_event_log(self) -> list[LogEntry] | None:
        app = self.app
        return app.event_log() if isinstance(app, EsperApp) else None

    def show_snapshot(self, snapshot: Snapshot) -> None:
        """Hand a new snapshot to every panel; while covered by a modal, keep only the newest."""
        if not (self._composed and self.is_active):
            self._pending = snapshot
            return
        self._pending = None
        if not self.has_snapshot:
            self.has_snapshot = True
            self.query_one("#waiting").display = False
            self.query_one("#body").display = True
            if self.focused is None:
                self.compile_queue.focus()  # arrow keys move the selection straight away
        for panel in self._panels:
            panel.update_snapshot(snapshot)

    def show_waiting(self, view: LinkView) -> None:
        """Before the first snapshot: say what a remote link is waiting on (kept until mounted)."""
        if self.has_snapshot or view == self._waiting_view:
            return
        self._waiting_view = view
        if self._composed:
            self.query_one("#waiting", Static).update(waiting_text(view))

    def on_screen_resume(self) -> None:
        """Catch up with what arrived while a modal covered the dashboard (the terminal may have resized)."""
        self._fit_layout(self.app.size)
        if self._pending is not None:
            self.show_snapshot(self._pending)


def compiles_with(requested: Strategy | None, conservative: bool) -> str:
    """The strategy a recompile will really compile with, as its toast says it: conservative mode compiles
    Fast whatever was asked (`r` said "(standard)" there and compiled Fast)."""
    asked = requested or Strategy.STANDARD
    runs = conservative_strategy(asked) if conservative else asked
    return asked.value if runs is asked else f"{runs.value}, not {asked.value}: conservative mode"


def command_note(command: AnyCommand, *, conservative: bool = False) -> str:
    """How a command is described in the toast that confirms it (`conservative`: as the forge stands now)."""
    if isinstance(command, Recompile):
        return f"Recompile {command.blueprint_id} ({compiles_with(command.strategy, conservative)})"
    if isinstance(command, RecompileAll):
        return f"Recompile all ({compiles_with(command.strategy, conservative)})"
    if isinstance(command, SetConservativeMode):
        return f"Conservative mode {'on' if command.active else 'off'}"
    if isinstance(command, PauseTraining):
        return "Pause training" if command.paused else "Resume training"
    if isinstance(command, SetPolicy):
        return f"Tamiyo follows: {command.policy}"
    return type(command).__name__


class EsperApp(App[None]):
    """The Esper control room: one dashboard over an `EngineLink`."""

    CSS_PATH = CSS_PATH
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+q", "quit", "Quit", tooltip="Quit the control room", id="esper.quit", priority=True),
        Binding("f1,question_mark", "help", "Help", tooltip="This help", key_display="?", id="esper.help"),
    ]
    HELP_ORDER: ClassVar[tuple[str, ...]] = HELP_ORDER
    """The binding ids the help lists, in order (a replay lists its own keys instead of the commands)."""
    SENDS_COMMANDS: ClassVar[bool] = True
    """False where there is no engine to command (a replay): the command keys leave the footer and help."""

    def __init__(
        self,
        link: EngineLink,
        *,
        refresh_hz: float = 4.0,
        theme: str = DEFAULT_THEME,
        title: str = "Esper control room",
        settle_heap: bool = False,
    ) -> None:
        """`settle_heap`: freeze the heap once the dashboard is first drawn (esper_tui/ui/heap.py); the process
        entries set it, tests that run many apps in one process must not."""
        if refresh_hz <= 0:
            raise ValueError(f"refresh_hz must be positive, got {refresh_hz}")
        super().__init__()
        register_themes(self)
        self.theme = theme
        self.title = title
        self.link = link
        self.refresh_hz = refresh_hz
        self.snapshot: Snapshot | None = None
        """The newest snapshot drawn (None until the engine has sent one)."""
        self.dashboard = DashboardScreen(self.dashboard_extras())
        self._drawn_key: tuple[str, int, LinkView] | None = None
        self._outbox: asyncio.Queue[tuple[AnyCommand, str]] = asyncio.Queue()
        self._settle_heap = settle_heap

    def on_ready(self) -> None:
        if self._settle_heap:
            self.call_after_refresh(settle_heap)

    def dashboard_extras(self) -> tuple[Widget, ...]:
        """Widgets a variant of the control room adds above the footer (none here; a replay's bar)."""
        return ()

    def get_default_screen(self) -> Screen[None]:
        return self.dashboard

    def on_mount(self) -> None:
        self.poll_link()  # draw at once rather than one refresh period later
        self.set_interval(1 / self.refresh_hz, self.poll_link)
        self._deliver_commands()

    # ------------------------------------------------------------------ snapshots in

    def poll_link(self) -> None:
        """Draw the link's newest snapshot unless it is the one already drawn (never queue).

        The link view is part of what was drawn: a remote picture that grows old or whose engine stops
        keeps its seq, and the banner must still say so.
        """
        snapshot = self.link.latest()
        if snapshot is None:
            if isinstance(self.link, ReportsLink):
                self.dashboard.show_waiting(self.link.link_view())
            return
        key = (snapshot.run_id, snapshot.seq, snapshot.link)
        if key == self._drawn_key:
            return
        self._drawn_key = key
        self.snapshot = snapshot
        self.dashboard.show_snapshot(snapshot)

    # ------------------------------------------------------------------ commands out

    def choose_policy(self, spec: str) -> None:
        """Tamiyo's policy from the next epoch on (a fresh command each time: ids and timestamps are its freshness)."""
        self.send_command(SetPolicy(policy=spec))

    def send_command(self, command: AnyCommand) -> None:
        """Queue a command for the engine; the outbox worker sends it and confirms with a toast."""
        conservative = self.snapshot is not None and self.snapshot.forge.conservative_mode
        self._outbox.put_nowait((command, command_note(command, conservative=conservative)))

    async def wait_for_commands(self) -> None:
        """Return once every queued command has been handed to the link (tests, clean shutdown)."""
        await self._outbox.join()

    @work(group="outbox", exclusive=True)
    async def _deliver_commands(self) -> None:
        """Send queued commands one at a time, in order; a failure is shown, never raised into the UI."""
        while True:
            command, note = await self._outbox.get()
            try:
                await self.link.send(command)
            except CommandUnavailable as why:
                self.notify(f"{note} not sent: {why}", title="Read-only control room", severity="warning", markup=False)
            except Exception as error:
                self.notify(f"{note} failed: {error}", title="Command not sent", severity="error", markup=False)
            else:
                self.notify(f"{note} requested", markup=False)
            finally:
                self._outbox.task_done()

    def _require_snapshot(self) -> Snapshot | None:
        """The current snapshot, or None after telling the operator there is none yet."""
        if self.snapshot is None:
            self.notify("waiting for engine… no snapshot yet", severity="warning")
        return self.snapshot

    def selected_blueprint(self) -> str | None:
        """The blueprint under the compile-queue cursor."""
        return self.dashboard.compile_queue.selected_blueprint()

    def recompile_selected(self, strategy: Strategy | None = None) -> None:
        """Recompile the selected blueprint; None means the operator default (Standard)."""
        blueprint_id = self.selected_blueprint()
        if blueprint_id is None:
            self.notify("no blueprint selected", severity="warning")
            return
        if (why := self.strategy_refusal(strategy)) is not None:
            self.notify(f"Recompile {blueprint_id} ({strategy}) refused: {why}", severity="warning", markup=False)
            return
        self.send_command(Recompile(blueprint_id=blueprint_id, strategy=strategy))

    def strategy_refusal(self, strategy: Strategy | None) -> str | None:
        """Why the engine would refuse a recompile with `strategy` (the engine checks too), or None."""
        forge = self.snapshot.forge if self.snapshot is not None else None
        return None if forge is None else aggressive_refusal(strategy, enabled=forge.aggressive_pipeline)

    def blocked_strategies(self) -> dict[Strategy, str]:
        """The strategies a recompile cannot have right now, with the few words the picker shows instead."""
        forge = self.snapshot.forge if self.snapshot is not None else None
        if forge is None:
            return {}
        if forge.conservative_mode:  # the forge compiles Fast whatever is asked, except Emergency
            return {s: "conservative mode compiles Fast" for s in (Strategy.STANDARD, Strategy.AGGRESSIVE)}
        if self.strategy_refusal(Strategy.AGGRESSIVE) is not None:
            return {Strategy.AGGRESSIVE: "off: enable_aggressive_pipeline is false"}
        return {}

    def action_recompile(self) -> None:
        self.recompile_selected(None)

    def action_pick_strategy(self) -> None:
        """Ask for a strategy, then recompile the selected blueprint with it."""
        blueprint_id = self.selected_blueprint()
        if blueprint_id is None:
            self.notify("no blueprint selected", severity="warning")
            return

        def chosen(strategy: Strategy | None) -> None:
            if strategy is not None:
                self.send_command(Recompile(blueprint_id=blueprint_id, strategy=strategy))

        self.push_screen(StrategyPicker(blueprint_id, strategy_notes(), blocked=self.blocked_strategies()), chosen)

    def action_recompile_all(self) -> None:
        """Ask first: it queues every blueprint of the catalog again, minutes of compiling."""
        count = len(self.snapshot.forge.jobs) if self.snapshot is not None else 0
        what = f"all {count} blueprints" if count else "every blueprint of the catalog"

        def answered(yes: bool | None) -> None:
            if yes:
                self.send_command(RecompileAll())

        self.push_screen(Confirm(f"Recompile {what} again, as new versions?"), answered)

    def action_toggle_conservative(self) -> None:
        if (snapshot := self._require_snapshot()) is not None:
            self.send_command(SetConservativeMode(active=not snapshot.forge.conservative_mode))

    def action_toggle_pause(self) -> None:
        if (snapshot := self._require_snapshot()) is None:
            return
        status = snapshot.training.status
        if status in (TrainingStatus.FINISHED, TrainingStatus.FAILED):  # it used to pass without a word
            self.notify(f"training has {status.value}: nothing to pause or resume", severity="warning")
            return
        self.send_command(PauseTraining(paused=status is not TrainingStatus.PAUSED))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The command keys exist only where there is an engine to send commands to."""
        return self.SENDS_COMMANDS or action not in LIVE_COMMANDS

    # ------------------------------------------------------------------ detail screens

    def details(self) -> Details | None:
        """The link's details (history behind the detail screens), or None where it has none (yet)."""
        return self.link.details() if isinstance(self.link, DetailsLink) else None

    def event_log(self) -> list[LogEntry] | None:
        """The link's event-log scrollback, oldest first, or None (the panel then shows the snapshot's lines)."""
        if not isinstance(self.link, DetailsLink):
            return None
        log = self.link.event_log()
        return None if log is None else list(log)

    def _metric(self) -> MetricInfo:
        return self.snapshot.training.metric if self.snapshot is not None else ACCURACY

    def open_detail(self, screen: DetailScreen) -> None:
        """Push a detail screen over the dashboard (one at a time: a second replaces the first)."""
        if isinstance(self.screen, DetailScreen):
            self.pop_screen()
        self.push_screen(screen)

    def jump_to(self, ts: float) -> Callable[[], None] | None:
        """A replay's way back to the moment `ts` (None live: there is nowhere to jump)."""
        return None

    def open_seed(self, slot: str) -> None:
        self.open_detail(SeedDetail(self.details, slot, metric=self._metric()))

    def open_job(self, blueprint_id: str, shape: str = "") -> None:
        self.open_detail(JobDetail(self.details, blueprint_id, shape))

    def open_entry(self, entry: LogEntry) -> None:
        """A Tamiyo decision's detail, or any other event's."""
        jump = self.jump_to(entry.line.ts)
        decision = isinstance(entry.event, ControllerDecision) or (
            entry.event is None and entry.line.source is Subsystem.TAMIYO
        )
        if decision:
            self.open_detail(DecisionDetail(self.details, entry, metric=self._metric(), jump=jump))
        else:
            self.open_detail(EventDetail(self.details, entry, jump=jump))

    def action_run_info(self) -> None:
        self.open_detail(RunInfoScreen(self.details, lambda: self.snapshot))

    @on(SeedsPanel.Opened)
    def _seed_opened(self, event: SeedsPanel.Opened) -> None:
        self.open_seed(event.slot)

    @on(EventsPanel.Opened)
    def _event_opened(self, event: EventsPanel.Opened) -> None:
        self.open_entry(event.entry)

    @on(DataTable.RowSelected, "#compile-queue")
    def _job_opened(self, event: DataTable.RowSelected) -> None:
        key = str(event.row_key.value or "")
        blueprint_id, _, shape = key.partition("@")
        if blueprint_id:
            self.open_job(blueprint_id, shape)

    # ------------------------------------------------------------------ command palette

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        """Textual's own commands (theme, keys, screenshot, quit) and the dashboard's, in one palette."""
        yield from super().get_system_commands(screen)
        yield from self.dashboard_commands()
        yield SystemCommand(
            "Show / hide the curves",
            "Loss and accuracy per split, germinate/fossilize/prune/rollback marked (v)",
            self.dashboard.action_toggle_plot,
        )
        yield SystemCommand(
            "Next view",
            "Small terminal: the next tab, Forge, Training, Events, Oona (t)",
            self.dashboard.action_next_view,
        )
        yield SystemCommand(
            "Run info", "Identity, config with non-defaults marked, key fingerprints, run id (i)", self.action_run_info
        )
        yield SystemCommand(
            "Filter the event log",
            "By words, subsystem or level, over the whole scrollback (/)",
            self.dashboard.action_filter_events,
        )
        yield SystemCommand(
            "Open the selected seed slot",
            "Its lifecycle, series, kernel, reports, rollbacks, graveyard (enter)",
            self._open_selected_seed,
        )
        yield SystemCommand(
            "Open the selected compile job",
            "Every attempt: strategy, worker, breakers, step times, WAL (enter)",
            self._open_selected_job,
        )
        yield SystemCommand("Help", "Keys, strategies and colour legend", self.action_help)
        for theme in THEMES:
            yield SystemCommand(
                f"Theme: {theme.name}", "Switch the dashboard's colours", partial(setattr, self, "theme", theme.name)
            )

    def dashboard_commands(self) -> Iterable[SystemCommand]:
        """The palette's entries for what this control room does: the engine's commands (a replay: its own)."""
        yield SystemCommand(
            "Recompile selected", "Recompile the blueprint under the cursor (Standard)", self.action_recompile
        )
        yield SystemCommand(
            "Recompile selected with strategy…",
            "Choose Fast, Standard, Aggressive or Emergency",
            self.action_pick_strategy,
        )
        for strategy, note in strategy_notes().items():
            title = f"Recompile selected: {strategy.value.capitalize()}"
            yield SystemCommand(title, note, partial(self.recompile_selected, strategy))
        yield SystemCommand("Recompile all", "Queue every blueprint of the catalog again", self.action_recompile_all)
        yield SystemCommand(
            "Toggle conservative mode", "Concurrency 1, Fast pipeline, no Aggressive", self.action_toggle_conservative
        )
        yield SystemCommand(
            "Pause / resume training", "Hold the training loop between batches", self.action_toggle_pause
        )
        yield SystemCommand(
            "Policy: learned",
            "Tamiyo follows the policy Simic published (the heuristic while none is, or on any error)",
            partial(self.choose_policy, "learned"),
        )
        yield SystemCommand(
            "Policy: heuristic", "Tamiyo follows her fixed rules", partial(self.choose_policy, "heuristic")
        )

    def _open_selected_seed(self) -> None:
        slot = self.dashboard.query_one(SeedsPanel).selected_slot
        if slot is None:
            self.notify("no seed slot reported yet", severity="warning")
            return
        self.open_seed(slot)

    def _open_selected_job(self) -> None:
        key = self.dashboard.compile_queue.selected_key()
        if key is None:
            self.notify("no compile job yet", severity="warning")
            return
        blueprint_id, _, shape = key.partition("@")
        self.open_job(blueprint_id, shape)

    # ------------------------------------------------------------------ help

    def help_rows(self) -> list[tuple[str, str]]:
        """(keys, description) for the help screen, read from the live bindings (remaps included)."""
        keys: dict[str, list[str]] = {}
        descriptions: dict[str, str] = {}
        for key, active in self.dashboard.active_bindings.items():
            binding = active.binding
            if binding.id in self.HELP_ORDER:
                keys.setdefault(binding.id, []).append(self.get_key_display(binding.with_key(key)))
                descriptions[binding.id] = binding.tooltip or binding.description
        rows = [(" / ".join(keys[id_]), descriptions[id_]) for id_ in self.HELP_ORDER if id_ in keys]
        return rows + list(EXTRA_HELP)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.help_rows()))
