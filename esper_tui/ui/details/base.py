"""What every detail screen shares: a framed, scrollable body over the link's details, refreshed while open.

A detail screen covers the dashboard (Esc or q closes it): an opaque screen, not a modal, so opening one does not
render the dashboard again beneath it. It fetches `Details` through the callable the
app gives it (the link's `details()`), picks its record (`pick`) and renders it (`body`) only when the record
changed, so an open screen costs next to nothing between changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.content import Content
from textual.screen import Screen

from esper_tui.engine.history import Details
from esper_tui.widgets import format as fmt
from esper_tui.widgets.content_view import ContentView

Fetch = Callable[[], Details | None]
"""Where a screen gets its details (None: none yet, or none where this link is)."""

REFRESH_S = 1.0
"""How often an open screen asks again (its record may have grown)."""

NO_DETAILS = "no history here yet: the engine has not sent its details (they come when asked; try again in a moment)"


def heading(text: str) -> Content:
    return fmt.styled(text, "$primary bold")


def muted(text: str) -> Content:
    return fmt.styled(text, fmt.MUTED)


SECTION_LINES = 40
"""Lines a section shows, the newest: a long run's 200 stage changes would make a screen slow to open and long
to read (the sparklines show the whole run)."""


def section(title: str, lines: list[Content], empty: str, *, limit: int = SECTION_LINES) -> list[Content]:
    """A heading, then its lines indented (the newest `limit`, saying how many earlier ones are left out), or one
    muted line saying there are none."""
    earlier = len(lines) - limit
    if earlier > 0:
        lines = [muted(f"… {earlier} earlier"), *lines[-limit:]]
    body = [Content("  ") + line for line in lines] if lines else [muted(f"  {empty}")]
    return [Content(""), heading(title), *body]


class DetailScreen(Screen[None]):
    """A framed body over one record of the details; subclasses say which (`pick`) and how it reads (`body`)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "close", "Close", id="detail.close"),
        Binding("J", "jump", "Jump here", key_display="J", id="detail.jump"),
    ]

    DEFAULT_CSS = """
    DetailScreen {
        align: center middle;
        & > ContentView {
            width: 100%;
            max-width: 150;
            height: 100%;
            border: round $accent;
            border-title-color: $accent;
            border-title-style: bold;
            border-subtitle-color: $foreground-muted;
            background: $surface;
            scrollbar-background: $surface;  /* the track always shows (ContentView): quiet while all fits */
            scrollbar-background-hover: $surface;
            scrollbar-background-active: $surface;
            padding: 0 1;
        }
    }
    """

    KEYS_HINT: ClassVar[str] = "esc close"

    def __init__(self, fetch: Fetch, *, refresh_s: float = REFRESH_S, jump: Callable[[], None] | None = None) -> None:
        super().__init__()
        self._fetch = fetch
        self._jump = jump
        self._refresh_s = refresh_s
        self._shown: object = object()
        self.details: Details | None = None

    def title_text(self) -> str:
        raise NotImplementedError

    def pick(self, details: Details | None) -> object:
        """The part of the details this screen shows (compared by value: redrawn only when it changes)."""
        raise NotImplementedError

    def body(self, picked: object) -> Content:
        raise NotImplementedError

    def compose(self) -> ComposeResult:
        box = ContentView(id="detail-box")
        box.border_title = self.title_text()
        box.border_subtitle = ("J jump to this moment · " if self._jump else "") + self.KEYS_HINT
        yield box

    def on_mount(self) -> None:
        self.reload()
        self.set_interval(self._refresh_s, self.reload)

    def reload(self, *, force: bool = False) -> None:
        """Fetch the details again and redraw if this screen's part of them changed."""
        self.details = self._fetch()
        picked = self.pick(self.details)
        if force or picked != self._shown:
            self._shown = picked
            self.query_one("#detail-box", ContentView).update(self.body(picked))

    @property
    def text(self) -> str:
        """The body as plain text (tests read it)."""
        return self.query_one("#detail-box", ContentView).content.plain

    def action_close(self) -> None:
        self.dismiss(None)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """`J` exists only where there is a moment to jump to (a replay)."""
        return action != "jump" or self._jump is not None

    def action_jump(self) -> None:
        """A replay: show the dashboard as it was when this happened (the screen closes to show it)."""
        if self._jump is not None:
            self._jump()
            self.dismiss(None)
