"""An engine that runs out of file descriptors carries on: whatever in its loop needs a new descriptor while
none is left (reading /proc for the memory breaker, a Redis reconnect, a WAL checkpoint, accepting on the
metrics port) fails that once, says so, and tries again later; when descriptors free up it is whole again.

The descriptors really run out: the soft RLIMIT_NOFILE drops to 0 for a few of the engine's periods (every
open, socket or accept then fails with EMFILE), then comes back. The limit is the whole process's, so the engine
runs in a process of its own (spawned): a pytest process's other threads (an S3 server a test left running, a
parallel run's worker channel) must not run out too. Only this engine's Redis connections are cut: other tests
may be using the same server. The engine trains eagerly (nothing compiles), so it is cheap.
"""

from __future__ import annotations

import asyncio
import errno
import multiprocessing
import os
import resource
import socket
import traceback
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import psutil
import pytest
import redis

from esper_tui.engine.config import parse_config
from esper_tui.engine.runtime import Engine
from esper_tui.engine.vocabulary import Level
from tests.waits import eventually

HOLD_S = 3.0  # three memory-breaker polls, thirty recorder periods, the bus watch and the alert clock


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def no_descriptors_left() -> Iterator[None]:
    """No new descriptor for this process until the block ends: the soft limit drops below every free number
    (the open ones keep working), so one the engine closes meanwhile cannot be reused either."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (0, hard))
    try:
        with pytest.raises(OSError) as refused:
            os.close(os.open(os.devnull, os.O_RDONLY))
        assert refused.value.errno == errno.EMFILE
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@asynccontextmanager
async def running_engine(
    tmp_path: Path, redis_url: str | None = None, **sections: Any
) -> AsyncIterator[tuple[Engine, str]]:
    port = free_port()
    config = parse_config(
        {
            "tezzeret": {
                "polling": {"initial_full_scan": False},
                "memory_management": {"cleanup_interval_seconds": 1.0},  # a WAL checkpoint every second
            },
            "training": {"compile": False, "epochs": 10_000},
            "ui": {"refresh_hz": 10},
            "nissa": {"port": port},
            **sections,
        }
    )
    engine = Engine(config, tmp_path / "state", redis_url=redis_url)
    await engine.start()
    try:
        yield engine, f"http://127.0.0.1:{port}"
    finally:
        await engine.stop()


def epoch(engine: Engine) -> int:
    snap = engine.latest()
    return snap.training.epoch if snap is not None else 0


async def still_whole(engine: Engine, base: str) -> None:
    """Not stopped, training on, and the metrics port answering."""
    assert not engine.stopped.is_set(), engine.stop_reason
    after = epoch(engine)
    await eventually(lambda: epoch(engine) >= after + 2, "two more epochs after the descriptors came back")
    async with aiohttp.ClientSession() as session, session.get(f"{base}/healthz") as response:
        assert response.status == 200, await response.text()
    assert engine.failure is None and not engine.stopped.is_set(), engine.stop_reason


def said(engine: Engine, level: Level) -> list[str]:
    snap = engine.latest()
    assert snap is not None
    return [e.text for e in snap.events if e.level is level]


def cut_this_process_off(admin: redis.Redis, redis_url: str) -> None:
    """Kill every Redis connection of this process but `admin`'s, by the client addresses the server sees."""
    port = urlsplit(redis_url).port or 6379
    mine = {
        f"{c.laddr.ip}:{c.laddr.port}"
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port
    }
    me = admin.client_id()
    cut = [c["id"] for c in admin.client_list(_type="normal") if c["addr"] in mine and int(c["id"]) != me]
    assert cut, "no connection of the engine's to cut"
    for client in cut:
        admin.client_kill_filter(_id=client)


async def out_of_descriptors(tmp_path: Path, redis_url: str) -> None:
    prefix = f"esper-fd-{uuid.uuid4().hex[:8]}"
    admin = redis.Redis.from_url(redis_url)
    try:
        async with running_engine(tmp_path, redis_url, bus={"stream_prefix": prefix}) as (engine, base):
            await eventually(lambda: epoch(engine) >= 1, "a first epoch")
            # Every engine connection drops, and before the engine's loop runs again no descriptor is left.
            cut_this_process_off(admin, redis_url)
            with no_descriptors_left():
                await eventually(lambda: (s := engine.latest()) is not None and not s.bus.connected, "the bus down")
                await asyncio.sleep(HOLD_S)
                assert not engine.stopped.is_set(), engine.stop_reason
            # /healthz says "bus down" (503) until the bus is back, which is the truth: wait for it first
            await eventually(lambda: (s := engine.latest()) is not None and s.bus.connected, "the bus reconnected")
            await still_whole(engine, base)
            for step in ("memory reading", "WAL checkpoint"):  # each said once, however many polls failed
                await eventually(
                    lambda: any(t.startswith(f"{step} back after") for t in said(engine, Level.INFO)),  # noqa: B023
                    f"{step} back",
                )
                warned = said(engine, Level.WARNING)
                assert sum(w.startswith(f"{step} failed") and "Too many open files" in w for w in warned) == 1, warned
    finally:
        for key in admin.scan_iter(f"{prefix}*"):
            admin.delete(key)
        admin.close()


def in_a_process_of_its_own(tmp_path: str, redis_url: str) -> str | None:
    """The scenario, run where nothing else lives: None, or what failed with its traceback."""
    try:
        asyncio.run(out_of_descriptors(Path(tmp_path), redis_url))
    except BaseException:
        return traceback.format_exc()
    return None


def test_an_engine_out_of_descriptors_carries_on(tmp_path: Path, redis_url: str) -> None:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        failure = pool.apply(in_a_process_of_its_own, (str(tmp_path), redis_url))
    assert failure is None, failure
