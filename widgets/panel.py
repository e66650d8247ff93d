"""The contract every dashboard panel follows: take a snapshot, keep your slice, redraw only on change.

Repaints are the dashboard's main cost (guide section 8: a DataTable repaint is ~38 ms whatever
changed), so a panel compares its slice of the new snapshot with the one it last drew and does nothing
when they are equal (msgspec Structs compare by value). A panel whose size the CSS fixes (a height in
rows or fr, nowrap text) redraws with `update(..., layout=False)`: a layout pass of the whole screen cost
~20 ms per snapshot and took the training thread's share of the GIL with the dashboard open. A panel
that is hidden keeps the newest slice and draws it when it is shown again, so hidden panels cost nothing
and never show stale data.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar, cast

from textual import events
from textual.widget import Widget

from esper_tui.engine.snapshot import Snapshot

S = TypeVar("S")

_NOTHING: Any = object()
"""Marker for "no slice yet": a slice may legitimately be None or empty."""


FRAME_CSS = """
{type_name} {{
    border: round $panel-lighten-2;
    border-title-color: $accent;
    border-title-style: bold;
    padding: 0 1;
    text-wrap: nowrap;
    text-overflow: ellipsis;
}}
"""
"""The frame every panel shares (border, title, padding, no wrapping); see `SnapshotPanel`."""


class SnapshotPanel(Generic[S]):
    """Mixin for a dashboard panel that renders one slice of a `Snapshot`.

    Combine it with the widget that does the drawing (`class WalPanel(SnapshotPanel[WalSlice], Static)`)
    and implement `select` (snapshot -> slice, a value that compares by value) and `draw` (slice ->
    widgets). The app calls `update_snapshot` for every new snapshot.

    Each subclass's DEFAULT_CSS gets the shared FRAME_CSS put in front of it. The mixin cannot carry
    that CSS itself: Textual inherits CSS along the first DOMNode base only, and that has to be the
    drawing widget (Static, DataTable, ...) so that its own CSS keeps applying.
    """

    PANEL_TITLE: ClassVar[str] = ""
    """Border title of the panel."""

    DEFAULT_CSS: ClassVar[str]
    """Declared for type checkers only: the drawing widget defines it, `__init_subclass__` extends it."""

    _drawn: Any = _NOTHING
    _pending: Any = _NOTHING
    redraws: int = 0
    """How many times this panel actually redrew (tests use it to prove unchanged slices are skipped)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own_css = cls.__dict__.get("DEFAULT_CSS", "")
        cls.DEFAULT_CSS = FRAME_CSS.format(type_name=cls.__name__) + own_css

    def select(self, snapshot: Snapshot) -> S:
        """This panel's part of the snapshot."""
        raise NotImplementedError

    def draw(self, part: S) -> None:
        """Render the slice; called only when it differs from the last one drawn."""
        raise NotImplementedError

    def update_snapshot(self, snapshot: Snapshot) -> bool:
        """Offer a new snapshot; returns True when the panel's slice changed."""
        part = self.select(snapshot)
        if part == self._drawn:
            self._pending = _NOTHING
            return False
        self._pending = part
        if self._shown():
            self._flush()
        return True

    @property
    def focused_here(self) -> bool:
        """Whether this panel is its screen's focused widget. Unlike `has_focus`, already true in the panel's own
        `on_focus` (Textual sets `has_focus` in a handler that runs after the subclass's) and false in `on_blur`."""
        widget = cast(Widget, self)
        return widget.is_mounted and widget.screen.focused is widget

    def _shown(self) -> bool:
        """True when this widget and every ancestor is displayed (a hidden panel defers its redraw)."""
        widget = cast(Widget, self)
        if not widget.is_mounted:
            return False
        return all(node.display for node in widget.ancestors_with_self if isinstance(node, Widget))

    def _flush(self) -> None:
        if self._pending is _NOTHING:
            return
        part, self._pending = self._pending, _NOTHING
        self._drawn = part
        self.redraws += 1
        self.draw(part)

    def redraw(self) -> None:
        """Draw the last slice again (after a theme change, when cached colours are stale)."""
        if self._drawn is not _NOTHING and self._pending is _NOTHING:
            self._pending = self._drawn
        self._drawn = _NOTHING
        if self._shown():
            self._flush()

    def _on_show(self, _event: events.Show) -> None:
        """Catch up on a slice that arrived while hidden."""
        self._flush()

    def _on_mount(self, _event: events.Mount) -> None:
        widget = cast(Widget, self)
        if self.PANEL_TITLE and widget.border_title is None:
            widget.border_title = self.PANEL_TITLE
        self._flush()
