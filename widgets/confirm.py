"""A yes/no question before a command that is costly to take back (`R`: recompile the whole catalog)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static


class Confirm(ModalScreen[bool]):
    """Dismisses with True on `y` or Enter, False on `n` or Escape."""

    BINDINGS = [
        Binding("y,enter", "answer(True)", "Yes", id="confirm.yes"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no"),
    ]

    DEFAULT_CSS = """
    Confirm {
        align: center middle;
        & > Vertical {
            width: 60;
            max-width: 100%;
            height: auto;
            border: round $warning;
            background: $surface;
            padding: 0 1;
        }
        & .hint { color: $foreground-muted; }
    }
    """

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question, id="confirm-question", markup=False)
            yield Static("y / enter yes · n / esc no", classes="hint")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
