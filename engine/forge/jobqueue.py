"""Tezzeret beyond one machine: compile jobs on an Oona stream, taken by forge workers anywhere.

Everything here is a standard Redis Streams part, not a scheduler of our own:
- `<prefix>.forge.jobs.<identity>`: the job stream, one per identity fingerprint (a kernel only runs where
  it was built for), read by the consumer group `forge-workers`. A worker that dies keeps its jobs in
  the group's pending list; another takes them over with XAUTOCLAIM once they have been idle for
  `claim_idle_s`. A live worker re-claims its own jobs every few seconds (XCLAIM to itself), so a long
  compile is never mistaken for a dead one. A job is acknowledged, then deleted, once its outcome is
  published; it is idempotent by job id and artifact key in the catalog, so a second delivery never
  registers a second version.
- `<prefix>.forge.news`: what workers report (started, compiled, failed), read by engines.
- `<prefix>.forge.worker.<id>`: each worker's heartbeat, a key that expires when the worker stops beating.
- `<prefix>.forge.control`: the engine's breakers and conservative mode, which every worker obeys.

Every message is sealed with an HMAC of the library's signing key (the secret every machine of a shared
library already holds, because it signs artifacts), under its own domain: a process that can write to
Redis but lacks the key can neither queue work, fake an outcome, nor lift a breaker.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from esper_tui.engine.codec import encode_msgpack
from esper_tui.engine.vocabulary import Strategy, Struct

GROUP = "forge-workers"
NEWS_MAXLEN = 10_000


class ForgeJob(Struct, kw_only=True):
    """One compile, as the engine queues it; the worker checks the key against its own identity."""

    job_id: str
    blueprint_id: str
    strategy: Strategy
    artifact_key: str
    in_features: int
    out_features: int
    force: bool = False
    attempt: int = 1
    reason: str = ""
    timeout_s: float
    issued_ts: float
    issuer: str  # the engine's run id


class NewsKind(enum.StrEnum):
    STARTED = "started"
    COMPILED = "compiled"
    FAILED = "failed"


class JobNews(Struct, kw_only=True):
    """What a worker did with a job."""

    job_id: str
    blueprint_id: str
    kind: NewsKind
    worker: str
    version: int = 0
    reused: bool = False  # the key was already in the library: nothing was compiled
    compile_s: float = 0.0
    error: str = ""
    timed_out: bool = False
    ts: float


class WorkerBeat(Struct, kw_only=True):
    """A worker's heartbeat: who it is and what it is doing now."""

    worker_id: str
    host: str
    pid: int
    identity: str
    concurrency: int
    jobs: list[str]  # blueprint ids compiling now
    done: int
    failed: int
    holding: str = ""  # why it takes no job now ("" when it does)
    started_ts: float
    ts: float


class ForgeControl(Struct, kw_only=True):
    """The engine's forge state, which bounds what every worker accepts."""

    issuer: str
    conservative: bool
    reason: str = ""
    open_breakers: list[str] = msgspec.field(default_factory=list)
    ts: float


class _Sealed(Struct, kw_only=True):
    m: bytes
    s: str


M = TypeVar("M", ForgeJob, JobNews, WorkerBeat, ForgeControl)
_DOMAINS: dict[type, bytes] = {
    ForgeJob: b"esper.forge.job.v1\0",
    JobNews: b"esper.forge.news.v1\0",
    WorkerBeat: b"esper.forge.beat.v1\0",
    ForgeControl: b"esper.forge.control.v1\0",
}
_sealed_decoder = msgspec.msgpack.Decoder(_Sealed)


def seal(key: bytes, message: ForgeJob | JobNews | WorkerBeat | ForgeControl) -> bytes:
    payload = encode_msgpack(message)
    mac = hmac.new(key, _DOMAINS[type(message)] + payload, hashlib.sha256).hexdigest()
    return encode_msgpack(_Sealed(m=payload, s=mac))


def unseal(key: bytes, data: bytes, kind: type[M]) -> M | None:
    """The message if it decodes and carries a valid seal for its kind; None for anything else."""
    try:
        sealed = _sealed_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    expected = hmac.new(key, _DOMAINS[kind] + sealed.m, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), sealed.s.encode(errors="replace")):
        return None
    try:
        return msgspec.msgpack.decode(sealed.m, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class QueueError(Exception):
    """Redis did not answer or refused; the message says which server and why, in one line."""


@dataclass(frozen=True)
class Delivery:
    entry_id: str
    job: ForgeJob | None  # None: the entry was not a validly sealed job
    deliveries: int  # how many times the group has handed this entry out, this one included


class ForgeChannel:
    """The Redis side of the forge queue, shared by engines and workers."""

    def __init__(self, url: str, prefix: str, key: bytes, identity: str) -> None:
        self.url = url
        self.key = key
        self.identity = identity
        self.jobs = f"{prefix}.forge.jobs.{identity}"
        self.news = f"{prefix}.forge.news"
        self.control_key = f"{prefix}.forge.control"
        self._worker_prefix = f"{prefix}.forge.worker."
        self.forged = 0  # messages refused because their seal did not verify
        self._redis = aioredis.Redis.from_url(url, socket_connect_timeout=3.0, client_name="tezzeret")

    @contextlib.asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        try:
            yield
        except (RedisError, OSError) as exc:
            raise QueueError(f"forge queue at {self.url}: {exc or type(exc).__name__}") from None

    async def close(self) -> None:
        await self._redis.aclose()

    async def ensure_group(self) -> None:
        """The workers' consumer group, from the stream's start: jobs queued before any worker came are kept."""
        async with self._errors():
            try:
                await self._redis.xgroup_create(self.jobs, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    # ------------------------------------------------------------------ engine side

    async def submit(self, job: ForgeJob) -> str:
        await self.ensure_group()
        async with self._errors():
            entry = await self._redis.xadd(self.jobs, {"m": seal(self.key, job)})
        return entry.decode() if isinstance(entry, bytes) else str(entry)

    async def news_after(self, last_id: str, block_ms: int) -> list[tuple[str, JobNews | None]]:
        """News newer than `last_id` (waiting up to block_ms); a forged entry is None, and counted."""
        async with self._errors():
            reply: Any = await self._redis.xread({self.news: last_id}, count=100, block=block_ms)
        out: list[tuple[str, JobNews | None]] = []
        for _stream, entries in reply or []:
            for raw_id, fields in entries:
                news = unseal(self.key, fields.get(b"m", b""), JobNews)
                self.forged += news is None
                out.append((raw_id.decode(), news))
        return out

    async def last_news_id(self) -> str:
        """Where an engine starts reading news: after everything already there."""
        async with self._errors():
            info: Any = await self._redis.xinfo_stream(self.news) if await self._redis.exists(self.news) else None
        if not info:
            return "0-0"
        last = info.get("last-generated-id", b"0-0")
        return last.decode() if isinstance(last, bytes) else str(last)

    async def workers(self) -> list[WorkerBeat]:
        """Every worker whose heartbeat has not expired, for any identity (forged beats are skipped)."""
        beats: list[WorkerBeat] = []
        async with self._errors():
            keys = [k async for k in self._redis.scan_iter(match=self._worker_prefix + "*", count=500)]
            values: list[Any] = await self._redis.mget(keys) if keys else []
        for value in values:
            if value is None:
                continue
            beat = unseal(self.key, value, WorkerBeat)
            if beat is None:
                self.forged += 1
            else:
                beats.append(beat)
        return sorted(beats, key=lambda b: (b.host, b.pid))

    async def set_control(self, control: ForgeControl, ttl_s: float) -> None:
        async with self._errors():
            await self._redis.set(self.control_key, seal(self.key, control), px=int(ttl_s * 1000))

    async def pending(self) -> int:
        """Jobs handed to a worker and not yet acknowledged."""
        async with self._errors():
            try:
                info: Any = await self._redis.xpending(self.jobs, GROUP)
            except ResponseError:  # no stream or group yet
                return 0
        return int(info.get("pending", 0))

    async def backlog(self) -> int:
        """Jobs in the stream: waiting for a worker or being compiled (done ones are deleted)."""
        async with self._errors():
            return int(await self._redis.xlen(self.jobs))

    # ------------------------------------------------------------------ worker side

    async def control(self) -> ForgeControl | None:
        """The engine's current bounds, or None when no engine publishes them (or they are forged)."""
        async with self._errors():
            value: Any = await self._redis.get(self.control_key)
        if value is None:
            return None
        control = unseal(self.key, value, ForgeControl)
        if control is None:
            self.forged += 1
        return control

    async def beat(self, beat: WorkerBeat, ttl_s: float) -> None:
        async with self._errors():
            await self._redis.set(self._worker_prefix + beat.worker_id, seal(self.key, beat), px=int(ttl_s * 1000))

    async def forget_worker(self, worker_id: str) -> None:
        async with self._errors():
            await self._redis.delete(self._worker_prefix + worker_id)

    async def take(self, consumer: str, *, block_ms: int, claim_idle_s: float) -> Delivery | None:
        """The next job for this consumer: one a dead worker left (XAUTOCLAIM) first, else a new one."""
        async with self._errors():
            auto: Any = await self._redis.xautoclaim(
                self.jobs, GROUP, consumer, min_idle_time=int(claim_idle_s * 1000), start_id="0-0", count=1
            )
            claimed = auto[1]
            if claimed:
                raw_id, fields = claimed[0]
            else:
                reply: Any = await self._redis.xreadgroup(GROUP, consumer, {self.jobs: ">"}, count=1, block=block_ms)
                if not reply or not reply[0][1]:
                    return None
                raw_id, fields = reply[0][1][0]
            entry_id = raw_id.decode()
            info: Any = await self._redis.xpending_range(self.jobs, GROUP, min=entry_id, max=entry_id, count=1)
        deliveries = int(info[0]["times_delivered"]) if info else 1
        job = unseal(self.key, (fields or {}).get(b"m", b""), ForgeJob)
        if job is None:
            self.forged += 1
        return Delivery(entry_id, job, deliveries)

    async def keepalive(self, consumer: str, entry_id: str) -> None:
        """Reset the idle time of a job this worker is still compiling, so nobody reclaims it."""
        async with self._errors():
            await self._redis.xclaim(self.jobs, GROUP, consumer, min_idle_time=0, message_ids=[entry_id], justid=True)

    async def finish(self, entry_id: str, news: JobNews | None) -> None:
        """Publish the outcome, then acknowledge and delete the job (in that order: a crash in between
        redelivers a job whose outcome is already registered, which the catalog makes a no-op)."""
        async with self._errors():
            if news is not None:
                await self.publish(news)
            await self._redis.xack(self.jobs, GROUP, entry_id)
            await self._redis.xdel(self.jobs, entry_id)

    async def publish(self, news: JobNews) -> None:
        async with self._errors():
            await self._redis.xadd(self.news, {"m": seal(self.key, news)}, maxlen=NEWS_MAXLEN, approximate=True)
