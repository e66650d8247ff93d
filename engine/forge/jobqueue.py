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
Redis but lacks the key can neither queue work, fake an outcome, nor lift a breaker. It can still copy a
sealed message and put it back later, so the seal covers the message's own time and an id of its own,
and every reader checks them (engine/freshness.py): a job older than `job_max_age_s` fails as stale
instead of compiling, news that old is ignored, and a copy of a job or a report already seen inside that
window is a replay and dropped; the engine's bounds and the workers' beats are refused once older than
the skew window, or older than the newest already seen from the same source.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import hmac
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from esper_tui.engine.codec import encode_msgpack
from esper_tui.engine.config import EsperConfig
from esper_tui.engine.freshness import Newest, ReplayWindow, Stale
from esper_tui.engine.vocabulary import Strategy, Struct

GROUP = "forge-workers"
NEWS_MAXLEN = 10_000
SKEW_S = 30.0
"""Clock disagreement between machines (bus.command_skew_s): how far ahead a message may be, and how old a
current value (the engine's bounds, a worker's beat) may be before it is refused."""
JOB_MAX_AGE_S = 3600.0
"""Age past which a queued job fails as stale instead of compiling, and its news is ignored
(forge_worker.job_max_age_s)."""


class ForgeJob(Struct, kw_only=True):
    """One compile, as the engine queues it; the worker checks the key against its own identity."""

    job_id: str
    blueprint_id: str
    strategy: Strategy
    artifact_key: str
    shape: str  # the slot shape's tag (SlotShape.tag) the kernel is compiled for
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
    leaving: str = ""  # its last beat: why it stopped ("" while it works)
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
    m: bytes  # the message, msgpack
    i: str  # the seal's own id: a copy of these bytes is the same message, a new seal is another one
    s: str  # HMAC over the kind's domain, the id and the message


M = TypeVar("M", ForgeJob, JobNews, WorkerBeat, ForgeControl)
_DOMAINS: dict[type, bytes] = {
    ForgeJob: b"esper.forge.job.v2\0",
    JobNews: b"esper.forge.news.v2\0",
    WorkerBeat: b"esper.forge.beat.v2\0",
    ForgeControl: b"esper.forge.control.v2\0",
}
_sealed_decoder = msgspec.msgpack.Decoder(_Sealed)


@dataclass(frozen=True)
class Unsealed(Generic[M]):
    message: M
    seal_id: str


def _mac(key: bytes, kind: type, seal_id: str, payload: bytes) -> str:
    return hmac.new(key, _DOMAINS[kind] + seal_id.encode() + b"\0" + payload, hashlib.sha256).hexdigest()


def seal(key: bytes, message: ForgeJob | JobNews | WorkerBeat | ForgeControl) -> bytes:
    """The message sealed under a fresh id; its own time field (issued_ts or ts) is inside the seal."""
    payload = encode_msgpack(message)
    seal_id = os.urandom(12).hex()
    return encode_msgpack(_Sealed(m=payload, i=seal_id, s=_mac(key, type(message), seal_id, payload)))


def unseal(key: bytes, data: bytes, kind: type[M]) -> Unsealed[M] | None:
    """The message and its seal id if it decodes and carries a valid seal for its kind; None for anything else.
    Its time is the reader's to check."""
    try:
        sealed = _sealed_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if not hmac.compare_digest(_mac(key, kind, sealed.i, sealed.m).encode(), sealed.s.encode(errors="replace")):
        return None
    try:
        return Unsealed(msgspec.msgpack.decode(sealed.m, type=kind), sealed.i)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class BoundsRefused(Exception):
    """A value stands where the engine's bounds belong but must not be obeyed; the message says why."""


class QueueError(Exception):
    """Redis did not answer or refused; the message says which server and why, in one line."""


@dataclass(frozen=True)
class Delivery:
    entry_id: str
    job: ForgeJob | None  # None: the entry was not a validly sealed job
    deliveries: int  # how many times the group has handed this entry out, this one included
    refused: Stale | None = None  # why a validly sealed job must not be compiled (freshness.Replayed too)


class ForgeChannel:
    """The Redis side of the forge queue, shared by engines and workers."""

    def __init__(
        self,
        url: str,
        prefix: str,
        key: bytes,
        identity: str,
        *,
        skew_s: float = SKEW_S,
        job_max_age_s: float = JOB_MAX_AGE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.key = key
        self.identity = identity
        self.jobs = f"{prefix}.forge.jobs.{identity}"
        self.news = f"{prefix}.forge.news"
        self.control_key = f"{prefix}.forge.control"
        self._worker_prefix = f"{prefix}.forge.worker."
        self.forged = 0  # messages refused because their seal did not verify
        self.stale = 0  # validly sealed messages refused for their time or as replays
        # what is obeyed once: a job may wait in the queue for a worker, and its news is read as it comes
        self._jobs_seen = ReplayWindow(max_age_s=job_max_age_s, max_ahead_s=skew_s, clock=clock)
        self._news_seen = ReplayWindow(max_age_s=job_max_age_s, max_ahead_s=skew_s, clock=clock)
        # what states a current value: renewed every second, so older than the skew window is a replay
        self._beats_seen = Newest(max_age_s=skew_s, max_ahead_s=skew_s, clock=clock)
        self._control_seen = Newest(max_age_s=skew_s, max_ahead_s=skew_s, clock=clock)
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
                entry_id = raw_id.decode()
                out.append((entry_id, self._admitted_news(entry_id, fields.get(b"m", b""))))
        return out

    def _admitted_news(self, entry_id: str, data: bytes) -> JobNews | None:
        sealed = unseal(self.key, data, JobNews)
        if sealed is None:
            self.forged += 1
            return None
        try:  # the same entry read again is one report; another entry with this seal is a copy
            self._news_seen.admit(sealed.seal_id, sealed.message.ts, where=entry_id)
        except Stale:
            self.stale += 1
            return None
        return sealed.message

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
            sealed = unseal(self.key, value, WorkerBeat)
            if sealed is None:
                self.forged += 1
                continue
            beat = sealed.message
            try:
                self._beats_seen.admit(beat.worker_id, beat.ts)
            except Stale:
                self.stale += 1
                continue
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
        """The engine's current bounds, or None when no engine publishes them.

        Raises BoundsRefused when a value stands there that must not be obeyed (not validly sealed, too old,
        older than one already read): a worker then holds, since lifting a hold is exactly what a forger wants.
        """
        async with self._errors():
            value: Any = await self._redis.get(self.control_key)
        if value is None:
            return None
        sealed = unseal(self.key, value, ForgeControl)
        if sealed is None:
            self.forged += 1
            raise BoundsRefused("not validly sealed with the library's key")
        control = sealed.message
        try:
            self._control_seen.admit(control.issuer, control.ts)
        except Stale as exc:
            self.stale += 1
            raise BoundsRefused(str(exc)) from None
        return control

    async def beat(self, beat: WorkerBeat, ttl_s: float) -> None:
        async with self._errors():
            await self._redis.set(self._worker_prefix + beat.worker_id, seal(self.key, beat), px=int(ttl_s * 1000))

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
        sealed = unseal(self.key, (fields or {}).get(b"m", b""), ForgeJob)
        if sealed is None:
            self.forged += 1
            return Delivery(entry_id, None, deliveries)
        job = sealed.message
        try:
            # the same entry handed out again (its worker died) is one job; another entry with this seal is a copy
            self._jobs_seen.admit(sealed.seal_id, job.issued_ts, where=entry_id)
        except Stale as exc:
            self.stale += 1
            return Delivery(entry_id, job, deliveries, exc)
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


def open_channel(url: str, config: EsperConfig, key: bytes, identity: str) -> ForgeChannel:
    """The forge queue as the config describes it, for an engine and a forge worker alike."""
    return ForgeChannel(
        url,
        config.bus.stream_prefix,
        key,
        identity,
        skew_s=config.bus.command_skew_s,
        job_max_age_s=config.forge_worker.job_max_age_s,
    )
