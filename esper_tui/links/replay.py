"""Replaying a recording: a `ReplayLink` the dashboard polls as it would a live engine, no engine running.

The link owns a replay clock in recorded time. While playing, each `latest()` moves it on by the wall time
since the last call times the speed, and shows the last snapshot recorded at or before it: the dashboard
polls as it does for a live engine and never learns the difference. Commands have nowhere to go, so
`send` raises CommandUnavailable and the app says so in a toast.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec

from esper_tui.engine.contracts import AnyCommand
from esper_tui.engine.recorder import Recording
from esper_tui.engine.snapshot import LinkView, Snapshot
from esper_tui.engine.vocabulary import LinkState
from esper_tui.links.base import CommandUnavailable
from esper_tui.widgets.replay_bar import ReplayPosition

SPEEDS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
"""Replay speeds `[` and `]` step through (1 = as recorded)."""


class ReplayLink:
    """An EngineLink over a recording: position, play/pause and speed, driven by the replay keys."""

    def __init__(self, recording: Recording, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.recording = recording
        self._clock = clock
        self._position = 0
        self._t = recording.start_ts  # the replay clock, in recorded time
        self._last_wall = clock()
        self.playing = True
        self.speed = 1.0
        self._shown: tuple[int, Snapshot] | None = None

    # --------------------------------------------------------------- EngineLink

    def latest(self) -> Snapshot | None:
        self._advance()
        if self._shown is None or self._shown[0] != self._position:
            snapshot = self.recording.snapshot(self._position)
            view = LinkView(state=LinkState.LOCAL, run_id=snapshot.run_id, read_only=True, detail="replay")
            self._shown = (self._position, msgspec.structs.replace(snapshot, link=view))
        return self._shown[1]

    def refusal(self) -> str:
        """Why no command can be sent from here."""
        return f"this is a replay of {self.recording.path.name}: no engine to send commands to"

    async def send(self, command: AnyCommand) -> None:
        raise CommandUnavailable(self.refusal())

    # --------------------------------------------------------------- controls

    def _advance(self) -> None:
        now = self._clock()
        elapsed, self._last_wall = now - self._last_wall, now
        if not self.playing:
            return
        if self._position >= len(self.recording) - 1:
            self.playing = False  # at the end: stop rather than spin
            return
        self._t += elapsed * self.speed
        self._position = max(self._position, self.recording.position_at(self._t))

    @property
    def position(self) -> int:
        return self._position

    def seek(self, position: int) -> None:
        """Go to `position` (clamped); the replay clock follows it."""
        self._position = min(max(position, 0), len(self.recording) - 1)
        self._t = self.recording.entries[self._position].ts
        self._last_wall = self._clock()

    def step(self, delta: int) -> None:
        """Pause, then move `delta` snapshots (stepping while playing would be undone at once)."""
        self.playing = False
        self.seek(self._position + delta)

    def toggle_play(self) -> None:
        if not self.playing and self._position >= len(self.recording) - 1:
            self.seek(0)  # play at the end starts over
        self.playing = not self.playing
        self._last_wall = self._clock()

    def change_speed(self, steps: int) -> None:
        index = SPEEDS.index(self.speed) if self.speed in SPEEDS else SPEEDS.index(1.0)
        self.speed = SPEEDS[min(max(index + steps, 0), len(SPEEDS) - 1)]

    def where(self) -> ReplayPosition:
        entry = self.recording.entries[self._position]
        return ReplayPosition(
            position=self._position,
            count=len(self.recording),
            run_s=entry.ts - self.recording.start_ts,
            total_s=self.recording.duration_s,
            playing=self.playing,
            speed=self.speed,
            torn=self.recording.torn,
        )
