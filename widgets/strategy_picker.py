"""A small modal to choose the compile strategy for a recompile (key `s`, or the command palette).

Each option says what it does on this kind of machine (guide section 4), so the operator does not need
the runbook open; Aggressive is offered disabled in conservative mode, which forbids it.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from esper_tui.engine.vocabulary import Strategy
from esper_tui.widgets import format as fmt

STRATEGY_HELP: dict[Strategy, str] = {
    Strategy.FAST: "aot_eager, fullgraph: quick, used in conservative mode",
    Strategy.STANDARD: "inductor default, fullgraph: the default",
    Strategy.AGGRESSIVE: "inductor dynamic shapes / max-autotune: opt-in",
    Strategy.EMERGENCY: "eager: validate and package weights only",
}


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

    def __init__(self, blueprint_id: str, *, conservative: bool = False) -> None:
        super().__init__()
        self.blueprint_id = blueprint_id
        self.conservative = conservative

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = f"Recompile {self.blueprint_id} with strategy"
            yield OptionList(*self._options())
            yield Static("enter choose · esc cancel", classes="hint")

    def on_mount(self) -> None:
        # Enter straight away means the operator default, Standard.
        self.query_one(OptionList).highlighted = list(Strategy).index(Strategy.STANDARD)

    def _options(self) -> list[Option]:
        options = []
        for strategy in Strategy:
            blocked = self.conservative and strategy is Strategy.AGGRESSIVE
            note = "off in conservative mode" if blocked else STRATEGY_HELP[strategy]
            prompt = fmt.styled(fmt.fit(strategy.value.capitalize(), 11), "bold") + Content.styled(note, fmt.MUTED)
            options.append(Option(prompt, id=strategy.value, disabled=blocked))
        return options

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(Strategy(event.option.id))

    def action_cancel(self) -> None:
        self.dismiss(None)
