"""The event log: the last few things the engine said, newest first, coloured by level; focused, the whole
scrollback, with a cursor, the `/` filter and Enter to open an event.

Times are the event's own timestamp in UTC, never "now", so a snapshot renders the same on every run
and on every machine (the operator's runbook quotes UTC too).

Unfocused and unfiltered, the panel draws the snapshot's newest lines, as it always did. Focused (tab, or `/`)
or filtered, it reads the link's scrollback (`ui.event_scrollback` lines, `scrollback_source`), which never
travels in a snapshot. Only the rows that fit the panel are rendered, so a deep scrollback costs no more to draw
than a shallow one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

from textual import events
from textual.binding import Binding, BindingType
from textual.content import Content
from textual.message import Message
from textual.widgets import Input, Static

from esper_tui.engine.history import LogEntry
from esper_tui.engine.snapshot import EventLine, Snapshot
from esper_tui.engine.vocabulary import Level, Subsystem
from esper_tui.widgets import format as fmt
from esper_tui.widgets.event_filter import EventFilter
from esper_tui.widgets.panel import SnapshotPanel

SOURCE_WIDTH = max(map(len, Subsystem)) + 1
"""The source column fits the longest subsystem name and a space."""
MAX_EVENTS = 50
"""More lines than any terminal shows in this panel unfocused; older ones are the scrollback's."""


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


def _same(a: LogEntry, b: LogEntry) -> bool:
    """The same event-log line (by event id where both have one: a replay's lines have none)."""
    if a.event_id and b.event_id:
        return a.event_id == b.event_id
    return a.line == b.line


class EventsPanel(SnapshotPanel[tuple[EventLine, ...]], Static):
    """The event log, newest at the top so a short panel still shows what matters."""

    PANEL_TITLE = "Events"
    can_focus = True

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j,down", "move(1)", "Older", show=False, id="events.down"),
        Binding("k,up", "move(-1)", "Newer", show=False, id="events.up"),
        Binding("g,home", "first", "Newest", show=False, id="events.first"),
        Binding("G,end", "last", "Oldest", show=False, id="events.last"),
        Binding("pagedown", "page(1)", "Page down", show=False, id="events.page_down"),
        Binding("pageup", "page(-1)", "Page up", show=False, id="events.page_up"),
        Binding("enter", "open", "Open", show=False, id="events.open"),
        Binding("escape", "clear_filter", "Clear filter", show=False, id="events.clear"),
    ]

    DEFAULT_CSS = """
    EventsPanel {
        height: 1fr;
        overflow: hidden;
        &:focus { border: round $accent; }
    }
    """

    class Opened(Message):
        """Enter on a line: the dashboard opens it (a decision's detail, or the event's)."""

        def __init__(self, entry: LogEntry) -> None:
            super().__init__()
            self.entry = entry

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.scrollback_source: Callable[[], Sequence[LogEntry] | None] = lambda: None
        """Where the whole scrollback comes from (the dashboard sets it to its link's)."""
        self.filter = EventFilter()
        self.filter_text = ""
        self._recent: tuple[EventLine, ...] = ()
        self._rows: list[LogEntry] = []  # newest first, filtered
        self._total = 0  # lines before the filter
        self._cursor = 0
        self._first_shown = 0

    # ------------------------------------------------------------------ data

    def select(self, snapshot: Snapshot) -> tuple[EventLine, ...]:
        return tuple(snapshot.events[-MAX_EVENTS:])

    def draw(self, part: tuple[EventLine, ...]) -> None:
        self._recent = part
        self._reload()
        self._render_rows()

    @property
    def deep(self) -> bool:
        """Whether the panel shows the scrollback (focused or filtered) rather than the snapshot's lines."""
        return self.focused_here or not self.filter.empty

    @property
    def rows(self) -> list[LogEntry]:
        """The lines the panel can show now, newest first (filtered)."""
        return list(self._rows)

    @property
    def cursor_entry(self) -> LogEntry | None:
        return self._rows[self._cursor] if self._rows else None

    def _reload(self) -> None:
        """Rebuild the rows from the scrollback (or the snapshot), keeping the cursor on its line."""
        scrollback = self.scrollback_source() if self.deep else None
        source = list(scrollback) if scrollback is not None else [LogEntry(line=line) for line in self._recent]
        source.reverse()
        self._total = len(source)
        pinned = self._cursor == 0
        was = self.cursor_entry
        self._rows = source if self.filter.empty else [e for e in source if self.filter.matches(e.line)]
        if pinned or was is None:
            self._cursor = 0
        else:
            self._cursor = next((i for i, e in enumerate(self._rows) if _same(e, was)), 0)
        self._scroll_to_cursor()

    def set_filter(self, text: str) -> None:
        """Keep only the lines `text` matches (event_filter), over the whole scrollback; "" shows every line."""
        self.filter_text = text.strip()
        self.filter = EventFilter.parse(text)
        self._cursor = self._first_shown = 0
        self._reload()
        self._render_rows()

    # ------------------------------------------------------------------ drawing

    @property
    def _page(self) -> int:
        return max(self.content_region.height, 1)

    def _scroll_to_cursor(self) -> None:
        self._cursor = min(max(self._cursor, 0), max(len(self._rows) - 1, 0))
        if self._cursor < self._first_shown:
            self._first_shown = self._cursor
        elif self._cursor >= self._first_shown + self._page:
            self._first_shown = self._cursor - self._page + 1
        self._first_shown = min(max(self._first_shown, 0), max(len(self._rows) - self._page, 0))

    def _render_rows(self) -> None:
        self._subtitle()
        if not self._rows:
            words = "no events yet" if self.filter.empty else f"no line matches /{self.filter_text}"
            self.update(fmt.styled(words, fmt.MUTED), layout=False)
            return
        window = self._rows[self._first_shown : self._first_shown + self._page]
        lines = []
        for index, entry in enumerate(window, start=self._first_shown):
            line = event_line(entry.line)
            if index == self._cursor and self.focused_here:
                line = line.stylize("reverse")
            lines.append(line)
        self.update(Content("\n").join(lines), layout=False)

    def _subtitle(self) -> None:
        parts = []
        if not self.filter.empty:
            parts.append(f"/{self.filter_text} · {len(self._rows)} of {self._total} · esc clears")
        elif self.focused_here:
            parts.append(f"{self._cursor + 1}/{len(self._rows)} · / filter · enter open")
        self.border_subtitle = " ".join(parts) or None

    def _refresh_view(self) -> None:
        self._reload()
        self._render_rows()

    def on_focus(self, _event: events.Focus) -> None:
        self._refresh_view()

    def on_blur(self, _event: events.Blur) -> None:
        self._refresh_view()

    def on_resize(self, _event: events.Resize) -> None:
        self._scroll_to_cursor()
        self._render_rows()

    # ------------------------------------------------------------------ keys

    def action_move(self, delta: int) -> None:
        self._cursor += delta
        self._scroll_to_cursor()
        self._render_rows()

    def action_page(self, pages: int) -> None:
        self.action_move(pages * self._page)

    def action_first(self) -> None:
        self.action_move(-len(self._rows))

    def action_last(self) -> None:
        self.action_move(len(self._rows))

    def action_open(self) -> None:
        if (entry := self.cursor_entry) is not None:
            self.post_message(self.Opened(entry))

    def action_clear_filter(self) -> None:
        if not self.filter.empty:
            self.set_filter("")


class FilterInput(Input):
    """The `/` prompt under the event log: filters as you type, Enter keeps the filter, Esc clears it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Clear filter", show=False, id="events.filter_cancel")
    ]

    class Cancelled(Message):
        """Esc in the prompt: the filter is cleared and the prompt closes."""

    def action_cancel(self) -> None:
        self.value = ""
        self.post_message(self.Cancelled())
