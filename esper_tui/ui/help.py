"""The help modal (F1 or `?`): every key the dashboard answers to, the strategies, what the colours mean.

The key list is built from the live bindings, so a user's keymap shows up here as remapped; the
strategy notes are read from the engine's pipelines (what each strategy compiles with, and when it is
used), so they cannot drift from the code; the colour legend uses the same theme variables as the
panels, so it is right in every theme.
"""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Static

from esper_tui.engine.kernels.pipelines import strategy_help
from esper_tui.engine.vocabulary import Strategy
from esper_tui.widgets import format as fmt

KEY_WIDTH = 16

LEGEND: tuple[tuple[str, str, str], ...] = (
    ("$success", "●", "compiled · breaker closed · seed helps · training running"),
    ("$warning", "●", "compiling · breaker half-open · conservative mode · paused"),
    ("$error", "●", "failed · breaker OPEN · seed hurts"),
    (fmt.DISABLED, "○", "unavailable (e.g. no GPU) · dormant slot"),
)


def strategy_notes() -> dict[Strategy, str]:
    """Each strategy's `backend:mode · when it is used`, for the picker, the palette and this screen."""
    return {strategy: strategy_help(strategy) for strategy in Strategy}


def strategy_rows() -> list[tuple[str, str]]:
    """(name, note) rows for the help screen's strategy table."""
    return [(strategy.value.capitalize(), note) for strategy, note in strategy_notes().items()]


class KeyTable(Grid):
    """Keys (or names) in one column, what they do in the next. Two columns rather than one text, so that a
    description too long for the screen wraps inside its own column instead of back to the left edge."""

    DEFAULT_CSS = f"""
    KeyTable {{
        grid-size: 2;
        grid-columns: {KEY_WIDTH} 1fr;
        grid-rows: auto;
        height: auto;
        & > .key {{ color: $accent; text-style: bold; }}
    }}
    """

    def __init__(self, rows: Sequence[tuple[str, str]], *, id: str | None = None) -> None:
        self.rows = list(rows)
        cells = [
            Static(text, classes=kind, markup=False)
            for keys, description in self.rows
            for text, kind in ((keys, "key"), (description, "description"))
        ]
        super().__init__(*cells, id=id)


def legend() -> Content:
    return Content("\n").join(
        fmt.styled(f"{symbol} ", variable) + Content(meaning) for variable, symbol, meaning in LEGEND
    )


class HelpScreen(ModalScreen[None]):
    """Keys and colour legend; Escape (or F1 / `?` again) closes it."""

    BINDINGS = [
        Binding("escape,f1,question_mark,q", "close", "Close", id="help.close"),
    ]

    DEFAULT_CSS = """
    HelpScreen {
        align: center middle;
        & > VerticalScroll {
            width: 84;
            max-height: 90%;
            height: auto;
            border: round $accent;
            border-title-color: $accent;
            border-subtitle-color: $foreground-muted;
            background: $surface;
            padding: 1 2;
        }
        & .heading { color: $primary; text-style: bold; margin-top: 1; }
        & .heading.-first { margin-top: 0; }
    }
    """

    def __init__(self, keys: Sequence[tuple[str, str]]) -> None:
        super().__init__()
        self.keys = list(keys)

    def compose(self) -> ComposeResult:
        with VerticalScroll() as box:
            box.border_title = "Esper control room · help"
            box.border_subtitle = "esc close"
            yield Static("Keys", classes="heading -first")
            yield KeyTable(self.keys, id="help-keys")
            yield Static("Strategies", classes="heading")
            yield KeyTable(strategy_rows(), id="help-strategies")
            yield Static("Colours", classes="heading")
            yield Static(legend(), id="help-legend")
            yield Static("Notes", classes="heading")
            yield Static(
                "The cursor row of the compile queue is the selected blueprint. A recompile with no "
                "strategy uses Standard; conservative mode forbids Aggressive. Times are UTC and ages "
                "are measured against the snapshot's clock. Commands are queued and sent in order; a "
                "toast confirms each one.",
                id="help-notes",
            )

    def action_close(self) -> None:
        self.dismiss(None)
