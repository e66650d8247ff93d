"""Forge workers elsewhere (a shared library): who is compiling what, and how fresh each heartbeat is.

Shown only while workers announce themselves. A heartbeat older than a few seconds turns the line
amber: the worker may be gone, and the panel says how long it has been silent rather than calling it live.
"""

from __future__ import annotations

from typing import NamedTuple

from textual.content import Content
from textual.widgets import Static

from esper_tui.engine.snapshot import ForgeWorkerView, Snapshot
from esper_tui.widgets import format as fmt
from esper_tui.widgets.panel import SnapshotPanel

STALE_BEAT_S = 3
"""A heartbeat older than this (whole seconds; workers beat every second) is shown as a warning."""


class WorkerLine(NamedTuple):
    name: str
    doing: str
    done: int
    failed: int
    beat_age_s: int | None
    """Whole seconds, so the panel redraws once a second rather than on every snapshot."""


def worker_line(worker: ForgeWorkerView, now: float) -> WorkerLine:
    doing = f"holding: {worker.holding}" if worker.holding else ", ".join(worker.jobs) or "idle"
    age = fmt.round_age(worker.last_beat_ts, now)
    return WorkerLine(f"{worker.host}:{worker.pid}", doing, worker.done, worker.failed, age)


class ForgeWorkersPanel(SnapshotPanel[tuple[WorkerLine, ...]], Static):
    """One line per forge worker: host:pid, what it compiles (or why it holds), done/failed, heartbeat age."""

    PANEL_TITLE = "Forge workers"

    DEFAULT_CSS = """
    ForgeWorkersPanel {
        height: auto;
        max-height: 8;
        display: none;
    }
    """

    def select(self, snapshot: Snapshot) -> tuple[WorkerLine, ...]:
        return tuple(worker_line(w, snapshot.ts) for w in snapshot.forge.workers)

    def update_snapshot(self, snapshot: Snapshot) -> bool:
        """Shown exactly while workers are listed (a hidden panel would otherwise never draw the first)."""
        self.display = bool(snapshot.forge.workers)
        return super().update_snapshot(snapshot)

    def draw(self, part: tuple[WorkerLine, ...]) -> None:
        lines = []
        for w in part:
            stale = w.beat_age_s is None or w.beat_age_s > STALE_BEAT_S
            beat = fmt.styled(f"beat {fmt.age(w.beat_age_s)}", "$warning" if stale else fmt.MUTED)
            counts = f"{w.done} done" + (f", {w.failed} failed" if w.failed else "")
            doing = fmt.styled(w.doing, "$warning" if w.doing.startswith("holding") else "")
            lines.append(fmt.join([w.name, doing, counts, beat]))
        self.update(Content("\n").join(lines))
