"""Both runs' curves of each split overlaid (`esper-tui compare`): one scale and one epoch axis per split.

Each split gets two rows, run A's and run B's, drawn by the plot panel's `curve` on the min-max of both runs
together, so a higher block means a higher value in either row; the rows beneath put each run's decisions
(G/F/P/R) at their epoch. The latest value of each row is at its right.
"""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

from esper_tui.ui.comparison import Comparison
from esper_tui.ui.curves import METRIC_SERIES, SERIES
from esper_tui.widgets import format as fmt
from esper_tui.widgets.panel import FRAME_CSS
from esper_tui.widgets.plot_panel import LABEL_WIDTH, SHORT_LABELS, VALUE_WIDTH, curve, marker_row

RUN_STYLES = {"A": "$primary", "B": "$warning"}
"""Each run's colour on the compare screen: its curves, its column of the table, its decisions' title."""
TAG_WIDTH = 3  # " A " between the label and each curve


def until(row: str, epoch: int, first: int, last: int) -> str:
    """`row` blanked after the column of `epoch`: the shorter run's curve ends where it stopped training
    (`curve` holds a value across the columns after it, which would draw epochs that run never had)."""
    span = (last - first + 1) / len(row)
    own = max(int((epoch - first + 1) / span), int((epoch - first) / span) + 1)  # the columns up to its end
    return row[:own].ljust(len(row))


def overlay(comparison: Comparison, width: int) -> Content:
    """The curves block for a panel `width` cells wide (label, run tag, curve, latest value per row)."""
    room = max(width - LABEL_WIDTH - TAG_WIDTH - VALUE_WIDTH, 1)
    first, last = comparison.first_epoch, comparison.last_epoch
    metric = comparison.metric
    lines: list[Content] = []
    for name, _ in SERIES:
        is_metric = name in METRIC_SERIES
        label = f"{SHORT_LABELS[name]} {fmt.metric_label(metric)}" if is_metric else SHORT_LABELS[name]
        values = [v for side in comparison.runs for _, v in side.curves[name]]
        bounds = (min(values), max(values)) if values else None
        for side in comparison.runs:
            points = side.curves[name]
            latest = points[-1][1] if points else None
            shown = metric.format(latest) if is_metric else fmt.number(latest, 3)
            style = RUN_STYLES[side.label]
            lines.append(
                Content(fmt.fit(label if side is comparison.a else "", LABEL_WIDTH))
                + fmt.styled(f" {side.label} ", f"{style} bold")
                + fmt.styled(until(curve(points, first, last, room, bounds), side.last_epoch, first, last), style)
                + Content(shown.rjust(VALUE_WIDTH))
            )
    for side in comparison.runs:
        markers = [(m.epoch, m.kind) for m in side.decisions]
        lines.append(
            Content(fmt.fit("decisions" if side is comparison.a else "", LABEL_WIDTH))
            + fmt.styled(f" {side.label} ", f"{RUN_STYLES[side.label]} bold")
            + marker_row(markers, first, last, room)
        )
    ends = f"{first}".ljust(max(room - len(str(last)), 1)) + f"{last}"
    lines.append(fmt.styled(" " * (LABEL_WIDTH + TAG_WIDTH) + ends + " epoch".rjust(VALUE_WIDTH), fmt.MUTED))
    return Content("\n").join(lines)


class CompareCurves(Static):
    """Every split of both runs, overlaid per split on one scale, drawn at the width the panel has."""

    DEFAULT_CSS = (
        FRAME_CSS.format(type_name="CompareCurves")
        + """
    CompareCurves {
        height: auto;
    }
    """
    )

    def __init__(self, comparison: Comparison, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.comparison = comparison
        self.border_title = "Curves (one scale per split)"

    def render(self) -> Content:
        return overlay(self.comparison, self.content_size.width)

    def on_resize(self) -> None:
        self.refresh()
