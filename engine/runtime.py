"""The engine: one asyncio loop running the forge, the library, the training loop and the bus.

Clients (the dashboard, the headless runner, tests) see it through two calls: `latest()` for the
newest snapshot and `send(command)` for commands, which travel over the bus like telemetry does.
Events flow one way: components emit -> bus (telemetry stream) -> aggregator -> snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import os
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from esper_tui.engine.aggregator import Aggregator
from esper_tui.engine.bus import Bus, create_bus
from esper_tui.engine.config import EsperConfig, wal_directory
from esper_tui.engine.contracts import (
    AnyCommand,
    AnyEvent,
    ArtifactQuarantined,
    EngineStarted,
    EngineStopping,
    LogLine,
    MetricsReport,
    PauseTraining,
    Recompile,
    RecompileAll,
    SetConservativeMode,
    Shutdown,
)
from esper_tui.engine.forge.forge import Forge, ForgeFatal, worker_pool
from esper_tui.engine.forge.sandbox import WorkerPool, reap_stale
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.kernels.compiled import cpu_isa, private_cache_dir
from esper_tui.engine.kernels.pipelines import settings_for
from esper_tui.engine.library.signing import SigningKeyError, load_or_create_key
from esper_tui.engine.library.store import Identity, Library
from esper_tui.engine.snapshot import Snapshot
from esper_tui.engine.training.kernel_source import EagerKernelSource, KernelSource
from esper_tui.engine.training.library_source import LibraryKernelSource
from esper_tui.engine.training.loop import Trainer, TrainingControl
from esper_tui.engine.vocabulary import Level, Strategy, Subsystem, new_id
from esper_tui.engine.wal.writer import WalError, WriteAheadLog

IN_FEATURES = 40  # MNIST-1D sequences; seeds map the host input to a hidden layer


class EngineError(RuntimeError):
    """Start-up or runtime failure worth one clear line to the operator (exit code 1)."""


class Engine:
    def __init__(
        self,
        config: EsperConfig,
        state_dir: Path,
        *,
        redis_url: str | None = None,
        forge_only: bool = False,
        recompile_all: bool = False,
    ) -> None:
        self.config = config
        self.state_dir = state_dir.resolve()
        self.forge_only = forge_only
        self.recompile_all = recompile_all
        self.run_id = new_id()[:12]
        self.bus: Bus = create_bus(config.bus, redis_url)
        self.catalog = Catalog()
        self.aggregator = Aggregator(max_concurrency=config.tezzeret.compilation.max_concurrent_jobs)
        self.control = TrainingControl()
        self.stopped = asyncio.Event()
        self.stop_reason = ""
        self.failure: str | None = None
        self._snapshot: Snapshot | None = None
        self._events: asyncio.Queue[AnyEvent] = asyncio.Queue()
        self._last_event_id: str | None = None
        self._drained = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._trainer_task: asyncio.Task[Any] | None = None
        self._forge_tasks: list[asyncio.Task[Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock_fd: int | None = None
        self.forge: Forge | None = None
        self.wal: WriteAheadLog | None = None
        self.library: Library | None = None
        self._pool: WorkerPool | None = None
        self._loop_thread: int | None = None

    # ------------------------------------------------------------------ the client seam

    def latest(self) -> Snapshot | None:
        return self._snapshot

    async def send(self, command: AnyCommand) -> None:
        await self.bus.publish_command(command)

    def emit(self, event: AnyEvent) -> None:
        """Thread-safe: the training thread emits too."""
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._events.put_nowait(event)
        else:
            loop.call_soon_threadsafe(self._events.put_nowait, event)

    # ------------------------------------------------------------------ lifecycle

    def _lock_state_dir(self) -> None:
        if self.state_dir.exists() and not self.state_dir.is_dir():
            raise EngineError(f"state directory {self.state_dir} is not a directory")
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.state_dir / "engine.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise EngineError(f"state directory {self.state_dir}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EngineError(f"another esper-tui engine is using {self.state_dir}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._lock_state_dir()
        cfg = self.config
        try:
            key = load_or_create_key(self.state_dir, cfg.library.signing_key)
        except SigningKeyError as exc:
            raise EngineError(str(exc)) from None
        # Stale workers of a crashed run go first; then fresh ones start while this process probes the CPU.
        stale = reap_stale(self.state_dir / "workers")
        self._pool = pool = worker_pool(cfg.tezzeret, self.state_dir)
        prestart = asyncio.create_task(pool.prestart(cfg.tezzeret.compilation.max_concurrent_jobs))
        isa = await asyncio.to_thread(cpu_isa)  # before private_cache_dir(): the probe's cache is shared
        private_cache_dir()
        identity = Identity.here(isa)
        library = Library(
            self.state_dir / "library",
            key,
            self.catalog,
            cache_ttl_s=cfg.library.cache_ttl_seconds,
            on_quarantine=self._quarantined,
        )
        self.library = library
        wal_dir = wal_directory(cfg, self.state_dir)
        try:
            wal, report = await asyncio.to_thread(
                WriteAheadLog.open, wal_dir, durability=cfg.tezzeret.wal.durability_mode
            )
        except (WalError, OSError) as exc:
            raise EngineError(f"WAL {wal_dir}: {exc}") from None
        self.wal = wal
        try:
            await self.bus.start()
        except Exception as exc:
            raise EngineError(f"bus {self.bus.name}: cannot start: {exc}") from None
        self._spawn(self._pump())
        self._spawn(self.bus.consume_events("aggregator", f"agg-{self.run_id}", self._apply))
        self._spawn(self.bus.consume_commands("engine", f"engine-{self.run_id}", self.handle_command))
        self._spawn(self._publish_snapshots())
        import torch

        self.emit(
            EngineStarted(
                run_id=self.run_id,
                bus=self.bus.name,
                state_dir=str(self.state_dir),
                device="cpu",
                torch_version=str(torch.__version__),
            )
        )
        self.forge = Forge(
            config=cfg.tezzeret,
            catalog=self.catalog,
            library=library,
            wal=wal,
            emit=self.emit,
            state_dir=self.state_dir,
            identity=identity,
            in_features=IN_FEATURES,
            out_features=cfg.training.hidden,
            pool=pool,
        )
        await prestart
        for pgid in stale:
            self.log(Level.WARNING, f"killed stale compile worker group {pgid} from a previous run")
        self.forge.recover(report)
        if cfg.tezzeret.polling.initial_full_scan:
            self.forge.discover()
        if self.recompile_all:
            for bid in self.catalog.ids():
                self.forge.enqueue(bid, reason="--recompile-all", force=True)
        self._forge_tasks = [
            self._spawn(self.forge.run()),
            self._spawn(self.forge.monitor()),
            self._spawn(self.forge.maintain()),
        ]
        if cfg.training.enabled and not self.forge_only:
            self._trainer_task = self._spawn(self._train())
        # torch and friends are loaded: move their long-lived objects out of the cyclic GC's sight, so
        # collections triggered by the event loop's churn stop rescanning them (measured: WAL group commit
        # 37-51k -> 47-53k commits/s, 10k-transaction recovery without 200 ms outliers).
        gc.freeze()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        """Any engine task dying with an error stops the engine with that error (exit code 1)."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.failure = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ForgeFatal) else str(exc)
            self.request_stop(f"failure: {self.failure}")

    async def _pump(self) -> None:
        while True:
            event = await self._events.get()
            await self.bus.publish_event(event)

    async def _apply(self, event: AnyEvent) -> None:
        self.aggregator.apply(event)
        if event.event_id == self._last_event_id:
            self._drained.set()

    async def _publish_snapshots(self) -> None:
        period = 1.0 / self.config.ui.refresh_hz
        while True:
            self._snapshot = self.aggregator.snapshot()
            await asyncio.sleep(period)

    def _kernel_source(self) -> KernelSource:
        if not self.config.training.compile:
            return EagerKernelSource(self.catalog)
        s = settings_for(self.config.tezzeret.compilation.default_strategy)
        assert self.library is not None
        return LibraryKernelSource(self.library, s.backend, s.mode or "default")

    async def _train(self) -> None:
        """Start once the forge has a first kernel (or is idle): seeds need something to graft."""
        assert self.forge is not None and self.library is not None
        if self.config.training.compile:
            while not self.library.ranked() and not self.forge.is_idle():
                await asyncio.sleep(0.5)
        trainer = Trainer(
            self.config.training, self.catalog, self._kernel_source(), self.emit, self.control, self.state_dir / "data"
        )
        await asyncio.to_thread(trainer.run)

    def _quarantined(self, blueprint_id: str, version_dir: str, reason: str) -> None:
        """A stored kernel failed verification (at start, in the forge or in the trainer): recompile it."""
        self.emit(
            ArtifactQuarantined(
                source=Subsystem.URZA, blueprint_id=blueprint_id, artifact_id=version_dir, reason=reason
            )
        )
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._requeue, blueprint_id)

    def _requeue(self, blueprint_id: str) -> None:
        if self.forge is not None and blueprint_id in self.catalog:
            self.forge.enqueue(blueprint_id, reason="artifact quarantined", force=True)

    # ------------------------------------------------------------------ commands

    async def handle_command(self, command: AnyCommand) -> None:
        forge = self.forge
        assert forge is not None
        match command:
            case Recompile():
                strategy = command.strategy or Strategy.STANDARD
                added = forge.enqueue(
                    command.blueprint_id, reason=f"operator recompile ({strategy})", strategy=strategy, force=True
                )
                if not added and command.blueprint_id in self.catalog:
                    self.log(Level.WARNING, f"recompile {command.blueprint_id}: already queued or compiling")
            case RecompileAll():
                strategy = command.strategy or Strategy.STANDARD
                for bid in self.catalog.ids():
                    forge.enqueue(bid, reason=f"operator recompile all ({strategy})", strategy=strategy, force=True)
            case SetConservativeMode(active=True):
                forge.conservative.enter("operator", "operator")
            case SetConservativeMode(active=False):
                forge.conservative.leave("operator", "operator")
            case PauseTraining():
                self.control.set_paused(command.paused)
            case Shutdown():
                self.request_stop(f"shutdown command ({command.reason})")

    # ------------------------------------------------------------------ stopping

    def request_stop(self, reason: str) -> None:
        if not self.stopped.is_set():
            self.stop_reason = reason
            self.stopped.set()

    async def run_until_done(self, epochs: int | None) -> None:
        """With an epoch budget: until training ran it and the forge queue is empty. Else until stopped."""
        if epochs is None and not self.forge_only:
            await self.stopped.wait()
            return
        done = asyncio.create_task(self._work_done())
        stop = asyncio.create_task(self.stopped.wait())
        await asyncio.wait({done, stop}, return_when=asyncio.FIRST_COMPLETED)
        for t in (done, stop):
            t.cancel()
        self.request_stop("work done")

    async def _work_done(self) -> None:
        assert self.forge is not None
        if self._trainer_task is not None:
            await asyncio.shield(self._trainer_task)
        await asyncio.sleep(0.2)
        await self.forge.wait_idle()

    async def stop(self) -> None:
        """Stop training and the forge, leave the WAL consistent, drain telemetry, close the bus."""
        self.control.stop()
        if self._trainer_task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._trainer_task), 30)
        for task in self._forge_tasks:
            task.cancel()
        await asyncio.gather(*self._forge_tasks, return_exceptions=True)
        if self.forge is None and self._pool is not None:  # start-up failed after workers were spawned
            await self._pool.close()
        if self.forge is not None:
            await self.forge.close()
            with contextlib.suppress(Exception):
                self.forge.emit_wal_status()
                self.emit(MetricsReport(source=Subsystem.TEZZERET, metrics=self.forge.metrics()))
        if self.wal is not None:
            await asyncio.to_thread(self.wal.close)
        last = EngineStopping(reason=self.stop_reason or "stopped")
        self._last_event_id = last.event_id
        self.emit(last)
        # The telemetry stream is ordered: once the aggregator applied the last event, it has applied all.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._drained.wait()
        self._snapshot = self.aggregator.snapshot()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.bus.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def log(self, level: Level, message: str) -> None:
        self.emit(LogLine(level=level, message=message))
