"""Bus benchmark: telemetry end to end through Redis, side by side with redis-benchmark in the same run.

    python -m benchmarks.bus --json out.json                          (starts a private redis-server)
    python -m benchmarks.bus --redis-url redis://127.0.0.1:6390/0     (an existing server; keys are removed)

One function per figure, collected by main() into one dict, so more figures slot in beside these:
- telemetry_msgs_per_s: events through Bus.publish_event on Redis, consumed by a group in the same
  process, from the first publish to the last handler call (batched entries, one XACK per read);
  the median of three runs, with the CPU spent per message beside it.
- redis_benchmark_xadd_per_s_{1,50}_clients: `redis-benchmark ... XADD benchstream '*' f v` against
  the same server: the ceiling of one-entry-per-request publishing.
- a real headless engine (eager training, nothing to compile) in a subprocess, and control rooms
  attached to it from this process over the same server:
  - command_roundtrip_ms_p50/p95: a signed PauseTraining sent through RemoteLink.send until the engine's
    CommandObeyed for that command id is read back from its telemetry stream;
  - attach_converge_ms: a new RemoteLink started until it shows a verified picture at least as new as
    the engine's newest frame at that moment (median of several attaches);
  - keyframe_bytes: the newest keyframe's stream entry (frame and signature).

`RedisServer` (a private redis-server on a free port, killable and restartable) is shared with the tests
that must disturb a server (tests/bus): never the shared one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import redis

from benchmarks.report import write_json
from esper_tui.engine.bus import BusOptions, RedisStreamsBus
from esper_tui.engine.bus.auth import frame_public_key
from esper_tui.engine.bus.helpers import unpack_batch
from esper_tui.engine.bus.types import BATCH, PAYLOAD
from esper_tui.engine.codec import decode_event
from esper_tui.engine.config import BusConfig
from esper_tui.engine.contracts import AnyEvent, CommandObeyed, EpochCompleted, PauseTraining
from esper_tui.engine.frames import FRAME_FIELD, SIGNATURE_FIELD, decode_frame
from esper_tui.engine.keys import FRAME_KEY, OPERATOR_KEY, load_key
from esper_tui.links.remote import RemoteLink

TELEMETRY_MESSAGES = 50_000
TELEMETRY_REPEATS = 3
REDIS_BENCHMARK_REQUESTS = 50_000
TARGETS = {"telemetry_msgs_per_s": 50_000.0}
TARGETS_BELOW = {"command_roundtrip_ms_p95": 50.0}
COMMANDS = 200
ATTACHES = 7
START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A private redis-server on 127.0.0.1 (a free port unless given), for what must not touch a shared
    server: benchmarks, and tests that fill its memory, make it a replica, pause or kill it.

    No persistence unless `args` asks for it; protected configs (CONFIG SET dir) and DEBUG are allowed. `kill()`
    is a SIGKILL; `start()` again brings it back on the same port, empty.
    """

    def __init__(self, port: int | None = None, *, args: Sequence[str] = (), workdir: Path | None = None) -> None:
        self.port = port or free_port()
        self.args = list(args)
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="esper-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A plain synchronous client, to break things on purpose and to look inside."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=START_TIMEOUT_S)

    def start(self, *extra: str) -> None:
        """Start (or start again, on the same port) with `extra` arguments for this run only. Returns
        once it answers, even if only to say LOADING (it is up, reading its dump)."""
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
        command = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self.workdir),
            "--enable-protected-configs", "yes",
            "--enable-debug-command", "local",
            "--loglevel", "warning",
            *self.args,
            *extra,
        ]  # fmt: skip
        self._proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RuntimeError(f"redis-server on port {self.port} exited: {err.strip()[-500:]}")
            if self._answers():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not answer within {START_TIMEOUT_S:g} s")
            time.sleep(0.02)

    def _answers(self) -> bool:
        """A bare PING over a socket: PONG, or LOADING while it reads its dump, both mean it is up.
        (redis-py's own connect would wait out the whole load.)"""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
        except OSError:
            return False
        return reply.startswith((b"+PONG", b"-LOADING"))

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM killer would: no shutdown, no save."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait()
            self._proc = None

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def redis_for_benchmark(url: str | None) -> Iterator[str]:
    """The given server, or a private one for the duration."""
    if url:
        yield url
        return
    with RedisServer() as server:
        yield server.url


# ----------------------------------------------------------------------------- figures


def _events(n: int) -> list[AnyEvent]:
    return [
        EpochCompleted(epoch=i, train_loss=0.5, val_loss=0.6, val_metric=0.7, samples_per_s=400.0, epoch_s=0.1)
        for i in range(n)
    ]


async def _telemetry(url: str, n: int) -> tuple[float, float]:
    """One run: (wall seconds from the first publish to the last handler call, CPU seconds of this process)."""
    # Room for the whole run: this measures capacity, not backpressure.
    config = BusConfig(stream_prefix=f"bench-{uuid.uuid4().hex[:8]}", maxlen=4 * n, drop_threshold=2 * n)
    bus = RedisStreamsBus(config, url, BusOptions(publish_buffer=2 * n))
    events = _events(n)
    handled = 0
    done = asyncio.Event()

    async def handler(_: AnyEvent) -> None:
        nonlocal handled
        handled += 1
        if handled == n:
            done.set()

    await bus.start()
    consumer = asyncio.create_task(bus.consume_events("bench", "c1", handler))
    try:
        await asyncio.sleep(0.2)  # the consumer is in its blocking read
        cpu0, t0 = time.process_time(), time.perf_counter()
        for event in events:
            await bus.publish_event(event)
        await bus.flush()
        dropped = bus.metrics().dropped
        if dropped:
            raise RuntimeError(f"{dropped} of {n} events were dropped; the figure would be meaningless")
        await asyncio.wait_for(done.wait(), 120)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
        await bus.close()
        with redis.Redis.from_url(url) as client:
            client.delete(bus.streams.telemetry, bus.streams.normal, bus.streams.emergency)
    return wall, cpu


def telemetry_rate(url: str, n: int = TELEMETRY_MESSAGES, repeats: int = TELEMETRY_REPEATS) -> dict[str, float]:
    """`n` events through Bus.publish_event on Redis, handled by a consumer group in this process;
    the median of `repeats` runs (the machine is shared: one run can land on a busy moment), and
    the CPU this process spent per message (publish, flush, XREADGROUP, decode, handler, XACK)."""
    runs = sorted((asyncio.run(_telemetry(url, n)) for _ in range(repeats)), key=lambda run: run[0])
    wall, cpu = runs[len(runs) // 2]
    return {
        "telemetry_msgs_per_s": round(n / wall, 1),
        "telemetry_cpu_us_per_msg": round(cpu / n * 1e6, 2),
        "telemetry_messages": n,
    }


_RATE = re.compile(r"([\d.]+) requests per second")


def redis_benchmark_xadd(url: str, clients: int, n: int = REDIS_BENCHMARK_REQUESTS) -> float:
    """redis-benchmark XADD with `clients` connections: requests per second, as it reports them."""
    if shutil.which("redis-benchmark") is None:
        raise RuntimeError("redis-benchmark is not installed (Debian: apt-get install redis-tools)")
    parts = urlsplit(url)
    host, port, db = parts.hostname or "127.0.0.1", str(parts.port or 6379), parts.path.lstrip("/") or "0"
    stream = f"benchstream-{uuid.uuid4().hex[:8]}"
    command = ["redis-benchmark", "-h", host, "-p", port, "--dbnum", db, "-c", str(clients), "-n", str(n), "-q"]
    if parts.password:
        command += ["-a", parts.password]
    try:
        proc = subprocess.run([*command, "XADD", stream, "*", "f", "v"], capture_output=True, text=True, timeout=300)
    finally:
        with redis.Redis.from_url(url) as client:
            client.delete(stream)
    rates = _RATE.findall(proc.stdout)
    if proc.returncode != 0 or not rates:
        raise RuntimeError(f"redis-benchmark failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
    return float(rates[-1])


ENGINE = (sys.executable, "-m", "esper_tui", "--no-ui", "--interval", "5")


def _caught_up(link: RemoteLink, seq: int) -> Callable[[], bool]:
    """Whether `link` shows a picture at least as new as frame `seq`."""

    def check() -> bool:
        snapshot = link.latest()
        return snapshot is not None and snapshot.seq >= seq

    return check


class _Engine:
    """`esper-tui --no-ui` on `url` in a subprocess: eager training slowed to a steady 20 epochs/s, no compiles."""

    def __init__(self, url: str, workdir: Path) -> None:
        self.prefix = f"benchroom-{uuid.uuid4().hex[:8]}"
        self.state = workdir / "state"
        config = workdir / "engine.toml"
        config.write_text(
            "[tezzeret.polling]\ninitial_full_scan = false\n[training]\ncompile = false\nepoch_delay_s = 0.05\n"
            f'[bus]\nstream_prefix = "{self.prefix}"\n'
        )
        self._err = workdir / "engine.err"
        with self._err.open("w") as err:
            self.proc = subprocess.Popen(
                [*ENGINE, "--config", str(config), "--redis-url", url, "--state-dir", str(self.state)],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self.config = BusConfig(stream_prefix=self.prefix)

    def run_id(self) -> str:
        """From the identity line the engine prints once it has started."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = re.search(r"engine (\w+)", self._err.read_text())
            if found:
                return found.group(1)
            if self.proc.poll() is not None:
                raise RuntimeError(f"the engine exited: {self._err.read_text()[-500:]}")
            time.sleep(0.2)
        raise RuntimeError("the engine did not start within 120 s")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def _link(url: str, engine: _Engine, run_id: str) -> tuple[RemoteLink, RedisStreamsBus]:
    bus = RedisStreamsBus(engine.config, url, run_id=run_id)
    await bus.start(create_groups=False)
    public = frame_public_key(load_key(FRAME_KEY, engine.state))
    link = RemoteLink(bus, run_id, public, operator_key=load_key(OPERATOR_KEY, engine.state))
    await link.start()
    return link, bus


async def _until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.001)


async def _newest_frame(bus: RedisStreamsBus, stream: str) -> tuple[int, int]:
    """(seq of the newest frame, bytes of the newest keyframe entry) in the stream."""
    newest, key_bytes = -1, 0
    for _entry_id, fields in reversed(await bus.tail(stream, 64)):
        frame = decode_frame(fields[FRAME_FIELD])
        newest = max(newest, frame.seq)
        if frame.base_seq is None and not key_bytes:
            key_bytes = len(fields[FRAME_FIELD]) + len(fields[SIGNATURE_FIELD])
    return newest, key_bytes


async def _obeyed(bus: RedisStreamsBus, stream: str, after: str, command_id: str) -> str:
    """Read the run's telemetry from `after` until the engine says it obeyed `command_id`; the last id read."""
    while True:
        for entry_id, fields in await bus.read_entries(stream, after, count=500, block_ms=1000):
            after = entry_id
            messages = unpack_batch(fields[BATCH]) if BATCH in fields else [fields.get(PAYLOAD, b"")]
            for data in messages:
                event = decode_event(data)
                if isinstance(event, CommandObeyed) and event.command_id == command_id:
                    return after


async def _control_room(url: str, engine: _Engine, commands: int, attaches: int) -> dict[str, float]:
    run_id = await asyncio.to_thread(engine.run_id)
    link, bus = await _link(url, engine, run_id)
    try:
        await _until(lambda: (shown := link.latest()) is not None and shown.training.epoch >= 20, 120)
        newest, key_bytes = await _newest_frame(bus, bus.streams.frames)
        telemetry = bus.streams.telemetry
        after = (await bus.tail(telemetry, 1) or [("0-0", {})])[-1][0]
        trips: list[float] = []
        for i in range(commands):
            command = PauseTraining(paused=i % 2 == 0)
            t0 = time.perf_counter()
            await link.send(command)
            after = await asyncio.wait_for(_obeyed(bus, telemetry, after, command.command_id), 30)
            trips.append((time.perf_counter() - t0) * 1000)
        await link.send(PauseTraining(paused=False))
        converge: list[float] = []
        for _ in range(attaches):
            target, _ = await _newest_frame(bus, bus.streams.frames)
            t0 = time.perf_counter()
            room, room_bus = await _link(url, engine, run_id)
            try:
                await _until(_caught_up(room, target))
                converge.append((time.perf_counter() - t0) * 1000)
            finally:
                await room.close()
                await room_bus.close()
    finally:
        await link.close()
        await bus.close()
    trips.sort()
    return {
        "command_roundtrip_ms_p50": round(statistics.median(trips), 2),
        "command_roundtrip_ms_p95": round(trips[min(len(trips) - 1, int(0.95 * len(trips)))], 2),
        "commands": commands,
        "attach_converge_ms": round(statistics.median(converge), 1),
        "attach_converge_ms_max": round(max(converge), 1),
        "keyframe_bytes": key_bytes,
        "frame_seq_at_measure": newest,
    }


def control_room(url: str, commands: int = COMMANDS, attaches: int = ATTACHES) -> dict[str, float]:
    """Command round trips and attach convergence against a real engine subprocess on `url`."""
    with tempfile.TemporaryDirectory(prefix="esper-bench-") as tmp:
        engine = _Engine(url, Path(tmp))
        try:
            return asyncio.run(_control_room(url, engine, commands, attaches))
        finally:
            engine.stop()
            with redis.Redis.from_url(url) as client:
                keys = list(client.scan_iter(match=f"{engine.prefix}.*"))
                if keys:
                    client.delete(*keys)


# ----------------------------------------------------------------------------- report


def print_table(results: dict[str, object]) -> None:
    print(f"{'figure':<42} {'value':>12}  target")
    for key, value in results.items():
        if key == "machine":
            continue
        goal, below = TARGETS.get(key), TARGETS_BELOW.get(key)
        verdict = ""
        if goal is not None and isinstance(value, int | float):
            verdict = f">= {goal:g} {'ok' if value >= goal else 'MISSED'}"
        elif below is not None and isinstance(value, int | float):
            verdict = f"< {below:g} {'ok' if value < below else 'MISSED'}"
        print(f"{key:<42} {value!s:>12}  {verdict}")
    print(f"machine: {results['machine']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, metavar="FILE", help="write the figures as JSON")
    ap.add_argument("--redis-url", help="measure this server instead of starting a private one")
    ap.add_argument("--messages", type=int, default=TELEMETRY_MESSAGES, help="telemetry events to send")
    args = ap.parse_args(argv)
    results: dict[str, object] = {"machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus"}
    try:
        with redis_for_benchmark(args.redis_url) as url:
            print("telemetry through the bus ...", flush=True)
            results.update(telemetry_rate(url, args.messages))
            for clients in (1, 50):
                print(f"redis-benchmark XADD, {clients} client(s) ...", flush=True)
                results[f"redis_benchmark_xadd_per_s_{clients}_client{'s' if clients > 1 else ''}"] = (
                    redis_benchmark_xadd(url, clients)
                )
            print("a real engine and control rooms attached to it ...", flush=True)
            results.update(control_room(url))
    except (RuntimeError, redis.RedisError, OSError) as exc:
        print(f"benchmarks.bus: {exc}", file=sys.stderr)
        return 1
    print()
    print_table(results)
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
