"""Frames: how snapshots travel to control rooms elsewhere, so that a client that misses any converges.

The engine publishes a frame every refresh period. A keyframe carries every field of the snapshot; a
delta carries only the top-level fields whose encoding changed since the previous frame, and names that
frame (`base_seq`). A client applies a delta only on top of exactly that frame: after any gap it waits for
the next keyframe, which comes at least every `keyframe_every_s` (and first thing on attach, since the
client starts from the newest keyframe in the stream). Every frame carries run_id, seq and ts, so a
client always knows which engine it shows and how old the picture is.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import msgspec

from esper_tui.engine.codec import checked, encode_msgpack
from esper_tui.engine.freshness import time_problem
from esper_tui.engine.history import Details
from esper_tui.engine.snapshot import Snapshot
from esper_tui.engine.vocabulary import SCHEMA_VERSION, EngineState, Struct

FRAME_FIELD = b"f"
SIGNATURE_FIELD = b"s"
DETAILS_FIELD = b"d"
"""An entry of the frames stream that carries the engine's details (history.Details, msgpack), signed like a frame;
published only while a control room asks for them (`ControlRoom.wants_details`), never inside a frame."""
DETAILS_EVERY_S = 2.0
"""How often details go out while a room asks (a detail screen refreshes about as often)."""
_FIELDS = tuple(f.name for f in msgspec.structs.fields(Snapshot) if f.name not in ("link",))
"""What a frame carries: the whole snapshot except `link`, which each client fills for itself."""


class Frame(Struct, kw_only=True):
    schema_version: int = SCHEMA_VERSION
    run_id: str
    seq: int
    ts: float  # wall clock at publication (time.time): clients measure staleness against it
    base_seq: int | None = None  # None: a keyframe; else the seq of the frame this delta applies to
    sections: dict[str, msgspec.Raw]  # msgpack of the snapshot fields carried


_frame_decoder = msgspec.msgpack.Decoder(Frame)
_details_decoder = msgspec.msgpack.Decoder(Details)
_snapshot_decoder = msgspec.msgpack.Decoder(Snapshot)


class FrameEncoder:
    """The engine's side: snapshot in, frame bytes out (a keyframe when due, else a delta)."""

    def __init__(self, keyframe_every_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._every = keyframe_every_s
        self._clock = clock
        self._last: dict[str, bytes] = {}
        self._last_seq: int | None = None
        self._last_key_at = float("-inf")

    def encode(self, snapshot: Snapshot, *, keyframe: bool = False) -> tuple[bytes, bool]:
        """The frame for `snapshot` and whether it is a keyframe."""
        fields = {name: encode_msgpack(getattr(snapshot, name)) for name in _FIELDS}
        now = self._clock()
        key = keyframe or self._last_seq is None or now - self._last_key_at >= self._every
        if key:
            carried = fields
            self._last_key_at = now
        else:
            carried = {name: raw for name, raw in fields.items() if self._last.get(name) != raw}
        frame = Frame(
            run_id=snapshot.run_id,
            seq=snapshot.seq,
            ts=time.time(),
            base_seq=None if key else self._last_seq,
            sections={name: msgspec.Raw(raw) for name, raw in carried.items()},
        )
        self._last, self._last_seq = fields, snapshot.seq
        return encode_msgpack(frame), key


def decode_details(data: bytes) -> Details:
    """Raises msgspec.DecodeError/ValidationError for anything that is not the engine's details."""
    return _details_decoder.decode(data)


def decode_frame(data: bytes) -> Frame:
    """Raises msgspec.DecodeError/ValidationError or SchemaMismatch for anything that is not a frame."""
    frame = checked(_frame_decoder.decode(data))
    unknown = set(frame.sections) - set(_FIELDS)
    if unknown:
        raise msgspec.ValidationError(f"frame carries unknown sections {sorted(unknown)}")
    return frame


class FrameDecoder:
    """The client's side: folds frames into snapshots; a delta only lands on the frame it was made for."""

    def __init__(self) -> None:
        self._fields: dict[str, bytes] = {}
        self._seq: int | None = None
        self._run_id = ""
        self.gaps = 0  # deltas skipped because their base was missed: the next keyframe heals them

    @property
    def seq(self) -> int | None:
        return self._seq

    def apply(self, frame: Frame) -> Snapshot | None:
        """The snapshot after `frame`, or None when it cannot be applied (waiting for a keyframe)."""
        if frame.base_seq is None:
            fields = {name: bytes(raw) for name, raw in frame.sections.items()}
            if set(fields) != set(_FIELDS):
                raise msgspec.ValidationError("keyframe does not carry every snapshot field")
        elif frame.base_seq == self._seq and frame.run_id == self._run_id:
            fields = {**self._fields, **{name: bytes(raw) for name, raw in frame.sections.items()}}
        else:
            self.gaps += 1
            return None
        snapshot = _snapshot_decoder.decode(encode_msgpack({name: msgspec.Raw(raw) for name, raw in fields.items()}))
        if snapshot.seq != frame.seq or snapshot.run_id != frame.run_id:
            raise msgspec.ValidationError("frame header disagrees with the snapshot it carries")
        self._fields, self._seq, self._run_id = fields, frame.seq, frame.run_id
        return snapshot


HEARTBEAT_EVERY_S = 1.0
HEARTBEAT_TTL_S = 5 * HEARTBEAT_EVERY_S
"""Presence outlives a few missed beats (a slow tick, a Redis blip) but not a dead engine."""
FINAL_HEARTBEAT_TTL_S = 60.0
"""How long a STOPPED heartbeat of an engine that does not say (`lives_s` 0, before bus.retention_hours) lived."""


class EngineHeartbeat(Struct, kw_only=True):
    """An engine's presence on a Redis: what `attach --list` shows and how a control room learns it stopped.

    Stored (signed like frames) under `heartbeat_key(prefix, run_id)` with an expiry a few times its refresh
    period, so an engine that dies without a word simply disappears from the list. The expiry is Redis's
    and anyone who can write to it can SET a copy without one: a reader believes a heartbeat only while its
    signed `ts` is as fresh as its expiry allows (`heartbeat_problem`).
    """

    schema_version: int = SCHEMA_VERSION
    run_id: str
    host: str
    pid: int
    started_ts: float
    ts: float
    state_dir: str
    state: EngineState
    engine_key: str  # the engine's frame public key (hex): shown so an operator can check what they pinned
    last_seq: int = 0  # the newest frame published before this beat; on STOPPED, the final picture's seq
    lives_s: float = 0.0  # the expiry the engine gave this beat (a STOPPED one: bus.retention_hours); 0: not said


def heartbeat_problem(heartbeat: EngineHeartbeat, now: float, skew_s: float) -> str | None:
    """Why a verified heartbeat must not be believed at `now`, or None: it must be as fresh as its expiry
    allows (the one it says, signed with it, it was given; plus the clocks' skew), and stamped after the
    engine's start and not in the future."""
    lives_s = heartbeat.lives_s or (
        FINAL_HEARTBEAT_TTL_S if heartbeat.state is EngineState.STOPPED else HEARTBEAT_TTL_S
    )
    started = time_problem(heartbeat.started_ts, now, max_age_s=math.inf, max_ahead_s=skew_s)
    if started is not None:
        return f"its start time: {started}"
    return time_problem(
        heartbeat.ts, now, max_age_s=lives_s + skew_s, max_ahead_s=skew_s, not_before=heartbeat.started_ts
    )


class SignedHeartbeat(Struct, kw_only=True):
    """The value stored under `heartbeat_key`: msgpack map {"h": heartbeat bytes, "s": signature}.

    `h` is the msgpack of an EngineHeartbeat and `s` the engine's Ed25519 signature over exactly those bytes
    (auth.FrameSigner, the frame key), so a control room checks the bytes it decodes, never a re-encoding.
    """

    h: bytes
    s: bytes


_signed_heartbeat_decoder = msgspec.msgpack.Decoder(SignedHeartbeat)
_heartbeat_decoder = msgspec.msgpack.Decoder(EngineHeartbeat)


def seal_heartbeat(heartbeat: EngineHeartbeat, sign: Callable[[bytes], bytes]) -> bytes:
    """The presence value for `heartbeat`, signed with `sign` (auth.FrameSigner.sign)."""
    payload = encode_msgpack(heartbeat)
    return encode_msgpack(SignedHeartbeat(h=payload, s=sign(payload)))


def open_heartbeat(value: bytes) -> tuple[EngineHeartbeat, bytes, bytes]:
    """(heartbeat, payload, signature) from a presence value; trust it only once
    `FrameVerifier(engine_key).verify(payload, signature)` says so.

    Raises msgspec.DecodeError/ValidationError or SchemaMismatch for anything that is not a heartbeat.
    """
    sealed = _signed_heartbeat_decoder.decode(value)
    heartbeat = checked(_heartbeat_decoder.decode(sealed.h))
    return heartbeat, sealed.h, sealed.s


PRESENCE_EVERY_S = 2.0
PRESENCE_TTL_S = 3 * PRESENCE_EVERY_S
"""A control room renews its presence this often; one that dies without a word drops out of the count."""


class ControlRoom(Struct, kw_only=True):
    """The value of a control room's presence key (`room_key(prefix, run_id, room_id)`): who watches.

    A room that holds the operator key signs it (auth.sign_room: HMAC over every field, the room id and the
    time included), so the engine counts it as a control room; anything else under those keys (a read-only
    room, which holds no secret, or whatever anyone wrote) is counted apart, as unverified.
    """

    room_id: str
    by: str
    pid: int
    read_only: bool
    ts: float
    signature: str = ""  # "" when the room holds no operator key
    wants_details: bool = False  # a detail screen is open there: the engine publishes its details while any room asks


_room_decoder = msgspec.msgpack.Decoder(ControlRoom)


def seal_room(room: ControlRoom) -> bytes:
    """The presence value for `room` (signed beforehand with auth.sign_room, or not)."""
    return encode_msgpack(room)


def open_room(value: bytes) -> ControlRoom:
    """Raises msgspec.DecodeError/ValidationError for anything that is not a room's presence value."""
    return _room_decoder.decode(value)


def heartbeat_key(prefix: str, run_id: str = "") -> str:
    """The presence key of an engine; with no run id, the prefix that lists every engine."""
    return f"{prefix}.engine.{run_id}"


def room_key(prefix: str, run_id: str, room_id: str = "") -> str:
    """The presence key of one control room attached to a run; with no room id, the prefix that lists them."""
    return f"{prefix}.room.{run_id}.{room_id}"
