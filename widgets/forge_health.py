"""Tezzeret's vital signs in three short lines: workers busy, queue depth, last WAL checkpoint.

Sits beside the banner so the operator sees at a glance whether the forge is saturated (concurrency at
its maximum, queue growing) or stalled (checkpoint getting old).
"""

from __future__ import annotations

from typing import NamedTuple

from textual.content import Content
from textual.widgets import Static

from esper_tui.engine.snapshot import ForgeHealth, ForgeWorkerView, Snapshot
from esper_tui.widgets import format as fmt
from esper_tui.widgets.panel import SnapshotPanel


class WorkerLine(NamedTuple):
    name: str
    doing: str
    beat_age_s: int | None


class HealthSlice(NamedTuple):
    health: ForgeHealth
    checkpoint_age_s: int | None
    """Whole seconds, so the panel redraws once a second rather than on every snapshot."""
    workers: tuple[WorkerLine, ...] = ()
    """Forge workers elsewhere (a shared library), each with the age of its last heartbeat."""


def worker_line(worker: ForgeWorkerView, now: float) -> WorkerLine:
    doing = f"holding: {worker.holding}" if worker.holding else ", ".join(worker.jobs) or "idle"
    return WorkerLine(f"{worker.host}:{worker.pid}", doing, fmt.round_age(worker.last_beat_ts, now))


class ForgeHealthLine(SnapshotPanel[HealthSlice], Static):
    """Forge concurrency/max, queue depth, compiled/failed counts and checkpoint age."""

    PANEL_TITLE = "Tezzeret"

    DEFAULT_CSS = """
    ForgeHealthLine {
        height: auto;
        min-height: 5;
        max-height: 12;
    }
    """

    def select(self, snapshot: Snapshot) -> HealthSlice:
        health = snapshot.forge.health
        workers = tuple(worker_line(w, snapshot.ts) for w in snapshot.forge.workers)
        return HealthSlice(health, fmt.round_age(health.last_checkpoint_ts, snapshot.ts), workers)

    def draw(self, part: HealthSlice) -> None:
        health = part.health
        saturated = health.max_concurrency > 0 and health.concurrency >= health.max_concurrency
        workers = fmt.styled(f"workers {health.concurrency}/{health.max_concurrency}", "$warning" if saturated else "")
        failed = fmt.styled(f"{health.failed} failed", "$error" if health.failed else "")
        checkpoint = f"checkpoint {fmt.age(part.checkpoint_age_s)}"
        remote = [fmt.join([w.name, w.doing, f"beat {fmt.age(w.beat_age_s)}"]) for w in part.workers]
        self.update(
            Content("\n").join(
                [
                    fmt.join([workers, f"queue {health.queue_depth}"]),
                    fmt.join([f"{health.compiled} compiled", failed]),
                    checkpoint,
                    *remote,
                ]
            )
        )
