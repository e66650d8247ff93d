"""The compare screen (`esper-tui compare A B`): two recorded runs, their curves overlaid, decisions side by side.

It draws one `Comparison`, read from the recordings before the app starts: nothing polls or changes, so the
screen is the same whenever it is drawn. Wide terminals put the final table beside the curves; narrower ones
stack them, and the body scrolls (j/k, g/G, the arrows and PgUp/PgDn) to the decisions below.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Footer, Static

from esper_tui.themes import DEFAULT_THEME, register_themes
from esper_tui.ui.comparison import Comparison, RunSide
from esper_tui.widgets import format as fmt
from esper_tui.widgets.compare_curves import RUN_STYLES, CompareCurves
from esper_tui.widgets.compare_decisions import DecisionList
from esper_tui.widgets.compare_table import CompareTable

SIDE_BY_SIDE_FROM = 120
"""Columns from which the final table stands beside the curves (below, above them)."""


def run_words(side: RunSide) -> Content:
    """ "A 3f2a9c81d0aa" in the run's colour, for the title line; the file's name after it when that is not
    simply the run id (a recording copied or renamed)."""
    words = fmt.styled(f"{side.label} {side.run_id}", f"{RUN_STYLES[side.label]} bold")
    path = Path(side.path)
    return words if path.stem == side.run_id else words + fmt.styled(f" ({path.name})", fmt.MUTED)


def title_line(comparison: Comparison) -> Content:
    metric = comparison.metric
    direction = "higher" if metric.higher_is_better else "lower"
    return fmt.join(
        [
            fmt.styled("Compare", "$accent bold"),
            run_words(comparison.a) + Content(" vs ") + run_words(comparison.b),
            f"task {comparison.task or '-'}",
            f"{metric.name}, {direction} is better",
        ]
    )


class CompareScreen(Screen[None]):
    """Title, then the final table and the curves, then both runs' decisions; the body scrolls."""

    DEFAULT_CSS = """
    CompareScreen {
        layout: vertical;
        background: $background;
        & #compare-title { height: 1; padding: 0 1; }
        & #compare-body { height: 1fr; }
        & #compare-top { height: auto; }
        & #compare-decisions { height: auto; }
        & CompareCurves { width: 1fr; }
        &.-narrow #compare-top { layout: vertical; }
        &.-narrow CompareTable { width: 1fr; }
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "scroll_lines(1)", "Down", tooltip="Scroll down a line", show=False, id="compare.down"),
        Binding("k", "scroll_lines(-1)", "Up", tooltip="Scroll up a line", show=False, id="compare.up"),
        Binding("g", "jump('top')", "Top", tooltip="Go to the top", id="compare.top"),
        Binding("G", "jump('end')", "End", tooltip="Go to the end", key_display="G", id="compare.end"),
    ]

    def __init__(self, comparison: Comparison) -> None:
        super().__init__(id="compare")
        self.comparison = comparison

    def compose(self) -> ComposeResult:
        yield Static(title_line(self.comparison), id="compare-title")
        with VerticalScroll(id="compare-body"):
            with Horizontal(id="compare-top"):
                yield CompareTable(self.comparison, id="compare-table")
                yield CompareCurves(self.comparison, id="compare-curves")
            with Horizontal(id="compare-decisions"):
                yield DecisionList(self.comparison.a, id="decisions-a")
                yield DecisionList(self.comparison.b, id="decisions-b")
        yield Footer()

    @property
    def body(self) -> VerticalScroll:
        return self.query_one("#compare-body", VerticalScroll)

    def on_mount(self) -> None:
        self.set_class(self.app.size.width < SIDE_BY_SIDE_FROM, "-narrow")
        self.body.focus()

    def on_resize(self, event: events.Resize) -> None:
        self.set_class(event.size.width < SIDE_BY_SIDE_FROM, "-narrow")

    def action_scroll_lines(self, lines: int) -> None:
        self.body.scroll_relative(y=lines, animate=False)

    def action_jump(self, where: str) -> None:
        if where == "top":
            self.body.scroll_home(animate=False)
        else:
            self.body.scroll_end(animate=False)


class CompareApp(App[None]):
    """`esper-tui compare`: one screen over a Comparison; q or ctrl+q quits."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+q", "quit", "Quit", tooltip="Quit", id="compare.quit", priority=True),
        Binding("q", "quit", "Quit", show=False, id="compare.quit_q"),
    ]

    def __init__(self, comparison: Comparison, *, theme: str = DEFAULT_THEME) -> None:
        super().__init__()
        register_themes(self)
        self.theme = theme
        self.comparison = comparison
        self.title = f"Esper compare · {comparison.a.run_id} vs {comparison.b.run_id}"

    def get_default_screen(self) -> Screen[None]:
        return CompareScreen(self.comparison)
