"""Redis Streams specifics, checked from outside with a second raw client (XPENDING, XRANGE), and the
failures only a server has: separate processes, foreign writers, lost groups, lost connections.

Buses made separately here stand for separate processes: they share nothing but Redis.
"""

from __future__ import annotations

import asyncio
import math
import socket

import pytest

from esper_tui.engine.bus import BusOptions, BusUnavailable, RedisStreamsBus, create_bus
from esper_tui.engine.bus.helpers import unpack_batch
from esper_tui.engine.codec import decode_command, decode_event, encode_msgpack
from esper_tui.engine.config import BusConfig
from esper_tui.engine.contracts import EpochCompleted, Recompile, Shutdown

pytestmark = pytest.mark.redis

FAST_RETRY = BusOptions(claim_idle_ms=50)
NO_RETRY = BusOptions(claim_idle_ms=60_000)


def epoch(n: int) -> EpochCompleted:
    return EpochCompleted(epoch=n, train_loss=1.0, val_loss=1.0, val_metric=0.5, samples_per_s=1.0, epoch_s=0.1)


async def pending(client, stream: str, group: str) -> list[dict]:
    return await client.xpending_range(stream, group, "-", "+", 100)


async def test_entries_are_msgpack_in_one_field(make_redis_bus, redis_client):
    bus = await make_redis_bus()
    event, command = epoch(1), Recompile(blueprint_id="mlp_block")
    await bus.publish_event(event)
    await bus.flush()
    await bus.publish_command(command)
    await bus.publish_command(Shutdown())
    [(_, fields)] = await redis_client.xrange(bus.streams.telemetry)
    assert fields == {b"m": encode_msgpack(event)}
    assert decode_event(fields[b"m"]) == event
    [(_, fields)] = await redis_client.xrange(bus.streams.normal)
    assert decode_command(fields[b"m"]) == command
    assert await redis_client.xlen(bus.streams.emergency) == 1


async def test_start_creates_streams_and_group_idempotently(make_redis_bus, redis_client):
    bus = await make_redis_bus()
    await bus.start()  # BUSYGROUP is not an error
    for stream in (bus.streams.telemetry, bus.streams.normal, bus.streams.emergency):
        [group] = await redis_client.xinfo_groups(stream)
        assert group["name"] == b"esper"


async def test_xack_only_after_the_handler_succeeds(make_redis_bus, redis_client, inbox, consuming, eventually):
    """The handler raises: XPENDING still shows the entry; the restarted worker (a new process) reads
    its own pending entries with id 0 and acknowledges it only then."""
    producer = await make_redis_bus()
    command = Recompile(blueprint_id="res_block")
    await producer.publish_command(command)
    worker = await make_redis_bus(options=NO_RETRY)
    failing = inbox(fail_times=1)
    async with consuming(worker.consume_commands("forge", "w1", failing)):
        await eventually(lambda: worker.metrics().handler_errors == 1)
    [entry] = await pending(redis_client, producer.streams.normal, "forge")
    assert (entry["consumer"], entry["times_delivered"]) == (b"w1", 1)
    assert worker.metrics().acked == 0

    restarted = await make_redis_bus(options=NO_RETRY)
    box = inbox()
    async with consuming(restarted.consume_commands("forge", "w1", box)):
        await eventually(lambda: restarted.metrics().acked == 1)
    assert box.items == [command]
    assert restarted.metrics().redelivered == 1
    assert await pending(redis_client, producer.streams.normal, "forge") == []


async def test_entries_of_a_dead_consumer_are_reclaimed(make_redis_bus, redis_client, inbox, consuming, eventually):
    """A consumer takes an entry and dies mid-handler; after claim_idle_ms another consumer of the
    group takes it over with XAUTOCLAIM."""
    producer = await make_redis_bus()
    event = epoch(4)
    await producer.publish_event(event)
    doomed = await make_redis_bus(options=NO_RETRY)
    stuck = inbox(gate=asyncio.Event())
    async with consuming(doomed.consume_events("ui", "doomed", stuck)):
        await stuck.until(lambda: len(stuck.attempts) == 1)
    [entry] = await pending(redis_client, producer.streams.telemetry, "ui")
    assert entry["consumer"] == b"doomed"

    survivor = await make_redis_bus(options=BusOptions(claim_idle_ms=100))
    box = inbox()
    async with consuming(survivor.consume_events("ui", "survivor", box)):
        await eventually(lambda: survivor.metrics().acked == 1)
    assert box.items == [event]
    assert survivor.metrics().redelivered == 1
    assert await pending(redis_client, producer.streams.telemetry, "ui") == []


async def test_dead_letter_entry_says_where_and_why(make_redis_bus, redis_client, inbox, consuming, eventually):
    bus = await make_redis_bus(options=FAST_RETRY, max_deliveries=2)
    command = Recompile(blueprint_id="poison")
    await bus.publish_command(command)
    async with consuming(bus.consume_commands("engine", "c1", inbox(fail_times=math.inf))):
        await eventually(lambda: bus.metrics().dead_lettered == 1)
    [(_, fields)] = await redis_client.xrange(bus.streams.deadletter)
    assert fields[b"m"] == encode_msgpack(command)
    assert fields[b"stream"] == bus.streams.normal.encode()
    assert (fields[b"group"], fields[b"consumer"], fields[b"deliveries"]) == (b"engine", b"c1", b"2")
    assert b"handler failed 2 times" in fields[b"reason"]
    assert await pending(redis_client, bus.streams.normal, "engine") == []


async def test_foreign_entries_are_dead_lettered(make_redis_bus, redis_client, inbox, consuming, eventually):
    """Another writer adds bytes that are not a contract Struct, or no payload field at all."""
    bus = await make_redis_bus()
    await redis_client.xadd(bus.streams.telemetry, {b"m": b"\x00 not msgpack"})
    await redis_client.xadd(bus.streams.telemetry, {b"other": b"field"})
    good = epoch(8)
    await bus.publish_event(good)
    box = inbox()
    async with consuming(bus.consume_events("ui", "c1", box)):
        await eventually(lambda: bus.metrics().acked == 1 and bus.metrics().dead_lettered == 2)
    assert box.attempts == [good]
    assert bus.metrics().decode_errors == 2
    assert await redis_client.xlen(bus.streams.deadletter) == 2


async def test_separate_processes_fan_out_and_share_work(make_redis_bus, inbox, consuming, eventually):
    producer = await make_redis_bus()
    w1, w2, ui = [await make_redis_bus() for _ in range(3)]
    sent = [Recompile(blueprint_id=f"bp{n}") for n in range(20)]
    first, second, dashboard = inbox(), inbox(), inbox()
    async with (
        consuming(w1.consume_commands("forge", "w1", first)),
        consuming(w2.consume_commands("forge", "w2", second)),
        consuming(ui.consume_commands("ui", "u1", dashboard)),
    ):
        for command in sent:
            await producer.publish_command(command)
        await eventually(lambda: w1.metrics().acked + w2.metrics().acked == 20)
        await eventually(lambda: ui.metrics().acked == 20)
    forge = first.attempts + second.attempts
    assert sorted(c.blueprint_id for c in forge) == sorted(c.blueprint_id for c in sent)
    assert dashboard.items == sent


@pytest.mark.parametrize("breakage", ["destroy-group", "delete-stream", "lose-every-key"])
async def test_consumer_recreates_a_lost_group(
    make_redis_bus, redis_client, inbox, consuming, eventually, prefix, breakage
):
    """NOGROUP: Redis restarted without persistence (every key gone), or someone deleted the stream
    or destroyed the group. The consumer recreates the group and carries on."""
    bus = await make_redis_bus(options=BusOptions(claim_idle_ms=200))
    box = inbox()
    async with consuming(bus.consume_commands("engine", "c1", box)):
        await bus.publish_command(Recompile(blueprint_id="before"))
        await eventually(lambda: bus.metrics().acked == 1)
        if breakage == "destroy-group":
            await redis_client.xgroup_destroy(bus.streams.normal, "engine")
        elif breakage == "delete-stream":
            await redis_client.delete(bus.streams.normal)
        else:
            await redis_client.delete(*[key async for key in redis_client.scan_iter(match=f"{prefix}.*")])
        await bus.publish_command(Recompile(blueprint_id="after"))
        await eventually(lambda: bus.metrics().acked == 2)
    assert [c.blueprint_id for c in box.items] == ["before", "after"]
    groups = await redis_client.xinfo_groups(bus.streams.normal)
    assert b"engine" in [group["name"] for group in groups]


async def test_reconnects_after_losing_the_connection(make_redis_bus, redis_proxy, inbox, consuming, eventually):
    """The link to Redis is cut (through a proxy) and restored: meanwhile telemetry is dropped and
    counted, commands raise BusUnavailable, metrics say disconnected; afterwards delivery resumes."""
    producer = await make_redis_bus()
    remote = await make_redis_bus(url=redis_proxy.url, options=BusOptions(claim_idle_ms=200))
    box = inbox()
    async with consuming(remote.consume_events("ui", "c1", box)):
        await producer.publish_event(epoch(1))
        await eventually(lambda: remote.metrics().acked == 1)

        await redis_proxy.cut()
        await eventually(lambda: not remote.metrics().connected)
        await remote.publish_event(epoch(2))
        await remote.flush()
        assert remote.metrics().dropped == 1
        with pytest.raises(BusUnavailable):
            await remote.publish_command(Recompile(blueprint_id="lost"))

        await redis_proxy.start()
        await producer.publish_event(epoch(3))
        await eventually(lambda: remote.metrics().acked == 2)
        assert remote.metrics().connected
    assert [e.epoch for e in box.items] == [1, 3]


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_start_fails_clearly_when_redis_is_unreachable(prefix):
    port = unused_port()
    bus = RedisStreamsBus(BusConfig(stream_prefix=prefix), f"redis://127.0.0.1:{port}/0")
    with pytest.raises(BusUnavailable, match=f"redis://127.0.0.1:{port}/0"):
        await bus.start()
    assert bus.metrics().connected is False


def test_name_never_shows_the_password():
    assert create_bus(BusConfig(), "redis://user:s3cret@db.example:6380/2").name == "redis://db.example:6380/2"
    assert create_bus(BusConfig(redis_url="rediss://:s3cret@db.example")).name == "rediss://db.example:6379/0"
    assert create_bus(BusConfig(), "unix:///run/redis.sock?db=3").name == "unix:///run/redis.sock?db=3"


async def test_streams_are_trimmed_to_about_maxlen(make_redis_bus, redis_client):
    """maxlen counts messages, however the telemetry was batched: here 10 events per entry."""
    bus = await make_redis_bus(maxlen=100)
    for first in range(0, 1000, 10):
        for n in range(first, first + 10):
            await bus.publish_event(epoch(n))
        await bus.flush()
    assert bus.metrics().published == 1000
    entries = await redis_client.xrange(bus.streams.telemetry)
    kept = [e.epoch for _, fields in entries for e in map(decode_event, unpack_batch(fields[b"b"]))]
    assert 100 <= len(kept) < 1000  # MAXLEN ~ trims whole nodes
    assert kept == list(range(1000 - len(kept), 1000))


async def test_a_control_room_steers_one_engine_without_touching_its_groups(
    make_redis_bus, redis_client, inbox, consuming, eventually, prefix
):
    """A control room (no run id, create_groups=False) sends a command to one engine of two sharing
    the Redis; it creates no group and no stream of its own on the engines' keys."""
    room = await make_redis_bus(start=False)
    await room.start(create_groups=False)
    assert await redis_client.keys(f"{prefix}.*") == []
    first, second = await make_redis_bus(run_id="r1"), await make_redis_bus(run_id="r2")
    box1, box2 = inbox(), inbox()
    async with (
        consuming(first.consume_commands("engine", "e1", box1)),
        consuming(second.consume_commands("engine", "e2", box2)),
    ):
        await room.publish_command(Recompile(blueprint_id="for r2", target="r2"))
        await eventually(lambda: second.metrics().acked == 1)
    assert [c.blueprint_id for c in box2.items] == ["for r2"]
    assert box1.attempts == []
    groups = await redis_client.xinfo_groups(f"{prefix}.normal.r2")
    assert sorted(g["name"] for g in groups) == [b"engine", b"esper"]  # the engine's own, nothing from the room


async def test_close_writes_buffered_telemetry(make_redis_bus, redis_client):
    bus = await make_redis_bus()
    stream = bus.streams.telemetry
    sent = [epoch(n) for n in range(50)]
    for event in sent:
        await bus.publish_event(event)
    await bus.close()
    entries = await redis_client.xrange(stream)
    written = [
        decode_event(item)
        for _, fields in entries
        for item in (unpack_batch(fields[b"b"]) if b"b" in fields else [fields[b"m"]])
    ]
    assert written == sent


async def test_one_xack_per_read(make_private_bus, private_redis, inbox, consuming, eventually, publish_apart):
    """Consumers acknowledge a whole read in one XACK, not one per entry (INFO commandstats of a
    server of this test's own)."""
    bus = await make_private_bus(options=BusOptions(batch_size=100))
    await publish_apart(bus, [epoch(n) for n in range(300)])  # 300 entries
    box = inbox()
    async with consuming(bus.consume_events("ui", "c1", box)):
        await eventually(lambda: bus.metrics().acked == 300)
    stats = private_redis.client().info("commandstats")
    assert 3 <= stats["cmdstat_xack"]["calls"] <= 10
    assert [e.epoch for e in box.items] == list(range(300))


def test_hiredis_parses_replies():
    from redis.utils import HIREDIS_AVAILABLE

    assert HIREDIS_AVAILABLE, "hiredis is a dependency: without it reply parsing is pure Python"
