"""The engine: one asyncio loop running the forge, the library, the training loop and the bus.

Clients (the dashboard, the headless runner, tests) see it through two calls: `latest()` for the
newest snapshot and `send(command)` for commands, which travel over the bus signed with the operator
key, like any control room's. Events flow one way: components emit -> aggregator (in-process, in order,
so the engine's own picture is complete whatever Redis does) -> snapshot; a copy of each event goes to
the telemetry stream, best effort, for outside consumers. Control rooms elsewhere get signed frames and
a heartbeat (broadcast.py). Every command is checked (signature, freshness, replay, target) before it
is obeyed; a refused one is dead-lettered by the bus and shown in the event log.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import platform
import re
import socket
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import msgspec

from esper_tui.engine import keys
from esper_tui.engine.aggregator import Aggregator
from esper_tui.engine.broadcast import Broadcaster, BusWatch, EngineIdentity
from esper_tui.engine.bus import Bus, BusError, create_bus
from esper_tui.engine.bus.auth import CommandRejected, CommandVerifier, FrameSigner, operator_name, sign_command
from esper_tui.engine.config import EsperConfig, override, shared_forge_problem, wal_directory
from esper_tui.engine.config.ranges import POLICY_PATTERN
from esper_tui.engine.contracts import (
    AnyCommand,
    AnyEvent,
    ArtifactQuarantined,
    CommandObeyed,
    CommandRefused,
    EngineStarted,
    EngineStopping,
    LogLine,
    MetricsReport,
    PauseTraining,
    Recompile,
    RecompileAll,
    Rollback,
    SetConservativeMode,
    SetPolicy,
    Shutdown,
    TrainingWaiting,
)
from esper_tui.engine.forge.builders import RemoteBuilder
from esper_tui.engine.forge.cluster import ForgeCluster, open_breakers
from esper_tui.engine.forge.forge import Forge, ForgeFatal, worker_pool
from esper_tui.engine.forge.jobqueue import ForgeChannel, open_channel
from esper_tui.engine.forge.sandbox import WorkerPool, reap_stale
from esper_tui.engine.fsutil import StateDirError, lock_state_dir
from esper_tui.engine.history import Details, LogEntry
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.kernels.device import DeviceError, resolve_device
from esper_tui.engine.kernels.pipelines import aggressive_refusal, settings_for
from esper_tui.engine.kernels.probe import KernelTarget, known_target
from esper_tui.engine.kernels.shapes import SlotShape, vector
from esper_tui.engine.library.base import KernelLibrary, LibraryStats
from esper_tui.engine.library.factory import LibraryUnavailable, is_shared, open_library
from esper_tui.engine.library.signing import SigningKeyError, load_or_create_key
from esper_tui.engine.library.store import Identity
from esper_tui.engine.library.userbp import UserBlueprintError, extend_catalog
from esper_tui.engine.linequota import LineQuota
from esper_tui.engine.nissa import AlertEvaluator, EngineFacts, MetricsServer, NissaMetrics, PortInUse
from esper_tui.engine.recorder import Recorder, recording_path
from esper_tui.engine.run_info import config_entries, masked_url
from esper_tui.engine.simic.status import view as simic_view
from esper_tui.engine.snapshot import Snapshot
from esper_tui.engine.training.control import TrainingControl
from esper_tui.engine.training.faults import FaultPlan
from esper_tui.engine.training.process import Start, TaskLoaded, TaskRefusedError, TrainerProcess
from esper_tui.engine.training.task_spec import spec_problem
from esper_tui.engine.vocabulary import EngineState, Level, Strategy, Subsystem, new_id
from esper_tui.engine.wal.writer import WalError, WriteAheadLog

log = logging.getLogger(__name__)

IN_FEATURES = 40  # MNIST-1D sequences; seeds map the host input to a hidden layer
OUTBOX_LIMIT = 50_000
"""Events waiting for the telemetry stream; beyond this the oldest copies are dropped (and counted), never
the engine's own view, which was updated before an event ever reached the outbox."""
REFUSALS_SHOWN = 5
REFUSALS_WINDOW_S = 10.0
"""Refused commands get a line each in the event log up to REFUSALS_SHOWN per window, then one summary line:
a flood of forged commands must not push out what the operator needs to see (the bus counts every one)."""
DRAIN_S = 5.0  # at stop: how long the last telemetry copies, the final bus reading and the last frame may take
TRAINER_STOP_S = 30.0  # at stop: how long the training process may take to finish its epoch and checkpoint
SIMIC_POLL_S = 3.0  # how often the Simic panel reads <state>/simic/status.json


class EngineError(RuntimeError):
    """Start-up or runtime failure worth one clear line to the operator (exit code 1)."""

    exit_code = 1


class EngineUsageError(EngineError):
    """A start-up failure the operator's arguments caused (a metrics port in use): exit code 2."""

    exit_code = 2


def key_origin(spec: keys.KeySpec, state_dir: Path, configured: str) -> str:
    """Where `keys.load_key` finds the key for `spec` (same order): what an operator must copy or set."""
    if os.environ.get(spec.env):
        return f"${spec.env}"
    if configured:
        return spec.config_key
    return str(spec.path(state_dir))


class Engine:
    def __init__(
        self,
        config: EsperConfig,
        state_dir: Path,
        *,
        redis_url: str | None = None,
        forge_only: bool = False,
        recompile_all: bool = False,
        faults: FaultPlan | None = None,
    ) -> None:
        self.config = config
        self.faults = faults or FaultPlan()
        self.state_dir = state_dir.resolve()
        self.forge_only = forge_only
        self.recompile_all = recompile_all
        self.run_id = new_id()[:12]
        self.bus: Bus = create_bus(config.bus, redis_url, run_id=self.run_id)
        self.redis_url = redis_url
        self.catalog = Catalog()
        compilation = config.tezzeret.compilation
        self.aggregator = Aggregator(
            max_concurrency=compilation.max_concurrent_jobs,
            aggressive_pipeline=compilation.enable_aggressive_pipeline,
            scrollback=config.ui.event_scrollback,
        )
        self.control = TrainingControl()
        self.stopped = asyncio.Event()
        self.stop_reason = ""
        self.failure: str | None = None
        self.failure_code = 1  # the exit code a failure ends the command with (2: the operator's to fix)
        self.operator = operator_name()
        self.started_ts = 0.0  # wall clock at start(): commands issued earlier are refused
        self.frame_public_key = ""  # hex Ed25519 key control rooms pin to check frames
        self.operator_key_origin = ""  # where the operator key lives (a file, a variable, a config key)
        self.telemetry_dropped = 0  # event copies the outbox had no room for (the engine's view kept them)
        self.refusals = LineQuota(REFUSALS_SHOWN, REFUSALS_WINDOW_S)
        self._operator_key: bytes | None = None
        self._signing_key: bytes | None = None  # the library's: it signs training checkpoints too
        self._verifier: CommandVerifier | None = None
        self.broadcaster: Broadcaster | None = None
        self._watch: BusWatch | None = None
        self._snapshot: Snapshot | None = None
        self._outbox: asyncio.Queue[AnyEvent] = asyncio.Queue(maxsize=OUTBOX_LIMIT)
        self._tasks: list[asyncio.Task[Any]] = []
        self._broadcast_tasks: list[asyncio.Task[Any]] = []
        self._pump_task: asyncio.Task[Any] | None = None
        self._shut_down = False
        self._trainer_task: asyncio.Task[Any] | None = None
        self.trainer: TrainerProcess | None = None
        self._forge_tasks: list[asyncio.Task[Any]] = []
        self._forge_channel: ForgeChannel | None = None
        self._remote: RemoteBuilder | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock_fd: int | None = None
        self.forge: Forge | None = None
        self.wal: WriteAheadLog | None = None
        self.library: KernelLibrary | None = None
        self._pool: WorkerPool | None = None
        self.recorder: Recorder | None = None
        self._recorder_task: asyncio.Task[Any] | None = None
        self._loop_thread: int | None = None
        self.forge_fatal: str | None = None
        self.wal_recovery_s: float | None = None
        self.kernel_target: KernelTarget | None = None  # what kernels here are built for, probed at start
        self.alerts = AlertEvaluator(config.nissa)
        self.nissa = NissaMetrics(self.alerts, self.latest, self.facts)
        self._metrics_server: MetricsServer | None = None

    # ------------------------------------------------------------------ the client seam

    def latest(self) -> Snapshot | None:
        return self._snapshot

    def details(self) -> Details:
        """The history behind the detail views, frozen now (the dashboard asks when a detail screen opens)."""
        return self.aggregator.details()

    def event_log(self) -> list[LogEntry]:
        """The event log's scrollback, oldest first (what the focused or filtered log panel reads)."""
        return list(self.aggregator.history.log)

    async def send(self, command: AnyCommand) -> None:
        """The local dashboard's path: stamped and signed like any control room's command, checked the same."""
        key = self._operator_key
        if key is None:
            raise EngineError("the engine is not started: no operator key to sign commands with")
        stamped = msgspec.structs.replace(command, ts=time.time(), issued_by=self.operator, target=self.run_id)
        await self.bus.publish_command(sign_command(key, stamped))

    def emit(self, event: AnyEvent) -> None:
        """Thread-safe: the training thread emits too. Its events are applied on the loop, in emission order."""
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._ingest(event)
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the engine is gone, nobody to tell
                loop.call_soon_threadsafe(self._ingest, event)

    def _ingest(self, event: AnyEvent) -> None:
        """The engine's own view first, synchronously; then a copy for the telemetry stream, best effort.

        A fault in folding one event is logged, not raised: it must not fail the forge or the trainer that
        emitted it (the training thread's events already arrive as loop callbacks, where nothing could catch it).
        """
        try:
            self.aggregator.apply(event)
            self.nissa.observe(event)
            changes = self.alerts.observe(event)
        except Exception:
            log.exception("engine %s: the aggregator failed on %s", self.run_id, type(event).__name__)
            changes = []
        if isinstance(event, Rollback) and self.forge is not None:  # Tamiyo's emergency: the forge plays safe
            self.forge.conservative.enter(f"tamiyo emergency: {event.reason}", "breaker")
        self._queue_telemetry(event)
        for change in changes:  # after the event that caused them, and folded like any other event
            self._ingest(change)

    def _queue_telemetry(self, event: AnyEvent) -> None:
        """A copy of `event` for the telemetry stream, where something can read it: on the embedded bus nothing
        outside this process can, and nothing in it does (the engine's view never comes from telemetry), so copies
        there would only fill memory (up to drop_threshold events, about 8 MB, found by benchmarks.memprofile)."""
        if not self.bus.readable_elsewhere:
            return
        if self._outbox.full():
            self._outbox.get_nowait()
            self._outbox.task_done()
            self.telemetry_dropped += 1
        self._outbox.put_nowait(event)

    def identity_line(self) -> str:
        """What an operator needs to attach elsewhere: the run, the key to pin, the key to share."""
        return f"engine {self.run_id} frames signed by {self.frame_public_key}; operator key {self.operator_key_origin}"

    # ------------------------------------------------------------------ lifecycle

    def _lock_state_dir(self) -> None:
        try:
            self._lock_fd = lock_state_dir(self.state_dir)
        except StateDirError as exc:
            raise EngineError(str(exc)) from None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        cfg = self.config
        if cfg.training.enabled and not self.forge_only and (problem := spec_problem(cfg.training.task)) is not None:
            raise EngineUsageError(problem)  # its form only: the task itself is loaded in the training process
        try:  # `auto` and `cuda` become the device itself: the training process, the forge and the library agree
            device = resolve_device(cfg.training.device)
        except DeviceError as exc:
            raise EngineUsageError(str(exc)) from None
        if device != cfg.training.device:
            cfg = self.config = override(cfg, {"training.device": device})
        self._lock_state_dir()
        self.started_ts = time.time()
        try:
            key = self._library_key()
            self._signing_key = key
            self._operator_key = keys.load_or_create_key(keys.OPERATOR_KEY, self.state_dir, cfg.bus.operator_key)
            frame_key = keys.load_or_create_key(keys.FRAME_KEY, self.state_dir, cfg.bus.frame_key)
        except (SigningKeyError, keys.BadKey) as exc:
            raise EngineError(str(exc)) from None
        except OSError as exc:
            raise EngineError(f"keys in {self.state_dir / 'keys'}: {exc.strerror or exc}") from None
        self._verifier = CommandVerifier(self._operator_key, skew_s=cfg.bus.command_skew_s, not_before=self.started_ts)
        signer = FrameSigner(frame_key)
        self.frame_public_key = signer.public_key
        self.operator_key_origin = key_origin(keys.OPERATOR_KEY, self.state_dir, cfg.bus.operator_key)
        if cfg.nissa.port:  # first of the services: a port in use fails the start before any worker is spawned
            server = MetricsServer(self.nissa, self.latest, self.facts, cfg.nissa)
            try:
                await server.start()
            except PortInUse as exc:
                raise EngineUsageError(str(exc)) from None
            self._metrics_server = server
        # Stale workers of a crashed run go first; then fresh ones start while this process probes the CPU.
        stale = reap_stale(self.state_dir / "workers")
        self._pool = pool = worker_pool(cfg.tezzeret, self.state_dir, lambda why: self.log(Level.WARNING, why))
        prestart = asyncio.create_task(pool.prestart(cfg.tezzeret.compilation.max_concurrent_jobs))
        target, probe_problem = await known_target()  # cached, or asked of a child: never inductor in the engine
        self.kernel_target = target
        identity = Identity.here(target.cpu_isa, device=device, compiler=target.compiler)
        try:
            library = await asyncio.to_thread(
                functools.partial(
                    open_library,
                    cfg.library,
                    self.state_dir,
                    key,
                    self.catalog,
                    identity=identity,  # the probe's: a library left to ask inductor itself would load it here
                    on_quarantine=self._quarantined,
                )
            )
        except LibraryUnavailable as exc:
            await pool.close()
            raise EngineError(f"library: {exc}") from None
        self.library = library
        try:  # the catalog = the built-ins + the library's user blueprints; their code never runs in this process
            pending_user = await asyncio.to_thread(extend_catalog, self.catalog, library.blueprints)
        except UserBlueprintError as exc:
            pending_user = []
            self.log(Level.WARNING, f"user blueprints: {exc}; the built-in catalog only")
        wal_dir = wal_directory(cfg, self.state_dir)
        opened = time.monotonic()
        try:
            wal, report = await asyncio.to_thread(
                WriteAheadLog.open, wal_dir, durability=cfg.tezzeret.wal.durability_mode
            )
        except (WalError, OSError) as exc:
            raise EngineError(f"WAL {wal_dir}: {exc}") from None
        self.wal = wal
        self.wal_recovery_s = time.monotonic() - opened
        try:
            await self.bus.start()
        except Exception as exc:
            raise EngineError(f"bus {self.bus.name}: cannot start: {exc}") from None
        if self.bus.readable_elsewhere:
            self._pump_task = self._spawn(self._pump())
        self._spawn(self.bus.consume_commands("engine", f"engine-{self.run_id}", self._obey))
        self._spawn(self._publish_snapshots())
        self._spawn(self._evaluate_alerts())
        self._spawn(self._watch_simic())
        await self._start_recorder()
        self._start_broadcast(signer)
        import torch

        compiles = settings_for(cfg.tezzeret.compilation.default_strategy, device)  # what the training process serves
        self.emit(
            EngineStarted(
                run_id=self.run_id,
                bus=self.bus.name,
                state_dir=str(self.state_dir),
                device=device,
                torch_version=str(torch.__version__),
                training=cfg.training.enabled and not self.forge_only,
                compile_enabled=cfg.training.compile,
                compile_backend=compiles.backend if cfg.training.compile else None,
                compile_mode=(compiles.mode or "default") if cfg.training.compile else None,
                python_version=platform.python_version(),
                cpu_isa=target.cpu_isa,
                host=socket.gethostname(),
                pid=os.getpid(),
                library=" + ".join(masked_url(u) for u in (cfg.library.catalog_url, cfg.library.artifacts_url) if u)
                or str(self.state_dir / "library"),
                key_fingerprints={
                    "library signing key": keys.fingerprint(key),
                    "operator key": keys.fingerprint(self._operator_key),
                    "frame key (public)": self.frame_public_key[:16],
                },
                config=config_entries(cfg),
            )
        )
        self.log(Level.INFO, self.identity_line())
        self.forge = Forge(
            config=cfg.tezzeret,
            catalog=self.catalog,
            library=library,
            wal=wal,
            emit=self.emit,
            state_dir=self.state_dir,
            identity=identity,
            pool=pool,
            builder=self._remote_builder(library, identity),
        )
        await prestart
        if probe_problem:
            self.log(Level.WARNING, probe_problem)
        for pgid in stale:
            self.log(Level.WARNING, f"killed stale compile worker group {pgid} from a previous run")
        # The default task's MLP slots all read the input and write the hidden layer: kernels for that shape can
        # compile before the training process reports its slots (and with --forge-only, which trains nothing).
        # Another task's shapes are known only once it has loaded (_task_loaded).
        if cfg.training.task == "mnist1d":
            self.forge.set_shapes([vector(IN_FEATURES, cfg.training.hidden)], scan=False)
        self.forge.recover(report)
        if cfg.tezzeret.polling.initial_full_scan:
            self.forge.discover()
        for name in pending_user:  # a submission awaits validation, scan or not
            self.forge.enqueue(name, reason="user blueprint, not yet validated")
        if self.recompile_all:
            for bid in self.catalog.ids():
                self.forge.enqueue(bid, reason="--recompile-all", force=True)
        self._forge_tasks = [
            self._spawn(self.forge.run()),
            self._spawn(self.forge.monitor()),
            self._spawn(self.forge.maintain()),
            *self._cluster_tasks(self.forge, identity),
        ]
        if (every_min := cfg.tezzeret.polling.refresh_interval_minutes) > 0:
            self._forge_tasks.append(self._spawn(self._rescan_user_blueprints(self.forge, library, every_min * 60)))
        if cfg.training.enabled and not self.forge_only:
            self._trainer_task = self._spawn(self._train())
        # torch and friends are loaded: move their long-lived objects out of the cyclic GC's sight, so
        # collections triggered by the event loop's churn stop rescanning them (measured: WAL group commit
        # 37-51k -> 47-53k commits/s, 10k-transaction recovery without 200 ms outliers).
        gc.freeze()

    async def _rescan_user_blueprints(self, forge: Forge, library: KernelLibrary, every_s: float) -> None:
        """tezzeret.polling.refresh_interval_minutes: user blueprints added since the start join the catalog, and
        the forge queues the unvalidated ones (the training process looks again on its own)."""
        while True:
            await asyncio.sleep(every_s)
            try:
                pending = await asyncio.to_thread(extend_catalog, self.catalog, library.blueprints)
            except UserBlueprintError as exc:
                self.log(Level.WARNING, f"user blueprints: {exc}; looking again in {every_s:g} s")
                continue
            for name in pending:
                forge.enqueue(name, reason="user blueprint, not yet validated")

    def _library_key(self) -> bytes:
        """The signing key. A shared library's is never made up here: every machine verifies its versions with
        the one key, and an engine with another key would find them all failing (library/ownkey.py)."""
        cfg = self.config.library
        if not is_shared(cfg):
            return load_or_create_key(self.state_dir, cfg.signing_key)
        try:
            return keys.load_key(keys.SIGNING_KEY, self.state_dir, cfg.signing_key)
        except keys.KeyMissing:
            raise EngineError(
                f"no signing key for the shared library ({keys.SIGNING_KEY.path(self.state_dir)}, "
                f"{keys.SIGNING_KEY.env} or {keys.SIGNING_KEY.config_key}): an engine never makes one up for a "
                f"shared library; set {keys.SIGNING_KEY.env} to the library's key, the one its forge workers have"
            ) from None

    def _channel(self, identity: Identity) -> ForgeChannel | None:
        """The forge job queue on the bus's Redis, when the library is shared (else there is no one to share with)."""
        if self.redis_url is None or not is_shared(self.config.library):
            return None
        assert self._signing_key is not None
        if self._forge_channel is None:
            self._forge_channel = open_channel(self.redis_url, self.config, self._signing_key, identity.fingerprint())
        return self._forge_channel

    def _remote_builder(self, library: KernelLibrary, identity: Identity) -> RemoteBuilder | None:
        """With no compile workers of its own (`--forge-workers 0`), the engine queues jobs for forge workers."""
        if self.config.tezzeret.compilation.max_concurrent_jobs > 0:
            return None
        channel = self._channel(identity)
        if channel is None:
            raise EngineUsageError(shared_forge_problem(self.config, self.redis_url) or "no forge job queue")
        self._remote = RemoteBuilder(channel, library, self.run_id)
        return self._remote

    def _cluster_tasks(self, forge: Forge, identity: Identity) -> list[asyncio.Task[Any]]:
        """Publish the forge's bounds to workers and list them, whenever a shared library meets a Redis bus."""
        channel = self._channel(identity)
        if channel is None:
            return []

        def bounds() -> tuple[bool, str, list[str]]:
            view = forge.conservative
            return view.active, view.reason, open_breakers({b.name: b.state for b in forge.board.views()})

        remote = self._remote

        def waiting() -> int:
            """With no compile workers of its own, every job the forge holds waits for a forge worker."""
            return forge.queue_depth + remote.awaiting_worker if remote is not None else 0

        cluster = ForgeCluster(
            channel,
            self.run_id,
            bounds,
            self.aggregator.set_forge_workers,
            self.log,
            waiting=waiting,
            no_worker_s=self.config.nissa.no_worker_s,
        )
        tasks = [self._spawn(cluster.publish_control()), self._spawn(cluster.watch_workers())]
        if self._remote is not None:
            tasks.append(self._spawn(self._remote.follow()))
        return tasks

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        """Any engine task dying with an error stops the engine with that error (exit code 1). The first one is
        the cause: later ones (a trainer killed by the stop it started) do not replace it."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self.failure is None:
            plain = isinstance(exc, ForgeFatal | TaskRefusedError)  # their message says it all
            self.failure = str(exc) if plain else f"{type(exc).__name__}: {exc}"
            if isinstance(exc, TaskRefusedError):
                self.failure_code = TaskRefusedError.exit_code
            if isinstance(exc, ForgeFatal):
                self.forge_fatal = str(exc)
            self.request_stop(f"failure: {self.failure}")

    async def _pump(self) -> None:
        """Copies of the events for the telemetry stream. Best effort by design: publish_event drops (and counts)
        what the bus cannot take, and never raises for backend trouble."""
        while True:
            event = await self._outbox.get()
            try:
                await self.bus.publish_event(event)
            finally:
                self._outbox.task_done()

    async def _start_recorder(self) -> None:
        """Record this run's snapshots to <state>/runs/<run_id>.esrec (config [recording])."""
        rec = self.config.recording
        if not rec.enabled:
            return
        self.recorder = recorder = Recorder(
            recording_path(self.state_dir, self.run_id),
            self.latest,
            hz=self.config.ui.refresh_hz,
            level=rec.compression_level,
            keep=rec.keep_runs,
            max_bytes=rec.max_total_mb * 2**20,
            on_error=lambda why: self.log(Level.WARNING, why),
        )
        for old in await recorder.open():
            self.log(Level.INFO, f"recording {old.name} deleted (retention)")
        self._recorder_task = self._spawn(recorder.run())

    async def _publish_snapshots(self) -> None:
        period = 1.0 / self.config.ui.refresh_hz
        while True:
            self._snapshot = self.aggregator.snapshot()
            await asyncio.sleep(period)

    async def _watch_simic(self) -> None:
        """Simic's progress for the control room (it trains in its own process, `esper-tui simic train`): its status
        file read every few seconds off the loop; a missing or unreadable one shows no panel."""
        while True:
            self.aggregator.set_simic(await asyncio.to_thread(simic_view, self.state_dir))
            await asyncio.sleep(SIMIC_POLL_S)

    async def _evaluate_alerts(self) -> None:
        """Nissa's time-based rules (windows that expire, the bus backlog), once a second; and the summary of
        refused commands held back from the event log."""
        while True:
            for change in self.alerts.tick(self._snapshot, time.time()):
                self.emit(change)
            if (held := self.refusals.summary("commands rejected")) is not None:
                self.log(Level.WARNING, held)
            await asyncio.sleep(1.0)

    def facts(self) -> EngineFacts:
        """What /metrics and /healthz need beyond the snapshot."""
        stats = self.library.stats if self.library is not None else LibraryStats()
        trainer = self.trainer
        return EngineFacts(  # the forge's loads here, the trainer's in its own process
            run_id=self.run_id,
            cache_hits=stats.cache_hits + (trainer.cache_hits if trainer else 0),
            cache_misses=stats.cache_misses + (trainer.cache_misses if trainer else 0),
            wal_recovery_s=self.wal_recovery_s,
            forge_fatal=self.forge_fatal,
            failure=self.failure,
        )

    def _start_broadcast(self, signer: FrameSigner) -> None:
        """Frames and heartbeat for control rooms elsewhere, and the bus's vital signs for every snapshot."""
        identity = EngineIdentity(
            run_id=self.run_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_ts=self.started_ts,
            state_dir=str(self.state_dir),
        )
        self.broadcaster = broadcaster = Broadcaster(
            self.bus,
            signer,
            identity,
            latest=self.latest,
            state=lambda: EngineState.STOPPING if self.stopped.is_set() else EngineState.RUNNING,
            refresh_hz=self.config.ui.refresh_hz,
            details=self.aggregator.details,
        )
        self._watch = watch = BusWatch(
            self.bus,
            self.run_id,
            on_view=self.aggregator.set_bus,
            extra_dropped=lambda: self.telemetry_dropped,
            operator_key=self._operator_key,
            skew_s=self.config.bus.command_skew_s,
        )
        self._broadcast_tasks = [
            self._spawn(broadcaster.frames()),
            self._spawn(broadcaster.heartbeats()),
            self._spawn(watch.run()),
            self._spawn(broadcaster.details_on_request(lambda: watch.details_wanted)),
        ]

    async def _train(self) -> None:
        """The trainer runs in a process of its own (training/process.py), mirroring `self.control`; its events
        arrive as this process's own. It loads the task first, then trains once `_begin_training` says so."""
        assert self._signing_key is not None
        if self.control.stopped:  # stopped already: no process to start only to stop it
            return
        self.emit(TrainingWaiting(source=Subsystem.TOLARIA, reason="the training process to start (torch, data)"))
        start = Start(
            config=self.config,
            state_dir=str(self.state_dir),
            signing_key=self._signing_key,
            faults=[str(f) for f in self.faults.faults],
            kernel_target=self.kernel_target,
            run_id=self.run_id,
        )
        self.trainer = TrainerProcess(
            start, self.control, self.emit, self._quarantined, self.log, on_loaded=self._task_loaded
        )
        await self.trainer.run()

    def _task_loaded(self, loaded: TaskLoaded) -> None:
        """The training process loaded the task (the engine never imports it): say what it is, then let it train
        once the forge has a first kernel (or is idle): seeds need something to graft."""
        direction = "higher" if loaded.metric.higher_is_better else "lower"
        slots = ", ".join(f"{s.name} {SlotShape.parse(s.shape)}" for s in loaded.slots)
        self.log(
            Level.INFO,
            f"task {loaded.task} on {loaded.device}: {loaded.metric.name} ({direction} is better), slots {slots}",
        )
        shapes = list(dict.fromkeys(SlotShape.parse(s.shape) for s in loaded.slots))
        if self.forge is not None:  # every fitting blueprint compiles for each slot shape it lacks a kernel for
            self.forge.set_shapes(shapes)
        self._spawn(self._begin_training(shapes))

    async def _begin_training(self, shapes: list[SlotShape]) -> None:
        """Begin once the library holds a kernel for one of the task's own slot shapes (a kernel of another
        task's shape grafts nowhere here), or the forge has nothing left to try."""
        assert self.forge is not None and self.library is not None and self.trainer is not None
        library, forge = self.library, self.forge

        def ready() -> bool:
            return forge.is_idle() or any(library.ranked(shape) for shape in shapes)

        if self.config.training.compile and not ready():
            self.emit(TrainingWaiting(source=Subsystem.TOLARIA, reason="a first kernel from the forge"))
            while not ready() and not self.control.stopped:
                await asyncio.sleep(0.5)
        if not self.control.stopped:
            self.trainer.begin()

    def _quarantined(self, blueprint_id: str, version_dir: str, reason: str) -> None:
        """A stored kernel failed verification (at start, in the forge or in the trainer): recompile it."""
        self.emit(
            ArtifactQuarantined(
                source=Subsystem.URZA, blueprint_id=blueprint_id, artifact_id=version_dir, reason=reason
            )
        )
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._requeue, blueprint_id, version_dir)

    def _requeue(self, blueprint_id: str, version_label: str) -> None:
        if self.forge is not None and blueprint_id in self.catalog:
            self.forge.requeue_quarantined(blueprint_id, version_label)

    # ------------------------------------------------------------------ commands

    async def _obey(self, command: AnyCommand) -> None:
        """The bus's handler: check the command, then carry it out. A refused command raises
        CommandRejected, which the bus dead-letters and counts; the event log says who and why."""
        kind, cid, who = type(command).__name__, command.command_id, command.issued_by
        try:
            self._check(command)
        except CommandRejected as exc:
            if self.refusals.admit():
                self.emit(
                    CommandRefused(
                        command_type=kind, command_id=cid, issued_by=who, sender_verified=exc.signed, reason=str(exc)
                    )
                )
            raise
        self.emit(CommandObeyed(command_type=kind, command_id=cid, issued_by=who))
        await self.handle_command(command)

    def _check(self, command: AnyCommand) -> None:
        """One rule for every backend: signed with the operator key, fresh, not replayed, for this run."""
        verifier = self._verifier
        assert verifier is not None  # set by start() before any consumer runs
        verifier.check(command)
        if command.target and command.target != self.run_id:
            raise CommandRejected(f"meant for run {command.target}, this is {self.run_id}")

    async def handle_command(self, command: AnyCommand) -> None:
        """Carry out a command that passed the checks."""
        forge = self.forge
        assert forge is not None
        if isinstance(command, Recompile | RecompileAll) and (
            why := aggressive_refusal(
                command.strategy, enabled=self.config.tezzeret.compilation.enable_aggressive_pipeline
            )
        ):
            what = command.blueprint_id if isinstance(command, Recompile) else "all"
            self.log(Level.WARNING, f"recompile {what} ({command.strategy}) refused: {why}")
            return
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
            case PauseTraining() if self._training_over():
                self.log(Level.WARNING, f"{'pause' if command.paused else 'resume'} ignored: training is over")
            case PauseTraining():
                self.control.set_paused(command.paused)
            case Shutdown():
                self.request_stop(f"shutdown command ({command.reason})")
            case SetPolicy() if not re.match(POLICY_PATTERN, command.policy):
                self.log(Level.WARNING, f"policy {command.policy!r} refused: heuristic, learned or a *.policy file")
            case SetPolicy() if self.trainer is None or self._training_over():
                self.log(Level.WARNING, f"policy {command.policy} ignored: no training running")
            case SetPolicy():
                assert self.trainer is not None
                self.trainer.choose_policy(command.policy)

    def _training_over(self) -> bool:
        """Training ran and ended (finished or failed): a pause has nothing left to hold."""
        return self._trainer_task is not None and self._trainer_task.done()

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
        """Training ran its epochs and the forge is idle. An eager run (`--eager`) is done with its training:
        its seeds need no kernel, and it used to compile the whole catalog after its last epoch; what the forge
        had not compiled is queued again by the next start's scan."""
        assert self.forge is not None
        if self._trainer_task is not None:
            await asyncio.shield(self._trainer_task)
            if not self.config.training.compile:
                return
        await asyncio.sleep(0.2)
        await self.forge.wait_idle()

    async def stop(self) -> None:
        """Stop training and the forge, leave the WAL consistent, drain telemetry, close the bus. Once."""
        if self._shut_down:
            return
        self._shut_down = True
        self.control.stop()
        if self._trainer_task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._trainer_task), TRAINER_STOP_S)
            if not self._trainer_task.done() and self.trainer is not None:
                self.log(Level.ERROR, f"training did not stop within {TRAINER_STOP_S:g} s: killed")
                self.trainer.kill()
                await asyncio.gather(self._trainer_task, return_exceptions=True)
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
        if self.library is not None:
            self.library.close()
        # Applied at once, after every earlier event (the trainer's arrived before its thread was seen to end):
        # the aggregator now holds the whole run, whatever became of the telemetry copies.
        self.emit(EngineStopping(reason=self.stop_reason or "stopped"))
        await self._drain()
        self._snapshot = self.aggregator.snapshot()
        if self.recorder is not None:
            await self.recorder.close(self._snapshot)  # the last record is this final snapshot
            if self._recorder_task is not None:
                await asyncio.gather(self._recorder_task, return_exceptions=True)
        if self.broadcaster is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_S):
                    await self.broadcaster.finish(self._snapshot)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.bus.close()
        if self._metrics_server is not None:  # last: a scrape during shutdown still gets the final picture
            await self._metrics_server.stop()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _drain(self) -> None:
        """Bounded, and only for outside consumers: the last telemetry copies out, a final bus reading in."""
        for task in self._broadcast_tasks:  # the final frame and heartbeat come from finish(), nothing after
            task.cancel()
        await asyncio.gather(*self._broadcast_tasks, return_exceptions=True)
        if self._pump_task is not None:
            with contextlib.suppress(TimeoutError, BusError):
                async with asyncio.timeout(DRAIN_S):
                    await self._outbox.join()
                    await self.bus.flush()
        if self._watch is not None:
            with contextlib.suppress(TimeoutError, BusError):
                async with asyncio.timeout(DRAIN_S):
                    self.aggregator.set_bus(await self._watch.measure())

    def log(self, level: Level, message: str) -> None:
        self.emit(LogLine(level=level, message=message))
