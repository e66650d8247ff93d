"""The engine's side of many control rooms, on the embedded bus: frames, heartbeats, the bus view, and
signed commands checked by a real engine (one rule for every backend; the Redis side runs in
test_cli_e2e.py and test_outage.py).

Nothing here asserts on time: clocks are fake where a period matters, and waits only guard against hangs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from esper_tui.engine.aggregator import Aggregator
from esper_tui.engine.broadcast import Broadcaster, BusWatch, EngineIdentity, frames_maxlen
from esper_tui.engine.bus import Bus, BusUnavailable, EmbeddedBus, create_bus
from esper_tui.engine.bus.auth import CommandRejected, FrameSigner, FrameVerifier, sign_command, sign_room
from esper_tui.engine.bus.types import PAYLOAD
from esper_tui.engine.codec import encode_msgpack
from esper_tui.engine.config import BusConfig, parse_config
from esper_tui.engine.contracts import AnyCommand, EpochCompleted, LogLine, PauseTraining, Recompile, Shutdown
from esper_tui.engine.frames import (
    FRAME_FIELD,
    SIGNATURE_FIELD,
    ControlRoom,
    Frame,
    FrameDecoder,
    decode_frame,
    heartbeat_key,
    open_heartbeat,
    room_key,
    seal_room,
)
from esper_tui.engine.keys import FRAME_KEY as FRAME_KEY_SPEC
from esper_tui.engine.keys import OPERATOR_KEY, load_key
from esper_tui.engine.runtime import Engine
from esper_tui.engine.snapshot import Snapshot, seeds_run
from esper_tui.engine.vocabulary import EngineState, Level, Strategy
from tests.waits import eventually

PREFIX = "unit"
RUN = "run-1"
FRAME_KEY = bytes(range(32))
OPERATOR = bytes(range(2, 34))
WAIT_S = 30.0


def epoch(n: int) -> EpochCompleted:
    return EpochCompleted(epoch=n, train_loss=1.0, val_loss=1.0, val_metric=0.5, samples_per_s=1.0, epoch_s=0.1)


@pytest.fixture
async def bus() -> AsyncIterator[Bus]:
    b = create_bus(BusConfig(stream_prefix=PREFIX), None, run_id=RUN)
    await b.start()
    yield b
    await b.close()


def broadcaster(bus: Bus, agg: Aggregator, clock: Callable[[], float], state: EngineState = EngineState.RUNNING):
    identity = EngineIdentity(run_id=RUN, host="box", pid=4242, started_ts=1.0, state_dir="/srv/esper")
    return Broadcaster(
        bus, FrameSigner(FRAME_KEY), identity, latest=agg.snapshot, state=lambda: state, refresh_hz=4, clock=clock
    )


async def frames_of(bus: Bus) -> list[tuple[Frame, bytes, bytes]]:
    """Every frame in the run's stream, oldest first, with the bytes and signature it travelled with."""
    entries = await bus.tail(bus.streams.frames, 100)
    return [(decode_frame(f[FRAME_FIELD]), f[FRAME_FIELD], f[SIGNATURE_FIELD]) for _id, f in entries]


# ---------------------------------------------------------------------------------- frames


async def test_frames_are_signed_keyframes_then_deltas_and_a_late_client_converges(bus, fake_clock):
    agg = Aggregator(clock=fake_clock)
    agg.apply(epoch(1))
    b = broadcaster(bus, agg, fake_clock)
    first = agg.snapshot()
    assert await b.publish(first) is True
    assert await b.publish(agg.snapshot()) is False  # nothing new and no keyframe due: nothing sent
    agg.apply(epoch(2))
    second = agg.snapshot()
    assert await b.publish(second) is True
    fake_clock.advance(1.0)
    assert await b.publish(agg.snapshot()) is True  # unchanged, but a keyframe is due every second

    sent = await frames_of(bus)
    verifier = FrameVerifier(FrameSigner(FRAME_KEY).public_key)
    assert all(verifier.verify(data, sig) for _f, data, sig in sent)
    frames = [f for f, _data, _sig in sent]
    assert [(f.seq, f.base_seq) for f in frames] == [(first.seq, None), (second.seq, first.seq), (second.seq, None)]
    assert all(f.run_id == agg.run_id for f in frames)
    assert set(frames[1].sections) < set(frames[0].sections)  # a delta carries only what changed
    assert "training" in frames[1].sections and "forge" not in frames[1].sections

    whole = FrameDecoder()
    assert [whole.apply(f) for f in frames] == [first, second, second]
    late = FrameDecoder()  # attached after the first keyframe: the delta has no base, the next keyframe heals
    assert late.apply(frames[1]) is None and late.gaps == 1
    assert late.apply(frames[2]) == second


async def test_the_frames_stream_is_trimmed_but_keeps_a_keyframe(bus, fake_clock):
    agg = Aggregator(clock=fake_clock)
    b = broadcaster(bus, agg, fake_clock)
    for n in range(200):  # 50 s of frames at 4 Hz, every one of them news
        agg.apply(epoch(n))
        await b.publish(agg.snapshot())
        fake_clock.advance(0.25)
    frames = [f for f, _d, _s in await frames_of(bus)]
    assert frames_maxlen(4) <= len(frames) < 200
    assert sum(f.base_seq is None for f in frames) >= 2


class FlakyBus(EmbeddedBus):
    """The embedded bus with a switch that makes every frame and presence request fail as if Redis were away."""

    down = False

    async def add_entry(self, stream: str, fields: Any, *, maxlen: int) -> str:
        if self.down:
            raise BusUnavailable("redis away")
        return await super().add_entry(stream, fields, maxlen=maxlen)

    async def put_presence(self, key: str, value: bytes, ttl_s: float) -> None:
        if self.down:
            raise BusUnavailable("redis away")
        await super().put_presence(key, value, ttl_s)


async def test_a_failed_publication_never_raises_and_the_next_frame_is_a_keyframe(fake_clock):
    flaky = FlakyBus(BusConfig(stream_prefix=PREFIX), run_id=RUN)
    await flaky.start()
    try:
        agg = Aggregator(clock=fake_clock)
        b = broadcaster(flaky, agg, fake_clock)
        agg.apply(epoch(1))
        assert await b.publish(agg.snapshot())
        flaky.down = True
        agg.apply(epoch(2))
        assert await b.publish(agg.snapshot()) is False
        assert await b.beat(EngineState.RUNNING, 5.0) is False
        flaky.down = False
        agg.apply(epoch(3))  # within the second: it would have been a delta on a frame nobody received
        third = agg.snapshot()
        assert await b.publish(third)
        frames = [f for f, _d, _s in await frames_of(flaky)]
        assert [(f.seq, f.base_seq) for f in frames][-1] == (third.seq, None)
        assert FrameDecoder().apply(frames[-1]) == third
    finally:
        await flaky.close()


# ---------------------------------------------------------------------------------- heartbeat


async def test_heartbeat_is_signed_and_the_last_one_says_stopped(bus, fake_clock):
    agg = Aggregator(clock=fake_clock)
    agg.apply(epoch(1))
    b = broadcaster(bus, agg, fake_clock)
    assert await b.beat(EngineState.RUNNING, 5.0)
    present = await bus.presence(heartbeat_key(PREFIX))
    assert list(present) == [heartbeat_key(PREFIX, RUN)]
    beat, payload, signature = open_heartbeat(present[heartbeat_key(PREFIX, RUN)])
    assert FrameVerifier(FrameSigner(FRAME_KEY).public_key).verify(payload, signature)
    assert not FrameVerifier(FrameSigner(b"\x01" * 32).public_key).verify(payload, signature)
    assert (beat.run_id, beat.host, beat.pid, beat.state_dir, beat.state) == (
        RUN,
        "box",
        4242,
        "/srv/esper",
        EngineState.RUNNING,
    )
    assert beat.engine_key == FrameSigner(FRAME_KEY).public_key

    final = agg.snapshot()
    await b.finish(final)
    last = (await frames_of(bus))[-1][0]
    assert last.base_seq is None and FrameDecoder().apply(last) == final
    stopped = open_heartbeat((await bus.presence(heartbeat_key(PREFIX, RUN)))[heartbeat_key(PREFIX, RUN)])[0]
    assert stopped.state is EngineState.STOPPED
    # issue 18, finding 4: the last word names the final picture, so no older frame can pass for it
    assert stopped.last_seq == final.seq == last.seq


# ---------------------------------------------------------------------------------- the bus view


async def test_bus_watch_reports_rooms_backlog_rates_and_rejections(bus, fake_clock):
    rooms = room_key(PREFIX, RUN)
    await bus.put_presence(room_key(PREFIX, RUN, "alice"), b"x", 10)
    await bus.put_presence(room_key(PREFIX, RUN, "bob"), b"x", 10)
    await bus.put_presence(room_key(PREFIX, "another-run", "carol"), b"x", 10)  # watching someone else
    assert len(await bus.presence(rooms)) == 2

    release = asyncio.Event()

    async def handler(command: AnyCommand) -> None:
        if command.issued_by == "mallory":
            raise CommandRejected("unsigned")
        await release.wait()  # hold the first good command: the rest wait behind it

    views = []
    watch = BusWatch(bus, RUN, on_view=views.append, clock=fake_clock)
    consumer = asyncio.create_task(bus.consume_commands("engine", "engine-1", handler))
    try:
        await bus.publish_command(PauseTraining(paused=True, issued_by="mallory"))
        await eventually(lambda: bus.metrics().rejected == 1, "the rejection")
        for _ in range(3):
            await bus.publish_command(PauseTraining(paused=True, issued_by="alice"))
        await eventually(lambda: bus.metrics().delivered == 2, "the first good command in the handler")
        view = await watch.measure()
        assert view.backend == "embedded" and view.connected
        assert (view.control_rooms, view.control_rooms_unverified) == (0, 2)  # anyone can write b"x"
        assert view.rejected == 1 and view.dead_lettered == 1
        assert [n.reason for n in view.rejections] == ["rejected: unsigned"]
        assert [n.stream for n in view.rejections] == [bus.streams.normal]
        assert [n.reason for n in view.dead_letters] == ["rejected: unsigned"]
        backlogs = {b.stream: b.backlog for b in view.backlogs}
        assert backlogs[bus.streams.normal] == 3  # one held by the handler, two waiting behind it
        assert backlogs[bus.streams.emergency] == 0

        for n in range(10):
            await bus.publish_event(epoch(n))
        await bus.flush()
        fake_clock.advance(2.0)
        later = await watch.measure()
        assert later.rate_out == 5.0  # 10 events in 2 s
        assert later.published == view.published + 10
    finally:
        release.set()
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)


async def test_only_signed_fresh_room_presence_counts_as_a_control_room(bus):
    """Issue 18, finding 10: 40 forged room presence keys showed as 40 control rooms. A room that holds the
    operator key signs its presence (bound to its own key name, with its time); everything else is counted
    apart, as unverified: read-only rooms (they hold no secret) and whatever anyone wrote."""
    now = time.time()

    def room(room_id: str, *, ts: float = now, read_only: bool = False) -> ControlRoom:
        return ControlRoom(room_id=room_id, by="ops@lab", pid=7, read_only=read_only, ts=ts)

    async def put(room_id: str, value: bytes) -> None:
        await bus.put_presence(room_key(PREFIX, RUN, room_id), value, 30)

    await put("signed", seal_room(sign_room(OPERATOR, room("signed"))))
    await put("read-only", seal_room(room("read-only", read_only=True)))
    for n in range(40):
        await put(f"forged-{n}", seal_room(room(f"forged-{n}")))  # unsigned claims of a room with the key
    await put("copied", seal_room(sign_room(OPERATOR, room("signed"))))  # a signed value put under another name
    await put("stale", seal_room(sign_room(OPERATOR, room("stale", ts=now - 3600))))  # SET again, no expiry
    await put("other-key", seal_room(sign_room(b"\x07" * 32, room("other-key"))))
    watch = BusWatch(bus, RUN, on_view=lambda view: None, operator_key=OPERATOR, skew_s=30.0)
    view = await watch.measure()
    assert (view.control_rooms, view.control_rooms_unverified) == (1, 44)


# ---------------------------------------------------------------------------------- a real engine


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    """A real engine on the embedded bus, without training or compiles (nothing queued), stopped afterwards."""
    quiet = {"tezzeret": {"polling": {"initial_full_scan": False}}, "training": {"enabled": False}}
    config = parse_config({**quiet, "ui": {"refresh_hz": 10}})
    e = Engine(config, tmp_path / "state")
    await e.start()
    try:
        yield e
    finally:
        await e.stop()


def event_texts(engine: Engine) -> list[str]:
    return [line.text for line in engine.aggregator.events]


async def test_aggressive_is_refused_with_the_reason_when_its_pipeline_is_off(engine):
    """It was accepted, then compiled silently with the default strategy; a remote room can still send it."""
    await engine.send(Recompile(blueprint_id="mlp_block", strategy=Strategy.AGGRESSIVE))
    refusal = (
        "recompile mlp_block (aggressive) refused: the aggressive pipeline is off "
        "(tezzeret.compilation.enable_aggressive_pipeline = false)"
    )
    await eventually(lambda: refusal in event_texts(engine), "the refusal in the event log")
    snapshot = engine.aggregator.snapshot()
    assert snapshot.forge.jobs == [] and snapshot.forge.aggressive_pipeline is False


async def test_an_engine_that_does_not_train_never_says_its_seeds_run_eager(engine):
    """`--forge-only` (and training.enabled off) printed `kernels EAGER`: no seed runs anything there."""
    snapshot = engine.aggregator.snapshot()
    assert snapshot.infrastructure.training is False
    assert seeds_run(snapshot).words == "no training: this run only compiles"


async def test_engine_obeys_its_own_signed_commands_and_refuses_forged_ones(engine):
    """The embedded bus gets the same gate as Redis: the engine checks every command it consumes."""
    key = load_key(OPERATOR_KEY, engine.state_dir)
    await engine.send(PauseTraining(paused=True))  # the local dashboard's path: signed like anyone's
    await eventually(lambda: engine.control.paused, "the pause obeyed")
    assert f"PauseTraining from {engine.operator}" in event_texts(engine)

    def shutdown(**fields: Any) -> Shutdown:
        return Shutdown(issued_by="mallory@nowhere", **fields)

    forged = [  # (the reason the engine gives, the command)
        ("unsigned", shutdown()),
        ("bad signature", sign_command(b"\x07" * 32, shutdown())),
        ("stale: issued ", sign_command(key, shutdown(ts=engine.started_ts - 120))),
        ("issued before this engine started", sign_command(key, shutdown(ts=engine.started_ts - 1))),
        (f"meant for run elsewhere, this is {engine.run_id}", sign_command(key, shutdown(target="elsewhere"))),
    ]
    for _reason, command in forged:  # written straight onto the engine's stream, as anyone on the bus could
        await engine.bus.add_entry(engine.bus.streams.emergency, {PAYLOAD: encode_msgpack(command)}, maxlen=100)
    await eventually(lambda: engine.bus.metrics().rejected == len(forged), "every forged command rejected")
    refused = [line for line in engine.aggregator.events if line.text.startswith("rejected ")]
    assert len(refused) == len(forged)
    for line, (reason, command) in zip(refused, forged, strict=True):
        # a name outside a valid signature is only a claim (issue 18, finding 10): it is shown as one
        sender = (
            "mallory@nowhere" if command.signature and reason != "bad signature" else '"mallory@nowhere" (unverified)'
        )
        assert line.text.startswith(f"rejected Shutdown from {sender}: {reason}"), line.text
        assert line.level is Level.WARNING
    letters = await engine.bus.dead_letters()
    assert len(letters) == len(forged)
    for letter, (reason, _command) in zip(letters, forged, strict=True):
        assert letter.reason.startswith(f"rejected: {reason}"), letter.reason
    assert not engine.stopped.is_set()

    await engine.send(Shutdown(reason="test over"))
    await eventually(engine.stopped.is_set, "the signed shutdown obeyed")
    assert engine.stop_reason == "shutdown command (test over)"


async def test_an_unsigned_command_flood_is_summarised_in_the_event_log(engine, monkeypatch):
    """Issue 18, finding 10: 300 unsigned commands put 300 "rejected … from operator" lines in the event log,
    pushing out everything an operator needed to see. Rejections are rate-limited and summarised; the bus
    still counts and dead-letters every one."""
    import esper_tui.engine.runtime as runtime

    monkeypatch.setattr(engine.refusals, "window_s", 1.0)  # the summary comes once the window has passed
    engine.log(Level.INFO, "a line worth keeping")
    flood = [Shutdown(issued_by="operator") for _ in range(300)]
    for command in flood:
        await engine.bus.add_entry(engine.bus.streams.emergency, {PAYLOAD: encode_msgpack(command)}, maxlen=1000)
    await eventually(lambda: engine.bus.metrics().rejected == len(flood), "every command rejected")

    def summary() -> list[str]:
        return [t for t in event_texts(engine) if "more commands rejected in the last" in t]

    await eventually(summary, "the summary line")
    shown = [t for t in event_texts(engine) if t.startswith("rejected ")]
    assert len(shown) == runtime.REFUSALS_SHOWN
    assert summary() == [f"{len(flood) - runtime.REFUSALS_SHOWN} more commands rejected in the last 1 s"]
    assert "a line worth keeping" in event_texts(engine)
    assert engine.bus.metrics().dead_lettered == len(flood)


async def test_engine_view_ignores_telemetry_injected_on_the_bus(engine):
    await engine.bus.publish_event(LogLine(level=Level.ERROR, message="forged: reactor on fire"))
    await engine.bus.flush()
    engine.log(Level.INFO, "a real line")
    await eventually(lambda: "a real line" in event_texts(engine), "the real line")
    assert "forged: reactor on fire" not in event_texts(engine)


async def test_every_event_reaches_the_final_snapshot_in_order(engine):
    """Events from another thread (the trainer's) are applied in emission order; stop() loses none of them."""

    def trainer() -> None:
        for n in range(1, 501):
            engine.emit(epoch(n))

    thread = threading.Thread(target=trainer)
    thread.start()
    await asyncio.to_thread(thread.join)
    await engine.stop()
    final = engine.latest()
    assert final is not None
    assert final.training.epoch == 500 and final.training.loss_history[-1] == 1.0
    assert final.events[-1].text.startswith("engine stopping")


async def test_a_fault_in_the_aggregator_never_reaches_the_emitter(engine, monkeypatch, caplog):
    """The forge and the trainer emit synchronously into the aggregator now: a folding bug is logged, not theirs."""

    def broken(event: Any) -> bool:
        raise RuntimeError("folding bug")

    monkeypatch.setattr(engine.aggregator, "apply", broken)
    engine.log(Level.INFO, "the forge carries on")
    assert "the aggregator failed on LogLine" in caplog.text and "folding bug" in caplog.text
    assert not engine.stopped.is_set()


async def test_engine_publishes_frames_and_a_heartbeat_that_ends_stopped(engine, monkeypatch):
    bus = engine.bus
    close = bus.close

    async def keep_open() -> None:  # the embedded bus lives in the engine: read its last words before it goes
        pass

    monkeypatch.setattr(bus, "close", keep_open)
    verifier = FrameVerifier(engine.frame_public_key)

    async def newest_keyframe() -> Snapshot | None:
        for _f, data, sig in reversed(await frames_of(bus)):
            frame = decode_frame(data)
            if frame.base_seq is None and verifier.verify(data, sig):
                return FrameDecoder().apply(frame)
        return None

    async with asyncio.timeout(WAIT_S):
        while (snap := await newest_keyframe()) is None or snap.run_id != engine.run_id:
            await asyncio.sleep(0.05)
    key = heartbeat_key(bus.config.stream_prefix, engine.run_id)
    beat = open_heartbeat((await bus.presence(key))[key])[0]
    assert beat.state is EngineState.RUNNING and beat.engine_key == engine.frame_public_key
    assert beat.state_dir == str(engine.state_dir) and beat.started_ts == engine.started_ts
    engine.log(Level.INFO, "last words")
    await engine.stop()
    final = await newest_keyframe()
    latest = engine.latest()
    assert final is not None and latest is not None
    assert final == msgspec.structs.replace(latest, link=final.link) and final.events[-1].text.startswith("engine")
    assert open_heartbeat((await bus.presence(key))[key])[0].state is EngineState.STOPPED
    await close()


def test_identity_line_names_the_run_and_both_keys(engine):
    assert engine.identity_line() == (
        f"engine {engine.run_id} frames signed by {engine.frame_public_key}; "
        f"operator key {engine.state_dir / 'keys' / 'operator.key'}"
    )
    assert engine.frame_public_key == FrameSigner(load_key(FRAME_KEY_SPEC, engine.state_dir)).public_key
    assert engine.identity_line() in event_texts(engine)  # the dashboard shows it too


async def test_a_flood_of_dead_letters_does_not_flood_the_log(bus, caplog):
    """The same flood wrote a warning per dead letter to the engine's stderr: a few, then one summary."""
    caplog.set_level("WARNING", logger="esper_tui.engine.bus.delivery")

    async def refuse(command: AnyCommand) -> None:
        raise CommandRejected("unsigned", signed=False)

    consumer = asyncio.create_task(bus.consume_commands("engine", "engine-1", refuse))
    try:
        for _ in range(100):
            await bus.publish_command(Shutdown(issued_by="operator"))
        await eventually(lambda: bus.metrics().dead_lettered == 100, "every command dead-lettered")
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
    logged = [r.getMessage() for r in caplog.records if "dead-lettered" in r.getMessage()]
    assert len(logged) == 5, logged


async def test_the_engine_makes_no_telemetry_copies_nothing_can_read(engine):
    """Issue 19: on the embedded bus nothing outside the process can read telemetry and nothing inside does; the
    copies filled the engine's memory (up to maxlen events). A long stream of events leaves the stream empty."""
    for n in range(5_000):
        engine.emit(epoch(n))
    engine.log(Level.INFO, "the last line")
    await eventually(lambda: "the last line" in event_texts(engine), "the last line")
    assert not engine.bus.readable_elsewhere
    assert isinstance(engine.bus, EmbeddedBus)
    telemetry = engine.bus._streams.get(engine.bus.streams.telemetry)
    assert telemetry is None or not telemetry.entries
    assert engine.bus.metrics().published == 0
