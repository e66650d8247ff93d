"""`esper-tui plot` as a newcomer read it: decisions at their epoch, no straight lines across epochs nobody
measured, whole epochs on the axis, a resumed run's own epochs in the title, "1 decision"."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import msgspec
import pytest

from esper_tui.commands.plot import plot_main, stretches, title_of
from esper_tui.engine.aggregator import Aggregator
from esper_tui.engine.contracts import ControllerDecision, EpochCompleted, Rollback, TrainingStarted
from esper_tui.engine.recorder import RecordingWriter
from esper_tui.engine.snapshot import EventLine, Snapshot, TrainingView
from esper_tui.engine.vocabulary import Action, Level, Subsystem, TrainingStatus
from esper_tui.ui.curves import Curves


def epoch(n: int) -> EpochCompleted:
    return EpochCompleted(
        epoch=n,
        train_loss=1.0 / n,
        val_loss=1.1 / n,
        val_metric=0.5,
        test_metric=0.5,
        samples_per_s=1.0,
        epoch_s=0.1,
    )


def test_decisions_are_marked_at_their_epoch_not_when_a_snapshot_first_showed_them() -> None:
    """A rollback at 6 was drawn at 8: markers took the epoch of the first snapshot that showed the line."""
    agg = Aggregator()
    agg.apply(
        TrainingStarted(
            compile_enabled=False, compile_backend=None, compile_mode=None, dataset="d", host="h", slots=2,
            epochs=10, device="cpu",
        )
    )  # fmt: skip
    for n in range(1, 5):
        agg.apply(epoch(n))
    agg.apply(ControllerDecision(action=Action.GERMINATE, slot="s0", blueprint_id="conv1d_block", reason="flat"))
    agg.apply(epoch(5))
    agg.apply(Rollback(reason="loss is nan", from_epoch=6, to_epoch=4, recovery_s=0.01))
    for n in range(5, 9):
        agg.apply(epoch(n))
    curves = Curves()
    curves.add(agg.snapshot())  # the first snapshot this reader sees is at epoch 8
    assert [(m.kind, m.epoch) for m in curves.markers] == [("germinate", 4), ("rollback", 6)]


def test_one_rollback_is_one_marker() -> None:
    """Tamiyo's decision to roll back (after epoch 5) and Tolaria's restore (of the failing epoch 6) are two log
    lines of one rollback: it is marked once, at the failing epoch."""
    agg = Aggregator()
    for n in range(1, 6):
        agg.apply(epoch(n))
    agg.apply(
        ControllerDecision(
            source=Subsystem.TAMIYO,
            action=Action.ROLLBACK,
            slot=None,
            blueprint_id=None,
            reason="non-finite training loss (nan)",
        )
    )
    agg.apply(
        Rollback(
            source=Subsystem.TOLARIA,
            reason="non-finite training loss (nan)",
            from_epoch=6,
            to_epoch=5,
            recovery_s=0.005,
        )
    )
    curves = Curves()
    curves.add(agg.snapshot())
    assert [(m.kind, m.epoch) for m in curves.markers] == [("rollback", 6)]
    assert curves.markers[0].text.startswith("rollback: non-finite training loss (nan); epoch 6 -> 5 restored")


def test_sparse_series_are_cut_where_epochs_are_missing() -> None:
    assert stretches([(1, 1.0), (2, 0.9), (5, 0.7), (9, 0.5), (10, 0.4)]) == [
        [(1, 1.0), (2, 0.9)],
        [(5, 0.7)],
        [(9, 0.5), (10, 0.4)],
    ]
    assert stretches([]) == []


def snapshot(n: int, *, resumed: int | None = None, events: list[EventLine] | None = None) -> Snapshot:
    training = TrainingView(
        status=TrainingStatus.FINISHED if n == 3 else TrainingStatus.RUNNING,
        epoch=n,
        loss=1.0 / n,
        val_metric=0.5 + n / 100,
        loss_history=[1.0 / e for e in range((resumed or 0) + 1, n + 1)],
        val_metric_history=[0.5 + e / 100 for e in range((resumed or 0) + 1, n + 1)],
        resumed_from_epoch=resumed,
    )
    return Snapshot(seq=n, ts=1000.0 + n, run_id="r1", training=training, events=events or [])


def record(path: Path, snapshots: list[Snapshot]) -> Path:
    writer = RecordingWriter(path)
    for s in snapshots:
        writer.write(s)
    writer.close()
    return path


def test_a_short_run_has_whole_epochs_on_the_axis_and_says_1_decision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 3-epoch run's axis read 1.00, 1.25, 1.50, ... and the command printed "1 decisions"."""
    germinate = EventLine(ts=1002.0, source=Subsystem.TAMIYO, level=Level.INFO, text="germinate s0 <- b (x)", epoch=2)
    path = record(tmp_path / "r1.esrec", [snapshot(n, events=[germinate] if n >= 2 else []) for n in (1, 2, 3)])
    monkeypatch.setitem(matplotlib.rcParams, "svg.fonttype", "none")  # tick labels stay text in the SVG
    out = tmp_path / "run.svg"
    assert plot_main(path, out) == 0
    assert capsys.readouterr().out == f"{out}: 3 epochs, 1 decision marked\n"
    parts = re.split(r'<g id="([xy])tick_\d+">', out.read_text())  # text, kind, tick, kind, tick, ...
    chunks = [
        tick.split('<g id="matplotlib.axis')[0]
        for kind, tick in zip(parts[1::2], parts[2::2], strict=True)
        if kind == "x"
    ]
    ticks = [found.group(1) for chunk in chunks if (found := re.search(r"<text[^>]*>([^<]*)</text>", chunk))]
    assert ticks and all(label.strip().isdigit() for label in ticks), ticks


def test_a_resumed_run_is_titled_with_the_epochs_it_trained() -> None:
    """A run resumed at 12 was titled "30 epochs" although its curves start at 13."""
    curves = Curves()
    for n in (20, 30):
        curves.add(snapshot(n, resumed=12))
    assert curves.first_epoch == 13
    assert title_of(curves, "x") == "run r1: epochs 13-30 (resumed at 12)"
    fresh = Curves()
    fresh.add(snapshot(3))
    assert title_of(fresh, "x") == "run r1: 3 epochs"


def test_a_resumed_run_with_nothing_left_is_refused_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    done = msgspec.structs.replace(snapshot(30, resumed=30), training=TrainingView(epoch=30, resumed_from_epoch=30))
    path = record(tmp_path / "r2.esrec", [done])
    assert plot_main(path, tmp_path / "x.png") == 1
    err = capsys.readouterr().err
    assert err == f"esper-tui: {path}: it resumed at epoch 30 with nothing left to train, nothing to plot\n"
