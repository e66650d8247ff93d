"""Retention on a real Redis: every key a run writes carries an expiry while it runs, no longer than
bus.retention_hours once it stops, and is gone after that (issue 19)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
from headless_engine import HeadlessEngine, wait_for

from esper_tui.engine.broadcast import HEARTBEAT_TTL_S
from esper_tui.engine.bus.types import PAYLOAD, StreamNames
from esper_tui.engine.frames import heartbeat_key, open_heartbeat
from esper_tui.engine.vocabulary import EngineState

pytestmark = pytest.mark.redis

RETENTION_H = 0.005  # 18 s: long enough to read every TTL after the stop, short enough to see them lapse


@pytest.fixture
def prefix() -> str:
    return f"test-retention-{uuid.uuid4().hex[:12]}"


def _ttls(raw: redis.Redis, prefix: str) -> dict[str, float]:
    """Every key under the prefix with its time to live in seconds (-1: none)."""
    keys = [k.decode() for k in raw.scan_iter(match=f"{prefix}.*")]
    return {key: ms / 1000 if (ms := raw.pttl(key)) >= 0 else float(ms) for key in keys}


def test_every_key_a_run_writes_expires_within_retention_after_it_stops(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    config = tmp_path / "run.toml"
    # No compiles (nothing queued at start) and slow epochs: a short run with time to look at it while it runs.
    config.write_text(
        "[tezzeret.polling]\ninitial_full_scan = false\n[training]\nepoch_delay_s = 0.5\n"
        f'[bus]\nstream_prefix = "{prefix}"\nretention_hours = {RETENTION_H}\n'
    )
    retention_s = RETENTION_H * 3600
    common = ["--redis-url", redis_url, "--config", str(config), "--state-dir", str(tmp_path / "state")]
    raw = redis.Redis.from_url(redis_url)
    try:
        with HeadlessEngine(tmp_path, "--eager", "--epochs", "4", "--interval", "0.5", *common) as engine:
            run_id, _key = engine.identity()
            names = StreamNames.for_prefix(prefix, run_id)
            # A malformed command: the engine's consumer dead-letters it, so the shared dead-letter stream is written.
            raw.xadd(names.normal, {PAYLOAD: b"\xc1 not a command"})
            engine.wait_for(lambda: raw.exists(names.deadletter), "the dead letter")
            engine.wait_for(lambda: all(raw.exists(s) for s in names.owned), "every stream of the run")

            def streams_expiring() -> dict[str, float] | None:
                ttls = _ttls(raw, prefix)
                return ttls if all(ttls.get(s, -1) > 0 for s in names.owned) else None

            running = engine.wait_for(streams_expiring, "the streams' expiry, renewed with the heartbeat")
            # While it runs: nothing without an expiry, streams held retention past the heartbeat, no longer.
            assert all(0 < ttl <= retention_s + HEARTBEAT_TTL_S for ttl in running.values()), running
            assert running[heartbeat_key(prefix, run_id)] <= HEARTBEAT_TTL_S
            assert engine.finish() == 0, engine.stderr()[-2000:]
        stopped = _ttls(raw, prefix)
        # Everything it wrote: its four streams and its heartbeat (the dead-letter stream, written early on, may
        # already be gone: its expiry runs from its last dead letter, and it had one, checked while running).
        assert names.deadletter in running
        assert {*names.owned, heartbeat_key(prefix, run_id)} <= set(stopped), stopped
        assert all(0 < ttl <= retention_s for ttl in stopped.values()), stopped
        heartbeat = raw.get(heartbeat_key(prefix, run_id))
        assert heartbeat is not None
        final = open_heartbeat(heartbeat)[0]
        assert (final.state, final.lives_s) == (EngineState.STOPPED, retention_s)  # readers believe it that long
        listed = subprocess.run(
            [sys.executable, "-m", "esper_tui", "attach", "--list", *common], capture_output=True, text=True, timeout=60
        )
        assert listed.returncode == 0 and run_id in listed.stdout and "stopped" in listed.stdout, listed.stderr
        # After the retention: the run holds nothing on the Redis.
        wait_for(lambda: not _ttls(raw, prefix), "the run's keys to expire")
    finally:
        left = [k for k in raw.scan_iter(match=f"{prefix}.*")]
        if left:
            raw.delete(*left)
        raw.close()
