"""The bus contract: every test here runs over the embedded bus and over real Redis.

A component tested against one backend must behave the same against the other, so the delivery
semantics (fan-out, competition, at-least-once, dead-letter, idempotency, backpressure) are pinned
down once, here, for both.
"""

from __future__ import annotations

import asyncio
import math

import msgspec
import pytest

from esper_tui.engine.bus import BusBackpressure, BusOptions, StreamNames
from esper_tui.engine.bus.auth import CommandRejected
from esper_tui.engine.bus.helpers import pack_batch
from esper_tui.engine.bus.types import BATCH
from esper_tui.engine.codec import decode_command, encode_msgpack
from esper_tui.engine.contracts import (
    AnyCommand,
    EpochCompleted,
    LogLine,
    PauseTraining,
    Recompile,
    SetConservativeMode,
    Shutdown,
)
from esper_tui.engine.vocabulary import Level

FAST_RETRY = BusOptions(claim_idle_ms=50)  # failed entries come back after 50 ms
NO_RETRY = BusOptions(claim_idle_ms=60_000)  # only a restart (pending replay) brings them back


def epoch(n: int) -> EpochCompleted:
    return EpochCompleted(
        epoch=n, train_loss=1.0 / (n + 1), val_loss=1.1, val_metric=0.5, samples_per_s=400.0, epoch_s=0.1
    )


async def test_event_round_trip(make_bus, inbox, consuming, eventually):
    bus = await make_bus()
    box = inbox()
    sent = epoch(3)
    async with consuming(bus.consume_events("ui", "c1", box)):
        await bus.publish_event(sent)
        await eventually(lambda: bus.metrics().acked == 1)
    assert box.items == [sent]
    m = bus.metrics()
    assert (m.published, m.delivered, m.acked, m.connected) == (1, 1, 1, True)
    assert await bus.backlog(bus.streams.telemetry, "ui") == 0


async def test_command_round_trip(make_bus, inbox, consuming, eventually):
    bus = await make_bus()
    box = inbox()
    sent = Recompile(blueprint_id="mlp_block")
    async with consuming(bus.consume_commands("engine", "c1", box)):
        await bus.publish_command(sent)
        await eventually(lambda: bus.metrics().acked == 1)
    assert box.items == [sent]
    assert await bus.backlog(bus.streams.normal, "engine") == 0


async def test_every_group_gets_every_message(make_bus, inbox, consuming):
    bus = await make_bus()
    ui, recorder = inbox(), inbox()
    sent = [epoch(n) for n in range(5)]
    async with (
        consuming(bus.consume_events("ui", "c1", ui)),
        consuming(bus.consume_events("recorder", "c1", recorder)),
    ):
        for event in sent:
            await bus.publish_event(event)
        await ui.until(lambda: len(ui.items) == 5)
        await recorder.until(lambda: len(recorder.items) == 5)
    assert ui.items == sent
    assert recorder.items == sent


async def test_consumers_in_one_group_compete(make_bus, inbox, consuming, eventually, publish_apart):
    """Two consumers of one group split the messages: each holds a different one at the same time
    (the gate opens only then), and together they handle all of them exactly once."""
    bus = await make_bus(options=BusOptions(batch_size=1))
    gate = asyncio.Event()
    first, second = inbox(gate=gate), inbox(gate=gate)
    sent = [epoch(n) for n in range(10)]
    await publish_apart(bus, sent)
    async with (
        consuming(bus.consume_events("forge", "w1", first)),
        consuming(bus.consume_events("forge", "w2", second)),
    ):
        await first.until(lambda: len(first.attempts) >= 1)
        await second.until(lambda: len(second.attempts) >= 1)
        gate.set()
        await eventually(lambda: bus.metrics().acked == 10)
    handled = first.items + second.items
    assert first.items and second.items
    assert sorted(e.epoch for e in handled) == list(range(10))
    assert len(first.attempts) + len(second.attempts) == 10


async def test_emergency_commands_are_handled_first(make_bus, inbox, consuming):
    bus = await make_bus()
    box = inbox()
    for n in range(3):
        await bus.publish_command(Recompile(blueprint_id=f"bp{n}"))
    await bus.publish_command(PauseTraining(paused=True))
    await bus.publish_command(Shutdown(reason="test"))
    await bus.publish_command(SetConservativeMode(active=True))
    assert await bus.backlog(bus.streams.emergency, bus.config.group) == 2
    async with consuming(bus.consume_commands("engine", "c1", box)):
        await box.until(lambda: len(box.items) == 6)
    kinds = [type(c).__name__ for c in box.items]
    assert kinds == [
        "Shutdown",
        "SetConservativeMode",
        "Recompile",
        "Recompile",
        "Recompile",
        "PauseTraining",
    ]


async def test_failed_handler_is_retried_until_it_succeeds(make_bus, inbox, consuming, eventually):
    bus = await make_bus(options=FAST_RETRY)
    box = inbox(fail_times=2)
    sent = epoch(1)
    async with consuming(bus.consume_events("ui", "c1", box)):
        await bus.publish_event(sent)
        await eventually(lambda: bus.metrics().acked == 1)
    assert box.items == [sent]
    assert len(box.attempts) == 3
    m = bus.metrics()
    assert (m.handler_errors, m.redelivered, m.acked, m.dead_lettered) == (2, 2, 1, 0)
    assert await bus.backlog(bus.streams.telemetry, "ui") == 0


async def test_unacked_message_is_replayed_after_restart(make_bus, inbox, consuming, eventually):
    """A handler that raised leaves the entry pending; the restarted consumer reads its own pending
    entries (id 0) before new ones."""
    bus = await make_bus(options=NO_RETRY)
    box = inbox(fail_times=1)
    sent = epoch(7)
    async with consuming(bus.consume_events("ui", "c1", box)):
        await bus.publish_event(sent)
        await box.until(lambda: len(box.attempts) == 1)
    assert box.items == []
    assert await bus.backlog(bus.streams.telemetry, "ui") == 1  # pending, not acknowledged
    async with consuming(bus.consume_events("ui", "c1", box)):
        await eventually(lambda: bus.metrics().acked == 1)
    assert box.items == [sent]
    assert bus.metrics().redelivered == 1
    assert await bus.backlog(bus.streams.telemetry, "ui") == 0


async def test_cancelled_handler_leaves_its_message_pending(make_bus, inbox, consuming, eventually):
    bus = await make_bus(options=NO_RETRY)
    stuck = inbox(gate=asyncio.Event())  # never opens
    sent = Recompile(blueprint_id="res_block")
    async with consuming(bus.consume_commands("engine", "c1", stuck)):
        await bus.publish_command(sent)
        await stuck.until(lambda: len(stuck.attempts) == 1)
    assert await bus.backlog(bus.streams.normal, "engine") == 1
    assert bus.metrics().acked == 0
    box = inbox()
    async with consuming(bus.consume_commands("engine", "c1", box)):
        await eventually(lambda: bus.metrics().acked == 1)
    assert box.items == [sent]
    assert await bus.backlog(bus.streams.normal, "engine") == 0


async def test_message_dead_lettered_after_max_deliveries(make_bus, inbox, consuming, eventually):
    bus = await make_bus(options=FAST_RETRY, max_deliveries=3)
    box = inbox(fail_times=math.inf)
    poison, good = epoch(1), epoch(2)
    async with consuming(bus.consume_events("ui", "c1", box)):
        await bus.publish_event(poison)
        await eventually(lambda: bus.metrics().dead_lettered == 1)
        box.fail_times = 0
        await bus.publish_event(good)  # the consumer is still alive
        await eventually(lambda: bus.metrics().acked == 1)
    assert box.attempts == [poison, poison, poison, good]
    [letter] = await bus.dead_letters()
    assert letter.stream == bus.streams.telemetry
    assert (letter.group, letter.consumer, letter.deliveries) == ("ui", "c1", 3)
    assert "handler failed 3 times" in letter.reason
    assert letter.data == encode_msgpack(poison)
    assert await bus.backlog(bus.streams.telemetry, "ui") == 0


async def test_undecodable_entries_go_to_dead_letter(make_bus, inbox, consuming, eventually):
    bus = await make_bus()
    box = inbox()
    stream = bus.streams.telemetry
    newer_schema = encode_msgpack(msgspec.structs.replace(epoch(1), schema_version=99))
    for data in (b"\xc1 not msgpack", newer_schema, encode_msgpack(Recompile(blueprint_id="x"))):
        await bus.add_entry(stream, {b"m": data}, maxlen=1000)
    good = LogLine(level=Level.INFO, message="still alive")
    await bus.publish_event(good)
    async with consuming(bus.consume_events("ui", "c1", box)):
        await eventually(lambda: bus.metrics().acked == 1 and bus.metrics().dead_lettered == 3)
    assert box.attempts == [good]
    m = bus.metrics()
    assert (m.decode_errors, m.delivered) == (3, 1)
    letters = await bus.dead_letters()
    assert all(letter.reason.startswith("decode error") for letter in letters)
    assert "schema version 99" in letters[1].reason
    assert await bus.backlog(stream, "ui") == 0


async def test_duplicate_entries_are_handled_once(make_bus, inbox, consuming, eventually):
    """A producer retry can store an event twice: the group handles it once and acks both. A command
    repeated in a new entry still reaches the handler: the engine's replay cache, not the bus, judges it
    (a replay must be rejected and shown, never skipped in silence)."""
    bus = await make_bus()
    box = inbox()
    sent = epoch(5)
    await bus.publish_event(sent)
    await bus.publish_event(sent)
    await bus.publish_command(Recompile(blueprint_id="a", command_id="c-1"))
    await bus.publish_command(Recompile(blueprint_id="a", command_id="c-1"))
    commands = inbox()
    async with (
        consuming(bus.consume_events("ui", "c1", box)),
        consuming(bus.consume_commands("engine", "c1", commands)),
    ):
        await eventually(lambda: bus.metrics().duplicates_skipped == 1 and bus.metrics().acked == 3)
    assert box.attempts == [sent]
    assert [c.command_id for c in commands.attempts] == ["c-1", "c-1"]
    assert await bus.backlog(bus.streams.telemetry, "ui") == 0
    assert await bus.backlog(bus.streams.normal, "engine") == 0


async def test_backpressure_reroutes_commands_and_drops_telemetry(
    make_bus, inbox, consuming, eventually, publish_apart
):
    """Depth is the unhandled backlog of the slowest live group. Here the consumers are live but stuck
    in their first handler call, so everything published after that piles up."""
    bus = await make_bus(emergency_threshold=2, drop_threshold=4, options=BusOptions(depth_refresh_s=0))
    gate = asyncio.Event()
    events, commands = inbox(gate=gate), inbox(gate=gate)
    async with (
        consuming(bus.consume_events("ui", "c1", events)),
        consuming(bus.consume_commands("engine", "c1", commands)),
    ):
        await publish_apart(bus, [epoch(0)])
        await bus.publish_command(Recompile(blueprint_id="bp0"))
        await events.until(lambda: len(events.attempts) == 1)
        await commands.until(lambda: len(commands.attempts) == 1)

        # depth 1..4 still fits, then telemetry is dropped
        await publish_apart(bus, [epoch(n) for n in range(1, 7)])
        assert (bus.metrics().published, bus.metrics().dropped) == (6, 2)

        for n in range(1, 8):  # 2 more fit on normal, the next 5 are rerouted to emergency
            await bus.publish_command(Recompile(blueprint_id=f"bp{n}"))
        assert bus.metrics().rerouted == 5
        with pytest.raises(BusBackpressure, match="emergency"):
            await bus.publish_command(Recompile(blueprint_id="one too many"))
        with pytest.raises(BusBackpressure):
            await bus.publish_command(Shutdown())
        assert await bus.backlog(bus.streams.telemetry) == 5
        assert await bus.backlog(bus.streams.normal) == 3
        assert await bus.backlog(bus.streams.emergency) == 5

        # Once the groups catch up, traffic flows normally again.
        gate.set()
        await eventually(lambda: bus.metrics().acked == 13)
        await publish_apart(bus, [epoch(99)])
        await bus.publish_command(Recompile(blueprint_id="after"))
        await eventually(lambda: bus.metrics().acked == 15)
    assert [c.blueprint_id for c in commands.items[-1:]] == ["after"]
    m = bus.metrics()
    assert (m.published, m.dropped, m.rerouted) == (15, 2, 5)


async def test_groups_without_live_consumers_do_not_hold_back_publishers(
    make_bus, inbox, consuming, eventually, publish_apart
):
    """The configured group that start() creates but nobody reads, and a group whose consumer went
    away (idle past live_window_s), leave publishers alone; the stream keeps drop_threshold events, all a live
    consumer can be behind (Redis trims whole nodes, so it may keep more: here all 5)."""
    bus = await make_bus(drop_threshold=2, options=BusOptions(depth_refresh_s=0, live_window_s=1.0))
    await publish_apart(bus, [epoch(n) for n in range(5)])
    assert bus.metrics().dropped == 0
    assert 2 <= await bus.backlog(bus.streams.telemetry, bus.config.group) <= 5

    stuck = inbox(gate=asyncio.Event())
    async with consuming(bus.consume_events("control-room", "c1", stuck)):
        await stuck.until(lambda: len(stuck.attempts) == 1)
        assert await bus.backlog(bus.streams.telemetry) >= 2
        await publish_apart(bus, [epoch(5), epoch(6)])
        dropped = bus.metrics().dropped
        assert dropped >= 1  # a live consumer more than drop_threshold behind holds publishers back

    async def consumer_presumed_gone() -> bool:
        return await bus.backlog(bus.streams.telemetry) == 0

    await eventually(consumer_presumed_gone)
    await publish_apart(bus, [epoch(7)])
    assert bus.metrics().dropped == dropped


async def test_close_ends_running_consumers(make_bus, inbox):
    bus = await make_bus(options=BusOptions(claim_idle_ms=200))  # reads block for 100 ms at most
    box = inbox()
    task = asyncio.create_task(bus.consume_events("ui", "c1", box))
    await bus.publish_event(epoch(1))
    await box.until(lambda: len(box.items) == 1)  # the consumer is in its loop, blocked on a read
    await bus.close()
    await asyncio.wait_for(task, 10)
    assert bus.metrics().connected is False


# ----------------------------------------------------------------------------- batched telemetry


async def test_telemetry_is_batched_and_arrives_in_order(make_bus, inbox, consuming, eventually):
    """Events published back to back share stream entries; consumers still see each one, in order."""
    bus = await make_bus()
    box = inbox()
    sent = [epoch(n) for n in range(500)]
    for event in sent:
        await bus.publish_event(event)
    await bus.flush()
    assert bus.metrics().published == 500
    assert len(await bus.tail(bus.streams.telemetry, 1000)) < 500
    async with consuming(bus.consume_events("ui", "c1", box)):
        await eventually(lambda: bus.metrics().acked == 500)
    assert box.items == sent
    assert await bus.backlog(bus.streams.telemetry, "ui") == 0


async def test_bad_event_in_a_batch_is_dead_lettered_alone(make_bus, inbox, consuming, eventually):
    bus = await make_bus()
    box = inbox()
    first, last = epoch(1), epoch(2)
    newer_schema = encode_msgpack(msgspec.structs.replace(epoch(3), schema_version=99))
    batch = pack_batch([encode_msgpack(first), b"\xc1", newer_schema, encode_msgpack(last)])
    await bus.add_entry(bus.streams.telemetry, {BATCH: batch}, maxlen=1000)
    async with consuming(bus.consume_events("ui", "c1", box)):
        await eventually(lambda: bus.metrics().acked == 2 and bus.metrics().dead_lettered == 2)
    assert box.items == [first, last]
    letters = await bus.dead_letters()
    assert [(letter.index, letter.data) for letter in letters] == [(1, b"\xc1"), (2, newer_schema)]
    assert all(letter.reason.startswith("decode error") for letter in letters)
    assert [note.reason for note in bus.recent_dead_letters()] == [letter.reason for letter in letters]
    assert await bus.backlog(bus.streams.telemetry, "ui") == 0


async def test_failed_event_in_a_batch_is_retried_alone(make_bus, consuming, eventually):
    """The entry waits for its one failed event; on redelivery the handled ones are skipped."""
    bus = await make_bus(options=FAST_RETRY)
    seen: list[int] = []
    failures = [2]

    async def handler(event: EpochCompleted) -> None:
        if event.epoch in failures:
            failures.remove(event.epoch)
            raise RuntimeError("failed on purpose")
        seen.append(event.epoch)

    batch = pack_batch([encode_msgpack(epoch(n)) for n in (1, 2, 3)])
    await bus.add_entry(bus.streams.telemetry, {BATCH: batch}, maxlen=1000)
    async with consuming(bus.consume_events("ui", "c1", handler)):
        await eventually(lambda: bus.metrics().acked == 3)
        await eventually(lambda: bus.metrics().duplicates_skipped == 2)
    assert seen == [1, 3, 2]
    assert bus.metrics().handler_errors == 1
    assert await bus.backlog(bus.streams.telemetry, "ui") == 0


async def test_batch_entries_are_refused_on_command_streams(make_bus, inbox, consuming, eventually):
    """Commands are signed and verified one by one: a batch on a command stream is dead-lettered whole."""
    bus = await make_bus()
    box = inbox()
    batch = pack_batch([encode_msgpack(Recompile(blueprint_id="a")), encode_msgpack(Recompile(blueprint_id="b"))])
    await bus.add_entry(bus.streams.normal, {BATCH: batch}, maxlen=1000)
    async with consuming(bus.consume_commands("engine", "c1", box)):
        await eventually(lambda: bus.metrics().dead_lettered == 1)
    assert box.attempts == []
    [letter] = await bus.dead_letters()
    assert "batch entries are not accepted" in letter.reason
    assert await bus.backlog(bus.streams.normal, "engine") == 0


async def test_full_outbox_drops_and_counts(make_bus):
    bus = await make_bus(options=BusOptions(publish_buffer=5, depth_refresh_s=60))
    for n in range(10):  # back to back, one backlog reading: the flusher gets no turn in between
        await bus.publish_event(epoch(n))
    assert bus.metrics().dropped == 5
    await bus.flush()
    assert bus.metrics().published == 5


# ----------------------------------------------------------------------------- signed control


async def test_rejected_command_is_dead_lettered_at_once(make_bus, inbox, consuming, eventually):
    """A handler raising CommandRejected: no retries, the reason is kept, counted and listed."""
    bus = await make_bus(options=FAST_RETRY)
    attempts: list[str] = []

    async def handler(command: Recompile) -> None:
        attempts.append(command.blueprint_id)
        if command.blueprint_id == "forged":
            raise CommandRejected("bad signature")

    async with consuming(bus.consume_commands("engine", "c1", handler)):
        await bus.publish_command(Recompile(blueprint_id="forged"))
        await bus.publish_command(Recompile(blueprint_id="genuine"))
        await eventually(lambda: bus.metrics().dead_lettered == 1 and bus.metrics().acked == 1)
    assert attempts == ["forged", "genuine"]
    m = bus.metrics()
    assert (m.rejected, m.handler_errors, m.dead_lettered) == (1, 0, 1)
    [letter] = await bus.dead_letters()
    assert (letter.reason, letter.deliveries, letter.stream) == ("rejected: bad signature", 1, bus.streams.normal)
    [note] = bus.recent_rejections()
    assert (note.reason, note.stream) == ("rejected: bad signature", bus.streams.normal)
    assert note.ts > 0
    assert bus.recent_dead_letters() == [note]
    assert await bus.backlog(bus.streams.normal, "engine") == 0


async def test_rejected_copy_does_not_shadow_the_genuine_command(make_bus, consuming, eventually):
    """A forged command that borrows a genuine command's id is rejected, and the genuine one (same
    id, handled after it) is still obeyed: a rejection never marks an id as handled."""
    bus = await make_bus()
    obeyed: list[str] = []

    async def handler(command: AnyCommand) -> None:
        if command.signature == "forged":
            raise CommandRejected("bad signature")
        obeyed.append(command.command_id)

    await bus.publish_command(Recompile(blueprint_id="a", command_id="c-7"))
    await bus.publish_command(Shutdown(command_id="c-7", signature="forged"))  # emergency: read first
    async with consuming(bus.consume_commands("engine", "c1", handler)):
        await eventually(lambda: bus.metrics().rejected == 1 and bus.metrics().acked == 1)
    assert obeyed == ["c-7"]


# ----------------------------------------------------------------------------- one engine among many


def test_streams_per_engine():
    shared = StreamNames.for_prefix("oona")
    assert (shared.telemetry, shared.emergency, shared.frames) == ("oona.telemetry", "oona.emergency", "oona.frames")
    own = StreamNames.for_prefix("oona", "3f2a9c")
    assert (own.telemetry, own.normal, own.emergency, own.frames, own.deadletter) == (
        "oona.telemetry.3f2a9c",
        "oona.normal.3f2a9c",
        "oona.emergency.3f2a9c",
        "oona.frames.3f2a9c",
        "oona.deadletter",
    )


async def test_commands_go_to_their_target_engine(make_bus, prefix):
    bus = await make_bus(run_id="r1")
    assert bus.streams == StreamNames.for_prefix(prefix, "r1")
    other = StreamNames.for_prefix(prefix, "r2")
    await bus.publish_command(Recompile(blueprint_id="mine"))
    await bus.publish_command(Recompile(blueprint_id="also mine", target="r1"))
    await bus.publish_command(Recompile(blueprint_id="theirs", target="r2"))
    await bus.publish_command(Shutdown(target="r2"))

    async def blueprints(stream: str) -> list[str]:
        return [decode_command(fields[b"m"]).blueprint_id for _, fields in await bus.tail(stream, 10)]

    assert await blueprints(bus.streams.normal) == ["mine", "also mine"]
    assert await blueprints(other.normal) == ["theirs"]
    assert len(await bus.tail(other.emergency, 10)) == 1
    assert await bus.tail(bus.streams.emergency, 10) == []


async def test_a_control_room_creates_no_groups(make_bus):
    room = await make_bus(run_id="r1", start=False)
    await room.start(create_groups=False)
    for stream in (room.streams.telemetry, room.streams.normal, room.streams.emergency):
        assert await room._loads(stream) == []
    await room.start()  # an engine's start creates them
    assert [load.name for load in await room._loads(room.streams.normal)] == ["esper"]


async def test_plain_entries_add_read_and_tail(make_bus, prefix):
    bus = await make_bus()
    stream = f"{prefix}.frames.r1"
    ids = [await bus.add_entry(stream, {b"f": str(n).encode()}, maxlen=1000) for n in range(3)]
    assert [fields for _, fields in await bus.read_entries(stream, "0", count=10, block_ms=None)] == [
        {b"f": b"0"},
        {b"f": b"1"},
        {b"f": b"2"},
    ]
    assert [i for i, _ in await bus.read_entries(stream, ids[0], count=10, block_ms=None)] == ids[1:]
    assert [i for i, _ in await bus.read_entries(stream, "0", count=2, block_ms=None)] == ids[:2]
    assert [i for i, _ in await bus.tail(stream, 2)] == ids[1:]
    assert await bus.read_entries(stream, "$", count=10, block_ms=None) == []
    assert await bus.read_entries(f"{prefix}.nothing", "0", count=10, block_ms=None) == []

    # "$": only what is added after the read began; keep adding until the blocked read returns.
    waiting = asyncio.create_task(bus.read_entries(stream, "$", count=1, block_ms=5000))
    added: list[str] = []

    async def add_until_read() -> None:
        while not waiting.done():
            added.append(await bus.add_entry(stream, {b"f": b"new"}, maxlen=1000))
            await asyncio.sleep(0.02)

    await asyncio.wait_for(add_until_read(), 10)
    [(got, fields)] = waiting.result()
    assert got in added and fields == {b"f": b"new"}

    for n in range(300):
        await bus.add_entry(stream, {b"f": str(n).encode()}, maxlen=5)
    assert 5 <= len(await bus.tail(stream, 1000)) < 300  # MAXLEN ~: Redis trims whole nodes
    assert bus.metrics().connected


async def test_presence_keys_expire(make_bus, prefix, eventually):
    bus = await make_bus()
    rooms = f"{prefix}.rooms."
    await bus.put_presence(rooms + "a", b"alice", 30)
    await bus.put_presence(rooms + "b", b"bob", 30)
    await bus.put_presence(f"{prefix}.roomsX", b"not a room", 30)
    assert await bus.presence(rooms) == {rooms + "a": b"alice", rooms + "b": b"bob"}
    assert await bus.presence(f"{prefix}.room*") == {}  # glob characters are literal
    await bus.put_presence(rooms + "a", b"alice again", 30)
    await bus.drop_presence(rooms + "b")
    assert await bus.presence(rooms) == {rooms + "a": b"alice again"}
    await bus.put_presence(rooms + "brief", b"gone soon", 0.05)

    async def expired() -> bool:
        return rooms + "brief" not in await bus.presence(rooms)

    await eventually(expired)
    assert await bus.presence(rooms) == {rooms + "a": b"alice again"}
