"""Tezzeret's vital signs in three short lines: workers busy, queue depth, last WAL checkpoint.

Sits beside the banner so the operator sees at a glance whether the forge is saturated (concurrency at
its maximum, queue growing) or stalled (checkpoint getting old).
"""

from __future__ import annotations

from typing import NamedTuple

from textual.content import Content
from textual.widgets import Static

from esper_tui.engine.snapshot import ForgeHealth, Snapshot
from esper_tui.widgets import format as fmt
from esper_tui.widgets.panel import SnapshotPanel


class HealthSlice(NamedTuple):
    health: ForgeHealth
    checkpoint_age_s: int | None
    """Whole seconds, so the panel redraws once a second rather than on every snapshot."""


class ForgeHealthLine(SnapshotPanel[HealthSlice], Static):
    """Forge concurrency/max, queue depth, compiled/failed counts and checkpoint age."""

    PANEL_TITLE = "Tezzeret"

    DEFAULT_CSS = """
    ForgeHealthLine {
        height: 5;
    }
    """

    def select(self, snapshot: Snapshot) -> HealthSlice:
        health = snapshot.forge.health
        return HealthSlice(health, fmt.round_age(health.last_checkpoint_ts, snapshot.ts))

    def draw(self, part: HealthSlice) -> None:
        health = part.health
        saturated = health.max_concurrency > 0 and health.concurrency >= health.max_concurrency
        workers = fmt.styled(f"workers {health.concurrency}/{health.max_concurrency}", "$warning" if saturated else "")
        failed = fmt.styled(f"{health.failed} failed", "$error" if health.failed else "")
        checkpoint = f"checkpoint {fmt.age(part.checkpoint_age_s)}"
        self.update(
            Content("\n").join(
                [
                    fmt.join([workers, f"queue {health.queue_depth}"]),
                    fmt.join([f"{health.compiled} compiled", failed]),
                    checkpoint,
                ]
            ),
            layout=False,  # height 5 and the width are the CSS's: no layout pass (widgets/panel.py)
        )
