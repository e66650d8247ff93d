"""The in-process bus specifics (backend choice, lifecycle, bounded memory, no threads) and the
shared helpers of base.py (dedupe window, backoff) that need no backend at all."""

from __future__ import annotations

import asyncio
import threading

import msgspec
import pytest

from esper_tui.engine.bus import BusError, BusOptions, EmbeddedBus, RedisStreamsBus, create_bus
from esper_tui.engine.bus.helpers import Backoff, Outbox, RecentIds, Retention, Verdict, pack_batch, unpack_batch
from esper_tui.engine.config import BusConfig
from esper_tui.engine.contracts import EpochCompleted


def epoch(n: int) -> EpochCompleted:
    return EpochCompleted(epoch=n, train_loss=1.0, val_loss=1.0, val_metric=0.5, samples_per_s=1.0, epoch_s=0.1)


def test_create_bus_picks_the_backend():
    redis_config = BusConfig(redis_url="redis://db.example:6379/0")
    assert isinstance(create_bus(BusConfig()), EmbeddedBus)
    assert isinstance(create_bus(redis_config), RedisStreamsBus)
    assert isinstance(create_bus(BusConfig(), redis_url="redis://db.example:6379/0"), RedisStreamsBus)
    assert isinstance(create_bus(redis_config, redis_url=""), EmbeddedBus)  # an explicit empty URL wins
    assert create_bus(BusConfig()).name == "embedded"
    assert create_bus(BusConfig(), run_id="r9").streams.emergency == "oona.emergency.r9"
    assert create_bus(redis_config, run_id="r9").streams.frames == "oona.frames.r9"


async def test_bus_must_be_started_and_is_unusable_after_close():
    bus = EmbeddedBus(BusConfig())
    with pytest.raises(BusError, match="start"):
        await bus.publish_event(epoch(1))
    await bus.start()
    await bus.start()  # idempotent
    assert bus.metrics().connected
    await bus.close()
    with pytest.raises(BusError, match="closed"):
        await bus.publish_event(epoch(1))
    assert not bus.metrics().connected


async def test_metrics_are_a_copy(make_embedded_bus):
    bus = await make_embedded_bus()
    snapshot = bus.metrics()
    await bus.publish_event(epoch(1))
    await bus.flush()
    bus._metrics.server_errors["oom"] = 1
    assert (snapshot.published, bus.metrics().published) == (0, 1)
    assert (snapshot.server_errors, bus.metrics().server_errors) == ({}, {"oom": 1})


async def test_streams_are_bounded_by_maxlen(make_embedded_bus, inbox, consuming, eventually):
    """Memory stays bounded: about the last maxlen messages are kept, however they were batched
    (here 5 events per entry: 2 entries), and a group that attaches late reads what is left."""
    bus = await make_embedded_bus(maxlen=10, drop_threshold=1_000)
    for first in range(0, 50, 5):
        for n in range(first, first + 5):
            await bus.publish_event(epoch(n))
        await bus.flush()
    assert len(bus._streams[bus.streams.telemetry].entries) == 2
    box = inbox()
    async with consuming(bus.consume_events("late", "c1", box)):
        await eventually(lambda: bus.metrics().acked == 10)
    assert [e.epoch for e in box.items] == list(range(40, 50))


async def test_pending_entry_trimmed_away_is_let_go(make_embedded_bus, inbox, consuming, eventually, publish_apart):
    """An entry left pending can be trimmed before its retry: it is acknowledged, not retried, and
    the consumer carries on from the oldest entry still kept."""
    bus = await make_embedded_bus(maxlen=3, drop_threshold=1_000, options=BusOptions(claim_idle_ms=60_000))
    failing = inbox(fail_times=1)
    async with consuming(bus.consume_events("ui", "c1", failing)):
        await bus.publish_event(epoch(0))
        await eventually(lambda: bus.metrics().handler_errors == 1)
    await publish_apart(bus, [epoch(n) for n in range(1, 6)])
    box = inbox()
    async with consuming(bus.consume_events("ui", "c1", box)):
        await eventually(lambda: bus.metrics().acked == 3)
    assert [e.epoch for e in box.items] == [3, 4, 5]
    assert await bus.backlog(bus.streams.telemetry, "ui") == 0


async def test_embedded_bus_starts_no_threads(make_embedded_bus, inbox, consuming, eventually):
    threads = threading.active_count()
    bus = await make_embedded_bus()
    async with consuming(bus.consume_events("ui", "c1", inbox())):
        await bus.publish_event(epoch(1))
        await eventually(lambda: bus.metrics().acked == 1)
        assert threading.active_count() == threads


# ----------------------------------------------------------------------------- base.py helpers


def test_recent_ids_remember_a_bounded_window():
    ids = RecentIds(capacity=2)
    for key in ("a", "b", "c"):
        assert ids.begin(key) is Verdict.NEW
        ids.finish(key)
    assert ids.begin("c") is Verdict.DUPLICATE
    assert ids.begin("a") is Verdict.NEW  # fell out of the window
    assert ids.begin("a") is Verdict.BUSY  # in flight: neither handled twice nor acknowledged
    ids.abandon("a")  # the handler failed: the next delivery may try again
    assert ids.begin("a") is Verdict.NEW


def test_backoff_grows_to_a_cap_and_resets():
    backoff = Backoff(base=0.1, cap=1.0)
    assert [backoff.failed() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert not backoff.ready()
    backoff.succeeded()
    assert backoff.ready()
    assert backoff.failed() == 0.1


def test_batches_pack_messages_opaquely():
    for n in (0, 1, 15, 16, 70_000):
        items = [bytes([i % 256]) * (i % 7) for i in range(n)]
        assert unpack_batch(pack_batch(items)) == items
    with pytest.raises(msgspec.DecodeError):
        unpack_batch(b"\xc1")


def test_retention_keeps_about_maxlen_messages_however_batched():
    keep = Retention(limit=10)
    assert [keep.entries_with(1) for _ in range(9)] == [10] * 9  # not yet limit messages: limit entries
    assert keep.entries_with(1) == 10
    assert keep.entries_with(5) == 6  # 5 + 5 singles
    assert keep.entries_with(20) == 1  # one entry holds more than the limit
    keep.failed()  # that one was never added: back to 5 + 5 singles
    assert keep.mean_size == 10 / 6
    assert keep.entries_with(3) == 4  # 1 + 1 + 5 + 3 (sum 10)


async def test_outbox_takes_in_order_within_limits_and_settles():
    box = Outbox(capacity=3)
    for data in (b"aa", b"bbb", b"c"):
        box.put(data)
    assert box.full
    assert box.take(max_items=10, max_bytes=4) == [b"aa"]  # b"bbb" would pass 4 bytes
    assert box.take(max_items=1, max_bytes=100) == [b"bbb"]
    assert box.take(max_items=10, max_bytes=0) == [b"c"]  # always at least one
    settle = asyncio.create_task(box.settle())
    await asyncio.sleep(0)
    assert not settle.done()
    await box.settled(2)
    await asyncio.sleep(0)
    assert not settle.done()
    await box.settled(1)
    await asyncio.wait_for(settle, 10)


async def test_telemetry_keeps_drop_threshold_events_under_a_long_stream(make_embedded_bus):
    """Issue 19: however long the run, the telemetry stream holds about drop_threshold events (all a live consumer
    can be behind), not maxlen; batches of every size from 1 to 20 events, 200 times the bound in all."""
    bus = await make_embedded_bus(drop_threshold=50, maxlen=5_000)
    stream = bus._streams[bus.streams.telemetry]
    published = 0
    for size in [1 + n % 20 for n in range(1_000)]:
        for _ in range(size):
            await bus.publish_event(epoch(published))
            published += 1
        await bus.flush()
        held = sum(len(unpack_batch(e[b"b"])) if b"b" in e else 1 for e in stream.entries)
        assert 50 <= held < 50 + 20 or held == published  # the newest 50, with the entry that crossed the bound
        assert len(bus._retention._sizes) == len(stream.entries)  # the retention bookkeeping is bounded alike
    assert published == 10_500 and bus.metrics().dropped == 0
