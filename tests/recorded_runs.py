"""Small, fixed recordings of two runs of one task, for the compare tests (JSON, image, screen, browser).

Everything is a function of the arguments (no clocks), so the compare screen renders the same SVG each time.
"""

from __future__ import annotations

from pathlib import Path

from esper_tui.engine.recorder import RecordingWriter
from esper_tui.engine.snapshot import EventLine, Snapshot, TrainingView
from esper_tui.engine.vocabulary import ACCURACY, Level, MetricInfo, Subsystem, TrainingStatus

RUN_A = "a1a1a1a1a1a1"
RUN_B = "b2b2b2b2b2b2"


def decision(epoch: int, text: str, source: Subsystem = Subsystem.TAMIYO) -> EventLine:
    level = Level.WARNING if text.startswith("rollback") else Level.INFO
    return EventLine(ts=1000.0 + epoch, source=source, level=level, text=text, epoch=epoch)


def run_snapshots(
    run_id: str,
    epochs: int,
    *,
    lift: float,
    decisions: list[EventLine],
    task: str = "mnist1d",
    metric: MetricInfo = ACCURACY,
    parameters: int | None = 10_000,
    grows_by: int = 0,
    rollbacks_at: tuple[int, ...] = (),
) -> list[Snapshot]:
    """One snapshot per epoch: loss falling, the metric rising towards `lift`, the test split every 3 epochs,
    each decision in the event log from its epoch on, `grows_by` parameters more after each germination."""
    out: list[Snapshot] = []
    best: float | None = None
    for n in range(1, epochs + 1):
        val = 0.4 + lift * (1 - 0.8**n)
        best = val if best is None else max(best, val)
        shown = [d for d in decisions if d.epoch is not None and d.epoch <= n]
        grown = sum(1 for d in shown if d.text.startswith("germinate"))
        training = TrainingView(
            status=TrainingStatus.FINISHED if n == epochs else TrainingStatus.RUNNING,
            task=task,
            metric=metric,
            epoch=n,
            epochs_total=epochs,
            loss=round(1.5 * 0.85**n, 5),
            val_loss=round(1.6 * 0.86**n, 5),
            val_metric=round(val, 5),
            best_val_metric=round(best, 5),
            test_metric=round(val - 0.01, 5) if n % 3 == 0 or n == epochs else None,
            parameters=None if parameters is None else parameters + grows_by * grown,
            rollbacks=sum(1 for at in rollbacks_at if at <= n),
        )
        out.append(Snapshot(seq=n, ts=1000.0 + 2.0 * n, run_id=run_id, training=training, events=shown))
    return out


def record(path: Path, snapshots: list[Snapshot]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = RecordingWriter(path)
    for snapshot in snapshots:
        writer.write(snapshot)
    writer.close()
    return path


def two_runs(runs_dir: Path) -> tuple[Path, Path]:
    """mnist1d's run A (14 epochs, a seed fossilized) and run B (18 epochs: a rollback, a prune, 3 germinations)."""
    a = run_snapshots(
        RUN_A,
        14,
        lift=0.3,
        grows_by=1_200,
        decisions=[
            decision(4, "germinate s0 <- conv1d_block (accuracy flat for 3 epochs at 63.1 %)"),
            decision(9, "fossilize s0 (gain +4.2 points over 5 epochs)"),
        ],
    )
    b = run_snapshots(
        RUN_B,
        18,
        lift=0.34,
        grows_by=900,
        rollbacks_at=(7,),
        decisions=[
            decision(3, "germinate s0 <- mlp_block (accuracy flat for 3 epochs at 60.2 %)"),
            decision(
                7, "rollback: loss is nan; epoch 7 -> 6 restored in 41 ms, pruned and embargoed s0", Subsystem.TOLARIA
            ),
            decision(10, "germinate s1 <- res_block (accuracy flat for 3 epochs at 70.4 %)"),
            decision(13, "prune s1 (gain -0.4 points after 3 epochs)"),
            decision(15, "germinate s1 <- conv1d_block (accuracy flat for 2 epochs at 72.9 %)"),
        ],
    )
    return record(runs_dir / f"{RUN_A}.esrec", a), record(runs_dir / f"{RUN_B}.esrec", b)
