"""The plot panel (`v`): loss and the run's metric over epochs for each split, with the lifecycle decisions marked.

One row per series: a block-character curve, one column per epoch (or per group of epochs when the run is
longer than the panel is wide), its own min-max scale, and the latest value. Under them a marker row puts
G(erminate), F(ossilize), P(rune) and R(ollback) at the epoch each decision was logged. The points come
from `esper_tui.ui.curves.Curves`, the same ones `esper-tui plot` draws, gathered from every snapshot this
panel is offered (hidden or not), so opening it shows the whole run seen so far.
"""

from __future__ import annotations

from collections.abc import Iterable

from textual.content import Content
from textual.widgets import Static

from esper_tui.engine.snapshot import Snapshot
from esper_tui.engine.vocabulary import MetricInfo, Struct
from esper_tui.ui.curves import METRIC_SERIES, SERIES, Curves
from esper_tui.widgets import format as fmt
from esper_tui.widgets.panel import SnapshotPanel

BLOCKS = "▁▂▃▄▅▆▇█"
LABEL_WIDTH = 10
VALUE_WIDTH = 8
MARK_LETTERS = {"germinate": "G", "fossilize": "F", "prune": "P", "rollback": "R"}
MARK_STYLES = {"germinate": "$success", "fossilize": "$primary", "prune": "$error", "rollback": "$warning"}
SHORT_LABELS = {"loss": "train loss", "val_loss": "val loss", "val_metric": "val", "test_metric": "test"}
"""Labels of the series; the metric's two get its short name after them ("val acc")."""


class PlotSlice(Struct, kw_only=True, frozen=True):
    epoch: int
    metric: MetricInfo
    series: tuple[tuple[str, tuple[tuple[int, float], ...]], ...]
    markers: tuple[tuple[int, str], ...]


def curve(
    points: list[tuple[int, float]], first: int, last: int, width: int, bounds: tuple[float, float] | None = None
) -> str:
    """Block characters for `points` over epochs first..last in `width` columns (blank before the first), on the
    scale `bounds` (low, high) or, by default, the points' own min-max (two runs overlaid share one scale)."""
    if width < 1 or not points:
        return " " * max(width, 0)
    values = [v for _, v in points]
    low, high = bounds if bounds is not None else (min(values), max(values))
    span = (last - first + 1) / width
    columns: list[list[float]] = [[] for _ in range(width)]
    for epoch, value in points:
        columns[min(int((epoch - first) / span), width - 1)].append(value)
    out = []
    held: float | None = None  # fewer epochs than columns: each value holds until the next epoch's
    for column in columns:
        if column:
            held = column[-1]
        if held is None:
            out.append(" ")
            continue
        value = held
        level = 0 if high == low else round((min(max(value, low), high) - low) / (high - low) * (len(BLOCKS) - 1))
        out.append(BLOCKS[level])
    return "".join(out)


def marker_row(markers: Iterable[tuple[int, str]], first: int, last: int, width: int) -> Content:
    """G/F/P/R at the column of each (epoch, kind) over epochs first..last in `width` columns, as `curve` places
    points; a later decision in the same column wins."""
    marks = [" "] * width
    styles: list[str] = [""] * width
    span = (last - first + 1) / width
    for epoch, kind in markers:
        column = min(max(int((epoch - first) / span), 0), width - 1)
        marks[column], styles[column] = MARK_LETTERS[kind], MARK_STYLES[kind]
    row = Content("")
    for mark, style in zip(marks, styles, strict=True):
        row += fmt.styled(mark, style) if style else Content(mark)
    return row


class PlotPanel(SnapshotPanel[PlotSlice], Static):
    """Curves of every split over the epochs seen, decisions marked beneath."""

    PANEL_TITLE = "Curves (v hides)"
    DEFAULT_CSS = """
    PlotPanel {
        height: 8;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.curves = Curves()
        self._last_seq = 0
        self._run_id = ""
        self._slice: PlotSlice | None = None

    def select(self, snapshot: Snapshot) -> PlotSlice:
        """Fold `snapshot` into the curves; a new run, or a replay that went back, starts them afresh."""
        if snapshot.run_id != self._run_id or snapshot.seq < self._last_seq:
            self.curves = Curves()
            self._run_id = snapshot.run_id
        self._last_seq = snapshot.seq
        self.curves.add(snapshot)
        epoch = snapshot.training.epoch
        return PlotSlice(
            epoch=epoch,
            metric=self.curves.metric,
            series=tuple((name, tuple(p for p in self.curves.series(name) if p[0] <= epoch)) for name, _ in SERIES),
            markers=tuple((m.epoch, m.kind) for m in self.curves.markers if m.epoch <= epoch),
        )

    def draw(self, part: PlotSlice) -> None:
        self._slice = part
        self.refresh()

    def on_resize(self) -> None:
        self.refresh()

    def render(self) -> Content:
        """Drawn at render time, at the width the panel has then (it may have been hidden when the slice came)."""
        if self._slice is None:
            return Content("")
        return self.render_slice(self._slice, self.content_size.width)

    @staticmethod
    def render_slice(part: PlotSlice, width: int) -> Content:
        if part.epoch == 0:
            return fmt.styled("no epoch finished yet", f"{fmt.MUTED} italic")
        room = max(width - LABEL_WIDTH - VALUE_WIDTH, 1)
        first, last = 1, max(part.epoch, 1)
        lines: list[Content] = []
        for name, points in part.series:
            latest = points[-1][1] if points else None
            is_metric = name in METRIC_SERIES
            shown = part.metric.format(latest) if is_metric else fmt.number(latest, 3)
            style = "$success" if is_metric else "$error 80%"
            label = f"{SHORT_LABELS[name]} {fmt.metric_label(part.metric)}" if is_metric else SHORT_LABELS[name]
            lines.append(
                Content(fmt.fit(label, LABEL_WIDTH))
                + fmt.styled(curve(list(points), first, last, room), style)
                + Content(shown.rjust(VALUE_WIDTH))
            )
        row = Content("decisions".ljust(LABEL_WIDTH)) + marker_row(part.markers, first, last, room)
        lines.append(row + Content(f"epoch {part.epoch}".rjust(VALUE_WIDTH)))
        return Content("\n").join(lines)
