"""Replaying a recording: the same dashboard over a `ReplayLink`, no engine running; and `esper-tui runs`.

The link owns a replay clock in recorded time. While playing, each `latest()` moves it on by the wall time
since the last call times the speed, and shows the last snapshot recorded at or before it: the dashboard
polls as it does for a live engine and never learns the difference. Commands have nowhere to go, so
`send` raises CommandUnavailable and the app says so in a toast.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import msgspec
from textual.binding import Binding, BindingType
from textual.widget import Widget

from esper_tui.app import EsperApp
from esper_tui.cli import fail
from esper_tui.engine.contracts import AnyCommand
from esper_tui.engine.recorder import (
    BadRecording,
    Recording,
    RunSummary,
    format_start,
    list_recordings,
    runs_directory,
    summarize,
)
from esper_tui.engine.snapshot import LinkView, Snapshot
from esper_tui.engine.vocabulary import LinkState
from esper_tui.link import CommandUnavailable
from esper_tui.status_line import report_line
from esper_tui.widgets.replay_bar import ReplayBar, ReplayPosition

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

    async def send(self, command: AnyCommand) -> None:
        raise CommandUnavailable(f"this is a replay of {self.recording.path.name}: no engine to send commands to")

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


# --------------------------------------------------------------------------- the commands


def replay_main(args: argparse.Namespace, refresh_hz: float, theme: str) -> int:
    """`esper-tui replay FILE [--no-ui [--json]]`: exit 1 for a file that is not a readable recording."""
    try:
        recording = Recording(args.file)
    except BadRecording as exc:
        return fail(str(exc), 1)
    with recording:
        if recording.torn:
            print(
                f"esper-tui: {args.file}: no index (the run did not stop cleanly); replaying the "
                f"{len(recording)} whole snapshots, {recording.ignored_bytes} bytes of torn tail ignored",
                file=sys.stderr,
            )
        try:
            if args.no_ui:
                for snapshot in recording.frames():
                    print(report_line(snapshot, args.json), flush=True)
                return 0
            app = ReplayApp(ReplayLink(recording), refresh_hz=refresh_hz, theme=theme)
            app.run()
            if app.failure is not None:
                return fail(app.failure, 1)
        except BadRecording as exc:
            return fail(str(exc), 1)
        except BrokenPipeError:
            return 0
    return 0


def _pct(value: float | None) -> str:
    return f"{value:.1%}" if value is not None else "-"


def runs_table(summaries: list[RunSummary]) -> str:
    """`esper-tui runs`: one row per recording, oldest first."""
    head = ("RUN", "START", "DURATION", "EPOCHS", "VAL ACC", "TEST ACC", "STATUS", "SNAPSHOTS")
    rows = [head] + [
        (
            s.run_id,
            format_start(s.start_ts),
            f"{s.duration_s:.0f} s",
            str(s.epochs),
            _pct(s.val_accuracy),
            _pct(s.test_accuracy),
            s.status if s.complete else f"{s.status} (torn)",
            str(s.snapshots),
        )
        if s.problem is None
        else (s.run_id, "-", "-", "-", "-", "-", "unreadable (see above)", "-")
        for s in summaries
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def runs_main(state_dir: Path, as_json: bool) -> int:
    """`esper-tui runs`: the recordings under <state>/runs. An unreadable one is listed, marked, with its reason
    in one line on stderr (and `problem` in JSON); it never keeps the others from being listed."""
    runs_dir = runs_directory(state_dir)
    summaries: list[RunSummary] = []
    for path in list_recordings(runs_dir):
        try:
            summaries.append(summarize(path))
        except BadRecording as exc:
            print(f"esper-tui: {exc}", file=sys.stderr)
            summaries.append(RunSummary.unreadable(path, str(exc)))
    if as_json:
        for summary in summaries:
            print(msgspec.json.encode(summary).decode())
    elif summaries:
        print(runs_table(summaries))
    else:
        print(f"no recordings in {runs_dir}")
    return 0
