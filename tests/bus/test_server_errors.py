"""Redis trouble never kills the engine: every class of server error, provoked for real on a private
redis-server (never the shared one).

Each test runs a consumer and publishes telemetry, breaks the server one way, and checks that
publishing does not raise, the consumer loop stays alive, the failure is counted under its kind, a
command fails with one line naming its stream and the server's reason, and, once the fault is undone,
delivery resumes on its own.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import subprocess

import pytest
import redis.asyncio as aioredis
from redis.exceptions import BusyLoadingError, OutOfMemoryError, ReadOnlyError, ResponseError

from esper_tui.engine.bus import BusOptions, BusServerError, BusUnavailable
from esper_tui.engine.bus.redis_streams import error_kind, server_reply
from esper_tui.engine.contracts import EpochCompleted, Recompile

pytestmark = pytest.mark.redis

# Reads block for 100 ms at most; a request without a reply fails after 1 s.
OPTIONS = BusOptions(claim_idle_ms=200, request_timeout_s=1.0)


def epoch(n: int) -> EpochCompleted:
    return EpochCompleted(epoch=n, train_loss=1.0, val_loss=1.0, val_metric=0.5, samples_per_s=1.0, epoch_s=0.1)


@pytest.fixture
async def raw(private_redis):
    """An async client of the private server, to break and repair it without blocking the loop."""
    client = aioredis.Redis.from_url(private_redis.url)
    try:
        yield client
    finally:
        await client.aclose(close_connection_pool=True)


class Drill:
    """A bus with a running consumer on the private server, and the checks every fault must pass."""

    def __init__(self, bus, box, task, eventually) -> None:
        self.bus = bus
        self.box = box
        self.task = task
        self.eventually = eventually
        self._numbers = itertools.count(100)

    async def publish_while_broken(self, kind: str) -> None:
        """Publishing never raises; the trouble is counted under `kind` and shown as the last error."""
        for n in range(10, 15):
            await self.bus.publish_event(epoch(n))
        await self.bus.flush()
        await self.eventually(lambda: self.bus.metrics().server_errors.get(kind, 0) > 0)
        m = self.bus.metrics()
        assert m.dropped > 0
        assert m.last_error and m.last_error_ts is not None
        assert not self.task.done(), "the consumer loop died"

    async def command_fails_clearly(self, error: type[Exception], kind: str, reason: str) -> None:
        with pytest.raises(error) as failure:
            await self.bus.publish_command(Recompile(blueprint_id="x"))
        message = str(failure.value)
        assert failure.value.kind == kind
        assert "\n" not in message
        assert self.bus.streams.normal in message and reason in message, message

    async def consumer_keeps_failing(self, kind: str) -> None:
        """The consumer loop retries (and counts) for as long as the fault lasts, and stays alive."""
        before = self.bus.metrics().server_errors.get(kind, 0)
        await self.eventually(lambda: self.bus.metrics().server_errors.get(kind, 0) > before + 1)
        assert not self.task.done(), "the consumer loop died"

    async def delivery_resumes(self) -> None:
        """Publish a fresh event until one arrives (the first may be dropped during the backoff)."""
        sent: set[int] = set()

        async def arrived() -> bool:
            n = next(self._numbers)
            sent.add(n)
            await self.bus.publish_event(epoch(n))
            await asyncio.sleep(0.05)
            return any(e.epoch in sent for e in self.box.items)

        await self.eventually(arrived, timeout=15.0, interval=0.05)
        await self.bus.publish_command(Recompile(blueprint_id="after"))  # commands go through again
        assert self.bus.metrics().connected
        assert not self.task.done()


@pytest.fixture
def drill_options() -> BusOptions:
    return OPTIONS


@pytest.fixture
async def drill(make_private_bus, inbox, consuming, eventually, drill_options):
    bus = await make_private_bus(options=drill_options)
    box = inbox()
    async with consuming(bus.consume_events("ui", "c1", box)) as task:
        await bus.publish_event(epoch(1))
        await box.until(lambda: len(box.items) == 1)
        yield Drill(bus, box, task, eventually)


async def test_out_of_memory(drill, raw):
    """maxmemory below what is used, with noeviction: every XADD is refused with OOM."""
    await raw.config_set("maxmemory-policy", "noeviction")
    await raw.set("filler", b"x" * 2_000_000)
    await raw.config_set("maxmemory", "1mb")
    await drill.publish_while_broken("oom")
    await drill.command_fails_clearly(BusServerError, "oom", "OOM command not allowed")
    await raw.config_set("maxmemory", "0")
    await drill.delivery_resumes()


async def test_wrong_type_over_the_stream_keys(drill, raw):
    """Someone replaces the stream keys with strings: WRONGTYPE for publishers and the consumer,
    which keeps trying (and counting) until the keys are removed, then recreates its group."""
    streams = drill.bus.streams
    for key in (streams.telemetry, streams.normal):
        await raw.delete(key)
        await raw.set(key, "x")
    await drill.publish_while_broken("wrongtype")
    await drill.consumer_keeps_failing("wrongtype")
    await drill.command_fails_clearly(BusServerError, "wrongtype", "WRONGTYPE")
    before = drill.bus.metrics().server_errors["wrongtype"]
    with pytest.raises(BusServerError, match="WRONGTYPE"):
        await drill.bus.read_entries(streams.telemetry, "0", count=10, block_ms=None)
    assert drill.bus.metrics().server_errors["wrongtype"] > before
    await raw.delete(streams.telemetry, streams.normal)
    await drill.delivery_resumes()


async def test_read_only_replica(drill, raw):
    """The server becomes a replica (of a master that is not there, so it keeps its data): READONLY
    for every write, XREADGROUP included, until it is a master again."""
    await raw.replicaof("127.0.0.1", str(_closed_port()))
    await drill.publish_while_broken("readonly")
    await drill.consumer_keeps_failing("readonly")
    await drill.command_fails_clearly(BusServerError, "readonly", "READONLY")
    with pytest.raises(BusServerError, match="READONLY"):
        await drill.bus.put_presence(f"{drill.bus.streams.frames}.presence", b"x", 5)
    await raw.replicaof("NO", "ONE")
    await drill.delivery_resumes()


@pytest.mark.parametrize("drill_options", [BusOptions(claim_idle_ms=200, request_timeout_s=0.3)])
async def test_paused_server_times_out(drill, raw):
    """CLIENT PAUSE: requests get no reply; each is cut off after request_timeout_s and counted as a
    timeout, and the pause ending is all it takes to recover."""
    await raw.execute_command("CLIENT", "PAUSE", "3000", "ALL")
    await drill.publish_while_broken("timeout")
    await drill.command_fails_clearly(BusUnavailable, "timeout", "no reply within")
    await drill.delivery_resumes()  # the pause ends by itself


async def test_failing_persistence(drill, raw, private_redis, tmp_path):
    """MISCONF: RDB saving is configured and the last BGSAVE failed (its directory was removed), so
    the server refuses writes until a save succeeds again."""
    doomed = tmp_path / "doomed"
    doomed.mkdir()
    await raw.config_set("save", "3600 1")
    await raw.config_set("stop-writes-on-bgsave-error", "yes")
    await raw.config_set("dir", str(doomed))
    shutil.rmtree(doomed)
    await raw.bgsave()
    await drill.eventually(lambda: _bgsave_status(raw, "err"))
    await drill.publish_while_broken("misconf")
    await drill.consumer_keeps_failing("misconf")
    await drill.command_fails_clearly(BusServerError, "misconf", "MISCONF")
    await raw.config_set("dir", str(private_redis.workdir))
    await raw.bgsave()
    await drill.eventually(lambda: _bgsave_status(raw, "ok"))
    await drill.delivery_resumes()


async def test_busy_script(drill, raw, private_redis):
    """A Lua script that never returns: after busy-reply-threshold every other client gets BUSY,
    until SCRIPT KILL."""
    await raw.config_set("busy-reply-threshold", "100")
    script = subprocess.Popen(
        ["redis-cli", "-p", str(private_redis.port), "EVAL", "while true do end", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await drill.eventually(lambda: _busy(raw))
        await drill.publish_while_broken("busy")
        await drill.command_fails_clearly(BusServerError, "busy", "BUSY")
    finally:
        await raw.script_kill()
        script.wait(10)
    await drill.delivery_resumes()


async def test_killed_and_restarted_empty(drill, private_redis):
    """kill -9, then a restart on the same port with no data: connections are reset (counted as
    disconnected), then the consumer finds its group gone (NOGROUP) and recreates it."""
    private_redis.kill()
    await drill.publish_while_broken("disconnected")
    assert not drill.bus.metrics().connected
    await drill.command_fails_clearly(BusUnavailable, "disconnected", "connecting to")
    with pytest.raises(BusUnavailable):
        await drill.bus.presence("anything")
    assert not drill.bus.metrics().connected
    private_redis.start()
    await drill.delivery_resumes()


async def test_killed_and_restarted_loading_its_dump(drill, raw, private_redis):
    """kill -9, then a restart that spends seconds loading its dump: LOADING for every request until
    the data (streams and groups included) is back, then delivery resumes where it was."""
    await raw.execute_command("DEBUG", "POPULATE", "20000", "filler", "10")
    await raw.save()
    private_redis.kill()
    private_redis.start("--key-load-delay", "100", "--loading-process-events-interval-bytes", "1024")
    await drill.command_fails_clearly(BusServerError, "loading", "LOADING")  # first: loading lasts seconds
    await drill.publish_while_broken("loading")
    await drill.delivery_resumes()


def test_error_replies_are_classified_by_their_code():
    """redis-py strips the code off the replies it has classes for; the kind and the line shown
    still come from the server's own words."""
    oom = OutOfMemoryError("command not allowed when used memory > 'maxmemory'.", status_code="OOM")
    readonly = ReadOnlyError("You can't write against a read only replica.", status_code="READONLY")
    loading = BusyLoadingError("Redis is loading the dataset in memory", status_code="LOADING")
    cases = {
        oom: "oom",
        readonly: "readonly",
        loading: "loading",
        ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"): "wrongtype",
        ResponseError("MISCONF Redis is configured to save RDB snapshots, but ..."): "misconf",
        ResponseError("BUSY Redis is busy running a script."): "busy",
        ResponseError("BUSYGROUP Consumer Group name already exists"): "other",
        ResponseError("ERR something new"): "other",
    }
    for exc, kind in cases.items():
        assert error_kind(server_reply(exc)) == kind, exc
    assert server_reply(oom).startswith("OOM command not allowed")


def _closed_port() -> int:
    from benchmarks.bus import free_port

    return free_port()


async def _bgsave_status(raw, status: str) -> bool:
    info = await raw.info("persistence")
    return not info["rdb_bgsave_in_progress"] and info["rdb_last_bgsave_status"] == status


async def _busy(raw) -> bool:
    try:
        await raw.exists("anything")
    except ResponseError as exc:
        return str(exc).startswith("BUSY")
    return False
