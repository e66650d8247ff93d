"""Nissa's firing alerts in one line across the dashboard, hidden while none fires.

An alert is something to act on now, so it gets its own strip above the panels instead of a line that
scrolls away in the event log; when the last one resolves the strip disappears and gives the space back.
"""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

from esper_tui.engine.snapshot import AlertView, Snapshot
from esper_tui.widgets import format as fmt
from esper_tui.widgets.panel import SnapshotPanel


class AlertStrip(SnapshotPanel[tuple[AlertView, ...]], Static):
    """`⚠ name: summary` for each firing alert, critical ones in the error colour."""

    PANEL_TITLE = "Alerts"

    DEFAULT_CSS = """
    AlertStrip {
        height: auto;
        max-height: 6;
        border: round $warning;
        display: none;
    }
    """

    def select(self, snapshot: Snapshot) -> tuple[AlertView, ...]:
        return tuple(snapshot.alerts)

    def update_snapshot(self, snapshot: Snapshot) -> bool:
        """Shown exactly while something fires (a hidden panel would otherwise never draw its first alert)."""
        self.display = bool(snapshot.alerts)
        return super().update_snapshot(snapshot)

    def draw(self, part: tuple[AlertView, ...]) -> None:
        lines = [
            fmt.styled(f"⚠ {a.alertname}: {a.summary}", "$error" if a.severity == "critical" else "$warning")
            for a in part
        ]
        self.update(Content("\n").join(lines))
