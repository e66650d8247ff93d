"""Tezzeret's circuit breakers, one aligned line each: state colour first, then reading vs threshold.

The colour carries the meaning (closed = success, half-open = warning, open = error, unavailable =
disabled), and an unavailable breaker says why ("no GPU") instead of showing a zero reading.
"""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

from esper_tui.engine.snapshot import BreakerView, Snapshot
from esper_tui.engine.vocabulary import BreakerState
from esper_tui.widgets import format as fmt
from esper_tui.widgets.panel import SnapshotPanel

NAME_WIDTH = 7
STATE_WIDTH = 11
FAILURES_WIDTH = 6
STATE_LABEL = {BreakerState.HALF_OPEN: "half-open", BreakerState.OPEN: "OPEN", BreakerState.UNAVAILABLE: "n/a"}
"""Short state words (OPEN shouts); the detail says why a breaker is n/a ("no GPU")."""


def breaker_reading(breaker: BreakerView) -> str:
    return fmt.reading(breaker.reading, breaker.threshold, breaker.unit)


def breaker_line(breaker: BreakerView, reading_width: int) -> Content:
    """One breaker as a line of columns; `reading_width` is the widest reading on the panel."""
    colour = fmt.BREAKER_STATE_VAR[breaker.state]
    unavailable = breaker.state is BreakerState.UNAVAILABLE
    state = f"{'○' if unavailable else '●'} {STATE_LABEL.get(breaker.state, breaker.state.value)}"
    parts = [fmt.styled(fmt.fit(breaker.name, NAME_WIDTH), "bold"), fmt.styled(fmt.fit(state, STATE_WIDTH), colour)]
    if unavailable:
        # Nothing to measure: the reason (e.g. "no GPU: NVML Shared Library Not Found") gets the room.
        parts.append(fmt.styled(breaker.detail or "unavailable", fmt.MUTED))
    else:
        failures = f"{breaker.failures} fail"
        parts += [
            Content(breaker_reading(breaker).ljust(reading_width)),
            fmt.styled(fmt.fit(failures, FAILURES_WIDTH), "$error" if breaker.failures else fmt.MUTED),
        ]
        if breaker.detail:
            parts.append(fmt.styled(breaker.detail, fmt.MUTED))
    return Content(" ").join(parts).rstrip()


class BreakersPanel(SnapshotPanel[tuple[BreakerView, ...]], Static):
    """All breakers; the panel border turns to the worst state so trouble shows from afar."""

    PANEL_TITLE = "Breakers"

    DEFAULT_CSS = """
    BreakersPanel {
        height: auto;
        min-height: 3;
        &.-open { border: round $error; }
        &.-half-open { border: round $warning; }
    }
    """

    def select(self, snapshot: Snapshot) -> tuple[BreakerView, ...]:
        return tuple(snapshot.forge.breakers)

    def draw(self, part: tuple[BreakerView, ...]) -> None:
        states = {breaker.state for breaker in part}
        self.set_class(BreakerState.OPEN in states, "-open")
        self.set_class(BreakerState.HALF_OPEN in states and BreakerState.OPEN not in states, "-half-open")
        if not part:
            self.update(fmt.styled("no breakers reported", fmt.MUTED))
            return
        width = max((len(breaker_reading(b)) for b in part if b.state is not BreakerState.UNAVAILABLE), default=0)
        self.update(Content("\n").join(breaker_line(breaker, width) for breaker in part))
