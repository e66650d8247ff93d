"""One run's decisions for the compare screen: each germinate, fossilize, prune and rollback at its epoch.

Two of these stand side by side, run A's and run B's, so the epochs at which the runs chose differently
line up by eye; the letters and colours are the curves' markers'.
"""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

from esper_tui.ui.comparison import RunSide
from esper_tui.widgets import format as fmt
from esper_tui.widgets.compare_curves import RUN_STYLES
from esper_tui.widgets.panel import FRAME_CSS
from esper_tui.widgets.plot_panel import MARK_LETTERS, MARK_STYLES


def decision_lines(side: RunSide) -> Content:
    """ "   6 R rollback: loss is nan ..." per decision, oldest first; a line when there were none."""
    if not side.decisions:
        return fmt.styled("no decisions", f"{fmt.MUTED} italic")
    width = len(str(max(m.epoch for m in side.decisions)))
    return Content("\n").join(
        Content(f"{m.epoch:>{width}} ") + fmt.styled(MARK_LETTERS[m.kind], MARK_STYLES[m.kind]) + Content(f" {m.text}")
        for m in side.decisions
    )


class DecisionList(Static):
    """A run's decisions, its label and run id in the border in the run's colour."""

    DEFAULT_CSS = (
        FRAME_CSS.format(type_name="DecisionList")
        + """
    DecisionList {
        height: auto;
        width: 1fr;
    }
    """
    )

    def __init__(self, side: RunSide, *, id: str | None = None) -> None:
        super().__init__(decision_lines(side), id=id)
        count = len(side.decisions)
        self.border_title = Content.assemble(
            (f"{side.label} {side.run_id}", f"{RUN_STYLES[side.label]} bold"),
            f" · {count} decision{'s' * (count != 1)}",
        )
