"""What the engine tells the world besides telemetry: signed frames, a signed heartbeat, and the bus's vital signs.

Control rooms elsewhere never see the engine's objects, only what it publishes on the bus:

- **Frames** (`Broadcaster.frames`): every refresh period the newest snapshot goes out as a frame
  (frames.FrameEncoder: a keyframe at least every second, per-field deltas between), signed with the
  engine's Ed25519 frame key, on the run's `frames` stream trimmed to a few seconds of frames.
  Unchanged snapshots are not repeated between keyframes; the keyframe every second is what tells a
  control room the engine is alive and how old its picture is.
- **Heartbeat** (`Broadcaster.heartbeats`): a signed EngineHeartbeat under `frames.heartbeat_key` with
  an expiry of a few periods, so an engine that dies without a word drops off `attach --list`. On
  stop, a final keyframe and a STOPPED heartbeat that lingers for `bus.retention_hours` (`Broadcaster.finish`).
- **Retention**: every beat also renews the expiry of the run's own streams (`Bus.expire_run`) to
  `bus.retention_hours` past the heartbeat's, and a stop sets it to `bus.retention_hours`, so every key the run
  wrote leaves the Redis that long after it stopped, or after its last beat if it died without a word.
- **Bus vital signs** (`BusWatch`): counters, rates, backlogs, dead letters, rejections, server errors
  and attached control rooms (those whose presence is signed with the operator key, and apart from them the
  unverified rest), measured off the hot path and handed to the aggregator as a BusView.

Nothing here may stop the engine: a failed publication (Redis away, a server error) is counted by the
bus and retried on the next tick. The engine's own snapshot never depends on any of it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import msgspec

from esper_tui.engine.bus import Bus, BusError
from esper_tui.engine.bus.auth import FrameSigner, room_signed
from esper_tui.engine.codec import encode_msgpack
from esper_tui.engine.frames import (
    DETAILS_EVERY_S,
    DETAILS_FIELD,
    FRAME_FIELD,
    HEARTBEAT_EVERY_S,
    HEARTBEAT_TTL_S,
    PRESENCE_TTL_S,
    SIGNATURE_FIELD,
    EngineHeartbeat,
    FrameEncoder,
    heartbeat_key,
    open_room,
    room_key,
    seal_heartbeat,
)
from esper_tui.engine.freshness import time_problem
from esper_tui.engine.history import Details
from esper_tui.engine.snapshot import BusNote, BusView, Snapshot, StreamBacklog
from esper_tui.engine.vocabulary import EngineState

log = logging.getLogger(__name__)

KEYFRAME_EVERY_S = 1.0
"""A control room that missed anything (or just attached) has a full picture again within this."""
FRAMES_KEPT_S = 3.0
"""Seconds of frames the stream keeps: always at least two keyframes for an attaching control room."""
ROOMS_EVERY_S = 2.0
BACKLOG_EVERY_S = 2.0
WATCH_EVERY_S = 1.0
RATE_WINDOW_S = 5.0
NOTES_SHOWN = 10


def frames_maxlen(refresh_hz: float) -> int:
    """Entries the frames stream keeps at `refresh_hz`: FRAMES_KEPT_S of frames, never fewer than 8."""
    return max(8, math.ceil(refresh_hz * FRAMES_KEPT_S))


@dataclass(frozen=True, slots=True)
class EngineIdentity:
    """The parts of the heartbeat that never change during a run."""

    run_id: str
    host: str
    pid: int
    started_ts: float
    state_dir: str


class Broadcaster:
    """Publishes the engine's snapshots as signed frames and its presence as a signed heartbeat."""

    def __init__(
        self,
        bus: Bus,
        signer: FrameSigner,
        identity: EngineIdentity,
        *,
        latest: Callable[[], Snapshot | None],
        state: Callable[[], EngineState],
        refresh_hz: float,
        clock: Callable[[], float] = time.monotonic,
        details: Callable[[], Details] | None = None,
    ) -> None:
        self._bus = bus
        self._signer = signer
        self._details = details
        self._identity = identity
        self._latest = latest
        self._state = state
        self._period_s = 1.0 / refresh_hz
        self._maxlen = frames_maxlen(refresh_hz)
        self._encoder = FrameEncoder(KEYFRAME_EVERY_S, clock)
        self._last_seq: int | None = None
        self._resync = False  # the last frame was lost: the next one must be a keyframe
        self._failing = False  # the last publication of any kind failed (logged once per streak)

    @property
    def stream(self) -> str:
        return self._bus.streams.frames

    @property
    def heartbeat_key(self) -> str:
        return heartbeat_key(self._bus.config.stream_prefix, self._identity.run_id)

    # ------------------------------------------------------------------ frames

    async def frames(self) -> None:
        """Until cancelled: one frame per refresh period (or none, when nothing changed and no keyframe is due)."""
        while True:
            snapshot = self._latest()
            if snapshot is not None:
                await self.publish(snapshot)
            await asyncio.sleep(self._period_s)

    async def publish(self, snapshot: Snapshot, *, keyframe: bool = False) -> bool:
        """Encode, sign and add one frame; False when it was not needed or did not go through.

        After a failed publication the next frame is a keyframe: a control room that lost frames while
        Redis was away converges on the first frame that arrives once it is back.
        """
        frame, is_key = self._encoder.encode(snapshot, keyframe=keyframe or self._resync)
        if not is_key and snapshot.seq == self._last_seq:
            return False
        self._last_seq = snapshot.seq
        fields = {FRAME_FIELD: frame, SIGNATURE_FIELD: self._signer.sign(frame)}
        sent = await self._attempt("frame", self._bus.add_entry(self.stream, fields, maxlen=self._maxlen))
        self._resync = not sent
        return sent

    # ------------------------------------------------------------------ details, on request

    async def details_on_request(self, wanted: Callable[[], bool]) -> None:
        """Until cancelled: while any control room asks (`wanted`), the engine's details every DETAILS_EVERY_S, on the
        frames stream beside the frames (never inside one: frames stay the size they were)."""
        while True:
            if wanted():
                await self.publish_details()
            await asyncio.sleep(DETAILS_EVERY_S)

    async def publish_details(self) -> bool:
        if self._details is None:
            return False
        payload = encode_msgpack(self._details())
        fields = {DETAILS_FIELD: payload, SIGNATURE_FIELD: self._signer.sign(payload)}
        return await self._attempt("details", self._bus.add_entry(self.stream, fields, maxlen=self._maxlen))

    # ------------------------------------------------------------------ heartbeat

    @property
    def retention_s(self) -> float:
        """How long a stopped run stays on the bus (bus.retention_hours): its STOPPED heartbeat and its streams."""
        return self._bus.config.retention_hours * 3600

    async def heartbeats(self) -> None:
        """Until cancelled: the engine's signed presence, renewed every HEARTBEAT_EVERY_S, and with it the expiry of
        the run's streams, retention_s past the heartbeat's own (a stream created since, frames say, gets one at
        the next beat)."""
        while True:
            await self.beat(self._state(), HEARTBEAT_TTL_S)
            await self._attempt("stream expiry", self._bus.expire_run(HEARTBEAT_TTL_S + self.retention_s))
            await asyncio.sleep(HEARTBEAT_EVERY_S)

    def heartbeat(self, state: EngineState, lives_s: float = HEARTBEAT_TTL_S) -> EngineHeartbeat:
        i = self._identity
        return EngineHeartbeat(
            run_id=i.run_id,
            host=i.host,
            pid=i.pid,
            started_ts=i.started_ts,
            ts=time.time(),
            state_dir=i.state_dir,
            state=state,
            engine_key=self._signer.public_key,
            last_seq=self._last_seq or 0,
            lives_s=lives_s,
        )

    async def beat(self, state: EngineState, ttl_s: float) -> bool:
        value = seal_heartbeat(self.heartbeat(state, ttl_s), self._signer.sign)
        return await self._attempt("heartbeat", self._bus.put_presence(self.heartbeat_key, value, ttl_s))

    async def finish(self, snapshot: Snapshot | None) -> None:
        """The last word: a keyframe of the final snapshot, then a STOPPED heartbeat that names that keyframe's seq
        (so a room can tell the final picture from an older frame put back on the stream), and the run's streams,
        all to expire in retention_s (so `attach --list` shows the run stopped, and `attach --run` its final
        picture, as long as its streams are there). Should this fail, the expiry the last beat renewed still holds."""
        if snapshot is not None:
            await self.publish(snapshot, keyframe=True)
        await self.beat(EngineState.STOPPED, self.retention_s)
        await self._attempt("stream expiry", self._bus.expire_run(self.retention_s))

    async def _attempt(self, what: str, request: Awaitable[object]) -> bool:
        """Run one publication; the bus counts failures (metrics), this only notes them and carries on."""
        try:
            await request
        except BusError as exc:
            if not self._failing:
                log.warning("engine %s: %s not published: %s", self._identity.run_id, what, exc)
            self._failing = True
            return False
        self._failing = False
        return True


class RateMeter:
    """Messages per second over the last `window_s`, from monotonically growing counters."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self._window_s = window_s
        self._samples: deque[tuple[float, int, int]] = deque()

    def add(self, t: float, published: int, delivered: int) -> tuple[float, float]:
        """Record a reading; returns (rate out, rate in)."""
        self._samples.append((t, published, delivered))
        while len(self._samples) > 2 and t - self._samples[1][0] >= self._window_s:
            self._samples.popleft()
        t0, out0, in0 = self._samples[0]
        span = t - t0
        if span <= 0:
            return 0.0, 0.0
        return round((published - out0) / span, 1), round((delivered - in0) / span, 1)


class BusWatch:
    """Measures the bus for the snapshot's `bus` section, at most once a second and never on the hot path."""

    def __init__(
        self,
        bus: Bus,
        run_id: str,
        *,
        on_view: Callable[[BusView], None],
        extra_dropped: Callable[[], int] = lambda: 0,
        clock: Callable[[], float] = time.monotonic,
        operator_key: bytes | None = None,
        skew_s: float = 30.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._bus = bus
        self._run_id = run_id
        self._on_view = on_view
        self._extra_dropped = extra_dropped
        self._clock = clock
        self._operator_key = operator_key  # checks rooms' presence; None: no room counts as verified
        self._skew_s = skew_s
        self._wall = wall
        self._rates = RateMeter()
        self._backlogs: list[StreamBacklog] = []
        self._backlogs_at = -math.inf
        self._rooms = (0, 0)  # (verified, unverified)
        self._rooms_at = -math.inf
        self.details_wanted = False
        """A room that announced itself within its presence's lifetime asks for details (any room may: they hold
        nothing a frame does not, and they go out at most every DETAILS_EVERY_S however many ask)."""

    async def run(self) -> None:
        """Until cancelled: a fresh BusView every WATCH_EVERY_S."""
        while True:
            self._on_view(await self.measure())
            await asyncio.sleep(WATCH_EVERY_S)

    async def measure(self) -> BusView:
        now = self._clock()
        bus = self._bus
        if now - self._backlogs_at >= BACKLOG_EVERY_S:
            self._backlogs_at = now
            self._backlogs = await self._read_backlogs()
        if now - self._rooms_at >= ROOMS_EVERY_S:
            self._rooms_at = now
            self._rooms = await self._count_rooms()
        m = bus.metrics()
        rate_out, rate_in = self._rates.add(now, m.published, m.delivered)
        return BusView(
            backend=bus.name,
            connected=m.connected,
            published=m.published,
            delivered=m.delivered,
            dropped=m.dropped + self._extra_dropped(),
            dead_lettered=m.dead_lettered,
            rejected=m.rejected,
            rate_out=rate_out,
            rate_in=rate_in,
            backlogs=self._backlogs,
            dead_letters=_notes(bus.recent_dead_letters()),
            rejections=_notes(bus.recent_rejections()),
            server_errors=dict(m.server_errors),
            last_error=m.last_error,
            control_rooms=self._rooms[0],
            control_rooms_unverified=self._rooms[1],
        )

    async def _read_backlogs(self) -> list[StreamBacklog]:
        """Backlog of the streams consumers read; the last reading is kept while the bus cannot answer."""
        streams = self._bus.streams
        readings = []
        for stream in (streams.emergency, streams.normal, streams.telemetry):
            try:
                readings.append(StreamBacklog(stream=stream, backlog=await self._bus.backlog(stream)))
            except BusError:
                return self._backlogs
        return readings

    async def _count_rooms(self) -> tuple[int, int]:
        """(verified, unverified) presence keys of rooms watching this run: only a room's own signed, fresh
        presence is a control room; the rest is what anyone who can write to Redis may have put there."""
        try:
            rooms = await self._bus.presence(room_key(self._bus.config.stream_prefix, self._run_id))
        except BusError:
            return self._rooms
        verified = sum(self._verified_room(key, value) for key, value in rooms.items())
        self.details_wanted = any(self._wants_details(value) for value in rooms.values())
        return verified, len(rooms) - verified

    def _wants_details(self, value: bytes) -> bool:
        try:
            room = open_room(value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        fresh = time_problem(room.ts, self._wall(), max_age_s=PRESENCE_TTL_S + self._skew_s, max_ahead_s=self._skew_s)
        return room.wants_details and fresh is None

    def _verified_room(self, key: str, value: bytes) -> bool:
        if self._operator_key is None:
            return False
        try:
            room = open_room(value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        fresh = time_problem(room.ts, self._wall(), max_age_s=PRESENCE_TTL_S + self._skew_s, max_ahead_s=self._skew_s)
        own_key = key == room_key(self._bus.config.stream_prefix, self._run_id, room.room_id)
        return own_key and fresh is None and room_signed(self._operator_key, room)


def _notes(notes: Sequence[BusNote]) -> list[BusNote]:
    return list(notes[-NOTES_SHOWN:])
