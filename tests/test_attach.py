"""Control rooms elsewhere: RemoteLink over real buses, `esper-tui attach` as real subprocesses.

The link is tested against the embedded bus (the engine and the room share one in-process bus) and
against real redis-servers: the shared one (a unique prefix per test) for forged frames, a private one
for an outage (it is killed). The multi-process test runs a real headless engine and a real attached
`esper-tui attach --no-ui --json`. Waits are bounded by generous deadlines; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
from headless_engine import CLI, HeadlessEngine, wait_for

from benchmarks.bus import RedisServer
from esper_tui.commands.attach import (
    AttachError,
    choose_engine,
    engine_public_key,
    engines_table,
    operator_key,
    report_attached,
)
from esper_tui.engine import keys
from esper_tui.engine.broadcast import Broadcaster, EngineIdentity
from esper_tui.engine.bus import Bus, EmbeddedBus, RedisStreamsBus, StreamNames
from esper_tui.engine.bus.auth import CommandVerifier, FrameSigner, FrameVerifier, frame_public_key
from esper_tui.engine.codec import decode_command, encode_msgpack
from esper_tui.engine.config import BusConfig, EsperConfig
from esper_tui.engine.contracts import PauseTraining, Shutdown
from esper_tui.engine.frames import (
    FRAME_FIELD,
    SIGNATURE_FIELD,
    EngineHeartbeat,
    FrameEncoder,
    decode_frame,
    heartbeat_key,
    open_room,
    room_key,
    seal_heartbeat,
)
from esper_tui.engine.snapshot import Snapshot, TrainingView
from esper_tui.engine.vocabulary import EngineState, LinkState, TrainingStatus
from esper_tui.links.base import CommandUnavailable
from esper_tui.links.remote import SILENT_AFTER_S, EngineEntry, RemoteLink, list_engines

RUN = "3f2a9c81d0aa"
SECRET = bytes(range(32))  # the engine's frame key
OTHER_SECRET = bytes(range(1, 33))  # a key the room never pinned
OPERATOR = bytes(range(2, 34))
WAIT_S = 20.0


async def until(check: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    """Poll `check` (sync or async) until it is truthy; fails (never hangs) after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        await asyncio.sleep(0.01)
    raise AssertionError(f"gave up waiting for {what}")


def snapshot(
    seq: int, *, epoch: int | None = None, run_id: str = RUN, status: TrainingStatus = TrainingStatus.RUNNING
) -> Snapshot:
    return Snapshot(
        seq=seq,
        ts=1_750_000_000.0 + seq,
        run_id=run_id,
        training=TrainingView(status=status, epoch=seq if epoch is None else epoch, epochs_total=30),
    )


class FakeEngine:
    """The engine's side of a run, as engine/broadcast.py publishes it: signed frames, signed heartbeats.

    Frames are encoded here (FrameEncoder with a frozen clock: a keyframe only when asked for), so a test
    can make a delta and withhold it, or sign with the wrong key.
    """

    def __init__(self, bus: Bus, run_id: str = RUN, secret: bytes = SECRET) -> None:
        self.bus = bus
        self.run_id = run_id
        self.signer = FrameSigner(secret)
        self.encoder = FrameEncoder(keyframe_every_s=1.0, clock=lambda: 0.0)
        self.stream = StreamNames.for_prefix(bus.config.stream_prefix, run_id).frames

    def frame(self, snap: Snapshot, *, keyframe: bool = False) -> bytes:
        return self.encoder.encode(snap, keyframe=keyframe)[0]

    async def add(self, fields: dict[bytes, bytes]) -> None:
        await self.bus.add_entry(self.stream, fields, maxlen=1000)

    async def send(self, frame: bytes, signer: FrameSigner | None = None) -> None:
        await self.add({FRAME_FIELD: frame, SIGNATURE_FIELD: (signer or self.signer).sign(frame)})

    async def publish(self, snap: Snapshot, *, keyframe: bool = False) -> None:
        await self.send(self.frame(snap, keyframe=keyframe))

    async def beat(
        self,
        state: EngineState,
        signer: FrameSigner | None = None,
        ttl_s: float = 5.0,
        *,
        age_s: float = 0.0,
        last_seq: int = 0,
    ) -> None:
        signer = signer or self.signer
        ts = time.time() - age_s
        heartbeat = EngineHeartbeat(
            run_id=self.run_id,
            host="lab-1",
            pid=4242,
            started_ts=ts - 302,
            ts=ts,
            state_dir="/srv/esper/var",
            state=state,
            engine_key=signer.public_key,
            last_seq=last_seq,
        )
        key = heartbeat_key(self.bus.config.stream_prefix, self.run_id)
        await self.bus.put_presence(key, seal_heartbeat(heartbeat, signer.sign), ttl_s)


@pytest.fixture
def prefix() -> str:
    return f"test-attach-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def bus(prefix: str) -> AsyncIterator[Bus]:
    """One in-process bus that the engine (its streams are the run's) and the control room share."""
    shared = EmbeddedBus(BusConfig(stream_prefix=prefix), run_id=RUN)
    await shared.start(create_groups=False)
    yield shared
    await shared.close()


LinkFactory = Callable[..., Awaitable[RemoteLink]]


@pytest.fixture
async def attach(bus: Bus) -> AsyncIterator[LinkFactory]:
    """attach(**kwargs) -> a started RemoteLink on `bus`, pinned to the fake engine's key; closed at the end."""
    links: list[RemoteLink] = []

    async def make(**kwargs: Any) -> RemoteLink:
        kwargs.setdefault("operator_key", None)
        link = RemoteLink(kwargs.pop("on", bus), RUN, frame_public_key(SECRET), **kwargs)
        await link.start()
        links.append(link)
        return link

    yield make
    for link in links:
        await link.close()


def seq_of(link: RemoteLink) -> int | None:
    latest = link.latest()
    return None if latest is None else latest.seq


# --------------------------------------------------------------------------- frames


async def test_attach_starts_from_the_newest_keyframe(bus: Bus, attach: LinkFactory) -> None:
    engine = FakeEngine(bus)
    await engine.publish(snapshot(1), keyframe=True)
    await engine.add({FRAME_FIELD: b"an older forgery", SIGNATURE_FIELD: b"x"})
    await engine.publish(snapshot(2))
    await engine.publish(snapshot(3), keyframe=True)
    await engine.publish(snapshot(4))
    link = await attach()
    assert link.link_view().state in (LinkState.WAITING, LinkState.LIVE)
    await until(lambda: seq_of(link) == 4, "the picture after the newest keyframe and its delta")
    latest = link.latest()
    assert latest is not None and latest.training.epoch == 4
    assert latest.link.state is LinkState.LIVE and latest.link.run_id == RUN
    assert link.frames_rejected == 0  # entries before the newest keyframe are never even read


async def test_follows_deltas_and_keyframes(bus: Bus, attach: LinkFactory) -> None:
    engine = FakeEngine(bus)
    link = await attach()  # attached before the engine published anything
    await until(lambda: link.link_view().state is LinkState.WAITING, "waiting")
    assert link.latest() is None
    await engine.publish(snapshot(1), keyframe=True)
    await until(lambda: seq_of(link) == 1, "the first keyframe")
    for seq in range(2, 6):
        await engine.publish(snapshot(seq, epoch=10 * seq))
    await until(lambda: seq_of(link) == 5, "the deltas")
    latest = link.latest()
    assert latest is not None and latest.training.epoch == 50
    assert latest == msgspec.structs.replace(snapshot(5, epoch=50), link=latest.link)  # exactly the engine's picture


async def test_a_gap_waits_for_the_next_keyframe(bus: Bus, attach: LinkFactory) -> None:
    engine = FakeEngine(bus)
    await engine.publish(snapshot(1), keyframe=True)
    link = await attach()
    await until(lambda: seq_of(link) == 1, "the keyframe")
    engine.frame(snapshot(2))  # made but lost on the way
    await engine.publish(snapshot(3))  # a delta on seq 2, which this room never saw
    await engine.publish(snapshot(4))
    await engine.publish(snapshot(5), keyframe=True)
    await until(lambda: seq_of(link) == 5, "the keyframe after the gap")
    assert link.frames_rejected == 0  # a gap is not a forgery
    # seq 3 and 4 were never shown: the decoder skipped them rather than guess
    assert link._decoder.gaps == 2


async def test_forged_frames_are_ignored_and_counted(bus: Bus, attach: LinkFactory) -> None:
    engine = FakeEngine(bus)
    first = engine.frame(snapshot(1, epoch=7), keyframe=True)
    await engine.send(first)
    link = await attach()
    await until(lambda: seq_of(link) == 1, "the engine's keyframe")
    impostor = FakeEngine(bus, secret=OTHER_SECRET)
    other_run = FakeEngine(bus, run_id="another-run")
    await impostor.publish(snapshot(50, epoch=999), keyframe=True)  # signed, by another key
    await engine.add({FRAME_FIELD: impostor.frame(snapshot(51, epoch=999), keyframe=True)})  # unsigned
    await engine.add({FRAME_FIELD: b"\x93garbage", SIGNATURE_FIELD: engine.signer.sign(b"\x93garbage")})  # no frame
    await engine.send(other_run.frame(snapshot(52, epoch=999, run_id="another-run"), keyframe=True))  # another run's
    await until(lambda: link.frames_rejected == 4, "four rejections")
    latest = link.latest()
    assert latest is not None and (latest.seq, latest.training.epoch) == (1, 7)  # the picture stays the engine's
    assert latest.link.frames_rejected == 4
    await engine.publish(snapshot(2, epoch=8))  # the engine's next delta still lands on its keyframe
    await until(lambda: seq_of(link) == 2, "the engine's delta")
    await engine.send(first)  # a replay of a genuine, older frame
    await until(lambda: link.frames_rejected == 5, "the replay rejected")
    assert seq_of(link) == 2


async def test_silent_when_no_frame_arrives(bus: Bus, attach: LinkFactory) -> None:
    engine = FakeEngine(bus)
    await engine.beat(EngineState.RUNNING)
    await engine.publish(snapshot(1), keyframe=True)
    skew = [0.0]
    link = await attach(clock=lambda: time.time() + skew[0])
    await until(lambda: seq_of(link) == 1, "the keyframe")
    assert link.link_view().state is LinkState.LIVE
    skew[0] = SILENT_AFTER_S + 9
    view = link.link_view()
    assert view.state is LinkState.SILENT and view.age_s >= SILENT_AFTER_S + 9
    latest = link.latest()
    assert latest is not None and latest.link.state is LinkState.SILENT  # stamped when asked, same seq
    skew[0] = 0.0
    await engine.publish(snapshot(2), keyframe=True)
    await until(lambda: seq_of(link) == 2, "the next keyframe")
    assert link.link_view().state is LinkState.LIVE


async def test_stopped_when_the_engine_says_so(bus: Bus, attach: LinkFactory) -> None:
    """The engine's real Broadcaster (engine/broadcast.py): final keyframe, then a STOPPED heartbeat."""
    current = [snapshot(1)]
    broadcaster = Broadcaster(
        bus,
        FrameSigner(SECRET),
        EngineIdentity(run_id=RUN, host="lab-1", pid=4242, started_ts=time.time(), state_dir="/srv/var"),
        latest=lambda: current[0],
        state=lambda: EngineState.RUNNING,
        refresh_hz=4.0,
    )
    await broadcaster.publish(current[0], keyframe=True)
    await broadcaster.beat(EngineState.RUNNING, 5.0)
    link = await attach()
    await until(lambda: seq_of(link) == 1, "the first keyframe")
    assert not link.stopped.is_set()
    await broadcaster.finish(snapshot(9, status=TrainingStatus.FINISHED))
    await asyncio.wait_for(link.stopped.wait(), WAIT_S)
    final = link.latest()
    assert final is not None and final.seq == 9 and final.training.status is TrainingStatus.FINISHED
    assert final.link.state is LinkState.STOPPED


async def test_a_forged_stopped_heartbeat_is_ignored(bus: Bus, attach: LinkFactory) -> None:
    engine = FakeEngine(bus)
    await engine.publish(snapshot(1), keyframe=True)
    await engine.beat(EngineState.STOPPED, signer=FrameSigner(OTHER_SECRET))
    link = await attach()
    await until(lambda: link.heartbeats_rejected >= 1, "the forged heartbeat checked")
    assert not link.stopped.is_set()
    assert link.link_view().state is LinkState.LIVE


async def test_presence_is_announced_and_taken_away(bus: Bus, attach: LinkFactory, prefix: str) -> None:
    link = await attach()
    rooms = await until(lambda: bus.presence(room_key(prefix, RUN)), "the room's presence")
    assert len(rooms) == 1
    room = open_room(next(iter(rooms.values())))
    assert room.read_only and room.pid == os.getpid() and "@" in room.by
    await link.close()
    assert await bus.presence(room_key(prefix, RUN)) == {}


# --------------------------------------------------------------------------- commands


async def test_send_signs_for_the_run_and_routes_to_its_streams(bus: Bus, attach: LinkFactory, prefix: str) -> None:
    link = await attach(operator_key=OPERATOR)
    assert not link.read_only and not link.link_view().read_only
    await link.send(PauseTraining(paused=True))
    await link.send(Shutdown(reason="maintenance"))
    streams = StreamNames.for_prefix(prefix, RUN)
    verifier = CommandVerifier(OPERATOR, skew_s=30, not_before=0)
    (_, normal), (_, emergency) = (await bus.tail(streams.normal, 5))[0], (await bus.tail(streams.emergency, 5))[0]
    for fields, kind in ((normal, PauseTraining), (emergency, Shutdown)):
        command = decode_command(fields[b"m"])
        assert isinstance(command, kind)
        assert command.target == RUN and "@" in command.issued_by
        verifier.check(command)  # signed with the operator key: the engine's check passes


async def test_a_read_only_room_refuses_to_send_and_says_why(bus: Bus, attach: LinkFactory, prefix: str) -> None:
    why = "read-only: no operator commands key at var/keys/operator.key"
    link = await attach(read_only_reason=why)
    assert link.link_view().read_only and why in link.link_view().detail
    with pytest.raises(CommandUnavailable, match="no operator commands key"):
        await link.send(PauseTraining(paused=True))
    assert await bus.tail(StreamNames.for_prefix(prefix, RUN).normal, 5) == []


async def test_the_dashboard_over_a_remote_link(bus: Bus, attach: LinkFactory) -> None:
    """EsperApp through the EngineLink seam: attached, read-only key presses explained, the engine's stop shown."""
    from esper_tui.ui.app import EsperApp
    from esper_tui.widgets.status_banner import StatusBanner

    engine = FakeEngine(bus)
    await engine.beat(EngineState.RUNNING)
    await engine.publish(snapshot(1), keyframe=True)
    link = await attach(read_only_reason="read-only: attached with --read-only")
    told: list[str] = []

    class RecordingApp(EsperApp):
        def notify(self, message: str, **kwargs: Any) -> None:
            told.append(message)
            super().notify(message, **kwargs)

    app = RecordingApp(link, refresh_hz=20)
    async with app.run_test(size=(160, 50)) as pilot:
        banner = app.screen.query_one(StatusBanner)
        await until(lambda: "attached" in (banner.border_subtitle or ""), "the banner to say attached")
        assert "read-only" in (banner.border_subtitle or "")
        await pilot.press("p")
        await app.wait_for_commands()
        assert told == ["Pause training not sent: read-only: attached with --read-only"]
        await engine.publish(snapshot(2, status=TrainingStatus.FINISHED), keyframe=True)
        await engine.beat(EngineState.STOPPED)
        await until(lambda: banner.has_class("-stopped"), "the banner to say the engine stopped")
        assert "engine stopped" in (banner.border_subtitle or "")
        assert app.snapshot is not None and app.snapshot.seq == 2


# --------------------------------------------------------------------------- keys and engines


@pytest.fixture
def no_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for spec in (keys.FRAME_KEY, keys.OPERATOR_KEY):
        monkeypatch.delenv(spec.env, raising=False)


def write_key(state_dir: Path, spec: keys.KeySpec, key: bytes) -> None:
    path = spec.path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(key.hex())
    path.chmod(0o600)


def test_engine_key_pinned_configured_or_derived(tmp_path: Path, no_key_env: None) -> None:
    pinned = frame_public_key(SECRET)
    config = EsperConfig()
    assert engine_public_key(config, tmp_path, pinned.upper()) == pinned
    configured = msgspec.structs.replace(config, bus=msgspec.structs.replace(config.bus, engine_key=pinned))
    assert engine_public_key(configured, tmp_path, None) == pinned
    write_key(tmp_path, keys.FRAME_KEY, SECRET)
    assert engine_public_key(config, tmp_path, None) == pinned  # derived from the engine's own key file
    with pytest.raises(AttachError, match="--engine-key: engine key must be 64 hex digits"):
        engine_public_key(config, tmp_path, "abc")


def test_no_engine_key_says_how_to_get_one(tmp_path: Path, no_key_env: None) -> None:
    with pytest.raises(AttachError) as caught:
        engine_public_key(EsperConfig(), tmp_path, None)
    message = str(caught.value)
    assert "--engine-key HEX" in message and "bus.engine_key" in message and "frames.key" in message
    assert caught.value.code == 2 and "\n" not in message
    # finding 12: the hint named `attach --list --json`, whose keys anyone who can write to the Redis can forge;
    # it names the trusted sources instead (the engine's own start line, its state directory)
    assert "the engine prints it at start" in message and "shows the key each engine announces" not in message
    assert "never copy it from `attach --list`" in message


def test_operator_key_or_read_only(tmp_path: Path, no_key_env: None) -> None:
    key, why = operator_key(EsperConfig(), tmp_path, read_only=False)
    assert key is None and why.startswith("read-only: ") and "operator.key" in why and "ESPER_OPERATOR_KEY" in why
    assert not keys.OPERATOR_KEY.path(tmp_path).exists()  # a control room never creates one
    write_key(tmp_path, keys.OPERATOR_KEY, OPERATOR)
    assert operator_key(EsperConfig(), tmp_path, read_only=False) == (OPERATOR, "")
    assert operator_key(EsperConfig(), tmp_path, read_only=True) == (None, "read-only: attached with --read-only")
    keys.OPERATOR_KEY.path(tmp_path).chmod(0o644)
    with pytest.raises(AttachError, match="readable by others"):
        operator_key(EsperConfig(), tmp_path, read_only=False)


def entry(run_id: str, state: EngineState = EngineState.RUNNING, verified: bool | None = True) -> EngineEntry:
    heartbeat = EngineHeartbeat(
        run_id=run_id, host="lab-1", pid=7, started_ts=100.0, ts=402.0, state_dir="/v", state=state, engine_key="k"
    )
    return EngineEntry(heartbeat, verified)


def test_choose_engine() -> None:
    assert choose_engine([entry("a")], None, "R") == "a"
    assert choose_engine([entry("a"), entry("b", EngineState.STOPPED)], None, "R") == "a"
    assert choose_engine([entry("a"), entry("b", verified=False)], None, "R") == "a"  # a forged heartbeat is no rival
    assert choose_engine([], "given", "R") == "given"
    with pytest.raises(AttachError, match="no live engine on R; start one with `esper-tui --redis-url URL`"):
        choose_engine([], None, "R")
    with pytest.raises(AttachError, match=r"no live engine on R \(stopped: b \(lab-1 pid 7\); --run shows a final"):
        choose_engine([entry("b", EngineState.STOPPED)], None, "R")
    with pytest.raises(AttachError, match=r"2 live engines on R: choose one with --run \(a \(lab-1 pid 7\), b"):
        choose_engine([entry("a"), entry("b")], None, "R")


async def test_list_engines_checks_heartbeats(bus: Bus) -> None:
    await FakeEngine(bus).beat(EngineState.RUNNING)
    await FakeEngine(bus, run_id="forged").beat(EngineState.RUNNING, signer=FrameSigner(OTHER_SECRET))
    engines = await list_engines(bus, bus.config.stream_prefix, FrameVerifier(frame_public_key(SECRET)))
    assert {(e.heartbeat.run_id, e.verified) for e in engines} == {(RUN, True), ("forged", False)}
    unchecked = await list_engines(bus, bus.config.stream_prefix, None)
    assert {e.verified for e in unchecked} == {None}
    table = engines_table(engines).splitlines()
    assert table[0].split() == ["run", "id", "host", "pid", "up", "state", "signature", "state", "dir"]
    assert any(RUN in row and "verified" in row and "5m02s" in row for row in table[1:])
    assert any("forged" in row and "BAD" in row for row in table[1:])


# --------------------------------------------------------------------------- headless attach


async def test_headless_report_prints_each_picture_and_the_final_one(bus: Bus, attach: LinkFactory) -> None:
    engine = FakeEngine(bus)
    await engine.beat(EngineState.RUNNING)
    await engine.publish(snapshot(1), keyframe=True)
    link = await attach()
    out, err = _Lines(), _Lines()
    done = asyncio.Event()
    report = asyncio.create_task(report_attached(link, as_json=True, interval_s=0.05, done=done, out=out, err=err))
    await until(lambda: out.lines, "the first line")
    await engine.publish(snapshot(2), keyframe=True)
    await engine.publish(snapshot(3, status=TrainingStatus.FINISHED), keyframe=True)
    await engine.beat(EngineState.STOPPED)
    assert await asyncio.wait_for(report, WAIT_S) == 0
    last = json.loads(out.lines[-1])
    assert (last["seq"], last["training"]["status"], last["link"]["state"]) == (3, "finished", "stopped")
    assert f"engine {RUN} stopped" in err.text()


async def test_headless_report_says_when_the_engine_goes_silent(bus: Bus, attach: LinkFactory) -> None:
    engine = FakeEngine(bus)
    await engine.publish(snapshot(1), keyframe=True)
    skew = [0.0]
    link = await attach(clock=lambda: time.time() + skew[0])
    await until(lambda: seq_of(link) == 1, "the keyframe")
    out, err = _Lines(), _Lines()
    done = asyncio.Event()
    report = asyncio.create_task(report_attached(link, as_json=False, interval_s=0.05, done=done, out=out, err=err))
    await until(lambda: out.lines, "the first line")
    assert out.lines[0].startswith("[live ")
    skew[0] = 12.0
    await until(lambda: "no word from engine" in err.text(), "the silence said")
    assert f"no word from engine {RUN} for 12 s (the engine's heartbeat has expired)" in err.text()
    await until(lambda: out.lines[-1].startswith("[silent 12."), "a line marked silent")
    skew[0] = 0.0
    await engine.publish(snapshot(2), keyframe=True)
    await until(lambda: f"engine {RUN} is back" in err.text(), "the recovery said")
    done.set()
    assert await asyncio.wait_for(report, WAIT_S) == 0
    assert err.text().count("no word from engine") == 1  # said once per episode, not once per line


class _Lines:
    """A text stream that keeps what was printed, line by line."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._partial = ""

    def write(self, text: str) -> int:
        self._partial += text
        *done, self._partial = self._partial.split("\n")
        self.lines.extend(done)
        return len(text)

    def flush(self) -> None:
        pass

    def text(self) -> str:
        return "\n".join(self.lines)


# --------------------------------------------------------------------------- over Redis


async def _redis_pair(url: str, prefix: str) -> tuple[Bus, Bus]:
    """The engine's bus (its run's streams) and a control room's (no groups), on one Redis."""
    engine_bus = RedisStreamsBus(BusConfig(stream_prefix=prefix), url, run_id=RUN)
    room_bus = RedisStreamsBus(BusConfig(stream_prefix=prefix), url)
    for one in (engine_bus, room_bus):
        await one.start(create_groups=False)
    return engine_bus, room_bus


@pytest.mark.redis
async def test_forged_frames_xadded_on_redis_are_ignored(redis_url: str, prefix: str) -> None:
    """Anyone on the Redis can XADD to the frames stream; only the engine's signature paints the picture."""
    engine_bus, room_bus = await _redis_pair(redis_url, prefix)
    raw = redis.Redis.from_url(redis_url)
    link = RemoteLink(room_bus, RUN, frame_public_key(SECRET), operator_key=None)
    try:
        engine = FakeEngine(engine_bus)
        await engine.publish(snapshot(1, epoch=7), keyframe=True)
        await link.start()
        await until(lambda: seq_of(link) == 1, "the engine's keyframe")
        fake = FakeEngine(engine_bus, secret=OTHER_SECRET).frame(snapshot(40, epoch=999), keyframe=True)
        raw.xadd(engine.stream, {FRAME_FIELD: fake, SIGNATURE_FIELD: FrameSigner(OTHER_SECRET).sign(fake)})
        raw.xadd(engine.stream, {FRAME_FIELD: fake})
        raw.xadd(engine.stream, {b"x": b"y"})
        await until(lambda: link.frames_rejected == 3, "three rejections")
        latest = link.latest()
        assert latest is not None and (latest.seq, latest.training.epoch, latest.link.frames_rejected) == (1, 7, 3)
        await engine.publish(snapshot(2, epoch=8))
        await until(lambda: seq_of(link) == 2, "the engine's next frame")
    finally:
        await link.close()
        for one in (engine_bus, room_bus):
            await one.close()
        raw.delete(*raw.keys(f"{prefix}.*") or [b"-"])
        raw.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own: it gets killed, which the shared one must never be."""
    with RedisServer(workdir=tmp_path) as server:
        yield server


@pytest.mark.redis
async def test_the_link_outlives_a_redis_outage(private_redis: RedisServer, prefix: str) -> None:
    """Redis killed: the room keeps running and turns SILENT with the reason; restarted: LIVE again, alone."""
    engine_bus, room_bus = await _redis_pair(private_redis.url, prefix)
    link = RemoteLink(room_bus, RUN, frame_public_key(SECRET), operator_key=None)
    try:
        engine = FakeEngine(engine_bus)
        await engine.publish(snapshot(1), keyframe=True)
        await link.start()
        await until(lambda: seq_of(link) == 1, "the first keyframe")
        private_redis.kill()
        await until(lambda: link.link_view().state is LinkState.SILENT, "the picture to turn silent")
        view = link.link_view()
        assert view.detail.startswith("bus: ") and view.age_s > SILENT_AFTER_S
        private_redis.start()  # the same port, empty: streams and keys are gone

        async def publish_again() -> bool:
            try:
                await engine.publish(snapshot(2), keyframe=True)
            except Exception:  # the engine's bus reconnects on its own; its first tries may fail
                return False
            return True

        await until(publish_again, "the engine to publish again")
        await until(lambda: seq_of(link) == 2, "the room to recover")
        assert link.link_view().state is LinkState.LIVE and link.problem == ""
    finally:
        await link.close()
        for one in (engine_bus, room_bus):
            await one.close()


# --------------------------------------------------------------------------- the command, as operators run it


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in (keys.FRAME_KEY.env, keys.OPERATOR_KEY.env)}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--json"], "--json needs --no-ui or --list"),
        ([], "attach needs the engine's Redis: pass --redis-url URL"),
        (["--redis-url", "http://x"], "--redis-url: must start with redis://"),
    ],
)
def test_attach_usage_errors_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    proc = run_cli("attach", *args, "--state-dir", str(tmp_path))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


@pytest.mark.redis
def test_attach_without_an_engine_key_says_how_to_get_it(redis_url: str, tmp_path: Path) -> None:
    proc = run_cli("attach", "--redis-url", redis_url, "--state-dir", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--engine-key HEX" in proc.stderr, proc.stderr


@pytest.mark.redis
def test_attach_with_no_engine_there(redis_url: str, prefix: str, tmp_path: Path) -> None:
    config = tmp_path / "room.toml"
    config.write_text(f'[bus]\nstream_prefix = "{prefix}"\n')
    common = ["--redis-url", redis_url, "--config", str(config), "--state-dir", str(tmp_path)]
    proc = run_cli("attach", *common, "--engine-key", frame_public_key(SECRET), "--no-ui")
    assert proc.returncode == 2 and "no live engine on redis://127.0.0.1:6379" in proc.stderr, proc.stderr
    listed = run_cli("attach", "--list", "--json", *common)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []


def test_attach_to_an_unreachable_redis_exits_1(tmp_path: Path) -> None:
    proc = run_cli("attach", "--redis-url", "redis://127.0.0.1:1/0", "--engine-key", frame_public_key(SECRET))
    assert proc.returncode == 1 and "cannot reach redis://127.0.0.1:1/0" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- one engine, a room elsewhere

EPOCHS = 8


def _json_lines(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines(keepends=True)
    return [json.loads(line) for line in lines if line.startswith("{") and line.endswith("\n")]


@pytest.mark.redis
def test_a_room_attached_from_another_process_follows_the_engine_to_its_end(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    """A real headless engine and a real `esper-tui attach --no-ui --json`, meeting only on Redis."""
    config = tmp_path / "run.toml"
    # No compiles (nothing queued at start) and a slow epoch: a short run that outlasts the room's start-up.
    config.write_text(
        "[tezzeret.polling]\ninitial_full_scan = false\n[training]\nepoch_delay_s = 1.0\n"
        f'[bus]\nstream_prefix = "{prefix}"\n'
    )
    state = tmp_path / "state"
    common = ["--redis-url", redis_url, "--config", str(config), "--state-dir", str(state)]
    raw = redis.Redis.from_url(redis_url)
    room_out, room_err = tmp_path / "room.jsonl", tmp_path / "room.err"
    try:
        with HeadlessEngine(tmp_path, "--eager", "--epochs", str(EPOCHS), "--interval", "0.5", *common) as engine:
            run_id, engine_key = engine.identity()
            engine.wait_for(lambda: raw.exists(heartbeat_key(prefix, run_id)), "its heartbeat")
            listed = run_cli("attach", "--list", "--json", *common)
            assert listed.returncode == 0, listed.stderr
            [seen] = json.loads(listed.stdout)
            assert (seen["run_id"], seen["pid"], seen["state"], seen["verified"]) == (
                run_id,
                engine.proc.pid,
                "running",
                True,
            )
            assert seen["engine_key"] == engine_key and seen["state_dir"] == str(state.resolve())
            with room_out.open("w") as out, room_err.open("w") as err:  # files: a full pipe would stall the room
                room = subprocess.Popen(
                    [*CLI, "attach", "--no-ui", "--json", "--interval", "0.2", *common],  # the key from state/keys
                    stdout=out,
                    stderr=err,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            try:
                wait_for(lambda: _json_lines(room_out), "the room's first picture", lambda: room.poll() is None)
                forged = FrameEncoder().encode(snapshot(10_000, epoch=999, run_id=run_id), keyframe=True)[0]
                stream = StreamNames.for_prefix(prefix, run_id).frames
                raw.xadd(stream, {FRAME_FIELD: forged, SIGNATURE_FIELD: FrameSigner(OTHER_SECRET).sign(forged)})
                raw.xadd(stream, {FRAME_FIELD: forged})
                assert engine.finish() == 0, engine.stderr()[-2000:]
                assert room.wait(timeout=120) == 0, room_err.read_text()[-2000:]
            finally:
                if room.poll() is None:
                    room.kill()
                    room.wait()
            final = engine.snapshots()[-1]
            engine_lines = engine.snapshots()
        lines = _json_lines(room_out)
        assert {line["run_id"] for line in lines} == {run_id}
        assert all(line["training"]["epoch"] != 999 for line in lines)  # the forged picture never showed
        last = lines[-1]
        assert last["link"]["state"] == "stopped" and last["link"]["frames_rejected"] >= 2
        assert last["link"]["read_only"] is False  # the operator key was at hand in the state directory
        assert last["seq"] == final["seq"]  # the room reached the engine's latest seq
        assert {k: v for k, v in last.items() if k != "link"} == {k: v for k, v in final.items() if k != "link"}
        assert (last["training"]["epoch"], last["training"]["status"]) == (EPOCHS, "finished")
        assert any(s["bus"]["control_rooms"] >= 1 for s in engine_lines)  # the engine counted the room
        assert f"engine {run_id} stopped" in room_err.read_text()
    finally:
        keys_left = raw.keys(f"{prefix}.*")
        if keys_left:
            raw.delete(*keys_left)
        raw.close()


# --------------------------------------------------------------------------- trust at the edges (issue 18)


def broadcaster_on(bus: Bus) -> Broadcaster:
    """The engine's real Broadcaster (engine/broadcast.py) for RUN, signing with SECRET."""
    return Broadcaster(
        bus,
        FrameSigner(SECRET),
        EngineIdentity(run_id=RUN, host="lab-1", pid=4242, started_ts=time.time(), state_dir="/srv/var"),
        latest=lambda: None,
        state=lambda: EngineState.RUNNING,
        refresh_hz=4.0,
    )


async def test_an_old_keyframe_replayed_after_the_stop_never_becomes_the_final_picture(
    bus: Bus, attach: LinkFactory
) -> None:
    """Finding 4: after the run finished (seq 16, epoch 8), a copy of its own keyframe seq 3 was XADDed to its
    frames stream; a room attaching afterwards printed seq 3, epoch 0, "waiting" as the final state."""
    engine = broadcaster_on(bus)
    await engine.publish(snapshot(3, epoch=0, status=TrainingStatus.WAITING), keyframe=True)
    [(_id, old_keyframe)] = await bus.tail(engine.stream, 1)
    for seq in range(4, 16):
        await engine.publish(snapshot(seq, epoch=seq // 2), keyframe=seq % 4 == 0)
    await engine.finish(snapshot(16, epoch=8, status=TrainingStatus.FINISHED))
    await bus.add_entry(engine.stream, old_keyframe, maxlen=1000)  # the replay, signed by the engine itself
    link = await attach()
    await asyncio.wait_for(link.stopped.wait(), WAIT_S)
    final = link.latest()
    assert final is not None and (final.seq, final.training.epoch, final.training.status) == (
        16,
        8,
        TrainingStatus.FINISHED,
    )
    assert final.link.state is LinkState.STOPPED and "final picture" not in final.link.detail


async def test_catch_up_starts_from_the_highest_seq_not_the_last_entry(bus: Bus, attach: LinkFactory) -> None:
    engine = FakeEngine(bus)
    old = engine.frame(snapshot(2), keyframe=True)
    await engine.send(old)
    await engine.publish(snapshot(5), keyframe=True)
    await engine.send(old)  # a genuine older keyframe put back at the end of the stream
    link = await attach()
    await until(lambda: seq_of(link) == 5, "the newest picture")
    await engine.publish(snapshot(6))  # the engine's delta lands on its own keyframe
    await until(lambda: seq_of(link) == 6, "the delta")


async def test_a_missing_final_frame_is_said_not_papered_over(bus: Bus, attach: LinkFactory) -> None:
    """The STOPPED heartbeat names the final seq; a room that cannot find that frame says so."""
    engine = FakeEngine(bus)
    await engine.publish(snapshot(10), keyframe=True)
    await engine.beat(EngineState.STOPPED, last_seq=12)  # frames 11 and 12 deleted from the stream
    link = await attach()
    await asyncio.wait_for(link.stopped.wait(), WAIT_S)
    view = link.link_view()
    assert view.state is LinkState.STOPPED
    assert "the engine's final picture (seq 12) is not in the stream; this one is seq 10" in view.detail


async def test_a_signed_frame_with_a_non_finite_time_is_refused(bus: Bus, attach: LinkFactory) -> None:
    """Finding 9 for frames: a picture stamped NaN has no age, so it could never be shown as old."""
    engine = FakeEngine(bus)
    link = await attach()
    await until(lambda: link._cursor is not None, "the room caught up (with nothing) and following")
    frame = decode_frame(engine.frame(snapshot(1), keyframe=True))
    await engine.send(encode_msgpack(msgspec.structs.replace(frame, ts=float("nan"))))
    await until(lambda: link.frames_rejected == 1, "the frame refused")
    assert link.latest() is None
    await engine.publish(snapshot(2), keyframe=True)
    await until(lambda: seq_of(link) == 2, "the next keyframe")


async def test_a_replayed_running_heartbeat_does_not_make_a_stopped_engine_look_alive(
    bus: Bus, attach: LinkFactory
) -> None:
    """Finding 8: a copy of a RUNNING heartbeat SET with no expiry made `attach --list` show "running
    verified", and `attach` without --run picked it and hung on it."""
    engine = FakeEngine(bus)
    await engine.beat(EngineState.RUNNING, age_s=3600, ttl_s=86_400)
    verifier = FrameVerifier(frame_public_key(SECRET))
    [found] = await list_engines(bus, bus.config.stream_prefix, verifier, skew_s=30.0)
    assert found.verified and not found.live and found.problem.startswith("stale: issued 3600 s ago")
    with pytest.raises(AttachError, match="no live engine"):
        choose_engine([found], None, "R")
    [row] = engines_table([found]).splitlines()[1:]
    assert "stale" in row and "running" not in row
    link = await attach()  # attached with --run anyway: the heartbeat is not the engine's word now
    await until(lambda: link.heartbeats_rejected >= 1, "the stale heartbeat checked")
    assert not link.stopped.is_set()


async def test_a_stale_stopped_heartbeat_is_not_believed_either(bus: Bus, attach: LinkFactory) -> None:
    engine = FakeEngine(bus)
    await engine.publish(snapshot(1), keyframe=True)
    await engine.beat(EngineState.STOPPED, age_s=3600, ttl_s=86_400)
    link = await attach()
    await until(lambda: link.heartbeats_rejected >= 1, "the stale heartbeat checked")
    assert not link.stopped.is_set()


async def test_room_presence_is_signed_with_the_operator_key(bus: Bus, attach: LinkFactory, prefix: str) -> None:
    """Finding 10: forged presence keys counted as control rooms. A room with the operator key signs its
    presence under its own name; the engine counts only those (engine/broadcast.py BusWatch)."""
    from esper_tui.engine.bus.auth import room_signed

    await attach(operator_key=OPERATOR)
    await attach()  # read-only: nothing to sign with
    rooms = await until(lambda: _two(bus.presence(room_key(prefix, RUN))), "both rooms' presence")
    signed = {key: room_signed(OPERATOR, open_room(value)) for key, value in rooms.items()}
    assert sorted(signed.values()) == [False, True]
    for key, value in rooms.items():
        assert key == room_key(prefix, RUN, open_room(value).room_id)


async def _two(presence: Awaitable[dict[str, bytes]]) -> dict[str, bytes] | None:
    found = await presence
    return found if len(found) == 2 else None


def test_attach_help_examples_work_as_written(tmp_path: Path, redis_url: str) -> None:
    """The examples in `attach --help` failed without `--engine-key` (off the engine's machine, where no key
    file can be read); each now carries what finds the key, and the listing one runs against a real Redis."""
    from esper_tui.commands.cli import ATTACH_EPILOG, _attach_parser

    hex_key = frame_public_key(b"\x01" * 32)
    state = tmp_path / "engine-state"
    keys.load_or_create_key(keys.FRAME_KEY, state)  # "on the engine's machine": DIR/keys/frames.key exists
    examples = [line.split("   ")[0].split()[2:] for line in ATTACH_EPILOG.splitlines() if "esper-tui attach" in line]
    assert len(examples) >= 4
    elsewhere = tmp_path / "no-keys-here"  # what a machine other than the engine's has
    for words in examples:
        argv = [{"HEX": hex_key, "DIR": str(state), "URL": redis_url}.get(w, w) for w in words]
        args = _attach_parser().parse_args(argv)
        assert engine_public_key(EsperConfig(), args.state_dir if "--state-dir" in argv else elsewhere, args.engine_key)
    listing = next(words for words in examples if "--list" in words)
    argv = [{"HEX": hex_key, "URL": redis_url}.get(w, w) for w in listing]
    proc = run_cli("attach", *argv, "--state-dir", str(elsewhere))
    assert proc.returncode == 0, proc.stderr
