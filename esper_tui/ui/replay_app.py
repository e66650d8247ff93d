"""The dashboard over a recording (`esper-tui replay`): the replay keys and a position bar above the footer."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import ClassVar

from textual.app import SystemCommand
from textual.binding import Binding, BindingType
from textual.widget import Widget

from esper_tui.engine.recorder import BadRecording
from esper_tui.links.replay import ReplayLink
from esper_tui.ui.app import LIVE_COMMANDS, DashboardScreen, EsperApp
from esper_tui.widgets.replay_bar import ReplayBar


class ReplayApp(EsperApp):
    """The dashboard over a ReplayLink, with the replay keys and a position bar above the footer."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "space",
            "replay_toggle",
            "Play/pause",
            tooltip="Play or pause the recording",
            priority=True,
            id="replay.toggle",
        ),
        Binding("left", "replay_step(-1)", "◀ step", tooltip="Step back one snapshot", priority=True, id="replay.back"),
        Binding(
            "right", "replay_step(1)", "step ▶", tooltip="Step forward one snapshot", priority=True, id="replay.forward"
        ),
        Binding(
            "left_square_bracket",
            "replay_speed(-1)",
            "slower",
            tooltip="Play slower (down to ¼x)",
            key_display="[",
            priority=True,
            id="replay.slower",
        ),
        Binding(
            "right_square_bracket",
            "replay_speed(1)",
            "faster",
            tooltip="Play faster (up to 64x)",
            key_display="]",
            priority=True,
            id="replay.faster",
        ),
        # Not priority: the focused event log reads g and G as its newest and oldest line.
        Binding("g", "replay_seek('start')", "start", tooltip="Go to the start", id="replay.start"),
        Binding("G", "replay_seek('end')", "end", tooltip="Go to the end", key_display="G", id="replay.end"),
        # The engine's command keys, hidden: a press says why nothing is sent rather than doing nothing.
        *(
            Binding(binding.key, f"refuse_command({binding.description!r})", show=False)
            for binding in DashboardScreen.BINDINGS
            if isinstance(binding, Binding) and binding.action.removeprefix("app.") in LIVE_COMMANDS
        ),
    ]
    HELP_ORDER: ClassVar[tuple[str, ...]] = (
        "replay.toggle",
        "replay.back",
        "replay.forward",
        "replay.slower",
        "replay.faster",
        "replay.start",
        "replay.end",
        "esper.plot",
        "esper.next_view",
        "esper.run_info",
        "esper.filter_events",
        "esper.help",
        "esper.quit",
    )
    SENDS_COMMANDS: ClassVar[bool] = False

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

    def jump_to(self, ts: float) -> Callable[[], None] | None:
        """`J` on an event's or a decision's detail: the dashboard as it was when it happened."""
        return partial(self._jump, ts)

    def _jump(self, ts: float) -> None:
        self.replay.jump_to(ts)
        self.poll_link()

    def action_refuse_command(self, what: str) -> None:
        self.notify(f"{what} not sent: {self.replay.refusal()}", title="Replay", severity="warning", markup=False)

    def dashboard_commands(self) -> Iterable[SystemCommand]:
        """The replay's own keys in the palette; the engine's commands have no engine to go to here."""
        yield SystemCommand("Replay: play / pause", "Play or pause the recording (space)", self.action_replay_toggle)
        yield SystemCommand("Replay: step back", "One snapshot back (←)", partial(self.action_replay_step, -1))
        yield SystemCommand("Replay: step forward", "One snapshot on (→)", partial(self.action_replay_step, 1))
        yield SystemCommand("Replay: slower", "Half the speed, down to ¼x ([)", partial(self.action_replay_speed, -1))
        yield SystemCommand("Replay: faster", "Twice the speed, up to 64x (])", partial(self.action_replay_speed, 1))
        yield SystemCommand("Replay: go to start", "The first snapshot (g)", partial(self.action_replay_seek, "start"))
        yield SystemCommand("Replay: go to end", "The last snapshot (G)", partial(self.action_replay_seek, "end"))

    def action_replay_seek(self, where: str) -> None:
        self.replay.playing = False
        self.replay.seek(0 if where == "start" else len(self.replay.recording) - 1)
        self.poll_link()
