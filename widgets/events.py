"""The event log: the last few things the engine said, newest first, coloured by level.

Times are the event's own timestamp in UTC, never "now", so a snapshot renders the same on every run
and on every machine (the operator's runbook quotes UTC too).
"""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

from esper_tui.engine.snapshot import EventLine, Snapshot
from esper_tui.engine.vocabulary import Level, Subsystem
from esper_tui.widgets import format as fmt
from esper_tui.widgets.panel import SnapshotPanel

SOURCE_WIDTH = max(map(len, Subsystem)) + 1
"""The source column fits the longest subsystem name and a space."""
MAX_EVENTS = 50
"""More lines than any terminal shows in this panel; older ones are the aggregator's to keep."""


def event_line(event: EventLine) -> Content:
    """`12:01:03 tamiyo    germinate s0 <- conv1d_block`, coloured by level."""
    level_var = fmt.LEVEL_VAR[event.level]
    text = fmt.styled(event.text, level_var)
    if event.level is not Level.INFO:
        text = fmt.styled(f"{event.level.value.upper()} ", f"{level_var} bold") + text
    return Content(" ").join(
        [
            fmt.styled(fmt.clock(event.ts), fmt.MUTED),
            fmt.styled(fmt.fit(event.source, SOURCE_WIDTH), "$secondary"),
            text,
        ]
    )


class EventsPanel(SnapshotPanel[tuple[EventLine, ...]], Static):
    """The newest `MAX_EVENTS` event lines, newest at the top so a short panel still shows what matters."""

    PANEL_TITLE = "Events"

    DEFAULT_CSS = """
    EventsPanel {
        height: 1fr;
        overflow: hidden;
    }
    """

    def select(self, snapshot: Snapshot) -> tuple[EventLine, ...]:
        return tuple(snapshot.events[-MAX_EVENTS:])

    def draw(self, part: tuple[EventLine, ...]) -> None:
        if not part:
            self.update(fmt.styled("no events yet", fmt.MUTED), layout=False)
            return
        self.update(Content("\n").join(event_line(event) for event in reversed(part)), layout=False)
