"""One human-readable line per snapshot, for `--no-ui` without `--json` (and for logs)."""

from __future__ import annotations

from esper_tui.engine.snapshot import Snapshot
from esper_tui.engine.vocabulary import JobStatus, SeedStage


def status_line(s: Snapshot) -> str:
    t, f = s.training, s.forge
    epochs = f"{t.epoch}/{t.epochs_total}" if t.epochs_total else str(t.epoch)
    acc = f"{t.accuracy:.1%}" if t.accuracy is not None else "-"
    loss = f"{t.loss:.3f}" if t.loss is not None else "-"
    count = {st: sum(j.status is st for j in f.jobs) for st in JobStatus}
    seeds = (
        " ".join(
            f"{sd.slot}:{sd.stage}"
            + (f"({sd.blueprint_id} a={sd.alpha:.2f})" if sd.stage is not SeedStage.DORMANT else "")
            for sd in t.seeds
        )
        or "-"
    )
    return (
        f"[{t.status}] epoch {epochs} acc {acc} loss {loss} | kernels {s.infrastructure.kernels} | forge "
        f"{count[JobStatus.COMPILED]}/{len(f.jobs)} compiled, {count[JobStatus.COMPILING]} running, "
        f"{count[JobStatus.QUEUED]} queued, {count[JobStatus.FAILED]} failed | conservative "
        f"{'ON' if f.conservative_mode else 'off'} | wal {len(f.wal.open_transactions)} open | seeds {seeds}"
    )
