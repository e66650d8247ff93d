"""The final table of a comparison (`esper-tui compare`): each run's last numbers, and B minus A.

The change is coloured by the metric's direction (a loss that fell is good news, an accuracy that fell is
not); facts with no better side (parameters, epochs, duration) stay plain.
"""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

from esper_tui.ui.comparison import Comparison
from esper_tui.widgets import format as fmt
from esper_tui.widgets.compare_curves import RUN_STYLES
from esper_tui.widgets.panel import FRAME_CSS

GAP = 3
"""Cells between the table's columns."""


def final_table(comparison: Comparison) -> Content:
    """Header (what, A, B, B-A) and one line per `Comparison.rows()` entry, in aligned columns."""
    rows = comparison.rows()
    heads = [f"{side.label} {side.run_id}" for side in comparison.runs]
    what_w = max(len(row.what) for row in rows)
    a_w = max(len(heads[0]), *(len(row.a) for row in rows))
    b_w = max(len(heads[1]), *(len(row.b) for row in rows))
    gap = " " * GAP
    lines = [
        Content(" " * what_w + gap)
        + fmt.styled(heads[0].ljust(a_w), f"{RUN_STYLES['A']} bold")
        + Content(gap)
        + fmt.styled(heads[1].ljust(b_w), f"{RUN_STYLES['B']} bold")
        + Content(gap)
        + fmt.styled("B - A", "bold")
    ]
    for row in rows:
        change_style = {"B": "$success", "A": "$error"}.get(row.better or "", "")
        change = fmt.styled(row.change, change_style) if change_style else Content(row.change)
        lines.append(
            fmt.styled(row.what.ljust(what_w), fmt.MUTED)
            + Content(gap + row.a.ljust(a_w) + gap + row.b.ljust(b_w) + gap)
            + change
        )
    return Content("\n").join(lines)


class CompareTable(Static):
    """Final metric (validation, best, test), losses, parameters, epochs, decisions, rollbacks, time, status."""

    DEFAULT_CSS = (
        FRAME_CSS.format(type_name="CompareTable")
        + """
    CompareTable {
        height: auto;
        width: auto;
    }
    """
    )

    def __init__(self, comparison: Comparison, *, id: str | None = None) -> None:
        super().__init__(final_table(comparison), id=id)
        self.border_title = "Final"
