"""Two recorded runs side by side: what `esper-tui compare` shows on its screen, prints as JSON and draws.

Each run is read once, every snapshot in order, into the same `Curves` that `plot` and the plot panel use
(one value per epoch and split, the decisions at their epoch), plus the final facts of its last snapshot.
Two runs compare only when they trained the same task on the same metric: curves of an accuracy and of an
MSE on one axis, or of mnist1d and digits, would say nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgspec

from esper_tui.engine.recorder import Recording
from esper_tui.engine.vocabulary import MetricInfo
from esper_tui.ui.curves import SERIES, Curves, Marker, curves_of, untrained_reason
from esper_tui.widgets import format as fmt


class Incomparable(ValueError):
    """The two runs cannot be set side by side (different tasks or metrics); the message says why."""


class NothingTrained(ValueError):
    """A recording holds no trained epoch (a --forge-only run, or a resume with nothing left to do)."""


class RunSide(msgspec.Struct, kw_only=True, frozen=True):
    """One run of the two: where it came from, its final numbers, its decisions and its curves."""

    label: str  # "A" or "B"
    path: str
    run_id: str
    task: str
    metric: MetricInfo
    status: str
    complete: bool  # the recording has its index: the run stopped cleanly
    duration_s: float
    first_epoch: int  # after a resume, the first epoch this run trained
    last_epoch: int
    resumed_from: int | None
    parameters: int | None  # None: recorded before snapshots carried it
    rollbacks: int
    loss: float | None
    val_loss: float | None
    val_metric: float | None
    best_val_metric: float | None
    test_metric: float | None
    decisions: list[Marker]
    curves: dict[str, list[tuple[int, float]]]  # SERIES name -> (epoch, value), by epoch

    @property
    def trained(self) -> int:
        """Epochs this run trained (a resumed run's own, not its checkpoint's)."""
        return self.last_epoch - self.first_epoch + 1

    @property
    def status_text(self) -> str:
        """The run's final status; "(torn)" when its recording has no index (it did not stop cleanly)."""
        return self.status if self.complete else f"{self.status} (torn)"

    @property
    def epochs_text(self) -> str:
        """ "30", or a resumed run's own epochs: "13-30 (resumed at 12)"."""
        if self.first_epoch <= 1:
            return str(self.last_epoch)
        resumed = f" (resumed at {self.resumed_from})" if self.resumed_from is not None else ""
        return f"{self.first_epoch}-{self.last_epoch}{resumed}"


def read_run(path: Path, label: str) -> tuple[RunSide, Curves]:
    """Read one recording whole. BadRecording for a file that is not one, NothingTrained for a run without an
    epoch; the Curves are returned too, for the image."""
    with Recording(path) as recording:
        curves = curves_of(recording)
        last = recording.snapshot(-1)
        complete, duration_s = not recording.torn, recording.duration_s
    if (why := untrained_reason(curves)) is not None:
        raise NothingTrained(f"{path}: {why}, nothing to compare")
    training = last.training
    side = RunSide(
        label=label,
        path=str(path),
        run_id=curves.run_id or path.stem,
        task=training.task,
        metric=training.metric,
        status=str(training.status),
        complete=complete,
        duration_s=duration_s,
        first_epoch=curves.first_epoch,
        last_epoch=curves.epochs,
        resumed_from=curves.resumed_from,
        parameters=training.parameters,
        rollbacks=training.rollbacks,
        loss=training.loss,
        val_loss=training.val_loss,
        val_metric=training.val_metric,
        best_val_metric=training.best_val_metric,
        test_metric=training.test_metric,
        decisions=list(curves.markers),
        curves={name: curves.series(name) for name, _ in SERIES},
    )
    return side, curves


class Row(msgspec.Struct, frozen=True):
    """One line of the final table: what, A's value, B's, the change from A to B, and which is better."""

    what: str
    a: str
    b: str
    change: str
    better: str | None  # "A", "B", or None (equal, unknown, or a fact with no better side)


def number_row(
    what: str,
    a: float | None,
    b: float | None,
    shown: Callable[[Any], str],
    change: Callable[[Any], str],
    higher_is_better: bool | None,
) -> Row:
    """A row of two numbers: each `shown`, B-A by `change`, the better side by the direction (None: neither)."""
    if a is None or b is None:
        return Row(what, shown(a), shown(b), fmt.DASH, None)
    better = None if higher_is_better is None or a == b else ("B" if (b > a) == higher_is_better else "A")
    return Row(what, shown(a), shown(b), change(b - a), better)


def count_text(n: int | None) -> str:
    """A count with thousands separators (12,700), or the dash."""
    return fmt.DASH if n is None else f"{n:,}"


class Comparison(msgspec.Struct, kw_only=True, frozen=True):
    """Run A and run B of one task and metric."""

    task: str
    metric: MetricInfo
    a: RunSide
    b: RunSide

    @property
    def runs(self) -> tuple[RunSide, RunSide]:
        return (self.a, self.b)

    @property
    def first_epoch(self) -> int:
        return min(self.a.first_epoch, self.b.first_epoch)

    @property
    def last_epoch(self) -> int:
        return max(self.a.last_epoch, self.b.last_epoch)

    def differences(self) -> dict[str, float | int | None]:
        """B minus A for every final number (None where either run lacks it), for scripts."""
        out: dict[str, float | int | None] = {}
        for name in ("val_metric", "best_val_metric", "test_metric", "loss", "val_loss", "parameters", "rollbacks"):
            a, b = getattr(self.a, name), getattr(self.b, name)
            out[name] = None if a is None or b is None else b - a
        out["epochs"] = self.b.trained - self.a.trained
        return out

    def better_on_validation(self) -> str | None:
        """Which run reached the better best validation value ("A", "B"), None when equal or unknown. Only the
        validation split: the test split is reported, never decided on."""
        a, b = self.a.best_val_metric, self.b.best_val_metric
        if a is None or b is None or a == b:
            return None
        return "B" if self.metric.better(b, a) else "A"

    def rows(self) -> list[Row]:
        """The final table, as the screen and `--no-ui` show it."""
        m, a, b = self.metric, self.a, self.b
        rows = [
            number_row(
                f"{what} {m.name}",
                getattr(a, name),
                getattr(b, name),
                m.format,
                partial(m.format, signed=True),
                m.higher_is_better,
            )
            for what, name in (("val", "val_metric"), ("best val", "best_val_metric"), ("test", "test_metric"))
        ]
        rows += [
            number_row(what, getattr(a, name), getattr(b, name), fmt.metric, "{:+.3g}".format, False)
            for what, name in (("train loss", "loss"), ("val loss", "val_loss"))
        ]
        rows.append(number_row("parameters", a.parameters, b.parameters, count_text, "{:+,}".format, None))
        rows.append(Row("epochs", a.epochs_text, b.epochs_text, f"{b.trained - a.trained:+d}", None))
        rows.append(number_row("decisions", len(a.decisions), len(b.decisions), str, "{:+d}".format, None))
        rows.append(number_row("rollbacks", a.rollbacks, b.rollbacks, str, "{:+d}".format, False))
        rows.append(Row("duration", fmt.duration(a.duration_s), fmt.duration(b.duration_s), fmt.DASH, None))
        rows.append(Row("status", a.status_text, b.status_text, fmt.DASH, None))
        return rows


def compare(a: RunSide, b: RunSide) -> Comparison:
    """A and B as one comparison; Incomparable when they trained different tasks or metrics."""
    if a.task != b.task:
        raise Incomparable(
            f"run {a.run_id} trained {a.task or '-'} and run {b.run_id} {b.task or '-'}: only runs of one task compare"
        )
    if a.metric != b.metric:
        raise Incomparable(
            f"run {a.run_id} measured {_metric_words(a.metric)} and run {b.run_id} {_metric_words(b.metric)}: "
            "only runs on one metric compare"
        )
    return Comparison(task=a.task, metric=a.metric, a=a, b=b)


def _metric_words(metric: MetricInfo) -> str:
    return f"{metric.name} ({'higher' if metric.higher_is_better else 'lower'} is better)"


def to_json(comparison: Comparison) -> bytes:
    """The comparison as one JSON object: both runs whole (curves included), B-A and the better side."""
    return msgspec.json.encode(
        {
            "task": comparison.task,
            "metric": comparison.metric,
            "a": comparison.a,
            "b": comparison.b,
            "b_minus_a": comparison.differences(),
            "better_on_validation": comparison.better_on_validation(),
        }
    )
