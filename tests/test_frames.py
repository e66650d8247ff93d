"""Frames: keyframes and deltas converge; a client that misses anything heals at the next keyframe."""

from __future__ import annotations

import msgspec
import pytest

from esper_tui.engine.codec import SchemaMismatch, encode_msgpack
from esper_tui.engine.frames import EngineHeartbeat, Frame, FrameDecoder, FrameEncoder, decode_frame, heartbeat_problem
from esper_tui.engine.snapshot import EventLine, JobView, LinkView, Snapshot, TrainingView
from esper_tui.engine.vocabulary import EngineState, JobStatus, Level, LinkState, Strategy, Subsystem


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def snap(seq: int, epoch: int = 0, status: JobStatus = JobStatus.QUEUED) -> Snapshot:
    base = Snapshot(seq=seq, run_id="run1", ts=float(seq), uptime_s=seq / 4)
    job = JobView(blueprint_id="mlp_block", strategy=Strategy.STANDARD, status=status)
    forge = msgspec.structs.replace(base.forge, jobs=[job])
    events = [EventLine(ts=float(i), source=Subsystem.TOLARIA, level=Level.INFO, text=f"e{i}") for i in range(seq)]
    return msgspec.structs.replace(base, forge=forge, training=TrainingView(epoch=epoch), events=events)


def test_deltas_carry_only_what_changed_and_rebuild_the_snapshot() -> None:
    clock = Clock()
    enc, dec = FrameEncoder(keyframe_every_s=1.0, clock=clock), FrameDecoder()
    first, key = enc.encode(snap(1))
    assert key
    assert dec.apply(decode_frame(first)) == snap(1)
    clock.t = 0.25
    data, key = enc.encode(snap(2, epoch=1))
    frame = decode_frame(data)
    assert not key and frame.base_seq == 1
    assert "forge" not in frame.sections and "training" in frame.sections
    assert len(data) < len(first)
    assert dec.apply(frame) == snap(2, epoch=1)


def test_a_missed_delta_waits_for_the_next_keyframe() -> None:
    clock = Clock()
    enc, dec = FrameEncoder(keyframe_every_s=1.0, clock=clock), FrameDecoder()
    dec.apply(decode_frame(enc.encode(snap(1))[0]))
    clock.t = 0.25
    enc.encode(snap(2, status=JobStatus.COMPILING))  # lost on the way
    clock.t = 0.5
    third = decode_frame(enc.encode(snap(3, status=JobStatus.COMPILING))[0])
    assert dec.apply(third) is None and dec.gaps == 1 and dec.seq == 1
    clock.t = 1.1
    data, key = enc.encode(snap(4, status=JobStatus.COMPILED))
    assert key
    assert dec.apply(decode_frame(data)) == snap(4, status=JobStatus.COMPILED)


def test_a_client_attaching_mid_stream_starts_at_a_keyframe() -> None:
    clock = Clock()
    enc = FrameEncoder(keyframe_every_s=1.0, clock=clock)
    frames = []
    for i in range(1, 10):
        clock.t = i * 0.25
        frames.append(decode_frame(enc.encode(snap(i, epoch=i))[0]))
    late = FrameDecoder()
    shown = [s for f in frames[2:] if (s := late.apply(f)) is not None]
    assert shown and shown[-1] == snap(9, epoch=9)
    first_key = next(f for f in frames[2:] if f.base_seq is None)
    assert shown[0].seq == first_key.seq


def test_a_delta_from_another_run_is_not_applied() -> None:
    enc, dec = FrameEncoder(), FrameDecoder()
    dec.apply(decode_frame(enc.encode(snap(1))[0]))
    other = Frame(run_id="run2", seq=2, ts=0.0, base_seq=1, sections={})
    assert dec.apply(other) is None


def test_link_is_never_carried() -> None:
    s = msgspec.structs.replace(snap(1), link=LinkView(state=LinkState.STOPPED, detail="x"))
    frame = decode_frame(FrameEncoder().encode(s)[0])
    assert "link" not in frame.sections
    assert FrameDecoder().apply(frame).link == LinkView()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        encode_msgpack({"run_id": "r"}),
        encode_msgpack(Frame(run_id="r", seq=1, ts=0.0, sections={"nope": msgspec.Raw(b"\xc0")})),
    ],
)
def test_what_is_not_a_frame_is_a_decode_error(data: bytes) -> None:
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        decode_frame(data)


def test_a_frame_of_another_schema_is_refused() -> None:
    data = encode_msgpack(Frame(schema_version=99, run_id="r", seq=1, ts=0.0, sections={}))
    with pytest.raises(SchemaMismatch):
        decode_frame(data)


def test_an_incomplete_or_inconsistent_keyframe_is_refused() -> None:
    whole = decode_frame(FrameEncoder().encode(snap(1))[0])
    partial = msgspec.structs.replace(whole, sections={k: v for k, v in whole.sections.items() if k != "forge"})
    with pytest.raises(msgspec.ValidationError):
        FrameDecoder().apply(partial)
    lying = msgspec.structs.replace(whole, seq=7)
    with pytest.raises(msgspec.ValidationError):
        FrameDecoder().apply(lying)


# ---------------------------------------------------------------------------------- heartbeat freshness (finding 8)

NOW = 1_000_000.0
SKEW_S = 30.0


def beat(state: EngineState = EngineState.RUNNING, *, age_s: float = 0.0, up_s: float = 100.0) -> EngineHeartbeat:
    ts = NOW - age_s
    return EngineHeartbeat(
        run_id="run1", host="box", pid=1, started_ts=ts - up_s, ts=ts, state_dir="/s", state=state, engine_key="k"
    )


def test_a_fresh_heartbeat_is_believed() -> None:
    assert heartbeat_problem(beat(age_s=1.0), NOW, SKEW_S) is None
    assert heartbeat_problem(beat(EngineState.STOPPED, age_s=50.0), NOW, SKEW_S) is None  # lingers a minute


@pytest.mark.parametrize(
    ("heartbeat", "problem"),
    [
        # issue 18: a RUNNING heartbeat SET again with no expiry made a stopped engine look alive
        (beat(age_s=3600.0), "stale: issued 3600 s ago"),
        (beat(EngineState.STOPPED, age_s=3600.0), "stale: issued 3600 s ago"),
        (beat(age_s=-120.0), "in the future"),
        (msgspec.structs.replace(beat(), ts=float("nan")), "not a finite number"),
        (msgspec.structs.replace(beat(), started_ts=float("nan")), "not a finite number"),
        (msgspec.structs.replace(beat(), started_ts=NOW + 10), "before this engine started"),
    ],
)
def test_a_heartbeat_that_cannot_be_current_is_not_believed(heartbeat: EngineHeartbeat, problem: str) -> None:
    found = heartbeat_problem(heartbeat, NOW, SKEW_S)
    assert found is not None and problem in found, found


def test_a_stopped_heartbeat_is_believed_for_the_retention_it_was_signed_with() -> None:
    """Issue 19: the STOPPED heartbeat lives bus.retention_hours, so `attach --list` still shows the run; the
    expiry it was given travels signed inside it (`lives_s`), so a reader judges it by that, not by 60 s."""
    day = msgspec.structs.replace(beat(EngineState.STOPPED, age_s=3600.0), lives_s=86_400.0)
    assert heartbeat_problem(day, NOW, SKEW_S) is None
    old = msgspec.structs.replace(beat(EngineState.STOPPED, age_s=86_400.0 + SKEW_S + 1), lives_s=86_400.0)
    found = heartbeat_problem(old, NOW, SKEW_S)
    assert found is not None and "stale" in found
    running = msgspec.structs.replace(beat(age_s=60.0), lives_s=5.0)  # a live beat is still believed 5 s (+ skew)
    assert "stale" in (heartbeat_problem(running, NOW, SKEW_S) or "")
