"""`esper-tui forge-worker`: Tezzeret's compile capacity on any machine that can reach Redis and the library.

A worker takes jobs for its own identity from the Oona job stream's consumer group, compiles them in the
same sandbox as an engine (`LocalBuilder` over a `WorkerPool`), uploads and registers the kernel in the
shared library, publishes what happened, then acknowledges the job. It heartbeats every second with what
it is compiling, and before taking each job it reads the engine's published bounds: an open breaker
holds it, conservative mode limits it to one job at a time with the longer timeout.

A job whose key this machine would not produce (another identity slipped onto the stream) fails with the
reason; a job that keeps killing workers is failed after `max_deliveries` instead of killing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from esper_tui.engine.forge import journal
from esper_tui.engine.forge.builders import BuildFailed, LocalBuilder, spec_for
from esper_tui.engine.forge.jobqueue import (
    BoundsRefused,
    Delivery,
    ForgeChannel,
    JobNews,
    NewsKind,
    QueueError,
    WorkerBeat,
)
from esper_tui.engine.freshness import Replayed
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.kernels.pipelines import settings_for
from esper_tui.engine.kernels.shapes import ShapeError, SlotShape
from esper_tui.engine.library.base import KernelLibrary
from esper_tui.engine.library.store import Identity, artifact_key

Say = Callable[[str], None]
FAREWELL_TTL_S = 30.0
"""How long a stopped worker's last beat (with why it stopped) stays for engines to read; they poll every second."""


@dataclass(frozen=True)
class WorkerSettings:
    concurrency: int = 1
    claim_idle_s: float = 15.0  # a job idle this long in another worker's hands is taken over
    keepalive_s: float = 3.0  # how often a live worker re-claims the jobs it is compiling
    beat_s: float = 1.0
    beat_ttl_s: float = 5.0  # a heartbeat older than this is gone: the engine lists the worker no more
    max_deliveries: int = 3


class ForgeWorkerService:
    def __init__(
        self,
        channel: ForgeChannel,
        builder: LocalBuilder,
        catalog: Catalog,
        identity: Identity,
        settings: WorkerSettings,
        say: Say,
    ) -> None:
        self.channel = channel
        self.builder = builder
        self.library: KernelLibrary = builder.library
        self.catalog = catalog
        self.identity = identity
        self.settings = settings
        self.say = say
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.started_ts = time.time()
        self.active: dict[str, str] = {}  # entry id -> blueprint id
        self.done = 0
        self.failed = 0
        self.holding = ""
        self.stopped_by = ""  # what set the stop (a signal's name), for the last beat
        self._slots_free = asyncio.Event()
        self._slots_free.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Take and compile jobs until `stop` is set; running jobs then finish or stay pending for others. The
        last heartbeat says why it stopped, for the engine's event log."""
        await self.channel.ensure_group()
        beats = asyncio.create_task(self._beat_forever())
        tasks: set[asyncio.Task[None]] = set()
        failure = ""
        try:
            while not stop.is_set():
                limit = await self._limit()
                if limit == 0 or len(self.active) >= limit:
                    self._slots_free.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._slots_free.wait(), 1.0)
                    continue
                try:
                    delivery = await self.channel.take(
                        self.worker_id, block_ms=1000, claim_idle_s=self.settings.claim_idle_s
                    )
                except QueueError as exc:
                    self.say(f"job queue: {exc}; retrying")
                    await asyncio.sleep(1.0)
                    continue
                if delivery is not None:
                    task = asyncio.create_task(self._handle(delivery))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        except Exception as exc:
            failure = f"failed: {type(exc).__name__}: {exc}"
            raise
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            beats.cancel()
            await asyncio.gather(beats, return_exceptions=True)
            by = f" by {self.stopped_by}" if self.stopped_by else ""
            why = failure or f"stopped{by} ({self.done} done, {self.failed} failed)"
            with contextlib.suppress(QueueError):
                await self.channel.beat(self.beat(leaving=why), FAREWELL_TTL_S)

    async def _limit(self) -> int:
        """How many jobs at once, under the engine's published bounds (0: hold). Bounds that stand but must
        not be believed (forged, stale, replayed) hold too: lifting a hold is what a forger would want."""
        try:
            control = await self.channel.control()
        except QueueError:
            control = None
        except BoundsRefused as exc:
            self.holding = f"holding: the engine's bounds are refused ({exc})"
            return 0
        if control is not None and control.open_breakers:
            self.holding = f"breaker open at the engine: {', '.join(control.open_breakers)}"
            return 0
        self.holding = ""
        return 1 if control is not None and control.conservative else self.settings.concurrency

    def _news(
        self,
        delivery: Delivery,
        kind: NewsKind,
        *,
        version: int = 0,
        reused: bool = False,
        compile_s: float = 0.0,
        error: str = "",
        timed_out: bool = False,
    ) -> JobNews:
        job = delivery.job
        return JobNews(
            job_id=job.job_id if job else "",
            blueprint_id=job.blueprint_id if job else "",
            kind=kind,
            worker=self.name,
            version=version,
            reused=reused,
            compile_s=compile_s,
            error=error,
            timed_out=timed_out,
            ts=time.time(),
        )

    async def _handle(self, delivery: Delivery) -> None:
        job = delivery.job
        if job is None:  # not sealed with our key: nothing to report to, nothing to compile
            self.say(f"job {delivery.entry_id}: not a validly signed job; dropped")
            await self._finish(delivery, None)
            return
        if isinstance(delivery.refused, Replayed):  # the original has its own outcome: say nothing to its engine
            self.say(f"job {delivery.entry_id} ({job.blueprint_id}): {delivery.refused}; dropped")
            await self._finish(delivery, None)
            return
        if delivery.refused is not None:  # stale: its engine, if still waiting, learns why and queues it again
            self.failed += 1
            await self._finish(delivery, self._news(delivery, NewsKind.FAILED, error=str(delivery.refused)))
            return
        if delivery.deliveries > self.settings.max_deliveries:
            error = f"delivered {delivery.deliveries} times (workers died on it); given up"
            self.failed += 1
            await self._finish(delivery, self._news(delivery, NewsKind.FAILED, error=error))
            return
        self.active[delivery.entry_id] = job.blueprint_id
        keepalive = asyncio.create_task(self._keepalive(delivery.entry_id))
        try:
            try:
                news = await self._compile(delivery)
            finally:
                keepalive.cancel()
                await asyncio.gather(keepalive, return_exceptions=True)
            if news.kind is NewsKind.FAILED:
                self.failed += 1
            else:
                self.done += 1
            await self._finish(delivery, news)
        finally:  # a cancelled job stays pending in the group for another worker; its slot frees either way
            self.active.pop(delivery.entry_id, None)
            self._slots_free.set()

    async def _compile(self, delivery: Delivery) -> JobNews:
        job = delivery.job
        assert job is not None
        if job.blueprint_id not in self.catalog:
            return self._news(delivery, NewsKind.FAILED, error=f"unknown blueprint {job.blueprint_id!r}")
        bp = self.catalog.get(job.blueprint_id)
        try:
            shape = SlotShape.parse(job.shape)
        except ShapeError as exc:
            return self._news(delivery, NewsKind.FAILED, error=str(exc))
        if (unfit := bp.unfit(shape)) is not None:
            return self._news(delivery, NewsKind.FAILED, error=unfit)
        mine = artifact_key(
            bp.ir_hash(), settings_for(job.strategy, self.identity.device), job.strategy, self.identity, shape
        )
        if mine != job.artifact_key:
            error = "this worker would build another key (a different blueprint source, torch or machine)"
            return self._news(delivery, NewsKind.FAILED, error=error)
        if not job.force:
            try:
                existing = await asyncio.to_thread(self.library.current, job.blueprint_id, shape, job.artifact_key)
            except Exception as exc:  # the catalog does not answer: report it, the engine retries the job
                return self._news(delivery, NewsKind.FAILED, error=f"{type(exc).__name__}: {exc}")
            if existing is not None:
                return self._news(delivery, NewsKind.COMPILED, version=existing.version, reused=True)
        await self._publish(self._news(delivery, NewsKind.STARTED))
        self.say(f"compiling {job.blueprint_id} [{job.shape}] ({job.strategy}, attempt {job.attempt}) for {job.issuer}")
        try:
            built = await self.builder.build(spec_for(job), started=lambda _where: None, staged=_no_journal)
        except BuildFailed as exc:
            self.say(f"{job.blueprint_id}: failed: {exc}")
            return self._news(delivery, NewsKind.FAILED, error=str(exc), timed_out=exc.timed_out)
        except Exception as exc:  # the shared library or store failed: report it, the engine retries
            self.say(f"{job.blueprint_id}: could not store the kernel: {exc}")
            return self._news(delivery, NewsKind.FAILED, error=f"{type(exc).__name__}: {exc}")
        meta = built.meta
        self.say(f"{job.blueprint_id}: v{meta.version} registered ({meta.compile_s:.1f} s)")
        return self._news(delivery, NewsKind.COMPILED, version=meta.version, compile_s=meta.compile_s)

    async def _publish(self, news: JobNews) -> None:
        with contextlib.suppress(QueueError):
            await self.channel.publish(news)

    async def _finish(self, delivery: Delivery, news: JobNews | None) -> None:
        """Publish and acknowledge, retrying through a Redis outage: until then the job stays pending."""
        while True:
            try:
                await self.channel.finish(delivery.entry_id, news)
                return
            except QueueError as exc:
                self.say(f"job queue: {exc}; will acknowledge when it answers")
                await asyncio.sleep(1.0)

    async def _keepalive(self, entry_id: str) -> None:
        while True:
            await asyncio.sleep(self.settings.keepalive_s)
            with contextlib.suppress(QueueError):
                await self.channel.keepalive(self.worker_id, entry_id)

    def beat(self, leaving: str = "") -> WorkerBeat:
        return WorkerBeat(
            worker_id=self.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            identity=self.identity.fingerprint(),
            concurrency=self.settings.concurrency,
            jobs=sorted(self.active.values()),
            done=self.done,
            failed=self.failed,
            holding=self.holding,
            leaving=leaving,
            started_ts=self.started_ts,
            ts=time.time(),
        )

    async def _beat_forever(self) -> None:
        while True:
            with contextlib.suppress(QueueError):
                await self.channel.beat(self.beat(), self.settings.beat_ttl_s)
            await asyncio.sleep(self.settings.beat_s)


async def _no_journal(_record: journal.JobStaged) -> None:
    """A worker keeps no WAL: the job stays pending in the consumer group until its outcome is published."""
