"""The dashboard over a recording (`esper-tui replay`): the replay keys and a position bar above the footer."""

from __future__ import annotations

from typing import ClassVar

from textual.binding import Binding, BindingType
from textual.widget import Widget

from esper_tui.engine.recorder import BadRecording
from esper_tui.links.replay import ReplayLink
from esper_tui.ui.app import EsperApp
from esper_tui.widgets.replay_bar import ReplayBar


class ReplayApp(EsperApp):
    """The dashboard over a ReplayLink, with the replay keys and a position bar above the footer."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "replay_toggle", "Play/pause", priority=True, id="replay.toggle"),
        Binding("left", "replay_step(-1)", "◀ step", priority=True, id="replay.back"),
        Binding("right", "replay_step(1)", "step ▶", priority=True, id="replay.forward"),
        Binding("left_square_bracket", "replay_speed(-1)", "slower", key_display="[", priority=True),
        Binding("right_square_bracket", "replay_speed(1)", "faster", key_display="]", priority=True),
        Binding("g", "replay_seek('start')", "start", priority=True, id="replay.start"),
        Binding("G", "replay_seek('end')", "end", key_display="G", priority=True, id="replay.end"),
    ]

    def __init__(self, link: ReplayLink, **kwargs: object) -> None:
        self.replay = link
        self.replay_bar = ReplayBar(id="replay-bar")
        self.failure: str | None = None  # why the replay ended early: a snapshot that could not be read
        super().__init__(link, title=f"Esper replay · {link.recording.path.name}", **kwargs)  # type: ignore[arg-type]

    def dashboard_extras(self) -> tuple[Widget, ...]:
        return (self.replay_bar,)

    def poll_link(self) -> None:
        try:
            super().poll_link()
        except BadRecording as exc:  # the frames before it were shown; this one ends the replay, in one line
            self.failure = str(exc)
            self.exit(return_code=1)
            return
        self.replay_bar.show(self.replay.where())

    def action_replay_toggle(self) -> None:
        self.replay.toggle_play()
        self.poll_link()

    def action_replay_step(self, delta: int) -> None:
        self.replay.step(delta)
        self.poll_link()

    def action_replay_speed(self, steps: int) -> None:
        self.replay.change_speed(steps)
        self.poll_link()

    def action_replay_seek(self, where: str) -> None:
        self.replay.playing = False
        self.replay.seek(0 if where == "start" else len(self.replay.recording) - 1)
        self.poll_link()
