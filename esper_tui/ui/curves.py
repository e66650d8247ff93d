"""Training curves gathered from snapshots (a recording or the live stream), for a panel or an image.

`Curves` is shared by `esper-tui plot` and the dashboard's plot panel, so both show the same points: one
value per epoch and split (the last snapshot of that epoch wins) and the lifecycle decisions (germinate,
fossilize, prune, rollback) at the epoch the event log first showed them. The snapshot's own histories are
bounded (the newest 120 epochs); a recording keeps every epoch, so the image covers the whole run.
"""

from __future__ import annotations

import msgspec

from esper_tui.engine.recorder import Recording
from esper_tui.engine.snapshot import EventLine, Snapshot
from esper_tui.engine.vocabulary import ACCURACY, MetricInfo, Subsystem

MARKED: tuple[str, ...] = ("germinate", "fossilize", "prune", "rollback")
"""Event-log words marked on the curves (a ControllerDecision line starts with its action)."""

SERIES: tuple[tuple[str, str], ...] = (
    ("loss", "train loss"),
    ("val_loss", "validation loss"),
    ("val_metric", "validation"),
    ("test_metric", "test"),
)
"""(TrainingView field, label) of every curve; the first two are losses, the others the run's metric (its name
follows the label: `Curves.label`)."""
METRIC_SERIES = frozenset({"val_metric", "test_metric"})


class Marker(msgspec.Struct, frozen=True):
    epoch: int
    kind: str  # one of MARKED
    text: str


def marker_kind(line: EventLine) -> str | None:
    """Which MARKED word an event line is about, or None. One rollback is one marker: Tolaria's line of the
    restore (at the failing epoch) marks it, and Tamiyo's decision to roll back, logged an epoch earlier for
    the same rollback, does not (each rollback was drawn twice, and `compare` counted it as two decisions)."""
    lowered = line.text.lower()
    first = lowered.split(" ", 1)[0]
    if first == "rollback" and line.source is Subsystem.TAMIYO:
        return None
    if first in MARKED:
        return first
    return "rollback" if "rollback" in lowered else None


class Curves:
    """Per-epoch values of each series, and the markers; fed one snapshot at a time, in order."""

    def __init__(self) -> None:
        self.values: dict[str, dict[int, float]] = {name: {} for name, _ in SERIES}
        self.markers: list[Marker] = []
        self._seen: set[tuple[float, str]] = set()
        self.run_id = ""
        self.resumed_from: int | None = None  # the checkpoint's epoch a resumed run continued from
        self.metric: MetricInfo = ACCURACY  # the run's, as its snapshots say

    def label(self, name: str, label: str) -> str:
        """A series' label: "validation accuracy" for the metric's, the plain label for a loss."""
        return f"{label} {self.metric.name}" if name in METRIC_SERIES else label

    def add(self, snapshot: Snapshot) -> bool:
        """Take what `snapshot` adds; True when a point or a marker was new."""
        self.run_id = snapshot.run_id or self.run_id
        training = snapshot.training
        self.resumed_from = training.resumed_from_epoch
        self.metric = training.metric
        changed = False
        if training.epoch > (training.resumed_from_epoch or 0):  # an epoch this run trained
            for name, history in (("loss", training.loss_history), ("val_metric", training.val_metric_history)):
                # Snapshots this consumer never saw (attached mid-run, or skipped behind a modal): the
                # snapshot's own bounded history fills their epochs, never overwriting a point seen.
                for epoch, value in enumerate(history, start=training.epoch - len(history) + 1):
                    if epoch > 0 and epoch not in self.values[name]:
                        self.values[name][epoch] = float(value)
                        changed = True
            for name, _ in SERIES:
                value = getattr(training, name)
                if value is not None and self.values[name].get(training.epoch) != value:
                    self.values[name][training.epoch] = float(value)
                    changed = True
        for line in snapshot.events:
            key = (line.ts, line.text)
            if key in self._seen:
                continue
            self._seen.add(key)
            if (kind := marker_kind(line)) is not None:
                self.markers.append(Marker(training.epoch if line.epoch is None else line.epoch, kind, line.text))
                changed = True
        return changed

    def series(self, name: str) -> list[tuple[int, float]]:
        """(epoch, value) points of one series, by epoch."""
        return sorted(self.values[name].items())

    @property
    def epochs(self) -> int:
        return max((max(v) for v in self.values.values() if v), default=0)

    @property
    def first_epoch(self) -> int:
        """The first epoch with a point (after a resume, the one after the checkpoint's)."""
        return min((min(v) for v in self.values.values() if v), default=0)


def curves_of(recording: Recording) -> Curves:
    curves = Curves()
    for snapshot in recording.frames():
        curves.add(snapshot)
    return curves


def untrained_reason(curves: Curves) -> str | None:
    """Why a recording has nothing to plot or compare, or None when it trained at least one epoch."""
    if curves.epochs:
        return None
    if curves.resumed_from is not None:
        return f"it resumed at epoch {curves.resumed_from} with nothing left to train"
    return "no training epoch was recorded"
