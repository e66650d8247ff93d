"""Redis killed (-9) under a running engine and restarted 10 s later: the engine's picture stays the truth.

A real headless engine (subprocess) on a PRIVATE redis-server (never the shared one: this test kills it).
The engine's own aggregator never depends on the bus, so its final snapshot must be the run's real end
state however much telemetry was lost; and once Redis is back, frames and heartbeat return on their own.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from headless_engine import CLI, HeadlessEngine

from benchmarks.bus import RedisServer
from esper_tui.engine.bus import StreamNames
from esper_tui.engine.bus.auth import FrameVerifier
from esper_tui.engine.frames import FRAME_FIELD, SIGNATURE_FIELD, decode_frame, heartbeat_key, open_heartbeat
from esper_tui.engine.vocabulary import EngineState
from tests.conftest import MNIST1D_BLUEPRINTS

EPOCHS = 20
OUTAGE_S = 10.0


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(workdir=tmp_path) as server:
        yield server


def _compiled(snapshot: dict[str, Any]) -> int:
    return sum(j["status"] == "compiled" for j in snapshot["forge"]["jobs"])


def _compiling(snapshots: list[dict[str, Any]]) -> dict[str, Any] | None:
    last = snapshots[-1] if snapshots else None
    return last if last and any(j["status"] == "compiling" for j in last["forge"]["jobs"]) else None


def _fresh_keyframe(client: redis.Redis, stream: str, verifier: FrameVerifier, after_ts: float) -> bool:
    """A keyframe published after `after_ts`, signed by the engine, is in the frames stream."""
    try:
        entries = client.xrevrange(stream, count=50)
    except (redis.RedisError, OSError):
        return False
    for _id, fields in entries:
        frame_bytes, signature = fields.get(FRAME_FIELD), fields.get(SIGNATURE_FIELD)
        if frame_bytes is None or signature is None or not verifier.verify(frame_bytes, signature):
            continue
        frame = decode_frame(frame_bytes)
        if frame.base_seq is None and frame.ts > after_ts:
            return True
    return False


@pytest.mark.redis
@pytest.mark.compile
def test_redis_killed_mid_run_the_final_snapshot_is_the_truth(tmp_path: Path, private_redis: RedisServer) -> None:
    config = tmp_path / "run.toml"
    # Fast (aot_eager) compiles keep the run short but real; the epoch delay makes the run outlast the outage.
    config.write_text('[tezzeret.compilation]\ndefault_strategy = "fast"\n[training]\nepoch_delay_s = 1.0\n')
    state = tmp_path / "state"
    args = ["--interval", "0.5", "--epochs", str(EPOCHS), "--config", str(config), "--state-dir", str(state)]
    with HeadlessEngine(tmp_path, *args, "--redis-url", private_redis.url) as engine:
        run_id, public_key = engine.identity()
        verifier = FrameVerifier(public_key)
        # Kill Redis while the forge is busy: compiles that finish during the outage are exactly the events a
        # bus-fed aggregator lost (the measured "still compiling" after the forge was done).
        at_kill = engine.wait_for(lambda: _compiling(engine.snapshots()), "a compile in flight")
        assert at_kill["bus"]["connected"] is True
        private_redis.kill()
        killed_at = time.time()
        seen = len(engine.snapshots())
        engine.wait_for(lambda: any(not s["bus"]["connected"] for s in engine.snapshots()[seen:]), "the outage seen")
        # The engine's own view moves on without Redis: a compile finishes, an epoch completes.
        engine.wait_for(lambda: _compiled(engine.snapshots()[-1]) > _compiled(at_kill), "a compile during the outage")
        epoch = at_kill["training"]["epoch"]
        engine.wait_for(lambda: engine.snapshots()[-1]["training"]["epoch"] > epoch, "an epoch during the outage")
        assert not engine.snapshots()[-1]["bus"]["connected"]
        time.sleep(max(0.0, killed_at + OUTAGE_S - time.time()))
        assert engine.alive(), "the engine must still be running when Redis comes back"
        private_redis.start()
        restarted_at = time.time()

        # Redis came back empty (no persistence): frames and heartbeat return on their own.
        client = redis.Redis(port=private_redis.port)
        stream = StreamNames.for_prefix("oona", run_id).frames
        engine.wait_for(lambda: _fresh_keyframe(client, stream, verifier, restarted_at), "a keyframe")
        beat = engine.wait_for(lambda: client.get(heartbeat_key("oona", run_id)), "the heartbeat")
        heartbeat, payload, signature = open_heartbeat(beat)
        assert verifier.verify(payload, signature)
        assert heartbeat.run_id == run_id and heartbeat.state in (EngineState.RUNNING, EngineState.STOPPING)

        assert engine.finish() == 0, engine.stderr()[-3000:]
        final = engine.snapshots()[-1]
        stopped = open_heartbeat(client.get(heartbeat_key("oona", run_id)))[0]
        client.close()

    assert final["run_id"] == run_id
    assert final["training"]["epoch"] == EPOCHS
    assert final["training"]["status"] == "finished"
    jobs = {j["blueprint_id"]: j["status"] for j in final["forge"]["jobs"]}
    assert jobs == dict.fromkeys(MNIST1D_BLUEPRINTS, "compiled")
    assert final["events"][-1]["text"] == "engine stopping: work done"
    assert final["bus"]["connected"] is True
    assert stopped.state is EngineState.STOPPED
    # The blueprints' real state is the library's: every kernel the snapshot calls compiled is there and verifies.
    verify = subprocess.run(
        [*CLI, "library", "verify", "--state-dir", str(state)], capture_output=True, text=True, timeout=120
    )
    assert (
        verify.returncode == 0
        and f"{len(MNIST1D_BLUEPRINTS)} of {len(MNIST1D_BLUEPRINTS)} artifacts verify" in verify.stdout
    )
