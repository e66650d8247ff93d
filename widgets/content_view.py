"""A long, scrollable body of text drawn by the line: wrapped once per width, and only the rows in view composed.

A Static in a scrolling container renders and wraps its whole body on every layout, and opening a screen lays out
several times: a detail screen over a long run (hundreds of lines) took most of its opening time doing that. Here
the body is wrapped into strips when it changes or the width does, and each frame copies only the visible rows.
"""

from __future__ import annotations

from textual.content import Content
from textual.events import Resize
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.visual import Visual


class ContentView(ScrollView, can_focus=True):
    """Scrollable Content (arrows, PgUp/PgDn, Home/End scroll it). The vertical scrollbar is always there, so a body
    that outgrows the screen changes no layout: no second wrap, no second paint of the whole body."""

    DEFAULT_CSS = """
    ContentView {
        height: 1fr;
        overflow-x: hidden;
        overflow-y: scroll;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._content = Content("")
        self._strips: list[Strip] = []
        self._wrapped_at = 0

    @property
    def content(self) -> Content:
        return self._content

    @property
    def laid_out(self) -> bool:
        """Whether the content is wrapped for the width shown (what the next frame draws is the body)."""
        return self._wrapped_at > 0 and self._wrapped_at == self.scrollable_content_region.width

    def update(self, content: Content) -> None:
        """Show `content` (wrapped now if the width is known, else at the first resize)."""
        self._content = content
        self._wrapped_at = 0
        self._wrap()

    def on_resize(self, _: Resize) -> None:
        self._wrap()

    def notify_style_update(self) -> None:
        """A theme change: the strips carry resolved colours, so they are made again."""
        super().notify_style_update()
        self._wrapped_at = 0
        self._wrap()

    def _wrap(self) -> None:
        width = self.scrollable_content_region.width
        if width <= 0 or width == self._wrapped_at:
            return
        self._wrapped_at = width
        self._strips = Visual.to_strips(self, self._content, width, None, self.visual_style)
        self.virtual_size = Size(width, len(self._strips))
        self.refresh()

    def render_line(self, y: int) -> Strip:
        index = self.scroll_offset.y + y
        width = self.scrollable_content_region.width
        if 0 <= index < len(self._strips):
            return self._strips[index].crop_extend(0, width, self.visual_style.rich_style)
        return Strip.blank(width, self.visual_style.rich_style)
