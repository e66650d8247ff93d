"""Control rooms elsewhere: the engines on a Redis (by their heartbeats) and the RemoteLink that
`esper-tui attach` (commands/attach.py) watches one through.

An engine publishes its snapshots as signed frames on its run's `frames` stream and its presence as a
signed heartbeat (engine/broadcast.py). A control room needs nothing but the Redis and the engine's
public frame key (guide section 12):

- It never disturbs the engine: it creates no consumer group and reads frames with plain XREAD, so any
  number of rooms can come and go. Its own presence key (with an expiry) lets the engine count rooms.
- It never shows a false picture: every frame must carry the engine's signature (pinned public key) and
  name the run; anything else is ignored and counted. Deltas land only on the frame they were made for;
  after a gap the room waits for the next keyframe (at least one a second).
- It never shows a stale picture as live: `latest()` stamps each snapshot with a LinkView made at call
  time (LIVE, SILENT after SILENT_AFTER_S without a fresh frame, STOPPED once the engine says so).
- It steers only with the operator key: commands are signed for this run; without the key (or with
  --read-only) the room is read-only and says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import msgspec

from esper_tui.engine.bus import Bus, BusError, StreamNames
from esper_tui.engine.bus.auth import FrameVerifier, operator_name, sign_command, sign_room
from esper_tui.engine.bus.helpers import Backoff
from esper_tui.engine.codec import SchemaMismatch
from esper_tui.engine.contracts import AnyCommand
from esper_tui.engine.frames import (
    DETAILS_FIELD,
    FRAME_FIELD,
    PRESENCE_EVERY_S,
    PRESENCE_TTL_S,
    SIGNATURE_FIELD,
    ControlRoom,
    EngineHeartbeat,
    Frame,
    FrameDecoder,
    decode_details,
    decode_frame,
    heartbeat_key,
    heartbeat_problem,
    open_heartbeat,
    room_key,
    seal_room,
)
from esper_tui.engine.freshness import time_problem
from esper_tui.engine.history import Details, LogEntry
from esper_tui.engine.snapshot import LinkView, Snapshot
from esper_tui.engine.vocabulary import EngineState, LinkState, new_id
from esper_tui.links.base import CommandUnavailable

SILENT_AFTER_S = 3.0
"""A picture older than this is SILENT: the engine sends a keyframe every second, so three missed ones
mean trouble (engine stalled or gone, Redis away, or a network in between)."""
HEARTBEAT_EVERY_S = 1.0
"""How often the room reads the engine's heartbeat (to learn that it stopped)."""
TAIL_FRAMES = 64
"""Frames read back on attach to find the newest keyframe (the engine keeps about 3 s of them)."""
FINAL_SEARCH_FRAMES = 4096
"""Frames read back, once the engine has stopped, to find the final picture its STOPPED heartbeat names
(the stream stops being trimmed when the engine stops, so anything put there since sits after it)."""
SKEW_S = 30.0
"""Clock disagreement allowed between engine and room (bus.command_skew_s) when judging a heartbeat."""
READ_COUNT = 256
READ_BLOCK_MS = 500
"""A blocked XREAD returns at least this often, so presence and heartbeat checks keep their pace."""
FRAME_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, SchemaMismatch)
WANT_DETAILS_FOR_S = 10.0
"""A room asks the engine for details (in its presence) this long after a detail screen or the focused log last
read them: the engine stops publishing them once no room asks."""

Entry = tuple[str, dict[bytes, bytes]]


# --------------------------------------------------------------------------- engines on a Redis


@dataclass(frozen=True, slots=True)
class EngineEntry:
    """One engine as `attach --list` shows it; `verified` is None when no key was at hand to check."""

    heartbeat: EngineHeartbeat
    verified: bool | None
    problem: str = ""  # why the heartbeat cannot be current (frames.heartbeat_problem): a replay, a bad clock

    @property
    def live(self) -> bool:
        return self.heartbeat.state is not EngineState.STOPPED and not self.problem

    @property
    def state_label(self) -> str:
        """What `attach --list` shows as the state: the announced one only while the heartbeat is believable."""
        return "stale" if self.problem else self.heartbeat.state.value

    @property
    def uptime_s(self) -> float:
        return max(self.heartbeat.ts - self.heartbeat.started_ts, 0.0)

    def to_json(self) -> dict[str, object]:
        fields: dict[str, object] = msgspec.to_builtins(self.heartbeat)
        fields.pop("schema_version", None)
        return {**fields, "uptime_s": round(self.uptime_s, 1), "verified": self.verified, "problem": self.problem}


def read_heartbeat(value: bytes, verifier: FrameVerifier | None) -> tuple[EngineHeartbeat, bool | None] | None:
    """The heartbeat in a presence value and whether its signature checks (None: not checked); None when
    the value is not a heartbeat at all."""
    try:
        heartbeat, payload, signature = open_heartbeat(value)
    except FRAME_ERRORS:
        return None
    return heartbeat, None if verifier is None else verifier.verify(payload, signature)


async def list_engines(
    bus: Bus,
    prefix: str,
    verifier: FrameVerifier | None,
    *,
    skew_s: float = SKEW_S,
    clock: Callable[[], float] = time.time,
) -> list[EngineEntry]:
    """Every engine with a heartbeat on this Redis and prefix, the longest-running first. A heartbeat whose
    time cannot be current (a copy SET again with no expiry) is listed with its problem, never as live."""
    entries = []
    now = clock()
    for value in (await bus.presence(heartbeat_key(prefix))).values():
        read = read_heartbeat(value, verifier)
        if read is not None:
            entries.append(EngineEntry(*read, problem=heartbeat_problem(read[0], now, skew_s) or ""))
    return sorted(entries, key=lambda e: (e.heartbeat.started_ts, e.heartbeat.run_id))


# --------------------------------------------------------------------------- the link


class RemoteLink:
    """An EngineLink to an engine elsewhere, over its signed frames (see the module docstring).

    `start()` spawns one task that catches up from the newest keyframe, follows the frames stream,
    renews the room's presence and reads the engine's heartbeat; it survives Redis going away (the
    picture turns SILENT, with its age) and recovers on its own. The bus is the caller's to start (with
    create_groups=False) and close.
    """

    def __init__(
        self,
        bus: Bus,
        run_id: str,
        engine_key: str,
        *,
        operator_key: bytes | None,
        read_only_reason: str = "",
        clock: Callable[[], float] = time.time,
        skew_s: float = SKEW_S,
    ) -> None:
        prefix = bus.config.stream_prefix
        self.run_id = run_id
        self.stream = StreamNames.for_prefix(prefix, run_id).frames
        self.stopped = asyncio.Event()
        """Set once the engine said it stopped and its last frames were read."""
        self.frames_rejected = 0
        self.heartbeats_rejected = 0
        self._bus = bus
        self._verifier = FrameVerifier(engine_key)
        self._operator_key = operator_key
        self._read_only_reason = read_only_reason if operator_key is None else ""
        if operator_key is None and not self._read_only_reason:
            self._read_only_reason = "read-only: no operator key"
        self._clock = clock
        self._skew_s = skew_s
        self._issued_by = operator_name()
        self._room_id = new_id()[:12]
        self._room_key = room_key(prefix, run_id, self._room_id)
        self._heartbeat_key = heartbeat_key(prefix, run_id)
        self._decoder = FrameDecoder()
        self._snapshot: Snapshot | None = None
        self._frame_ts = 0.0
        self._cursor: str | None = None  # the last stream entry read; None until caught up
        self._heartbeat: EngineHeartbeat | None = None
        self._final_missing = ""  # the engine's final picture could not be found: said, never papered over
        self._error = ""
        self._task: asyncio.Task[None] | None = None
        self._details: Details | None = None  # the newest verified details the engine published
        self._details_asked_at = -math.inf  # monotonic time a screen last read them
        self._announce_now = False
        self.details_rejected = 0

    # ------------------------------------------------------------------ EngineLink

    def latest(self) -> Snapshot | None:
        """The newest verified picture, with `link` saying how old it is right now (None before the first)."""
        snapshot = self._snapshot
        if snapshot is None:
            return None
        return msgspec.structs.replace(snapshot, link=self.link_view())

    def link_view(self) -> LinkView:
        """How the picture stands right now: what `latest()` stamps on it, and what "waiting" shows."""
        age = max(self._clock() - self._frame_ts, 0.0) if self._snapshot is not None else 0.0
        if self.stopped.is_set():
            state = LinkState.STOPPED
        elif self._snapshot is None:
            state = LinkState.WAITING
        else:
            state = LinkState.SILENT if age > SILENT_AFTER_S else LinkState.LIVE
        return LinkView(
            state=state,
            run_id=self.run_id,
            age_s=age,
            read_only=self.read_only,
            frames_rejected=self.frames_rejected,
            detail=" · ".join(part for part in (self._problem(state), self._read_only_reason) if part),
        )

    def _problem(self, state: LinkState) -> str:
        """What is wrong with the link, if anything: the bus's last error, or the engine's heartbeat gone."""
        if self._error:
            return self._error
        if state is LinkState.STOPPED and self._final_missing:
            return self._final_missing
        if state is LinkState.SILENT and self._heartbeat is None:
            return "the engine's heartbeat has expired"
        return ""

    @property
    def problem(self) -> str:
        return self._problem(self.link_view().state)

    # ------------------------------------------------------------------ DetailsLink

    def details(self) -> Details | None:
        """The newest details the engine published (asking for them, in this room's presence, for a while)."""
        self._ask_for_details()
        return self._details

    def event_log(self) -> list[LogEntry] | None:
        self._ask_for_details()
        return None if self._details is None else self._details.log

    def _ask_for_details(self) -> None:
        if not self.wants_details:
            self._announce_now = True  # say so at once, not at the next presence renewal
        self._details_asked_at = time.monotonic()

    @property
    def wants_details(self) -> bool:
        return time.monotonic() - self._details_asked_at < WANT_DETAILS_FOR_S

    def _take_details(self, fields: Mapping[bytes, bytes]) -> None:
        """Keep the engine's details if it signed them for this run and they are newer than those kept."""
        payload, signature = fields.get(DETAILS_FIELD), fields.get(SIGNATURE_FIELD)
        if payload and signature and self._verifier.verify(payload, signature):
            try:
                details = decode_details(payload)
            except FRAME_ERRORS:
                details = None
            if (
                details is not None
                and details.run_id == self.run_id
                and (self._details is None or details.ts >= self._details.ts)
            ):
                self._details = details
                return
        self.details_rejected += 1

    @property
    def read_only(self) -> bool:
        return self._operator_key is None

    async def send(self, command: AnyCommand) -> None:
        """Sign `command` for this run with the operator key and publish it on the run's command streams."""
        key = self._operator_key
        if key is None:
            raise CommandUnavailable(self._read_only_reason)
        # stamped now, not at the key press: the engine's skew window starts when the command is signed
        stamped = msgspec.structs.replace(command, ts=time.time(), issued_by=self._issued_by, target=self.run_id)
        await self._bus.publish_command(sign_command(key, stamped))

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"remote-link-{self.run_id}")

    async def close(self) -> None:
        """Stop following and take this room's presence away (best effort: Redis may be gone)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(BusError):
            await self._bus.drop_presence(self._room_key)

    async def _run(self) -> None:
        """Until the engine stops (or close): catch up, then follow; the bus failing only delays it."""
        backoff = Backoff(base=0.1, cap=2.0)
        next_room = next_beat = 0.0
        while not self.stopped.is_set():
            try:
                cursor = self._cursor or self._catch_up(await self._bus.tail(self.stream, TAIL_FRAMES))
                now = time.monotonic()
                if now >= next_room or self._announce_now:
                    self._announce_now = False
                    await self._announce()
                    next_room = now + PRESENCE_EVERY_S
                if now >= next_beat:
                    next_beat = now + HEARTBEAT_EVERY_S
                    if (final := await self._engine_stopped()) is not None:
                        await self._read(cursor, block_ms=None, until_empty=True)
                        await self._find_final(final)
                        self.stopped.set()
                        continue
                await self._read(cursor, block_ms=READ_BLOCK_MS)
                self._error = ""
                backoff.succeeded()
            except BusError as exc:
                self._error = f"bus: {exc}"
                await asyncio.sleep(backoff.failed())

    async def _announce(self) -> None:
        """This room's presence: signed with the operator key when the room holds it, so the engine counts it
        as a control room (a read-only room has nothing to sign with and is counted as unverified)."""
        room = ControlRoom(
            room_id=self._room_id,
            by=self._issued_by,
            pid=os.getpid(),
            read_only=self.read_only,
            ts=time.time(),
            wants_details=self.wants_details,
        )
        if self._operator_key is not None:
            room = sign_room(self._operator_key, room)
        await self._bus.put_presence(self._room_key, seal_room(room), PRESENCE_TTL_S)

    async def _engine_stopped(self) -> int | None:
        """Read the engine's heartbeat; once a verified, current one says STOPPED, the final picture's seq.

        A heartbeat that is signed but cannot be current (older than its expiry allows: a copy SET again with
        no expiry; from the future; older than one already read) is rejected, like a forged one."""
        value = (await self._bus.presence(self._heartbeat_key)).get(self._heartbeat_key)
        if value is None:
            self._heartbeat = None  # expired: the engine is gone or cut off; the frames' age tells the rest
            return None
        read = read_heartbeat(value, self._verifier)
        if read is None or not read[1] or read[0].run_id != self.run_id:
            self.heartbeats_rejected += 1
            return None
        heartbeat, previous = read[0], self._heartbeat
        if heartbeat_problem(heartbeat, self._clock(), self._skew_s) or (previous and heartbeat.ts < previous.ts):
            self.heartbeats_rejected += 1
            self._heartbeat = None
            return None
        self._heartbeat = heartbeat
        return heartbeat.last_seq if heartbeat.state is EngineState.STOPPED else None

    async def _find_final(self, final_seq: int) -> None:
        """After STOPPED: make sure the picture is the final one the heartbeat names, or say that it is not.

        A room attaching after the stop catches up by seq, so an older keyframe put back on the stream never
        wins; the stream is searched again here in case the final frame lay beyond the first look."""
        if self._decoder.seq is not None and self._decoder.seq >= final_seq:
            return
        self._apply_newest(await self._bus.tail(self.stream, FINAL_SEARCH_FRAMES))
        shown = self._decoder.seq
        if shown is None or shown < final_seq:
            this = "there is no picture" if shown is None else f"this one is seq {shown}"
            self._final_missing = f"the engine's final picture (seq {final_seq}) is not in the stream; {this}"

    async def _read(self, cursor: str, *, block_ms: int | None, until_empty: bool = False) -> None:
        """Fold in the frames after `cursor`; `until_empty` reads every one still there (the engine's final
        keyframe precedes its STOPPED heartbeat, so a room that saw STOPPED drains the stream first)."""
        while batch := await self._bus.read_entries(self.stream, cursor, count=READ_COUNT, block_ms=block_ms):
            cursor = self._take(batch)
            if not until_empty:
                return

    # ------------------------------------------------------------------ frames

    def _catch_up(self, entries: Sequence[Entry]) -> str:
        """Start from the newest picture among `entries` (oldest first); returns the cursor to follow from."""
        self._apply_newest(entries)
        self._cursor = entries[-1][0] if entries else "0-0"  # an empty stream: read from its very start
        return self._cursor

    def _apply_newest(self, entries: Sequence[Entry]) -> None:
        """Apply the verified keyframe with the highest seq among `entries`, then the deltas after it, in seq
        order: newest by seq, never by place in the stream, where anyone may append a copy of an old frame.
        What is not chosen is not counted as rejected (older pictures, forgeries before the choice alike)."""
        for _entry_id, fields in entries:
            if DETAILS_FIELD in fields:
                self._take_details(fields)
        frames = [
            f
            for _entry_id, fields in entries
            if DETAILS_FIELD not in fields and (f := self._verified(fields, count=False)) is not None
        ]
        keyframes = [f for f in frames if f.base_seq is None]
        if not keyframes:
            return  # no keyframe: the deltas have no base; the next keyframe starts the picture
        start = max(keyframes, key=lambda f: f.seq)
        self._apply(start)
        for frame in sorted((f for f in frames if f.seq > start.seq and f.base_seq is not None), key=lambda f: f.seq):
            self._apply(frame)

    def _take(self, entries: Sequence[Entry]) -> str:
        """Fold in a batch read after the cursor; returns the new cursor."""
        for entry_id, fields in entries:
            self._cursor = entry_id
            if DETAILS_FIELD in fields:
                self._take_details(fields)
                continue
            frame = self._verified(fields)
            if frame is not None:
                self._apply(frame)
        return entries[-1][0]

    def _verified(self, fields: Mapping[bytes, bytes], *, count: bool = True) -> Frame | None:
        """The frame in a stream entry if the engine signed it for this run, with a finite time (a NaN picture
        has no age, so it could never be shown as old); else None, counted unless `count` is False."""
        payload, signature = fields.get(FRAME_FIELD), fields.get(SIGNATURE_FIELD)
        if payload and signature and self._verifier.verify(payload, signature):
            try:
                frame = decode_frame(payload)
            except FRAME_ERRORS:
                frame = None
            if (
                frame is not None
                and frame.run_id == self.run_id
                and time_problem(frame.ts, self._clock(), max_age_s=math.inf, max_ahead_s=math.inf) is None
            ):
                return frame
        self.frames_rejected += count
        return None

    def _apply(self, frame: Frame) -> None:
        """Fold a verified frame in; an older one than shown (a replay) is rejected, a gap waits."""
        shown = self._decoder.seq
        if shown is not None and frame.seq < shown:
            self.frames_rejected += 1
            return
        try:
            snapshot = self._decoder.apply(frame)
        except FRAME_ERRORS:
            self.frames_rejected += 1
            return
        if snapshot is not None:
            self._snapshot = snapshot
            self._frame_ts = max(self._frame_ts, frame.ts)
