"""Simic, the policy trainer: episodes, the reward curve, the loss, the policy versions and the gate's last verdict.

Simic trains in its own process (`esper-tui simic train`); the engine reads its status every few seconds. The
panel stays out of the way (not displayed) until Simic has trained in this state directory, and in the compact
layout, which has no room for it.
"""

from __future__ import annotations

from typing import NamedTuple

from textual.content import Content
from textual.widgets import Static

from esper_tui.engine.snapshot import SimicView, Snapshot
from esper_tui.widgets import format as fmt
from esper_tui.widgets.panel import SnapshotPanel

BARS = "▁▂▃▄▅▆▇█"


class SimicSlice(NamedTuple):
    simic: SimicView | None
    policy: str  # what Tamiyo follows now


def spark(values: list[float], width: int) -> str:
    """The newest `width` values as block characters, scaled between their own min and max."""
    tail = values[-width:]
    if not tail:
        return ""
    lo, hi = min(tail), max(tail)
    span = hi - lo or 1.0
    return "".join(BARS[min(len(BARS) - 1, int((v - lo) / span * (len(BARS) - 1) + 0.5))] for v in tail)


class SimicPanel(SnapshotPanel[SimicSlice], Static):
    """Training progress, the learning curve, versions, and the last verdict with its reasons."""

    PANEL_TITLE = "Simic"

    DEFAULT_CSS = """
    SimicPanel {
        width: 30%;
        min-width: 36;
        height: 1fr;
        overflow: hidden;
        display: none;
        &.-failed { border: round $warning; }
    }
    """

    def update_snapshot(self, snapshot: Snapshot) -> bool:
        shown = snapshot.simic is not None and not self.screen.has_class("-compact")
        if self.display != shown:
            self.display = shown
        return super().update_snapshot(snapshot)

    def select(self, snapshot: Snapshot) -> SimicSlice:
        return SimicSlice(snapshot.simic, snapshot.training.policy)

    def draw(self, part: SimicSlice) -> None:
        s = part.simic
        if s is None:
            self.update(fmt.styled("Simic has not trained here", fmt.MUTED), layout=False)
            return
        self.set_class(s.verdict == "failed", "-failed")
        last = f"{s.returns[-1]:+.2f}" if s.returns else fmt.DASH
        loss = f"{s.losses[-1]:.3f}" if s.losses else fmt.DASH
        state = "done" if s.finished else "training"
        verdict = (
            fmt.styled(f"gate {s.verdict}", "$success" if s.verdict == "passed" else "$warning bold")
            if s.verdict
            else fmt.styled("gate: no verdict yet", fmt.MUTED)
        )
        lines = [
            fmt.join([f"episodes {s.episodes_done}/{s.episodes_total}", state, fmt.duration(s.wall_s)]),
            Content(f"reward {last} ") + fmt.styled(spark(s.returns, 24), "$accent"),
            Content(f"loss {loss} ") + fmt.styled(spark(s.losses, 24), "$secondary"),
            fmt.join([f"current {s.current}", f"candidate {s.candidate or fmt.DASH}"]),
            fmt.styled(f"Tamiyo follows {part.policy}", fmt.MUTED),
            verdict,
            *(fmt.styled(f"  {reason}", fmt.MUTED) for reason in s.reasons),
        ]
        self.update(Content("\n").join(lines), layout=False)
