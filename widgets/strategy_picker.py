"""A small modal to choose the compile strategy for a recompile (key `s`, or the command palette).

Each option says what it really does (backend:mode, and when the forge uses it), so the operator does not
need the runbook open; a strategy the forge would not compile with right now (Aggressive with its pipeline
off; Standard and Aggressive in conservative mode, which compiles Fast) is offered disabled, saying why. The notes
come from the caller (the app derives them from the engine's pipelines): widgets import only the engine's
contracts, and a hand-written copy here had drifted from the code.
"""

from __future__ import annotations

from collections.abc import Mapping

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from esper_tui.engine.vocabulary import Strategy
from esper_tui.widgets import format as fmt


class StrategyPicker(ModalScreen[Strategy | None]):
    """Dismisses with the chosen Strategy, or None when cancelled with Escape."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="picker.cancel")]

    DEFAULT_CSS = """
    StrategyPicker {
        align: center middle;
        & > Vertical {
            width: 72;
            height: auto;
            border: round $accent;
            border-title-color: $accent;
            background: $surface;
            padding: 0 1;
        }
        & OptionList {
            width: 1fr;
            height: auto;
            border: none;
            padding: 0;
            background: $surface;
            &:focus { border: none; background-tint: $foreground 0%; }
        }
        & .hint { color: $foreground-muted; }
    }
    """

    def __init__(
        self, blueprint_id: str, notes: Mapping[Strategy, str], *, blocked: Mapping[Strategy, str] | None = None
    ) -> None:
        super().__init__()
        self.blueprint_id = blueprint_id
        self.notes = dict(notes)
        self.blocked = dict(blocked or {})  # strategy -> why it cannot be chosen now

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = f"Recompile {self.blueprint_id} with strategy"
            yield OptionList(*self._options())
            yield Static("enter choose · esc cancel", classes="hint")

    def on_mount(self) -> None:
        # Enter straight away means the operator default, Standard (Fast where Standard cannot be had).
        default = Strategy.STANDARD if Strategy.STANDARD not in self.blocked else Strategy.FAST
        self.query_one(OptionList).highlighted = list(Strategy).index(default)

    def _options(self) -> list[Option]:
        options: list[Option] = []
        for strategy in Strategy:
            note = self.blocked.get(strategy, self.notes[strategy])
            prompt = fmt.styled(fmt.fit(strategy.value.capitalize(), 11), "bold") + Content.styled(note, fmt.MUTED)
            options.append(Option(prompt, id=strategy.value, disabled=strategy in self.blocked))
        return options

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(list(Strategy)[event.option_index])  # options are built in Strategy order

    def action_cancel(self) -> None:
        self.dismiss(None)
