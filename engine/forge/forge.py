"""Tezzeret, the forge: queue blueprints, compile them in sandboxed workers, store signed kernels.

A job is one blueprint for one slot shape: `set_shapes` names the shapes the training host's slots have,
and every blueprint that fits one of them is compiled for it (the library keeps a kernel per shape).

Every compile is a WAL transaction: BEGIN (what and why) -> DATA (staged, worker pid) -> COMMIT
(artifact id and version) or ABORT (error). The library rename happens before COMMIT, so after a
crash an open transaction means "maybe stored": recovery aborts it and requeues the blueprint, and
the job then finds the stored artifact by key and reuses it instead of compiling twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from esper_tui.engine.config import TezzeretConfig
from esper_tui.engine.contracts import (
    AnyEvent,
    BreakerChanged,
    ConservativeModeChanged,
    JobCompiled,
    JobFailed,
    JobQueued,
    JobStarted,
    LogLine,
    Metric,
    MetricsReport,
    WalStatus,
)
from esper_tui.engine.forge import journal
from esper_tui.engine.forge.board import NAMES, BreakerBoard
from esper_tui.engine.forge.breakers import BreakerTransition, Clock
from esper_tui.engine.forge.builders import Builder, BuildFailed, BuildSpec, LocalBuilder
from esper_tui.engine.forge.conservative import ConservativeMode
from esper_tui.engine.forge.resources import GpuProbe, read_memory
from esper_tui.engine.forge.sandbox import WorkerPool
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.kernels.device import device_index
from esper_tui.engine.kernels.pipelines import choose_strategy, settings_for, timeout_for
from esper_tui.engine.kernels.shapes import ShapeError, SlotShape
from esper_tui.engine.library.base import KernelLibrary, version_shape
from esper_tui.engine.library.meta import ArtifactMeta, shape_of
from esper_tui.engine.library.store import Identity, artifact_key
from esper_tui.engine.library.userbp import UserBlueprintError, UserStatus
from esper_tui.engine.streaks import FailureStreak
from esper_tui.engine.vocabulary import BreakerState, Level, Strategy, Subsystem
from esper_tui.engine.wal.writer import RecoveryReport, WalError, WalFsyncError, WriteAheadLog

Emit = Callable[[AnyEvent], None]
REMOTE_IN_FLIGHT = 64  # jobs queued for forge workers at once (the catalog is smaller)


@dataclass
class Job:
    blueprint_id: str
    shape: SlotShape
    requested: Strategy | None
    reason: str
    force: bool = False
    attempt: int = 1
    txid: str = field(default_factory=lambda: os.urandom(8).hex())

    @property
    def slot(self) -> tuple[str, str]:
        """What the forge compiles one kernel for: (blueprint id, shape tag)."""
        return self.blueprint_id, self.shape.tag


def worker_pool(config: TezzeretConfig, state_dir: Path, on_warning: Callable[[str], None] | None = None) -> WorkerPool:
    return WorkerPool(
        state_dir / "logs",
        memory_limit_mb=config.compilation.worker_memory_limit_mb,
        jobs_per_worker=config.compilation.jobs_per_worker,
        idle_s=config.compilation.worker_idle_s,
        registry=state_dir / "workers",
        on_warning=on_warning,
    )


class ForgeFatal(RuntimeError):
    """The forge cannot go on safely (an fsync failed): stop, never pretend the work is durable."""


class Forge:
    def __init__(
        self,
        *,
        config: TezzeretConfig,
        catalog: Catalog,
        library: KernelLibrary,
        wal: WriteAheadLog,
        emit: Emit,
        state_dir: Path,
        identity: Identity,
        gpu: GpuProbe | None = None,
        clock: Clock = time.monotonic,
        pool: WorkerPool | None = None,
        builder: Builder | None = None,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.library = library
        self.wal = wal
        self.board = BreakerBoard.from_config(config, clock=clock, listener=self.on_breaker)
        self.conservative = ConservativeMode.from_config(
            config.conservative_mode, clock=clock, listener=self.on_conservative
        )
        self.emit = emit
        self.identity = identity
        self.shapes: list[SlotShape] = []  # the slot shapes kernels are compiled for (set_shapes)
        self.gpu = gpu or GpuProbe(device_index(identity.device) or 0)  # NVML for the device kernels are built for
        self.pool = pool or worker_pool(config, state_dir)
        self.builder: Builder = builder or LocalBuilder(library, self.pool, identity)
        self._queue: list[Job] = []
        self._running: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self.fatal: str | None = None
        self._durations_ms: dict[Strategy, tuple[int, float]] = {}  # strategy -> (compiles, total ms)
        self._status_writes: set[asyncio.Task[None]] = set()  # user blueprint statuses being signed

    # ------------------------------------------------------------------ queue

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return len(self._running)

    def is_idle(self) -> bool:
        return not self._queue and not self._running

    def enqueue(
        self,
        blueprint_id: str,
        *,
        reason: str,
        shape: SlotShape | None = None,
        strategy: Strategy | None = None,
        force: bool = False,
    ) -> bool:
        """Queue a blueprint for a slot shape (for every shape of `set_shapes` it fits when None), unless it is
        already queued or compiling for it or does not fit it. Returns whether anything was added."""
        if blueprint_id not in self.catalog:
            self.emit(
                LogLine(source=Subsystem.TEZZERET, level=Level.WARNING, message=f"unknown blueprint {blueprint_id!r}")
            )
            return False
        shapes = self.shapes if shape is None else [shape]
        added = False
        for s in shapes:
            if not self.catalog.fits(blueprint_id, s):
                continue
            job = Job(blueprint_id, s, strategy, reason, force=force)
            if job.slot in self._running or any(j.slot == job.slot for j in self._queue):
                continue
            self._queue.append(job)
            strategy_now = self._strategy(job)
            self.emit(
                JobQueued(
                    source=Subsystem.TEZZERET,
                    blueprint_id=blueprint_id,
                    shape=s.tag,
                    strategy=strategy_now,
                    reason=reason,
                )
            )
            added = True
        if added:
            self._queue.sort(key=lambda j: -self.catalog.get(j.blueprint_id).priority)
            self._idle.clear()
            self._wake.set()
        return added

    def requeue_quarantined(self, blueprint_id: str, version_label: str) -> bool:
        """Recompile what a quarantine took away: the shape its label names, or every shape the blueprint fits
        when the label names none or one no slot has (a renamed directory may lie about its shape)."""
        shape = version_shape(version_label)
        return self.enqueue(
            blueprint_id, reason="artifact quarantined", shape=shape if shape in self.shapes else None, force=True
        )

    def set_shapes(self, shapes: Iterable[SlotShape], *, scan: bool = True) -> None:
        """The slot shapes the training host has: from now on every fitting blueprint is compiled for each.
        With `scan`, each shape not known before is scanned at once (`discover`): kernels already stored are
        reported, and every fitting blueprint lacking one is queued."""
        new = [s for s in dict.fromkeys(shapes) if s not in self.shapes]
        self.shapes += new
        if scan:
            self._scan(new)

    def _strategy(self, job: Job) -> Strategy:
        return choose_strategy(
            requested=job.requested,
            priority=self.catalog.get(job.blueprint_id).priority,
            attempt=job.attempt,
            conservative=self.conservative.active,
            config=self.config.compilation,
        )

    def recover(self, report: RecoveryReport) -> None:
        """Abort what a crash left open and requeue it; report WAL damage. (The engine reaps stale workers
        before it starts new ones: see sandbox.reap_stale.)"""
        for text in report.corrupt:
            self.emit(LogLine(source=Subsystem.TEZZERET, level=Level.WARNING, message=f"WAL: {text}"))
        for tx in report.open:
            try:
                begin: journal.JobBegin | None = journal.decode_begin(tx.begin)
            except journal.JournalError as exc:
                begin = None
                message = f"WAL: transaction {tx.txid}: {exc}; aborted, not requeued"
                self.emit(LogLine(source=Subsystem.TEZZERET, level=Level.WARNING, message=message))
            self.wal.abort(tx.txid, journal.encode(journal.JobAborted(recovered=True)))
            if begin is not None:
                try:
                    shape = shape_of(begin.shape)
                except ShapeError as exc:
                    message = f"WAL: transaction {tx.txid}: {exc}; aborted, not requeued"
                    self.emit(LogLine(source=Subsystem.TEZZERET, level=Level.WARNING, message=message))
                    continue
                self.enqueue(begin.blueprint_id, shape=shape, reason="resumed from WAL after a crash")
        for name in self.library.clean_staging():
            self.emit(LogLine(source=Subsystem.URZA, level=Level.INFO, message=f"removed unfinished staging {name}"))

    def discover(self) -> None:
        """Full scan of every known shape (`set_shapes`)."""
        self._scan(self.shapes)

    def _scan(self, shapes: list[SlotShape]) -> None:
        """Report verified kernels already stored for these shapes; queue every fitting blueprint without one."""
        for shape in shapes:
            for bp in self.catalog.fitting(shape):
                self._scan_one(bp.blueprint_id, shape)

    def _scan_one(self, blueprint_id: str, shape: SlotShape) -> None:
        bp = self.catalog.get(blueprint_id)
        meta = self.library.current(bp.blueprint_id, shape)
        if meta is None:
            self.enqueue(bp.blueprint_id, shape=shape, reason="initial scan")
        elif (
            meta.ir_hash,
            meta.torch_version,
            meta.cpu_isa,
            meta.options.get("num_threads"),
            meta.options.get("compiler"),
        ) != (
            bp.ir_hash(),
            self.identity.torch_version,
            self.identity.cpu_isa,
            self.identity.threads,
            self.identity.compiler,
        ):
            self.enqueue(bp.blueprint_id, shape=shape, reason="stale kernel (blueprint, torch or CPU changed)")
        else:
            self._compiled(meta, meta.strategy, reused=True, verification="verified in the library")

    # ------------------------------------------------------------------ running

    def max_concurrency(self) -> int:
        """Configured jobs, 1 in conservative mode, and only the probes while the timeout breaker is half-open.

        With no compile workers of its own (0), jobs go to the queue for forge workers: then this bounds
        the jobs in flight on the queue, which workers take as their own concurrency allows.
        """
        limit = self.conservative.max_concurrency(self.config.compilation.max_concurrent_jobs or REMOTE_IN_FLIGHT)
        if self.board.timeout.state is BreakerState.HALF_OPEN:
            limit = min(limit, self.config.breakers.half_open_probes)
        return limit

    async def run(self) -> None:
        """Dispatch queued jobs within the concurrency limit until cancelled or fatal."""
        self.emit_wal_status()
        while self.fatal is None:
            self._wake.clear()
            while self._queue and len(self._running) < self.max_concurrency() and self._breakers_allow():
                job = self._queue.pop(0)
                self._running[job.slot] = asyncio.create_task(self._run_job(job))
            if self.is_idle():
                self._idle.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)
        raise ForgeFatal(self.fatal)

    def _breakers_allow(self) -> bool:
        """An open memory or timeout breaker holds the queue. No permit is taken here: a job that turns
        out to need no compile would never give it back; the half-open limit is max_concurrency's."""
        return BreakerState.OPEN not in (self.board.memory.state, self.board.timeout.state)

    async def wait_idle(self) -> None:
        while not self.is_idle():
            self._idle.clear()
            await self._idle.wait()

    async def _run_job(self, job: Job) -> None:
        try:
            await self._compile(job)
        except asyncio.CancelledError:
            # A clean stop: record that this compile did not finish, so no transaction is left open; the next
            # start finds no artifact and queues the blueprint again.
            if job.txid in self.wal.status().open_txids:
                with contextlib.suppress(WalError):
                    await self.wal.aabort(job.txid, journal.encode(journal.JobAborted(stopped=True)))
            raise
        except WalFsyncError as exc:
            self.fatal = f"WAL write failed, forge stopped: {exc}"
            self.emit(LogLine(source=Subsystem.TEZZERET, level=Level.ERROR, message=self.fatal))
        except Exception as exc:  # e.g. ENOSPC while committing to the library: fail the job, not the forge
            error = f"{type(exc).__name__}: {exc}"
            if job.txid in self.wal.status().open_txids:
                try:
                    await self.wal.aabort(job.txid, journal.encode(journal.JobAborted(error=error)))
                except WalFsyncError as wal_exc:
                    self.fatal = f"WAL write failed, forge stopped: {wal_exc}"
                    self.emit(LogLine(source=Subsystem.TEZZERET, level=Level.ERROR, message=self.fatal))
                    return
            self._failed(job, self._strategy(job), error)
        finally:
            self._running.pop(job.slot, None)
            self._wake.set()

    async def _compile(self, job: Job) -> None:
        bp = self.catalog.get(job.blueprint_id)
        strategy = self._strategy(job)
        settings = settings_for(strategy, self.identity.device)
        key = artifact_key(bp.ir_hash(), settings, strategy, self.identity, job.shape)
        begin = journal.JobBegin(
            blueprint_id=bp.blueprint_id,
            strategy=strategy,
            attempt=job.attempt,
            key=key,
            reason=job.reason,
            shape=job.shape.tag,
        )
        await self.wal.abegin(job.txid, journal.encode(begin))
        existing = None if job.force else await asyncio.to_thread(self.library.current, bp.blueprint_id, job.shape, key)
        if existing is not None:
            await self.wal.acommit(
                job.txid, journal.encode(journal.JobCommitted(artifact_id=key, version=existing.version, reused=True))
            )
            self._compiled(existing, strategy, reused=True, wal_txn=job.txid, verification="verified in the library")
            return
        spec = BuildSpec(
            job_id=job.txid,
            blueprint_id=bp.blueprint_id,
            strategy=strategy,
            key=key,
            shape=job.shape.tag,
            timeout_s=self.conservative.timeout_s(timeout_for(strategy, self.config.compilation)),
            force=job.force,
            attempt=job.attempt,
            reason=job.reason,
        )

        def started(where: str) -> None:
            self.emit(
                JobStarted(
                    source=Subsystem.TEZZERET,
                    blueprint_id=bp.blueprint_id,
                    shape=job.shape.tag,
                    strategy=strategy,
                    attempt=job.attempt,
                    worker=where,
                    wal_txn=job.txid,
                    breakers={name: self.board[name].state.value for name in NAMES},
                )
            )

        async def staged(record: journal.JobStaged) -> None:
            await self.wal.adata(job.txid, journal.encode(record))

        try:
            built = await self.builder.build(spec, started=started, staged=staged)
        except BuildFailed as exc:
            if exc.timed_out and not bp.is_user:  # a user blueprint's endless loop is its fault, not the forge's
                self.board.timeout.record_slow(str(exc))
            await self.wal.aabort(job.txid, journal.encode(journal.JobAborted(error=str(exc))))
            self._failed(job, strategy, str(exc))
            return
        self.board.timeout.record_success()
        meta = built.meta
        await self.wal.acommit(
            job.txid, journal.encode(journal.JobCommitted(artifact_id=key, version=meta.version, reused=built.reused))
        )
        verification = (
            f"verified here (signature, key) from {built.worker}" if built.worker else "signed by this engine's library"
        )
        self._compiled(
            meta, strategy, reused=built.reused, worker=built.worker, wal_txn=job.txid, verification=verification
        )

    def _compiled(
        self,
        meta: ArtifactMeta,
        strategy: Strategy,
        *,
        reused: bool,
        worker: str = "",
        wal_txn: str = "",
        verification: str = "",
    ) -> None:
        if self._is_user(meta.blueprint_id):
            self._user_status(meta.blueprint_id, UserStatus.COMPILED, "")
        if not reused:
            count, total = self._durations_ms.get(strategy, (0, 0.0))
            self._durations_ms[strategy] = (count + 1, total + meta.compile_s * 1000)
        self.emit(
            JobCompiled(
                source=Subsystem.TEZZERET,
                blueprint_id=meta.blueprint_id,
                shape=meta.slot_shape.tag,
                strategy=strategy,
                artifact_id=meta.artifact_id,
                version=meta.version,
                backend=meta.backend,
                mode=meta.mode,
                compile_s=meta.compile_s,
                step_ms_compiled=meta.step_ms_compiled,
                step_ms_eager=meta.step_ms_eager,
                reused=reused,
                worker=worker,
                wal_txn=wal_txn,
                verification=verification,
            )
        )
        self.emit_wal_status()

    def _is_user(self, blueprint_id: str) -> bool:
        return blueprint_id in self.catalog and self.catalog.get(blueprint_id).is_user

    def _failed(self, job: Job, strategy: Strategy, error: str) -> None:
        # A user blueprint's failure is its own code's (kernels/usercode.py): refused at once, never retried.
        user = self._is_user(job.blueprint_id)
        retry = job.attempt < self.config.compilation.max_attempts and not user
        if user:
            self._user_status(job.blueprint_id, UserStatus.REFUSED, error)
        self.emit(
            JobFailed(
                source=Subsystem.TEZZERET,
                blueprint_id=job.blueprint_id,
                shape=job.shape.tag,
                strategy=strategy,
                error=error,
                attempt=job.attempt,
                will_retry=retry,
                wal_txn=job.txid,
            )
        )
        self.emit_wal_status()
        if retry:
            self._queue.append(
                Job(
                    job.blueprint_id,
                    job.shape,
                    job.requested,
                    f"retry after: {error[:80]}",
                    job.force,
                    job.attempt + 1,
                )
            )

    def _user_status(self, blueprint_id: str, status: UserStatus, reason: str) -> None:
        """Sign a user blueprint's new status into the library, off the loop (a shared library is a round trip)."""

        def write() -> None:
            try:
                if self.library.blueprints.set_status(blueprint_id, status, reason) is not None:
                    what = f"user blueprint {blueprint_id}: {status.value}" + (f" ({reason})" if reason else "")
                    self.emit(LogLine(source=Subsystem.URZA, level=Level.INFO, message=what))
            except UserBlueprintError as exc:
                self.emit(LogLine(source=Subsystem.URZA, level=Level.WARNING, message=f"{blueprint_id}: {exc}"))

        task = asyncio.get_running_loop().create_task(asyncio.to_thread(write))
        self._status_writes.add(task)
        task.add_done_callback(self._status_writes.discard)

    # ------------------------------------------------------------------ upkeep

    def emit_wal_status(self) -> None:
        s = self.wal.status()
        self.emit(
            WalStatus(
                source=Subsystem.TEZZERET,
                path=str(s.path),
                segments=s.segments,
                size_bytes=s.size_bytes,
                open_transactions=list(s.open_txids),
                commits=s.commits_total,
                last_checkpoint_ts=s.last_checkpoint_ts,
                durability_mode=str(s.durability_mode),
            )
        )

    def on_breaker(self, t: BreakerTransition) -> None:
        """Breaker transitions are telemetry, and an opening breaker puts the forge in conservative mode."""
        self.emit(
            BreakerChanged(
                source=Subsystem.TEZZERET,
                name=t.name,
                state=t.state,
                previous=t.previous,
                transition=True,
                detail=t.reason,
            )
        )
        if t.state is BreakerState.OPEN:
            self.conservative.enter(f"{t.name} breaker open: {t.reason}", "breaker")
            if t.name == "memory":
                self.library.drop_cache()  # forced cleanup when over the memory budget

    def on_conservative(self, active: bool, reason: str) -> None:
        self.emit(ConservativeModeChanged(source=Subsystem.TEZZERET, active=active, reason=reason))
        self._wake.set()

    def metrics(self) -> list[Metric]:
        """Seed 000's metrics: compile duration by strategy, breaker states, conservative flag, WAL, cache."""
        state_code = {
            BreakerState.CLOSED: 0.0,
            BreakerState.HALF_OPEN: 1.0,
            BreakerState.OPEN: 2.0,
            BreakerState.UNAVAILABLE: -1.0,
        }
        wal = self.wal.status()
        out = [
            Metric(name="tezzeret.compilation.duration_ms", value=total / count, labels={"strategy": s.value})
            for s, (count, total) in sorted(self._durations_ms.items())
        ]
        out += [
            Metric(name="tezzeret.breaker.state", value=state_code[v.state], labels={"breaker": v.name})
            for v in self.board.views()
        ]
        out += [
            Metric(name="tezzeret.conservative_mode_active", value=float(self.conservative.active)),
            Metric(name="tezzeret.wal.transactions_total", value=float(wal.commits_total + wal.aborts_total)),
            Metric(name="tezzeret.cache.hit_rate", value=round(self.library.stats.hit_rate, 4)),
            Metric(name="tezzeret.queue_depth", value=float(self.queue_depth)),
            Metric(name="tezzeret.concurrency", value=float(self.running)),
        ]
        return out

    async def monitor(self, interval_s: float = 1.0) -> None:
        """Poll memory and GPU into the breakers; emit readings so the dashboard shows them live."""
        last: dict[str, object] = {}
        reading = FailureStreak("memory reading", self._say)
        while True:
            try:  # /proc is files: with no descriptor left the reading fails, and the engine must not
                mem = await asyncio.to_thread(read_memory, os.getpid())
            except OSError as exc:
                reading.failed(exc, "the memory breaker keeps its last reading")
                await asyncio.sleep(interval_s)
                continue
            reading.succeeded()
            gpu = await asyncio.to_thread(self.gpu.read)
            self.board.poll(mem, gpu)
            self.conservative.tick(self.board.any_open)
            for view in self.board.views():
                shown = (view.state, round(view.reading or 0.0), view.failures, view.detail)
                if last.get(view.name) != shown:
                    last[view.name] = shown
                    self.emit(
                        BreakerChanged(
                            source=Subsystem.TEZZERET,
                            name=view.name,
                            state=view.state,
                            previous=view.state,
                            transition=False,
                            reading=view.reading,
                            threshold=view.threshold,
                            unit=view.unit,
                            failures=view.failures,
                            detail=view.detail,
                        )
                    )
            metrics = self.metrics()
            if metrics != last.get("metrics"):
                last["metrics"] = metrics
                self.emit(MetricsReport(source=Subsystem.TEZZERET, metrics=metrics))
            await asyncio.sleep(interval_s)

    async def maintain(self) -> None:
        """TTL memory manager: expire cached kernels and checkpoint the WAL every cleanup interval."""
        interval = self.config.memory_management.cleanup_interval_seconds
        checkpoint = FailureStreak("WAL checkpoint", self._say)
        while True:
            await asyncio.sleep(interval)
            self.library.expire()
            if not self.wal.status().open_txids:
                try:
                    await asyncio.to_thread(self.wal.checkpoint)
                except WalFsyncError:
                    raise
                except WalError as exc:  # failed before the new segment was installed: the log is unchanged
                    checkpoint.failed(exc, f"the log grows until the next try in {interval:g} s")
                    continue
                checkpoint.succeeded()
                self.emit_wal_status()

    def _say(self, level: Level, message: str) -> None:
        self.emit(LogLine(source=Subsystem.TEZZERET, level=level, message=message))

    async def close(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)
        await asyncio.gather(*self._status_writes, return_exceptions=True)  # a verdict reached is a verdict kept
        await self.builder.close()
        await self.pool.close()
