"""The replay position bar: where in the recording the dashboard is, in run time, and how it is moving."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

from esper_tui.engine.vocabulary import Struct
from esper_tui.widgets import format as fmt


class ReplayPosition(Struct, kw_only=True, frozen=True):
    """What the bar shows; compares by value, so an unchanged position costs no redraw."""

    position: int
    count: int
    run_s: float
    total_s: float
    playing: bool
    speed: float
    torn: bool = False


def clock(seconds: float) -> str:
    """Run time as m:ss (h:mm:ss past an hour), the way a player shows it."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


def bar(fraction: float, width: int) -> str:
    """A `━━━━●────` track `width` cells wide with the knob at `fraction`."""
    if width < 1:
        return ""
    knob = min(int(fraction * (width - 1) + 0.5), width - 1)
    return "━" * knob + "●" + "─" * (width - 1 - knob)


class ReplayBar(Static):
    """One line above the footer: ▶/⏸, run time of the shown snapshot / total, a track, snapshot n/N, speed."""

    DEFAULT_CSS = """
    ReplayBar {
        height: 1;
        background: $boost;
        padding: 0 1;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self._shown: tuple[ReplayPosition, int] | None = None
        self._position: ReplayPosition | None = None

    def show(self, position: ReplayPosition) -> None:
        self._position = position
        self._draw()

    def on_resize(self) -> None:
        self._draw()

    def _draw(self) -> None:
        position = self._position
        width = self.content_size.width
        if position is None or self._shown == (position, width):
            return
        self._shown = (position, width)
        state = (
            fmt.styled("▶ playing", "$success bold") if position.playing else fmt.styled("⏸ paused", "$warning bold")
        )
        times = f" {clock(position.run_s)} / {clock(position.total_s)} "
        tail = f" {position.position + 1}/{position.count} · {position.speed:g}x" + (
            " · torn tail" if position.torn else ""
        )
        room = width - len(state.plain) - len(times) - len(tail)
        fraction = position.position / (position.count - 1) if position.count > 1 else 1.0
        track = fmt.styled(bar(fraction, room), "$accent") if room >= 5 else Content("")
        self.update(fmt.join([state, Content(times), track, Content(tail)], separator=""), layout=False)
