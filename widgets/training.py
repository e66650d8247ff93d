"""Tolaria's training loop: where the run is, how fast, and the loss and metric curves so far.

The curves are Sparklines (about 15 % CPU at 10 Hz, guide section 8), so they are only touched when the
history itself changed, which is once per epoch rather than on every snapshot.
"""

from __future__ import annotations

import msgspec
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.widgets import Sparkline, Static

from esper_tui.engine.snapshot import Snapshot, TrainingView
from esper_tui.engine.vocabulary import TrainingStatus
from esper_tui.widgets import format as fmt
from esper_tui.widgets.panel import SnapshotPanel


def training_line(view: TrainingView) -> Content:
    """Status, epoch and epoch time on one line."""
    total = f"/{view.epochs_total}" if view.epochs_total else ""
    status = fmt.styled(view.status.upper(), f"{fmt.TRAINING_STATUS_VAR[view.status]} bold")
    if view.status is TrainingStatus.WAITING and view.waiting_for:  # never a silent wait
        return status + Content(f" for {view.waiting_for}")
    epoch_s = f"{fmt.number(view.epoch_s, 1)} s/epoch"
    # samples/s is in the banner already; this line must fit the narrow right-hand column.
    return fmt.join([status, f"epoch {view.epoch}{total}", epoch_s])


class TrainingPanel(SnapshotPanel[TrainingView], Vertical):
    """Training status line plus loss and validation-metric sparklines."""

    PANEL_TITLE = "Tolaria training"

    DEFAULT_CSS = """
    TrainingPanel {
        height: 1fr;
        & > #training-status { height: 1; }
        & > .curve { height: 2; }
        & .curve-label { width: 16; height: 1fr; }
        & Sparkline { height: 1fr; width: 1fr; }
        & #loss-curve > .sparkline--max-color { color: $error 80%; }
        & #loss-curve > .sparkline--min-color { color: $success; }
        & #metric-curve > .sparkline--max-color { color: $success; }
        & #metric-curve > .sparkline--min-color { color: $warning 80%; }
        & #metric-curve.-lower-is-better > .sparkline--max-color { color: $warning 80%; }
        & #metric-curve.-lower-is-better > .sparkline--min-color { color: $success; }
    }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="training-status")
        with Horizontal(classes="curve"):
            yield Static("loss", id="loss-label", classes="curve-label")
            yield Sparkline([], id="loss-curve")
        with Horizontal(classes="curve"):
            yield Static("val", id="metric-label", classes="curve-label")
            yield Sparkline([], id="metric-curve")

    def select(self, snapshot: Snapshot) -> TrainingView:
        # Seeds have their own panel: leave them out so seed changes do not redraw the curves.
        return msgspec.structs.replace(snapshot.training, seeds=[])

    def draw(self, part: TrainingView) -> None:
        # Sizes here are the CSS's, never the text's: redraw without a layout pass (see widgets/panel.py).
        self.query_one("#training-status", Static).update(training_line(part), layout=False)
        loss = Content("\n").join(
            [
                fmt.styled(f"loss {fmt.metric(part.loss)}", "bold"),
                fmt.styled(f"val {fmt.metric(part.val_loss)}", fmt.MUTED),
            ]
        )
        m = part.metric
        metric = Content("\n").join(
            [
                fmt.styled(f"val {fmt.metric_label(m)} {m.format(part.val_metric)}", "bold"),
                fmt.styled(f"test {m.format(part.test_metric)}", fmt.MUTED),  # reported, never decided on
            ]
        )
        self.query_one("#loss-label", Static).update(loss, layout=False)
        self.query_one("#metric-label", Static).update(metric, layout=False)
        self.query_one("#metric-curve", Sparkline).set_class(not m.higher_is_better, "-lower-is-better")
        for curve_id, history in (("#loss-curve", part.loss_history), ("#metric-curve", part.val_metric_history)):
            curve = self.query_one(curve_id, Sparkline)
            shown = bool(history)  # no flat baseline pretending to be data before epoch 1
            if curve.display != shown:
                curve.display = shown
            if list(curve.data or []) != history:
                curve.data = list(history)
                # One column per epoch until the history outgrows the panel, then buckets. Width is a
                # layout change: made only while it still changes what is drawn.
                width = max(len(history), 1)
                if self.size.width:  # laid out: beyond the panel's width more columns change nothing
                    width = min(width, self.size.width)
                if curve.styles.max_width is None or curve.styles.max_width.value != width:
                    curve.styles.max_width = width
