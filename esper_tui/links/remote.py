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
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import msgspec

from esper_tui.engine.bus import Bus, BusError, StreamNames
from esper_tui.engine.bus.auth import FrameVerifier, operator_name, sign_command
from esper_tui.engine.bus.helpers import Backoff
from esper_tui.engine.codec import SchemaMismatch, encode_msgpack
from esper_tui.engine.contracts import AnyCommand
from esper_tui.engine.frames import (
    FRAME_FIELD,
    SIGNATURE_FIELD,
    EngineHeartbeat,
    Frame,
    FrameDecoder,
    decode_frame,
    heartbeat_key,
    open_heartbeat,
    room_key,
)
from esper_tui.engine.snapshot import LinkView, Snapshot
from esper_tui.engine.vocabulary import EngineState, LinkState, Struct, new_id
from esper_tui.links.base import CommandUnavailable

SILENT_AFTER_S = 3.0
"""A picture older than this is SILENT: the engine sends a keyframe every second, so three missed ones
mean trouble (engine stalled or gone, Redis away, or a network in between)."""
PRESENCE_EVERY_S = 2.0
PRESENCE_TTL_S = 3 * PRESENCE_EVERY_S
"""A room that dies without a word drops out of the engine's count within a few seconds."""
HEARTBEAT_EVERY_S = 1.0
"""How often the room reads the engine's heartbeat (to learn that it stopped)."""
TAIL_FRAMES = 64
"""Frames read back on attach to find the newest keyframe (the engine keeps about 3 s of them)."""
READ_COUNT = 256
READ_BLOCK_MS = 500
"""A blocked XREAD returns at least this often, so presence and heartbeat checks keep their pace."""
FRAME_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, SchemaMismatch)

Entry = tuple[str, dict[bytes, bytes]]


class ControlRoom(Struct, kw_only=True):
    """The value of a room's presence key: the engine only counts them; operators may read who watches."""

    by: str
    pid: int
    read_only: bool
    ts: float


# --------------------------------------------------------------------------- engines on a Redis


@dataclass(frozen=True, slots=True)
class EngineEntry:
    """One engine as `attach --list` shows it; `verified` is None when no key was at hand to check."""

    heartbeat: EngineHeartbeat
    verified: bool | None

    @property
    def live(self) -> bool:
        return self.heartbeat.state is not EngineState.STOPPED

    @property
    def uptime_s(self) -> float:
        return max(self.heartbeat.ts - self.heartbeat.started_ts, 0.0)

    def to_json(self) -> dict[str, object]:
        fields: dict[str, object] = msgspec.to_builtins(self.heartbeat)
        fields.pop("schema_version", None)
        return {**fields, "uptime_s": round(self.uptime_s, 1), "verified": self.verified}


def read_heartbeat(value: bytes, verifier: FrameVerifier | None) -> tuple[EngineHeartbeat, bool | None] | None:
    """The heartbeat in a presence value and whether its signature checks (None: not checked); None when
    the value is not a heartbeat at all."""
    try:
        heartbeat, payload, signature = open_heartbeat(value)
    except FRAME_ERRORS:
        return None
    return heartbeat, None if verifier is None else verifier.verify(payload, signature)


async def list_engines(bus: Bus, prefix: str, verifier: FrameVerifier | None) -> list[EngineEntry]:
    """Every engine with a heartbeat on this Redis and prefix, the longest-running first."""
    entries = []
    for value in (await bus.presence(heartbeat_key(prefix))).values():
        read = read_heartbeat(value, verifier)
        if read is not None:
            entries.append(EngineEntry(*read))
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
        self._issued_by = operator_name()
        self._room_key = room_key(prefix, run_id, new_id()[:12])
        self._heartbeat_key = heartbeat_key(prefix, run_id)
        self._decoder = FrameDecoder()
        self._snapshot: Snapshot | None = None
        self._frame_ts = 0.0
        self._cursor: str | None = None  # the last stream entry read; None until caught up
        self._heartbeat: EngineHeartbeat | None = None
        self._error = ""
        self._task: asyncio.Task[None] | None = None

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
        if state is LinkState.SILENT and self._heartbeat is None:
            return "the engine's heartbeat has expired"
        return ""

    @property
    def problem(self) -> str:
        return self._problem(self.link_view().state)

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
                if now >= next_room:
                    await self._announce()
                    next_room = now + PRESENCE_EVERY_S
                if now >= next_beat:
                    next_beat = now + HEARTBEAT_EVERY_S
                    if await self._engine_stopped():
                        await self._read(cursor, block_ms=None, until_empty=True)
                        self.stopped.set()
                        continue
                await self._read(cursor, block_ms=READ_BLOCK_MS)
                self._error = ""
                backoff.succeeded()
            except BusError as exc:
                self._error = f"bus: {exc}"
                await asyncio.sleep(backoff.failed())

    async def _announce(self) -> None:
        room = ControlRoom(by=self._issued_by, pid=os.getpid(), read_only=self.read_only, ts=time.time())
        await self._bus.put_presence(self._room_key, encode_msgpack(room), PRESENCE_TTL_S)

    async def _engine_stopped(self) -> bool:
        """Read the engine's heartbeat; True once a verified one says STOPPED."""
        value = (await self._bus.presence(self._heartbeat_key)).get(self._heartbeat_key)
        if value is None:
            self._heartbeat = None  # expired: the engine is gone or cut off; the frames' age tells the rest
            return False
        read = read_heartbeat(value, self._verifier)
        if read is None or not read[1] or read[0].run_id != self.run_id:
            self.heartbeats_rejected += 1
            return False
        self._heartbeat = read[0]
        return read[0].state is EngineState.STOPPED

    async def _read(self, cursor: str, *, block_ms: int | None, until_empty: bool = False) -> None:
        """Fold in the frames after `cursor`; `until_empty` reads every one still there (the engine's final
        keyframe precedes its STOPPED heartbeat, so a room that saw STOPPED drains the stream first)."""
        while batch := await self._bus.read_entries(self.stream, cursor, count=READ_COUNT, block_ms=block_ms):
            cursor = self._take(batch)
            if not until_empty:
                return

    # ------------------------------------------------------------------ frames

    def _catch_up(self, entries: Sequence[Entry]) -> str:
        """Start from the newest verified keyframe among `entries` (oldest first) and the deltas after it;
        returns the cursor to follow from."""
        newest_first: list[Frame] = []
        for _entry_id, fields in reversed(entries):
            frame = self._verified(fields)
            if frame is None:
                continue
            newest_first.append(frame)
            if frame.base_seq is None:
                break
        else:
            newest_first = []  # no keyframe: the deltas have no base; the next keyframe starts the picture
        for frame in reversed(newest_first):
            self._apply(frame)
        self._cursor = entries[-1][0] if entries else "0-0"  # an empty stream: read from its very start
        return self._cursor

    def _take(self, entries: Sequence[Entry]) -> str:
        """Fold in a batch read after the cursor; returns the new cursor."""
        for entry_id, fields in entries:
            self._cursor = entry_id
            frame = self._verified(fields)
            if frame is not None:
                self._apply(frame)
        return entries[-1][0]

    def _verified(self, fields: Mapping[bytes, bytes]) -> Frame | None:
        """The frame in a stream entry if the engine signed it for this run; else None, counted."""
        payload, signature = fields.get(FRAME_FIELD), fields.get(SIGNATURE_FIELD)
        if payload and signature and self._verifier.verify(payload, signature):
            try:
                frame = decode_frame(payload)
            except FRAME_ERRORS:
                frame = None
            if frame is not None and frame.run_id == self.run_id:
                return frame
        self.frames_rejected += 1
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
