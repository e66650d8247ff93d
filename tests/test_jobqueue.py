"""The forge job queue (ForgeChannel) on a real Redis, and a forge worker's gatekeeping (ForgeWorkerService).

Each test uses a stream prefix of its own on the test database and deletes its keys after. The worker
tests run the real service loop with a real channel and a real SharedLibrary (PostgreSQL + moto S3), and a
real WorkerPool that must never be asked for a compile: every job here is decided before one would start.
"""

from __future__ import annotations

import asyncio
import os
import platform
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
import torch

from esper_tui.engine.forge.builders import LocalBuilder
from esper_tui.engine.forge.cluster import ForgeCluster
from esper_tui.engine.forge.jobqueue import (
    BoundsRefused,
    Delivery,
    ForgeChannel,
    ForgeControl,
    ForgeJob,
    JobNews,
    NewsKind,
    WorkerBeat,
    seal,
)
from esper_tui.engine.forge.sandbox import WorkerPool
from esper_tui.engine.forge.service import ForgeWorkerService, WorkerSettings
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.kernels.pipelines import settings_for
from esper_tui.engine.kernels.shapes import vector
from esper_tui.engine.library.catalog_db import PgCatalog
from esper_tui.engine.library.objects import open_store
from esper_tui.engine.library.shared import SharedLibrary
from esper_tui.engine.library.store import Identity, artifact_key
from esper_tui.engine.snapshot import ForgeWorkerView
from esper_tui.engine.vocabulary import Level, Strategy
from tests.conftest import IN_FEATURES, KERNEL_BLUEPRINT, OUT_FEATURES
from tests.test_shared_library import catalog_outage

pytestmark = pytest.mark.redis

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
# A worker's identity: no probe of this machine is needed, nothing here loads or compiles a kernel.
IDENTITY = Identity(str(torch.__version__), platform.python_version(), "cpu", "test-isa", 1, "test-compiler")
NOT_MINE = "0" * 64  # an artifact key no worker of IDENTITY would produce
DEADLINE_S = 5.0


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A stream prefix of this test's own; its keys are deleted after."""
    name = f"t{os.urandom(4).hex()}"
    yield name
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{name}.*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client: what anyone who can write to Redis, key or not, can do."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def open_channel(redis_url: str, prefix: str) -> AsyncIterator[Callable[..., ForgeChannel]]:
    """open_channel(key=KEY) -> a ForgeChannel on this test's prefix (closed after the test)."""
    channels: list[ForgeChannel] = []

    def make(key: bytes = KEY) -> ForgeChannel:
        channels.append(ForgeChannel(redis_url, prefix, key, IDENTITY.fingerprint()))
        return channels[-1]

    yield make
    for ch in channels:
        await ch.close()


@pytest.fixture
def channel(open_channel: Callable[..., ForgeChannel]) -> ForgeChannel:
    """The engine's end of the queue."""
    return open_channel()


def job(
    n: int = 1, *, key: str = NOT_MINE, blueprint_id: str = KERNEL_BLUEPRINT, force: bool = False, age_s: float = 0.0
) -> ForgeJob:
    return ForgeJob(
        job_id=f"job-{n}-{os.urandom(3).hex()}",
        blueprint_id=blueprint_id,
        strategy=Strategy.STANDARD,
        artifact_key=key,
        shape=vector(IN_FEATURES, OUT_FEATURES).tag,
        force=force,
        timeout_s=60.0,
        issued_ts=time.time() - age_s,
        issuer="engine-run-1",
    )


def news(j: ForgeJob, kind: NewsKind = NewsKind.COMPILED, age_s: float = 0.0) -> JobNews:
    return JobNews(
        job_id=j.job_id, blueprint_id=j.blueprint_id, kind=kind, worker="host:1", version=1, ts=time.time() - age_s
    )


def control(*open_breakers: str, conservative: bool = False, age_s: float = 0.0) -> ForgeControl:
    return ForgeControl(
        issuer="engine-run-1", conservative=conservative, open_breakers=list(open_breakers), ts=time.time() - age_s
    )


def beat(worker_id: str = "w1", holding: str = "", age_s: float = 0.0) -> WorkerBeat:
    return WorkerBeat(
        worker_id=worker_id,
        host="host",
        pid=42,
        identity=IDENTITY.fingerprint(),
        concurrency=1,
        jobs=[],
        done=0,
        failed=0,
        holding=holding,
        started_ts=time.time() - age_s,
        ts=time.time() - age_s,
    )


async def drained(ch: ForgeChannel) -> bool:
    return await ch.backlog() == 0 and await ch.pending() == 0


async def eventually(condition: Callable[[], Any], what: str, timeout_s: float = DEADLINE_S) -> Any:
    """Poll an async condition until it is truthy; its value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := await condition():
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


async def reports_about(ch: ForgeChannel, job_id: str, wait_s: float, *, until_outcome: bool = False) -> list[JobNews]:
    """Every report about a job published within `wait_s`; with `until_outcome`, only up to its first
    COMPILED or FAILED."""
    seen: list[JobNews] = []
    last = "0-0"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        for entry_id, item in await ch.news_after(last, block_ms=100):
            last = entry_id
            if item is not None and item.job_id == job_id:
                seen.append(item)
                if until_outcome and item.kind is not NewsKind.STARTED:
                    return seen
    return seen


async def outcome(ch: ForgeChannel, job_id: str, timeout_s: float = DEADLINE_S) -> list[JobNews]:
    """Every report about a job, up to and including its outcome (COMPILED or FAILED)."""
    seen = await reports_about(ch, job_id, timeout_s, until_outcome=True)
    if not seen or seen[-1].kind is NewsKind.STARTED:
        raise AssertionError(f"no outcome for {job_id} within {timeout_s} s (reports: {seen})")
    return seen


# ---------------------------------------------------------------------------------- the channel


async def test_submit_take_finish_reaches_the_news_and_empties_the_stream(channel):
    j = job()
    assert await channel.last_news_id() == "0-0"
    entry = await channel.submit(j)
    assert await channel.backlog() == 1 and await channel.pending() == 0

    delivery = await channel.take("worker-a", block_ms=100, claim_idle_s=60)
    assert delivery == Delivery(entry, j, 1)
    assert await channel.pending() == 1
    assert await channel.take("worker-b", block_ms=50, claim_idle_s=60) is None  # handed out once only

    report = news(j)
    await channel.finish(entry, report)
    [(news_id, got)] = await channel.news_after("0-0", block_ms=100)
    assert got == report and await channel.last_news_id() == news_id
    assert await channel.news_after(news_id, block_ms=50) == []
    assert await drained(channel)
    assert channel.forged == 0


async def test_a_job_left_by_a_dead_consumer_is_claimed_after_the_idle_time(channel):
    entry = await channel.submit(j := job())
    assert (await channel.take("worker-a", block_ms=100, claim_idle_s=0.5)) == Delivery(entry, j, 1)
    assert await channel.take("worker-b", block_ms=50, claim_idle_s=0.5) is None  # not idle long enough yet
    await asyncio.sleep(0.6)  # worker-a died: nobody keeps the job alive
    assert await channel.take("worker-b", block_ms=50, claim_idle_s=0.5) == Delivery(entry, j, 2)
    assert await channel.pending() == 1  # now worker-b's, until it finishes
    await channel.finish(entry, None)
    assert await drained(channel)


async def test_keepalive_keeps_a_job_from_being_claimed(channel):
    entry = await channel.submit(j := job())
    await channel.take("worker-a", block_ms=100, claim_idle_s=0.5)
    until = time.monotonic() + 1.5  # three claim windows
    while time.monotonic() < until:
        await channel.keepalive("worker-a", entry)
        assert await channel.take("worker-b", block_ms=1, claim_idle_s=0.5) is None
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.6)  # worker-a stops beating on it
    assert await channel.take("worker-b", block_ms=50, claim_idle_s=0.5) == Delivery(entry, j, 2)


# ---------------------------------------------------------------------------------- forged messages


async def test_a_job_sealed_with_another_key_is_delivered_as_none_and_counted(channel, open_channel, raw):
    intruder = open_channel(OTHER_KEY)
    await intruder.submit(job())
    await raw.xadd(channel.jobs, {"m": b"not even msgpack"})
    await raw.xadd(channel.jobs, {"m": seal(KEY, news(job()))})  # the right key, another kind of message
    await raw.xadd(channel.jobs, {"other": b"field"})
    taken = [await channel.take("worker-a", block_ms=100, claim_idle_s=60) for _ in range(4)]
    assert all(d is not None and d.job is None and d.deliveries == 1 for d in taken)
    assert channel.forged == 4
    genuine = await channel.submit(j := job())
    assert await channel.take("worker-a", block_ms=100, claim_idle_s=60) == Delivery(genuine, j, 1)
    assert channel.forged == 4


async def test_forged_news_reads_as_none_and_is_counted(channel, open_channel, raw):
    await open_channel(OTHER_KEY).publish(news(job()))
    await raw.xadd(channel.news, {"m": seal(KEY, beat())})  # right key, wrong kind
    await channel.publish(real := news(job(), NewsKind.FAILED))
    got = [item for _id, item in await channel.news_after("0-0", block_ms=100)]
    assert got == [None, None, real]
    assert channel.forged == 2


async def test_a_forged_control_is_refused(channel, open_channel, raw):
    """Not None ("no engine publishes", so a worker's own limits): a forged value must hold the workers."""
    await open_channel(OTHER_KEY).set_control(control("memory"), ttl_s=30)
    with pytest.raises(BoundsRefused, match="not validly sealed"):
        await channel.control()
    assert channel.forged == 1
    await raw.set(channel.control_key, seal(KEY, beat()))  # a heartbeat replayed as the engine's bounds
    with pytest.raises(BoundsRefused, match="not validly sealed"):
        await channel.control()
    assert channel.forged == 2


async def test_a_forged_heartbeat_is_not_listed(channel, open_channel, raw, prefix):
    await open_channel(OTHER_KEY).beat(beat("intruder"), ttl_s=30)
    await raw.set(f"{prefix}.forge.worker.replayed", seal(KEY, control()), px=30_000)
    await channel.beat(genuine := beat("w1"), ttl_s=30)
    assert await channel.workers() == [genuine]
    assert channel.forged == 2


async def test_control_round_trip_and_expiry(channel):
    assert await channel.control() is None  # no engine publishes
    published = control("timeout", "memory", conservative=True)
    await channel.set_control(published, ttl_s=0.3)
    assert await channel.control() == published
    await asyncio.sleep(0.45)
    assert await channel.control() is None and channel.forged == 0


async def test_heartbeats_expire(channel):
    await channel.beat(beat("w1"), ttl_s=0.3)
    await channel.beat(lasting := beat("w2"), ttl_s=30)
    assert {b.worker_id for b in await channel.workers()} == {"w1", "w2"}
    await asyncio.sleep(0.45)
    assert await channel.workers() == [lasting]


# ---------------------------------------------------------------------------------- the worker's gatekeeping


@pytest.fixture
def library(pg_url: str, s3_url: tuple[str, str], tmp_path: Path) -> Iterator[SharedLibrary]:
    """The shared library the worker registers kernels in, built for IDENTITY."""
    db = PgCatalog(pg_url)
    db.migrate()
    url, endpoint = s3_url
    store = open_store(url, endpoint_url=endpoint)
    lib = SharedLibrary(db, store, tmp_path / "worker-cache", KEY, Catalog(), identity=IDENTITY)
    yield lib
    lib.close()


@dataclass
class Running:
    service: ForgeWorkerService
    pool: WorkerPool
    said: list[str]
    stop: asyncio.Event
    task: asyncio.Task[None]


@pytest.fixture
async def start_worker(
    open_channel: Callable[..., ForgeChannel], library: SharedLibrary, tmp_path: Path
) -> AsyncIterator[Callable[..., Running]]:
    """start_worker(**WorkerSettings fields) -> a forge worker's service loop running as a task (stopped after)."""
    running: list[Running] = []

    def start(**settings: Any) -> Running:
        pool = WorkerPool(tmp_path / "worker-logs", memory_limit_mb=2048, jobs_per_worker=1)
        said: list[str] = []
        service = ForgeWorkerService(
            open_channel(),
            LocalBuilder(library, pool, IDENTITY),
            Catalog(),
            IDENTITY,
            WorkerSettings(**{"beat_s": 0.1, **settings}),
            said.append,
        )
        stop = asyncio.Event()
        running.append(Running(service, pool, said, stop, asyncio.create_task(service.run(stop))))
        return running[-1]

    yield start
    for r in running:
        r.stop.set()
    for r in running:
        await asyncio.wait_for(r.task, 10)
        await r.pool.close()


def my_key() -> str:
    """The artifact key a worker of IDENTITY computes for the test blueprint."""
    bp = Catalog().get(KERNEL_BLUEPRINT)
    strategy = Strategy.STANDARD
    return artifact_key(bp.ir_hash(), settings_for(strategy), strategy, IDENTITY, vector(IN_FEATURES, OUT_FEATURES))


async def test_a_job_for_another_key_fails_with_the_reason_and_is_acked(channel, start_worker):
    worker = start_worker()
    await channel.submit(j := job(key=NOT_MINE))
    [report] = await outcome(channel, j.job_id)
    assert report.kind is NewsKind.FAILED and "would build another key" in report.error
    assert report.worker == worker.service.name and not report.reused
    assert await eventually(lambda: drained(channel), "the job acknowledged and deleted")
    assert worker.pool.pids() == [] and worker.service.failed == 1 and worker.service.done == 0
    assert not worker.task.done()


async def test_an_unsealed_job_is_dropped_and_acked_without_news(channel, start_worker, raw):
    worker = start_worker()
    await channel.ensure_group()
    await raw.xadd(channel.jobs, {"m": seal(OTHER_KEY, job())})
    await channel.submit(j := job())  # a genuine one after it: its outcome says the forged one was passed
    await outcome(channel, j.job_id)
    assert await eventually(lambda: drained(channel), "both entries acknowledged and deleted")
    reports = [item for _id, item in await channel.news_after("0-0", block_ms=50)]
    assert [r.job_id for r in reports if r is not None] == [j.job_id]
    assert worker.service.channel.forged == 1 and any("not a validly signed job" in s for s in worker.said)


async def test_a_key_already_in_the_library_is_reused_without_compiling(
    channel, start_worker, library, commit_artifact
):
    key = my_key()
    stored = commit_artifact(library, key=key)
    worker = start_worker()
    await channel.submit(j := job(key=key))
    [report] = await outcome(channel, j.job_id)  # no STARTED: nothing was compiled
    assert report.kind is NewsKind.COMPILED and report.reused and report.version == stored.version == 1
    assert await eventually(lambda: drained(channel), "the job acknowledged and deleted")
    assert worker.pool.pids() == [] and not any(s.startswith("compiling") for s in worker.said)
    assert [r.version for r in library.db.versions()] == [1]
    assert worker.service.done == 1


async def test_an_open_breaker_at_the_engine_holds_every_worker(channel, start_worker):
    await channel.set_control(control("memory"), ttl_s=30)
    worker = start_worker()
    await channel.submit(j := job())

    async def holding() -> bool:
        return any(b.holding == "breaker open at the engine: memory" for b in await channel.workers())

    await eventually(holding, "a heartbeat that says the worker holds")
    await asyncio.sleep(1.2)  # more than one turn of the worker's loop
    assert await channel.backlog() == 1 and await channel.pending() == 0  # not taken
    assert worker.service.active == {}

    await channel.set_control(control(), ttl_s=30)  # the breaker closes: work resumes
    [report] = await outcome(channel, j.job_id)
    assert report.kind is NewsKind.FAILED  # taken and judged (the key is not this worker's)

    async def not_holding() -> bool:
        beats = await channel.workers()
        return bool(beats) and all(b.holding == "" for b in beats)

    await eventually(not_holding, "a heartbeat without the hold")


async def test_a_job_delivered_more_than_max_deliveries_is_given_up(channel, start_worker):
    entry = await channel.submit(j := job())
    first = await channel.take("died-on-it", block_ms=100, claim_idle_s=60)  # that worker never finishes
    assert first == Delivery(entry, j, 1)
    worker = start_worker(max_deliveries=1, claim_idle_s=0.3)
    [report] = await outcome(channel, j.job_id)
    assert report.kind is NewsKind.FAILED and "delivered 2 times" in report.error and "given up" in report.error
    assert await eventually(lambda: drained(channel), "the job acknowledged and deleted")
    assert worker.pool.pids() == [] and worker.service.failed == 1


async def test_a_catalog_outage_fails_the_job_and_the_worker_goes_on(channel, start_worker, library, pg_url):
    """The reuse check reads the catalog before anything compiles: when it fails, the job must get an outcome
    and the worker's slot must come back (concurrency 1: otherwise it never takes another job)."""
    worker = start_worker(concurrency=1)
    catalog_outage(pg_url)
    await channel.submit(first := job(key=my_key()))
    [report] = await outcome(channel, first.job_id)
    assert report.kind is NewsKind.FAILED and "catalog" in report.error
    await channel.submit(second := job(key=NOT_MINE))
    [report] = await outcome(channel, second.job_id)
    assert report.kind is NewsKind.FAILED and "would build another key" in report.error

    async def slot_free() -> bool:  # the news is published just before the job is acknowledged and let go
        return worker.service.active == {}

    await eventually(slot_free, "the worker's slot to come back")
    assert worker.pool.pids() == []


# ---------------------------------------------------------------------------------- freshness (finding 5)
# An attacker with Redis write access but no key cannot seal a message; it can copy one it saw and put it
# back later, or again. Every sealed message is refused when its time is not fresh, and what is obeyed once
# (a job, a job's news) when its seal was already seen.

HOUR_S = 3600.0
DAY_S = 86_400.0


async def test_an_hour_old_control_replayed_does_not_lift_an_open_breakers_hold(channel, start_worker, raw):
    """Issue 18: an hour-old sealed control message, replayed, lifted an open breaker's hold (limit 0 -> 2)."""
    hour_old = seal(KEY, control(age_s=HOUR_S))  # the engine's own bounds, with no breaker open, an hour ago
    await channel.set_control(control("memory"), ttl_s=30)
    worker = start_worker(concurrency=2)
    await channel.submit(job())

    async def holding() -> bool:
        return any(b.holding.startswith("breaker open at the engine") for b in await channel.workers())

    await eventually(holding, "the worker holding on the open breaker")
    await raw.set(channel.control_key, hour_old)  # no expiry: it stays until the engine writes again
    await asyncio.sleep(1.5)  # more than one turn of the worker's loop
    assert await channel.backlog() == 1 and await channel.pending() == 0  # still not taken
    assert worker.service.active == {}
    assert "stale" in worker.service.holding and "holding" in worker.service.holding


async def test_garbage_in_the_control_key_holds_rather_than_lifts(channel, start_worker, raw, open_channel):
    """A control that fails its seal is not "no engine": the worker holds until a verified one stands."""
    await open_channel(OTHER_KEY).set_control(control(), ttl_s=30)
    worker = start_worker()
    await channel.submit(j := job())
    await asyncio.sleep(1.2)
    assert await channel.backlog() == 1 and await channel.pending() == 0
    assert "not validly sealed" in worker.service.holding
    await channel.set_control(control(), ttl_s=30)  # the engine's own, fresh: work resumes
    [report] = await outcome(channel, j.job_id)
    assert report.kind is NewsKind.FAILED and "would build another key" in report.error


async def test_a_day_old_force_job_replayed_three_times_compiles_nothing(channel, start_worker, raw):
    """Issue 18: a day-old sealed `force` job XADDed 3 times started 3 compiles. Now each copy fails as stale
    (an engine still waiting for the job learns why, and queues it again) and none reaches the compile pool."""
    old = job(key=my_key(), force=True, age_s=DAY_S)
    sealed = seal(KEY, old)
    await channel.ensure_group()
    for _ in range(3):
        await raw.xadd(channel.jobs, {"m": sealed})
    worker = start_worker()
    assert await eventually(lambda: drained(channel), "all three copies acknowledged and deleted")
    reports = await reports_about(channel, old.job_id, wait_s=0.5)
    assert [r.kind for r in reports] == [NewsKind.FAILED] * 3
    assert all(re.match(r"stale: issued 864\d\d s ago \(limit 3600 s\)", r.error) for r in reports), reports
    assert worker.pool.pids() == [] and not any(s.startswith("compiling") for s in worker.said)
    assert worker.service.done == 0


async def test_a_fresh_job_replayed_is_judged_once(channel, start_worker, raw):
    """A copy of a job still inside its window is a replay: dropped without news (the original's engine must
    not see its job fail because of the copy)."""
    fresh = job()
    sealed = seal(KEY, fresh)
    await channel.ensure_group()
    await raw.xadd(channel.jobs, {"m": sealed})
    await raw.xadd(channel.jobs, {"m": sealed})
    worker = start_worker()
    assert await eventually(lambda: drained(channel), "both copies acknowledged and deleted")
    reports = await reports_about(channel, fresh.job_id, wait_s=0.5)
    assert [r.kind for r in reports] == [NewsKind.FAILED]  # judged once (the key is not this worker's)
    assert worker.service.failed == 1 and any("replayed" in s for s in worker.said)


async def test_a_redelivered_job_is_not_mistaken_for_a_replay(channel):
    """The same stream entry handed out again (a worker died on it) is one job, not a copy of it."""
    entry = await channel.submit(j := job())
    assert await channel.take("me", block_ms=100, claim_idle_s=0.2) == Delivery(entry, j, 1)
    await asyncio.sleep(0.3)
    assert await channel.take("me", block_ms=50, claim_idle_s=0.2) == Delivery(entry, j, 2)


async def test_stale_or_replayed_news_reads_as_none(channel, raw):
    j = job()
    await channel.publish(first := news(j, NewsKind.STARTED))
    [(news_id, got)] = await channel.news_after("0-0", block_ms=100)
    assert got == first
    copy = (await raw.xrange(channel.news, news_id, news_id))[0][1]
    await raw.xadd(channel.news, copy)  # the same sealed report again
    await channel.publish(news(j, NewsKind.COMPILED, age_s=2 * HOUR_S))  # a report from two hours ago
    await channel.publish(last := news(j, NewsKind.FAILED))
    assert [item for _id, item in await channel.news_after(news_id, block_ms=100)] == [None, None, last]
    assert channel.stale == 2


async def test_a_replayed_worker_heartbeat_is_not_listed(channel, raw, prefix):
    """A beat SET again with no expiry would list a worker that left long ago."""
    await raw.set(f"{prefix}.forge.worker.gone", seal(KEY, beat("gone", age_s=HOUR_S)))
    await channel.beat(live := beat("live"), ttl_s=30)
    assert await channel.workers() == [live]
    await raw.set(f"{prefix}.forge.worker.live", seal(KEY, beat("live", age_s=10)))  # an older beat of a live one
    assert await channel.workers() == []
    assert channel.stale == 3


@pytest.mark.parametrize("when", [float("nan"), float("inf")])
async def test_non_finite_times_are_refused_on_every_forge_message(channel, raw, prefix, when):
    """Finding 9 for the forge queue: a NaN time passes `age > limit`; every kind is refused instead."""
    import msgspec

    await channel.ensure_group()
    await raw.xadd(channel.jobs, {"m": seal(KEY, msgspec.structs.replace(job(), issued_ts=when))})
    delivery = await channel.take("me", block_ms=100, claim_idle_s=60)
    assert delivery is not None and delivery.refused is not None and "not a finite number" in str(delivery.refused)
    await raw.xadd(channel.news, {"m": seal(KEY, msgspec.structs.replace(news(job()), ts=when))})
    assert [item for _id, item in await channel.news_after("0-0", block_ms=100)] == [None]
    await raw.set(f"{prefix}.forge.worker.nan", seal(KEY, msgspec.structs.replace(beat("nan"), ts=when)))
    assert await channel.workers() == []
    await channel.set_control(msgspec.structs.replace(control(), ts=when), ttl_s=30)
    with pytest.raises(BoundsRefused, match="not a finite number"):
        await channel.control()


# ---------------------------------------------------------------------------------- the engine's watch


@dataclass
class Watch:
    said: list[tuple[Level, str]]
    seen: list[tuple[list[ForgeWorkerView], int]]  # each poll: the workers listed, the jobs awaiting one
    waiting: list[int]  # the jobs the engine has waiting for a worker (settable)
    task: asyncio.Task[None]

    def lines(self, level: Level | None = None) -> list[str]:
        return [text for lvl, text in self.said if level is None or lvl is level]


@pytest.fixture
async def watch(channel: ForgeChannel) -> AsyncIterator[Watch]:
    """The engine's ForgeCluster watching the channel's workers, with 7 jobs waiting and a 0.3 s wait."""
    said: list[tuple[Level, str]] = []
    seen: list[tuple[list[ForgeWorkerView], int]] = []
    waiting = [7]
    cluster = ForgeCluster(
        channel,
        "engine-run-1",
        lambda: (False, "", []),
        lambda views, awaiting: seen.append((views, awaiting)),
        lambda level, text: said.append((level, text)),
        waiting=lambda: waiting[0],
        no_worker_s=0.3,
    )
    w = Watch(said, seen, waiting, asyncio.create_task(cluster.watch_workers(period_s=0.05)))
    yield w
    w.task.cancel()
    await asyncio.gather(w.task, return_exceptions=True)


async def until(condition: Callable[[], Any], what: str) -> Any:
    async def check() -> Any:
        return condition()

    return await eventually(check, what)


async def test_jobs_waiting_with_no_worker_are_said_once_until_a_worker_comes(watch: Watch, channel) -> None:
    alone = "7 forge jobs have waited 0.3 s and no forge worker has announced itself"
    await until(lambda: any(alone in line for line in watch.lines(Level.WARNING)), "the warning")
    assert watch.seen[-1] == ([], 7)  # the snapshot gets the count too (Nissa's alert reads it)
    await asyncio.sleep(0.3)
    assert sum(alone in line for line in watch.lines()) == 1, watch.lines()
    await channel.beat(beat("w1"), ttl_s=30)
    await until(lambda: any("forge worker host:42 joined" in line for line in watch.lines()), "the worker")
    await until(lambda: any("have a worker again" in line for line in watch.lines(Level.INFO)), "all clear")


async def test_nothing_is_said_while_nothing_waits(watch: Watch) -> None:
    watch.waiting[0] = 0
    await asyncio.sleep(0.6)
    assert watch.lines() == [] and watch.seen and watch.seen[-1] == ([], 0)


async def test_a_worker_that_stops_tells_the_engine_why(watch: Watch, start_worker) -> None:
    worker = start_worker()
    await until(lambda: any("joined" in line for line in watch.lines()), "the worker announced")
    worker.stop.set()
    await asyncio.wait_for(worker.task, 10)
    left = await until(lambda: [line for line in watch.lines() if " left" in line], "the worker's departure")
    assert left == [f"forge worker {worker.service.name} left: stopped (0 done, 0 failed)"], left
