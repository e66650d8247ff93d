"""Event detail (Enter on any event that is not a Tamiyo decision): the whole line and every field of the event."""

from __future__ import annotations

from typing import Any

import msgspec
from textual.content import Content

from esper_tui.engine.history import Details, LogEntry
from esper_tui.ui.details.base import DetailScreen, Fetch, heading, muted, section
from esper_tui.widgets import format as fmt
from esper_tui.widgets.events import event_line

ENVELOPE = ("schema_version", "event_id", "ts", "source")
"""Fields every event has: shown once in the heading, not among the event's own."""


def event_fields(entry: LogEntry) -> list[Content]:
    """The event's own fields, one per line (`key: value`, values as JSON); none where only its line is known."""
    if entry.event is None:
        return []
    fields = msgspec.to_builtins(entry.event)
    assert isinstance(fields, dict)
    return [
        Content.assemble((f"{key}: ", "bold"), msgspec.json.encode(value).decode())
        for key, value in fields.items()
        if key not in ENVELOPE
    ]


class EventDetail(DetailScreen):
    """One event-log line, whole (the panel cuts long lines at its edge), with the event it came from."""

    def __init__(self, fetch: Fetch, entry: LogEntry, **kwargs: Any) -> None:
        self.entry = entry
        super().__init__(fetch, **kwargs)

    def title_text(self) -> str:
        return f"Event · {self.entry.line.source.value}"

    def pick(self, details: Details | None) -> object:
        return self.entry  # an event never changes

    def body(self, picked: object) -> Content:
        line = self.entry.line
        lines = [
            event_line(line),
            muted(
                f"{fmt.clock(line.ts)} UTC · {line.source.value} · {line.level.value}"
                + (f" · epoch {line.epoch}" if line.epoch is not None else "")
                + (f" · id {self.entry.event_id}" if self.entry.event_id else "")
            ),
        ]
        lines += section("Text", [Content(line.text)], "")
        kind = type(self.entry.event).__name__ if self.entry.event is not None else "event"
        lines += section(
            f"Fields of the {kind}",
            event_fields(self.entry),
            "not kept here (a replay knows each event by its line only)",
        )
        return Content("\n").join([heading("Event"), *lines])
