"""`esper-tui bus prune` against a real redis-server: it removes finished runs' keys and their old dead letters,
and nothing else (never a live run's keys, never another prefix's, never the forge's)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from esper_tui.engine.bus.auth import FrameSigner
from esper_tui.engine.bus.prune import prune, run_key
from esper_tui.engine.bus.types import PAYLOAD, StreamNames
from esper_tui.engine.frames import EngineHeartbeat, heartbeat_key, room_key, seal_heartbeat
from esper_tui.engine.vocabulary import EngineState

pytestmark = pytest.mark.redis

HOUR = 3600.0
SIGNER = FrameSigner(b"\x01" * 32)


def _beat(run_id: str, state: EngineState, ts: float) -> bytes:
    heartbeat = EngineHeartbeat(
        run_id=run_id,
        host="here",
        pid=1,
        started_ts=ts - 60,
        ts=ts,
        state_dir="/tmp/x",
        state=state,
        engine_key=SIGNER.public_key,
    )
    return seal_heartbeat(heartbeat, SIGNER.sign)


async def _run(
    client: aioredis.Redis,
    prefix: str,
    run_id: str,
    *,
    entries_at: float,
    heartbeat: EngineState | None,
    beat_ts: float | None = None,
    room: bool = False,
) -> list[str]:
    """The keys an engine writes, with entries added at `entries_at` (their ids carry the time)."""
    names = StreamNames.for_prefix(prefix, run_id)
    streams = [names.telemetry, names.normal, names.emergency, names.frames]
    for n, stream in enumerate(streams):
        await client.xadd(stream, {PAYLOAD: b"x"}, id=f"{int(entries_at * 1000)}-{n}")
    await client.xgroup_create(names.telemetry, "esper", id="0")
    keys = list(streams)
    if heartbeat is not None:
        await client.set(heartbeat_key(prefix, run_id), _beat(run_id, heartbeat, beat_ts or entries_at), ex=600)
        keys.append(heartbeat_key(prefix, run_id))
    if room:
        await client.set(room_key(prefix, run_id, "room1"), b"r", ex=600)
        keys.append(room_key(prefix, run_id, "room1"))
    return keys


async def _dead_letter(client: aioredis.Redis, prefix: str, run_id: str, at: float, seq: int) -> None:
    stream = StreamNames.for_prefix(prefix, run_id).telemetry
    await client.xadd(f"{prefix}.deadletter", {PAYLOAD: b"x", b"stream": stream.encode()}, id=f"{int(at * 1000)}-{seq}")


async def _existing(client: aioredis.Redis, keys: list[str]) -> list[str]:
    return [key for key in keys if await client.exists(key)]


def test_run_key_names_only_what_a_run_writes() -> None:
    assert run_key("oona", "oona.telemetry.abc") == ("telemetry", "abc")
    assert run_key("oona", "oona.engine.abc") == ("engine", "abc")
    assert run_key("oona", "oona.room.abc.r1") == ("room", "abc")
    assert run_key("a.b", "a.b.frames.abc") == ("frames", "abc")
    for other in ("oona.deadletter", "oona.forge.news", "oona.forge.jobs.x", "oonax.telemetry.abc", "oona.engine."):
        assert run_key("oona", other) is None, other


async def test_prune_removes_finished_runs_and_only_them(redis_client: aioredis.Redis, prefix: str) -> None:
    now = time.time()
    client = redis_client
    old_stopped = await _run(client, prefix, "oldstop", entries_at=now - 30 * HOUR, heartbeat=EngineState.STOPPED)
    died = await _run(client, prefix, "died", entries_at=now - 30 * HOUR, heartbeat=None)
    recent = await _run(client, prefix, "recent", entries_at=now - HOUR, heartbeat=EngineState.STOPPED)
    # A run that started long ago and still runs: old entries, fresh RUNNING heartbeat, a room attached.
    live = await _run(
        client, prefix, "live", entries_at=now - 30 * HOUR, heartbeat=EngineState.RUNNING, beat_ts=now, room=True
    )
    # No heartbeat (failing to renew, say) but a keyframe a second ago: taken for live.
    active = await _run(client, prefix, "active", entries_at=now - 1, heartbeat=None)
    for n, run_id in enumerate(("oldstop", "died", "live", "recent")):
        await _dead_letter(client, prefix, run_id, now - 30 * HOUR, n)
    await _dead_letter(client, prefix, "died", now - 60, 9)  # young: stays
    other = [f"{prefix}x.telemetry.oldstop", f"{prefix}.forge.news", f"{prefix}.forge.jobs.id"]
    for key in other:
        await client.xadd(key, {PAYLOAD: b"x"}, id=f"{int((now - 30 * HOUR) * 1000)}-1")

    dry = await prune(client, prefix, 24 * HOUR, dry_run=True, now=now)
    assert {r.run_id for r in dry.removed} == {"oldstop", "died"} and dry.dead_letters_removed == 3
    assert await _existing(client, old_stopped + died) == old_stopped + died  # a dry run removes nothing
    assert await client.xlen(f"{prefix}.deadletter") == 5

    report = await prune(client, prefix, 24 * HOUR, now=now)
    assert {r.run_id for r in report.removed} == {"oldstop", "died"}
    assert {r.run_id for r in report.kept_live} == {"live", "active"}
    assert {r.run_id for r in report.kept_recent} == {"recent"}
    assert await _existing(client, old_stopped + died) == []
    kept = recent + live + active + other
    assert await _existing(client, kept) == kept
    letters = await client.xrange(f"{prefix}.deadletter")
    owners = sorted(fields[b"stream"].decode().rsplit(".", 1)[1] for _, fields in letters)
    assert owners == [
        "died",
        "live",
    ]  # old ones of runs not live gone (a recent run's too); a live run's, young ones stay

    everything = await prune(client, prefix, 0, now=now)  # the default: every finished run, whatever its age
    assert {r.run_id for r in everything.removed} == {"recent"}
    assert await _existing(client, recent) == []
    assert await _existing(client, live + active + other) == live + active + other
    await client.delete(*other)


async def test_prune_keeps_a_run_whose_heartbeat_cannot_be_read(redis_client: aioredis.Redis, prefix: str) -> None:
    now = time.time()
    await _run(redis_client, prefix, "future", entries_at=now - 30 * HOUR, heartbeat=None)
    await redis_client.set(heartbeat_key(prefix, "future"), b"\xc1 not a heartbeat of this version", ex=600)
    report = await prune(redis_client, prefix, 0, now=now)
    assert [r.run_id for r in report.kept_live] == ["future"] and not report.removed


def test_bus_prune_cli_says_what_it_removed(redis_url: str, prefix: str, tmp_path: Path) -> None:
    """The sub-command end to end: one line per key it removed, a summary, exit 0; the keys are gone."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        stream = StreamNames.for_prefix(prefix, "gone").telemetry
        client.xadd(stream, {PAYLOAD: b"x"}, id="1000-1")
        config = tmp_path / "esper.toml"
        config.write_text(f'[bus]\nstream_prefix = "{prefix}"\n')
        command = [sys.executable, "-m", "esper_tui", "bus", "prune", "--redis-url", redis_url, "--config", str(config)]
        dry = subprocess.run([*command, "--dry-run"], capture_output=True, text=True, env=os.environ, timeout=60)
        assert dry.returncode == 0, dry.stderr
        assert "would remove run gone" in dry.stdout and client.exists(stream)
        done = subprocess.run(command, capture_output=True, text=True, env=os.environ, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "removed run gone (no heartbeat" in done.stdout and f"  {stream} (1 entries)" in done.stdout
        assert "removed 1 keys of 1 runs" in done.stdout
        assert not client.exists(stream)
    finally:
        client.close()


@pytest.mark.parametrize("args", [["--older-than", "-1"], ["--older-than", "nan"], ["--redis-url", "http://x"]])
def test_bus_prune_bad_input_exits_2(args: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "esper_tui", "bus", "prune", *args], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr


def test_bus_prune_without_a_redis_is_one_line_exit_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "esper_tui", "bus", "prune"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "esper-tui: bus prune: no Redis: pass --redis-url or set bus.redis_url"
