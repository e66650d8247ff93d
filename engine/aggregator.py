"""Folds the event stream into immutable Snapshots (Sanctum's aggregator).

Pure and synchronous: `apply(event)` updates mutable working state, `snapshot()` freezes it into a
new Snapshot whose `seq` moves only when something changed, so clients skip identical frames.
The engine feeds it in-process, in emission order, never through the bus: telemetry on Redis is best
effort and may be lost or forged, and the engine's own picture must be neither. Events are still
deduplicated by id, so a consumer fed at least once (a bus, a replayed log) folds each event once.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import msgspec

from esper_tui.engine.contracts import (
    AlertChanged,
    AnyEvent,
    ArtifactQuarantined,
    BreakerChanged,
    CommandObeyed,
    CommandRefused,
    ConservativeModeChanged,
    ControllerDecision,
    EngineStarted,
    EngineStopping,
    EpochCompleted,
    JobCompiled,
    JobFailed,
    JobQueued,
    JobStarted,
    LogLine,
    Metric,
    MetricsReport,
    PolicyChanged,
    Rollback,
    SeedsReport,
    TrainingFailed,
    TrainingFinished,
    TrainingPaused,
    TrainingStarted,
    TrainingWaiting,
    WalStatus,
)
from esper_tui.engine.history import DEFAULT_SCROLLBACK, Details, History
from esper_tui.engine.snapshot import (
    AlertView,
    BreakerView,
    BusView,
    EventLine,
    ForgeHealth,
    ForgeView,
    ForgeWorkerView,
    Infrastructure,
    JobView,
    SeedView,
    SimicView,
    Snapshot,
    TrainingView,
    WalView,
)
from esper_tui.engine.vocabulary import (
    EAGER_KERNELS,
    Action,
    GradientHealth,
    JobStatus,
    Level,
    TrainingStatus,
    compile_label,
)

BREAKER_ORDER = ("memory", "gpu", "timeout")
SEEN_IDS = 10_000
"""Event ids remembered for deduplication (at most about 2 MB). A redelivered event comes back within the bus's own
dedupe window (BusOptions.dedupe_window, as many ids), so an older one cannot arrive twice."""


def _job_name(e: JobQueued | JobStarted | JobCompiled | JobFailed) -> str:
    """A job in the event log: its blueprint, and the slot shape when the event names one."""
    return f"{e.blueprint_id} [{e.shape}]" if e.shape else e.blueprint_id


def _seed_health(vanishing: bool, exploding: bool) -> GradientHealth:
    if exploding:
        return GradientHealth.EXPLODING
    return GradientHealth.VANISHING if vanishing else GradientHealth.OK


class Aggregator:
    def __init__(
        self,
        *,
        max_concurrency: int = 2,
        aggressive_pipeline: bool = False,
        history: int = 120,
        max_events: int = 200,
        scrollback: int = DEFAULT_SCROLLBACK,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._started = clock()
        self._history = history
        self._configured_concurrency = max_concurrency
        self._aggressive_pipeline = aggressive_pipeline
        self.run_id = ""
        self.infra = Infrastructure()
        self.conservative = False
        self.conservative_reason = ""
        self.breakers: dict[str, BreakerView] = {}
        self.jobs: dict[tuple[str, str], JobView] = {}  # by (blueprint id, shape tag)
        self.wal = WalView()
        self.training = TrainingView()
        self.loss: deque[float] = deque(maxlen=history)
        self.val_history: deque[float] = deque(maxlen=history)  # the validation metric, per epoch
        self.events: deque[EventLine] = deque(maxlen=max_events)
        self.metrics: list[Metric] = []
        self.bus = BusView()
        self.forge_workers: list[ForgeWorkerView] = []
        self.simic: SimicView | None = None
        self.jobs_awaiting_worker = 0
        self.alerts: dict[str, AlertView] = {}
        self.history = History(scrollback=scrollback)
        """Per seed, job and decision, and the event log's scrollback: detail views fetch it, frames never carry it."""
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._dirty = True
        self._seq = 0
        self._last: Snapshot | None = None

    # ------------------------------------------------------------------ folding

    def apply(self, event: AnyEvent) -> bool:
        """Fold one event; False when it was a duplicate delivery."""
        if event.event_id in self._seen:
            return False
        self._seen[event.event_id] = None
        if len(self._seen) > SEEN_IDS:
            self._seen.popitem(last=False)
        self._dirty = True
        handler = getattr(self, f"_on_{type(event).__name__}", None)
        if handler is not None:
            handler(event)
        text = self._describe(event)
        line = (
            None
            if text is None
            else EventLine(
                ts=event.ts, source=event.source, level=self._level(event), text=text, epoch=self._epoch_of(event)
            )
        )
        if line is not None:
            self.events.append(line)
        self.history.apply(event, line)
        return True

    def details(self) -> Details:
        """The history behind the detail views, frozen now (on demand: never part of a snapshot or a frame)."""
        return self.history.details(self.run_id, self._clock())

    def _epoch_of(self, event: AnyEvent) -> int | None:
        """The epoch a decision belongs to, for the curves' markers: the one it was made after, a rollback's the one
        that went wrong. Read from the first snapshot showing the line, they were drawn an epoch or two late."""
        if isinstance(event, Rollback):
            return event.from_epoch
        return self.training.epoch if isinstance(event, ControllerDecision) else None

    def set_bus(self, view: BusView) -> None:
        """The bus as the engine measured it (not an event: the engine polls its bus). Equal views leave the
        snapshot as it was, so an idle bus does not move `seq` and clients skip nothing they need."""
        if view != self.bus:
            self.bus = view
            self._dirty = True

    def set_simic(self, view: SimicView | None) -> None:
        """Simic's progress as its state directory says (polled by the engine, like the bus)."""
        if view != self.simic:
            self.simic = view
            self._dirty = True

    def set_forge_workers(self, views: list[ForgeWorkerView], awaiting: int = 0) -> None:
        """The remote forge workers as their heartbeats say (polled by the engine, like the bus), and how many
        jobs wait for one of them."""
        if views != self.forge_workers or awaiting != self.jobs_awaiting_worker:
            self.forge_workers = views
            self.jobs_awaiting_worker = awaiting
            self._dirty = True

    @staticmethod
    def _level(event: AnyEvent) -> Level:
        """How loud an event line is: errors that end something, warnings that may heal, else info."""
        if isinstance(event, LogLine):
            return event.level
        if isinstance(event, TrainingFailed) or (isinstance(event, JobFailed) and not event.will_retry):
            return Level.ERROR
        if isinstance(event, PolicyChanged) and event.fallback:
            return Level.WARNING
        if isinstance(event, JobFailed | ArtifactQuarantined | CommandRefused | Rollback) or (
            isinstance(event, AlertChanged) and event.active
        ):
            return Level.WARNING
        return Level.INFO

    def _on_EngineStarted(self, e: EngineStarted) -> None:
        self.run_id = e.run_id
        self.infra = msgspec.structs.replace(
            self.infra,
            bus=e.bus,
            device=e.device,
            torch_version=e.torch_version,
            training=e.training,
            compile_enabled=e.compile_enabled,
            compile_backend=e.compile_backend,
            compile_mode=e.compile_mode,
        )

    def _on_TrainingWaiting(self, e: TrainingWaiting) -> None:
        self._training(waiting_for=e.reason)

    def _on_PolicyChanged(self, e: PolicyChanged) -> None:
        self._training(policy=e.policy)

    def _on_TrainingStarted(self, e: TrainingStarted) -> None:
        self.infra = msgspec.structs.replace(
            self.infra,
            compile_enabled=e.compile_enabled,
            compile_backend=e.compile_backend,
            compile_mode=e.compile_mode,
        )
        self._training(
            status=TrainingStatus.RUNNING,
            epoch=e.resumed_from_epoch or 0,  # a resumed run starts where its checkpoint left off, not at 0
            epochs_total=e.epochs,
            resumed_from_epoch=e.resumed_from_epoch,
            waiting_for="",
            task=e.task,
            metric=e.metric,
            device=e.device,
        )

    def _on_EpochCompleted(self, e: EpochCompleted) -> None:
        self.loss.append(round(e.train_loss, 5))
        self.val_history.append(round(e.val_metric, 5))
        best = self.training.best_val_metric
        if best is None or self.training.metric.better(e.val_metric, best):
            best = e.val_metric
        self._training(
            epoch=e.epoch,
            loss=e.train_loss,
            val_loss=e.val_loss,
            val_metric=e.val_metric,
            best_val_metric=best,
            test_metric=e.test_metric,
            samples_per_s=e.samples_per_s,
            epoch_s=e.epoch_s,
            parameters=e.parameters,
        )

    def _on_SeedsReport(self, e: SeedsReport) -> None:
        seeds = [
            SeedView(
                slot=s.slot,
                stage=s.stage,
                alpha=s.alpha,
                blueprint_id=s.blueprint_id,
                grad_norm=s.grad_norm,
                gain=s.gain,
                epochs_in_stage=s.epochs_in_stage,
                kernel=s.kernel,
                health=_seed_health(s.vanishing, s.exploding) if s.blueprint_id else GradientHealth.NONE,
                outcome=s.outcome,
            )
            for s in e.seeds
        ]
        self._training(seeds=seeds)
        self.history.observe_seeds(e.epoch, e.ts, seeds)

    def _on_Rollback(self, e: Rollback) -> None:
        self._training(rollbacks=self.training.rollbacks + 1, epoch=e.to_epoch)

    def _on_TrainingPaused(self, e: TrainingPaused) -> None:
        self._training(status=TrainingStatus.PAUSED if e.paused else TrainingStatus.RUNNING)

    def _on_TrainingFinished(self, e: TrainingFinished) -> None:
        # the weights the run ends with (after an early stop: the best epoch's, restored)
        # and the epoch it ends on: a resumed run with nothing left to train ran no epoch, yet ends at its last
        self._training(
            status=TrainingStatus.FINISHED,
            epoch=e.epochs,
            val_metric=e.val_metric,
            test_metric=e.test_metric,
        )

    def _on_TrainingFailed(self, e: TrainingFailed) -> None:
        self._training(status=TrainingStatus.FAILED)

    def _training(self, **changes: Any) -> None:
        self.training = msgspec.structs.replace(self.training, **changes)

    def _job(self, e: JobQueued | JobStarted | JobCompiled | JobFailed, **fields: Any) -> None:
        """A fresh row for the job's new state; only the stored kernel (artifact, version) carries over."""
        prev = self.jobs.get((e.blueprint_id, e.shape))
        kept = {"artifact_id": prev.artifact_id, "version": prev.version} if prev else {}
        self.jobs[(e.blueprint_id, e.shape)] = JobView(blueprint_id=e.blueprint_id, shape=e.shape, **{**kept, **fields})

    def _on_JobQueued(self, e: JobQueued) -> None:
        self._job(e, strategy=e.strategy, status=JobStatus.QUEUED)

    def _on_JobStarted(self, e: JobStarted) -> None:
        self._job(
            e,
            strategy=e.strategy,
            status=JobStatus.COMPILING,
            attempt=e.attempt,
            started_ts=e.ts,
            worker=e.worker,
        )

    def _on_JobCompiled(self, e: JobCompiled) -> None:
        prev = self.jobs.get((e.blueprint_id, e.shape))
        self._job(
            e,
            strategy=e.strategy,
            status=JobStatus.COMPILED,
            attempt=prev.attempt if prev else 1,
            duration_s=e.compile_s,
            artifact_id=e.artifact_id,
            version=e.version,
            backend=compile_label(e.backend, e.mode),
            step_ms_compiled=e.step_ms_compiled,
            step_ms_eager=e.step_ms_eager,
            reused=e.reused,
            worker=e.worker,
        )

    def _on_JobFailed(self, e: JobFailed) -> None:
        prev = self.jobs.get((e.blueprint_id, e.shape))
        started = prev.started_ts if prev else None
        self._job(
            e,
            strategy=e.strategy,
            status=JobStatus.QUEUED if e.will_retry else JobStatus.FAILED,
            attempt=e.attempt,
            error=e.error,
            duration_s=(e.ts - started) if started else None,
        )

    def _on_BreakerChanged(self, e: BreakerChanged) -> None:
        self.history.observe_breaker(e.name, e.state.value)
        prev = self.breakers.get(e.name)
        keep = e.reading is None and prev is not None
        self.breakers[e.name] = BreakerView(
            name=e.name,
            state=e.state,
            reading=prev.reading if keep and prev else e.reading,
            threshold=prev.threshold if keep and prev else e.threshold,
            unit=prev.unit if keep and prev else e.unit,
            failures=e.failures if not keep else prev.failures if prev else 0,
            detail=e.detail,
        )

    def _on_ConservativeModeChanged(self, e: ConservativeModeChanged) -> None:
        self.conservative = e.active
        self.conservative_reason = e.reason if e.active else ""

    def _on_MetricsReport(self, e: MetricsReport) -> None:
        self.metrics = list(e.metrics)

    def _on_AlertChanged(self, e: AlertChanged) -> None:
        if e.active:
            self.alerts[e.alertname] = AlertView(
                alertname=e.alertname, severity=e.severity, summary=e.summary, since_ts=e.ts
            )
        else:
            self.alerts.pop(e.alertname, None)

    def _on_WalStatus(self, e: WalStatus) -> None:
        self.wal = WalView(
            path=e.path,
            segments=e.segments,
            size_bytes=e.size_bytes,
            open_transactions=list(e.open_transactions),
            commits=e.commits,
            last_checkpoint_ts=e.last_checkpoint_ts,
            durability_mode=e.durability_mode,
        )

    # ------------------------------------------------------------------ describing

    def _describe(self, e: AnyEvent) -> str | None:
        """The event log's line for `e` (after it was folded: the run's metric is known by then), or None."""
        match e:
            case JobQueued():
                return f"{_job_name(e)} queued ({e.strategy}): {e.reason}"
            case JobStarted():
                return f"{_job_name(e)} compiling ({e.strategy}), attempt {e.attempt}"
            case JobCompiled(reused=True):
                label = compile_label(e.backend, e.mode)
                return f"{_job_name(e)} already in the library (v{e.version}, {label}): reused"
            case JobCompiled():
                return (
                    f"{_job_name(e)} compiled ({e.strategy}, {compile_label(e.backend, e.mode)}) "
                    f"in {e.compile_s:.1f} s, "
                    f"step {e.step_ms_compiled:.2f} ms vs eager {e.step_ms_eager:.2f} ms"
                )
            case JobFailed():
                return f"{_job_name(e)} failed ({e.strategy}, attempt {e.attempt}): {e.error[:120]}"
            case BreakerChanged(transition=True):
                return f"breaker {e.name}: {e.previous} -> {e.state} ({e.detail})"
            case ConservativeModeChanged():
                return f"conservative mode {'ON' if e.active else 'off'}: {e.reason}"
            case ArtifactQuarantined():
                return f"{e.blueprint_id} artifact {e.artifact_id[:12]} quarantined: {e.reason}"
            case TrainingStarted():
                label = compile_label(e.compile_backend, e.compile_mode)
                kind = f"compiled {label}" if e.compile_enabled else EAGER_KERNELS
                began = "started" if e.resumed_from_epoch is None else f"resumed at epoch {e.resumed_from_epoch}"
                return f"training {began} on {e.dataset} ({e.host}, kernels {kind})"
            case PolicyChanged():
                return f"policy: {e.policy} ({e.reason})"
            case ControllerDecision():
                target = f" {e.slot}" if e.slot else ""
                bp = f" <- {e.blueprint_id}" if e.blueprint_id and e.action is Action.GERMINATE else ""
                return f"{e.action}{target}{bp} ({e.reason})"
            case Rollback():
                gone = f", pruned and embargoed {', '.join(e.pruned)}" if e.pruned else ""
                return (
                    f"rollback: {e.reason}; epoch {e.from_epoch} -> {e.to_epoch} restored in "
                    f"{e.recovery_s * 1000:.0f} ms{gone}"
                )
            case TrainingPaused():
                return "training paused" if e.paused else "training resumed"
            case TrainingWaiting():
                return f"waiting for {e.reason}"
            case TrainingFailed():
                return f"training failed: {e.error}"
            case TrainingFinished():
                metric = self.training.metric
                test = f", test {metric.name} {metric.format(e.test_metric)}" if e.test_metric is not None else ""
                why = f" ({e.reason})" if e.reason else ""
                return (
                    f"training finished after {e.epochs} epochs, best validation {metric.name} "
                    f"{metric.format(e.best_val_metric)}{test}{why}"
                )
            case EngineStarted():
                return f"engine started (bus {e.bus}, state {e.state_dir})"
            case EngineStopping():
                return f"engine stopping: {e.reason}"
            case LogLine():
                return e.message
            case CommandObeyed():
                return f"{e.command_type} from {e.issued_by}"
            case CommandRefused():
                sender = e.issued_by if e.sender_verified else f'"{e.issued_by}" (unverified)'
                return f"rejected {e.command_type} from {sender}: {e.reason}"
            case AlertChanged(active=True):
                return f"alert {e.alertname} firing: {e.summary}"
            case AlertChanged():
                return f"alert {e.alertname} resolved"
        return None

    # ------------------------------------------------------------------ freezing

    def snapshot(self) -> Snapshot:
        """A new immutable snapshot; the same object again when nothing changed since the last one."""
        if not self._dirty and self._last is not None:
            return self._last
        self._dirty = False
        self._seq += 1
        jobs = list(self.jobs.values())
        compiling = sum(j.status is JobStatus.COMPILING for j in jobs)
        # Without compile workers of its own, the forge's capacity is what the forge workers announce.
        capacity = self._configured_concurrency or sum(w.concurrency for w in self.forge_workers)
        health = ForgeHealth(
            concurrency=compiling,
            max_concurrency=min(1, capacity) if self.conservative else capacity,
            queue_depth=sum(j.status is JobStatus.QUEUED for j in jobs),
            compiled=sum(j.status is JobStatus.COMPILED for j in jobs),
            failed=sum(j.status is JobStatus.FAILED for j in jobs),
            last_checkpoint_ts=self.wal.last_checkpoint_ts,
        )
        breakers = sorted(
            self.breakers.values(), key=lambda b: BREAKER_ORDER.index(b.name) if b.name in BREAKER_ORDER else 99
        )
        training = msgspec.structs.replace(
            self.training, loss_history=list(self.loss), val_metric_history=list(self.val_history)
        )
        now = self._clock()
        self._last = Snapshot(
            seq=self._seq,
            ts=now,
            run_id=self.run_id,
            uptime_s=now - self._started,
            infrastructure=self.infra,
            forge=ForgeView(
                conservative_mode=self.conservative,
                conservative_reason=self.conservative_reason,
                aggressive_pipeline=self._aggressive_pipeline,
                breakers=breakers,
                jobs=jobs,
                wal=self.wal,
                health=health,
                workers=self.forge_workers,
                jobs_awaiting_worker=self.jobs_awaiting_worker,
            ),
            training=training,
            metrics=self.metrics,
            events=list(self.events)[-50:],
            bus=self.bus,
            alerts=list(self.alerts.values()),
            simic=self.simic,
        )
        return self._last
