"""Replaying a recording: a `ReplayLink` the dashboard polls as it would a live engine, no engine running.

The link owns a replay clock in recorded time. While playing, each `latest()` moves it on by the wall time
since the last call times the speed, and shows the last snapshot recorded at or before it: the dashboard
polls as it does for a live engine and never learns the difference. Commands have nowhere to go, so
`send` raises CommandUnavailable and the app says so in a toast.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterator

import msgspec

from esper_tui.engine.contracts import AnyCommand
from esper_tui.engine.history import DEFAULT_SCROLLBACK, Details, LogEntry
from esper_tui.engine.history_replay import as_of, rebuild
from esper_tui.engine.recorder import BadRecording, Recording
from esper_tui.engine.snapshot import LinkView, Snapshot
from esper_tui.engine.vocabulary import LinkState
from esper_tui.links.base import CommandUnavailable
from esper_tui.widgets.replay_bar import ReplayPosition

SPEEDS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
"""Replay speeds `[` and `]` step through (1 = as recorded)."""


class ReplayLink:
    """An EngineLink over a recording: position, play/pause and speed, driven by the replay keys."""

    def __init__(
        self,
        recording: Recording,
        *,
        clock: Callable[[], float] = time.monotonic,
        scrollback: int = DEFAULT_SCROLLBACK,
    ) -> None:
        self.recording = recording
        self._scrollback = scrollback
        self._history: Details | None = None  # the whole run's, rebuilt once (in a thread) on the first ask
        self._log_ts: list[float] = []
        self._rebuilding: threading.Thread | None = None
        self.history_problem = ""  # why the rebuild stopped early (a snapshot that could not be read)
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

    # --------------------------------------------------------------- DetailsLink

    def details(self) -> Details | None:
        """The history as it stood at the moment shown (None while it is being rebuilt)."""
        history = self._rebuilt()
        return None if history is None else as_of(history, self.moment)

    def event_log(self) -> list[LogEntry] | None:
        history = self._rebuilt()
        if history is None:
            return None
        return history.log[: bisect.bisect_right(self._log_ts, self.moment)]

    @property
    def moment(self) -> float:
        """The recorded time of the snapshot shown."""
        return self.recording.entries[self._position].ts

    def _rebuilt(self) -> Details | None:
        if self._history is None and self._rebuilding is None:
            self._rebuilding = threading.Thread(target=self._rebuild, name="replay-history", daemon=True)
            self._rebuilding.start()
        return self._history

    def wait_for_history(self, timeout_s: float | None = None) -> Details | None:
        """Start the rebuild if needed and wait for it (tests, benchmarks)."""
        self._rebuilt()
        if self._rebuilding is not None:
            self._rebuilding.join(timeout_s)
        return self._history

    def _rebuild(self) -> None:
        """Read every snapshot through a handle of its own (the dashboard keeps reading through the other)."""
        with Recording(self.recording.path) as own:
            history = rebuild(self._readable(own), scrollback=self._scrollback)
        details = history.details(history.run.run_id if history.run is not None else "", self.recording.entries[-1].ts)
        self._log_ts = [entry.line.ts for entry in details.log]
        self._history = details

    def _readable(self, recording: Recording) -> Iterator[Snapshot]:
        """The snapshots up to the first that cannot be read (said in `history_problem`)."""
        for position in range(len(recording)):
            try:
                yield recording.snapshot(position)
            except BadRecording as exc:
                self.history_problem = str(exc)
                return

    def jump_to(self, ts: float) -> None:
        """Pause at the first snapshot that shows what happened at `ts` (an event's moment)."""
        position = self.recording.position_at(ts)
        if self.recording.entries[position].ts < ts and position + 1 < len(self.recording):
            position += 1
        self.playing = False
        self.seek(position)

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
