"""The history behind the detail views: per seed slot, per compile job, per Tamiyo decision, and the event log's
scrollback (Sanctum's seed, job, decision and event screens).

A snapshot shows the present; an operator's next question is how it came to be (why was s1 pruned, what did that
compile's three attempts say, what did Tamiyo see when it germinated). `History` folds the same events as the
aggregator into bounded per-item records, and `details()` freezes them into a `Details` on demand. It never enters a
snapshot, so frames and recordings stay the size they were: a dashboard asks its link for details when a detail
screen opens (live: the aggregator; attach: the engine publishes them when a room asks; replay: rebuilt from the
recording's snapshots, `engine/replay_history.py`).

Every collection is bounded (the constants below, and the scrollback depth `ui.event_scrollback`), so a long run
costs the same memory as a short one once it is past them.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec

from esper_tui.engine.contracts import (
    AnyEvent,
    ConfigEntry,
    ControllerDecision,
    EngineStarted,
    EpochCompleted,
    JobCompiled,
    JobFailed,
    JobQueued,
    JobStarted,
    Rollback,
)
from esper_tui.engine.snapshot import EventLine, JobView, SeedView
from esper_tui.engine.vocabulary import Action, JobStatus, SeedStage, Strategy, Struct, compile_label

SERIES_EPOCHS = 1000
"""Epochs of per-slot series (alpha, gradient norm, gain) and of the validation curve kept: a 400-epoch run whole."""
STAGES_KEPT = 200
"""Stage changes kept per slot."""
NOTES_KEPT = 100
"""Kernel changes, field reports, rollbacks and graves kept per slot."""
ATTEMPTS_KEPT = 20
"""Attempts kept per compile job (a job gives up after compilation.max_attempts, 3 by default)."""
JOBS_KEPT = 512
"""Compile jobs kept (one per blueprint and slot shape: the catalog times its shapes)."""
DECISIONS_KEPT = 1000
"""Tamiyo decisions kept."""
DECISION_CURVE = 60
"""Validation points a decision keeps: the epochs it was made after."""
DEFAULT_SCROLLBACK = 2000
"""Event-log lines kept when no depth is configured (ui.event_scrollback)."""
LOCAL_WORKER = "local"
"""The worker of a job compiled in this engine's own sandbox."""

_IN_FLIGHT = frozenset({SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING})


# --------------------------------------------------------------------------- what a detail view reads


class StageChange(Struct, kw_only=True):
    """A slot entering `stage` after `epoch`, and why (the decision or rollback that moved it, when one did)."""

    epoch: int
    ts: float
    stage: SeedStage
    blueprint_id: str | None = None
    reason: str = ""


class KernelChange(Struct, kw_only=True):
    """What a slot's seed started to run: the kernel column's words ("compiled inductor:default", "eager (faster)")
    and the stored kernel it came from, when the forge compiled one for it in this run."""

    epoch: int
    ts: float
    blueprint_id: str | None
    kernel: str
    version: int | None = None
    artifact_id: str | None = None
    verification: str = ""


class FieldNote(Struct, kw_only=True):
    """A field report's outcome for the slot, as the seeds panel's note says it."""

    epoch: int
    ts: float
    outcome: str


class RollbackNote(Struct, kw_only=True):
    ts: float
    from_epoch: int
    to_epoch: int
    reason: str
    pruned: list[str] = msgspec.field(default_factory=list)  # "slot/blueprint"


class Grave(Struct, kw_only=True):
    """A seed that left the slot without being fossilized (pruned, or taken by a rollback)."""

    blueprint_id: str | None
    germinated_epoch: int | None
    ended_epoch: int
    ts: float
    stage: SeedStage  # what it became (pruned, embargoed, ...)
    reason: str = ""
    gain: float | None = None  # its last gain, positive when it had helped


class SlotHistory(Struct, kw_only=True):
    slot: str
    stages: list[StageChange] = msgspec.field(default_factory=list)
    epochs: list[int] = msgspec.field(default_factory=list)  # the x of the series below (a seed's epochs only)
    times: list[float] = msgspec.field(default_factory=list)  # when each point was reported
    alpha: list[float] = msgspec.field(default_factory=list)
    grad_norm: list[float] = msgspec.field(default_factory=list)
    gain: list[float] = msgspec.field(default_factory=list)  # 0 where there was none yet
    health: list[str] = msgspec.field(default_factory=list)
    kernels: list[KernelChange] = msgspec.field(default_factory=list)
    reports: list[FieldNote] = msgspec.field(default_factory=list)
    rollbacks: list[RollbackNote] = msgspec.field(default_factory=list)
    graveyard: list[Grave] = msgspec.field(default_factory=list)


class JobAttempt(Struct, kw_only=True):
    """One attempt at compiling a job: how it went, where, with the breakers as they stood when it began."""

    attempt: int
    strategy: Strategy
    started_ts: float | None = None
    duration_s: float | None = None
    outcome: str = "compiling"  # compiling, compiled, reused, failed (will retry), failed
    error: str = ""
    worker: str = LOCAL_WORKER  # or "host:pid" of a forge worker elsewhere
    breakers: dict[str, str] = msgspec.field(default_factory=dict)  # name -> state at the start
    backend: str = ""
    step_ms_compiled: float | None = None
    step_ms_eager: float | None = None
    artifact_id: str | None = None
    version: int | None = None
    verification: str = ""
    wal_txn: str = ""


class JobHistory(Struct, kw_only=True):
    blueprint_id: str
    shape: str = ""
    queued: list[str] = msgspec.field(default_factory=list)  # why it was queued, each time
    attempts: list[JobAttempt] = msgspec.field(default_factory=list)


class DecisionRecord(Struct, kw_only=True):
    """A Tamiyo decision with what it saw (the validation curve up to it, the slots) and, once its field report
    is in, what it led to."""

    event_id: str
    ts: float
    epoch: int | None
    action: Action
    slot: str | None = None
    blueprint_id: str | None = None
    reason: str = ""
    options: list[str] = msgspec.field(default_factory=list)  # what it weighed, the chosen one first
    val_first_epoch: int = 1  # the epoch of val_history[0]
    val_history: list[float] = msgspec.field(default_factory=list)
    seeds: list[SeedView] = msgspec.field(default_factory=list)
    outcome: str = ""  # "" until its field report
    outcome_ts: float | None = None


class LogEntry(Struct, kw_only=True, omit_defaults=True):
    """An event-log line with the event it was made from (None where only the line is known: a replay)."""

    line: EventLine
    event_id: str = ""
    event: AnyEvent | None = None


class RunInfo(Struct, kw_only=True):
    """The run as EngineStarted described it: identity, settings and where things are (secrets never: key
    fingerprints only, URLs without passwords)."""

    run_id: str
    started_ts: float
    state_dir: str = ""
    bus: str = ""
    library: str = ""
    python_version: str = ""
    torch_version: str = ""
    device: str = ""
    cpu_isa: str = ""
    host: str = ""
    pid: int = 0
    key_fingerprints: dict[str, str] = msgspec.field(default_factory=dict)
    config: list[ConfigEntry] = msgspec.field(default_factory=list)


class Details(Struct, kw_only=True):
    """Everything the detail screens read, frozen at `ts` (what a link hands the dashboard on demand)."""

    run_id: str = ""
    ts: float = 0.0
    slots: list[SlotHistory] = msgspec.field(default_factory=list)
    jobs: list[JobHistory] = msgspec.field(default_factory=list)
    decisions: list[DecisionRecord] = msgspec.field(default_factory=list)
    log: list[LogEntry] = msgspec.field(default_factory=list)  # oldest first
    run: RunInfo | None = None
    epochs: list[int] = msgspec.field(default_factory=list)  # the validation curve: epoch, value, when
    val_history: list[float] = msgspec.field(default_factory=list)
    val_times: list[float] = msgspec.field(default_factory=list)

    def slot(self, name: str) -> SlotHistory | None:
        return next((s for s in self.slots if s.slot == name), None)

    def job(self, blueprint_id: str, shape: str = "") -> JobHistory | None:
        return next((j for j in self.jobs if j.blueprint_id == blueprint_id and j.shape == shape), None)

    def decision(self, event_id: str) -> DecisionRecord | None:
        return next((d for d in reversed(self.decisions) if d.event_id == event_id), None)

    def entry(self, event_id: str) -> LogEntry | None:
        return next((e for e in reversed(self.log) if e.event_id == event_id), None)


# --------------------------------------------------------------------------- folding


@dataclass
class _Slot:
    name: str
    seed: SeedView | None = None  # as last reported
    germinated_epoch: int | None = None
    stages: deque[StageChange] = field(default_factory=lambda: deque(maxlen=STAGES_KEPT))
    series: deque[tuple[int, float, float, float, str, float]] = field(
        default_factory=lambda: deque(maxlen=SERIES_EPOCHS)
    )
    kernels: deque[KernelChange] = field(default_factory=lambda: deque(maxlen=NOTES_KEPT))
    reports: deque[FieldNote] = field(default_factory=lambda: deque(maxlen=NOTES_KEPT))
    rollbacks: deque[RollbackNote] = field(default_factory=lambda: deque(maxlen=NOTES_KEPT))
    graveyard: deque[Grave] = field(default_factory=lambda: deque(maxlen=NOTES_KEPT))
    why: str = ""  # the reason for the next stage change (a decision's or a rollback's), until it is seen

    def freeze(self) -> SlotHistory:
        points = list(self.series)
        return SlotHistory(
            slot=self.name,
            stages=list(self.stages),
            epochs=[p[0] for p in points],
            alpha=[p[1] for p in points],
            grad_norm=[p[2] for p in points],
            gain=[p[3] for p in points],
            health=[p[4] for p in points],
            times=[p[5] for p in points],
            kernels=list(self.kernels),
            reports=list(self.reports),
            rollbacks=list(self.rollbacks),
            graveyard=list(self.graveyard),
        )


@dataclass
class _Job:
    blueprint_id: str
    shape: str
    queued: deque[str] = field(default_factory=lambda: deque(maxlen=ATTEMPTS_KEPT))
    attempts: deque[JobAttempt] = field(default_factory=lambda: deque(maxlen=ATTEMPTS_KEPT))

    def current(self, attempt: int, strategy: Strategy) -> JobAttempt:
        """The record of `attempt`, started now if the job has none (a reused kernel never starts)."""
        if self.attempts and self.attempts[-1].attempt == attempt and self.attempts[-1].outcome == "compiling":
            return self.attempts[-1]
        record = JobAttempt(attempt=attempt, strategy=strategy)
        self.attempts.append(record)
        return record

    def replace_last(self, record: JobAttempt) -> None:
        self.attempts[-1] = record

    def freeze(self) -> JobHistory:
        return JobHistory(
            blueprint_id=self.blueprint_id, shape=self.shape, queued=list(self.queued), attempts=list(self.attempts)
        )


class History:
    """The bounded history (see the module docstring). Fed in the aggregator's order: `apply` each event with its
    event-log line (None when it makes none); the replay's rebuild calls the lower-level `observe_*` methods."""

    def __init__(self, *, scrollback: int = DEFAULT_SCROLLBACK) -> None:
        self.run: RunInfo | None = None
        self.epoch = 0
        self.breakers: dict[str, str] = {}  # name -> state now (what a starting attempt records)
        self.log: deque[LogEntry] = deque(maxlen=scrollback)
        self._slots: dict[str, _Slot] = {}
        self._jobs: OrderedDict[tuple[str, str], _Job] = OrderedDict()
        self._decisions: deque[DecisionRecord] = deque(maxlen=DECISIONS_KEPT)
        self._awaiting: dict[str, deque[str]] = {}  # slot -> ids of its decisions awaiting a field report, oldest first
        self._outcomes: OrderedDict[str, tuple[str, float]] = (
            OrderedDict()
        )  # decision id -> (its report's outcome, when)
        self._val: deque[tuple[int, float, float]] = deque(maxlen=SERIES_EPOCHS)  # epoch, value, when
        self._kernels: dict[str, tuple[int, str, str]] = {}  # blueprint -> (version, artifact id, verification)

    # ------------------------------------------------------------------ events

    def apply(self, event: AnyEvent, line: EventLine | None) -> None:
        """Fold one (new, deduplicated) event and its event-log line (the seeds come through `observe_seeds`: the
        aggregator hands over the views it made of a SeedsReport)."""
        match event:
            case EngineStarted():
                self.run = RunInfo(
                    run_id=event.run_id,
                    started_ts=event.ts,
                    state_dir=event.state_dir,
                    bus=event.bus,
                    library=event.library,
                    python_version=event.python_version,
                    torch_version=event.torch_version,
                    device=event.device,
                    cpu_isa=event.cpu_isa,
                    host=event.host,
                    pid=event.pid,
                    key_fingerprints=dict(event.key_fingerprints),
                    config=list(event.config),
                )
            case EpochCompleted():
                self.observe_epoch(event.epoch, event.val_metric, event.ts)
            case ControllerDecision():
                self.observe_decision(
                    DecisionRecord(
                        event_id=event.event_id,
                        ts=event.ts,
                        epoch=event.epoch if event.epoch is not None else self.epoch,
                        action=event.action,
                        slot=event.slot,
                        blueprint_id=event.blueprint_id,
                        reason=event.reason,
                        options=list(event.options),
                    )
                )
            case Rollback():
                self.observe_rollback(
                    RollbackNote(
                        ts=event.ts,
                        from_epoch=event.from_epoch,
                        to_epoch=event.to_epoch,
                        reason=event.reason,
                        pruned=list(event.pruned),
                    )
                )
            case JobQueued():
                self._job(event.blueprint_id, event.shape).queued.append(f"{event.strategy}: {event.reason}")
            case JobStarted():
                job = self._job(event.blueprint_id, event.shape)
                job.attempts.append(
                    JobAttempt(
                        attempt=event.attempt,
                        strategy=event.strategy,
                        started_ts=event.ts,
                        worker=event.worker or LOCAL_WORKER,
                        breakers=dict(event.breakers) or dict(self.breakers),
                        wal_txn=event.wal_txn,
                    )
                )
            case JobCompiled():
                job = self._job(event.blueprint_id, event.shape)
                attempt = job.attempts[-1].attempt if job.attempts else 1
                record = job.current(attempt, event.strategy)
                job.replace_last(
                    msgspec.structs.replace(
                        record,
                        strategy=event.strategy,
                        duration_s=event.compile_s,
                        outcome="reused" if event.reused else "compiled",
                        worker=event.worker or record.worker,
                        backend=compile_label(event.backend, event.mode),
                        step_ms_compiled=event.step_ms_compiled,
                        step_ms_eager=event.step_ms_eager,
                        artifact_id=event.artifact_id,
                        version=event.version,
                        verification=event.verification,
                        wal_txn=event.wal_txn or record.wal_txn,
                        started_ts=record.started_ts if record.started_ts is not None else event.ts,
                    )
                )
                self._kernels[event.blueprint_id] = (event.version, event.artifact_id, event.verification)
            case JobFailed():
                job = self._job(event.blueprint_id, event.shape)
                record = job.current(event.attempt, event.strategy)
                job.replace_last(
                    msgspec.structs.replace(
                        record,
                        duration_s=(event.ts - record.started_ts) if record.started_ts is not None else None,
                        outcome="failed (will retry)" if event.will_retry else "failed",
                        error=event.error,
                        wal_txn=event.wal_txn or record.wal_txn,
                    )
                )
            case _:
                pass
        if line is not None:
            self.log.append(LogEntry(line=line, event_id=event.event_id, event=event))

    def observe_breaker(self, name: str, state: str) -> None:
        self.breakers[name] = state

    def observe_job(self, view: JobView, ts: float) -> None:
        """A job as a snapshot shows it (a replay's rebuild, where the job events themselves were not kept): an
        attempt begins when the row turns COMPILING, ends when it turns COMPILED or fails."""
        job = self._job(view.blueprint_id, view.shape)
        last = job.attempts[-1] if job.attempts else None
        running = last is not None and last.outcome == "compiling"
        if view.status is JobStatus.QUEUED and not job.queued:
            job.queued.append(f"{view.strategy}: queued")
        if view.status is JobStatus.COMPILING and not (running and last is not None and last.attempt == view.attempt):
            job.attempts.append(
                JobAttempt(
                    attempt=view.attempt,
                    strategy=view.strategy,
                    started_ts=view.started_ts if view.started_ts is not None else ts,
                    worker=view.worker or LOCAL_WORKER,
                    breakers=dict(self.breakers),
                )
            )
        elif view.status is JobStatus.COMPILED and (running or last is None or last.artifact_id != view.artifact_id):
            record = job.current(view.attempt or 1, view.strategy)
            job.replace_last(
                msgspec.structs.replace(
                    record,
                    outcome="reused" if view.reused else "compiled",
                    duration_s=view.duration_s,
                    worker=view.worker or record.worker,
                    backend=view.backend or "",
                    step_ms_compiled=view.step_ms_compiled,
                    step_ms_eager=view.step_ms_eager,
                    artifact_id=view.artifact_id,
                    version=view.version,
                    started_ts=record.started_ts if record.started_ts is not None else ts,
                )
            )
        elif view.error and running and last is not None:
            failed = view.status is JobStatus.FAILED
            job.replace_last(
                msgspec.structs.replace(
                    last,
                    outcome="failed" if failed else "failed (will retry)",
                    error=view.error,
                    duration_s=view.duration_s,
                )
            )

    # ------------------------------------------------------------------ observations (events or a replay's snapshots)

    def observe_epoch(self, epoch: int, val_metric: float, ts: float) -> None:
        while self._val and self._val[-1][0] >= epoch:  # a rollback replays epochs: the newer values win
            self._val.pop()
        self._val.append((epoch, val_metric, ts))
        self.epoch = epoch

    def observe_seeds(self, epoch: int, ts: float, seeds: Iterable[SeedView]) -> None:
        """The slots as reported after `epoch`: stage changes, series points, kernels and field reports."""
        for seed in seeds:
            slot = self._slots.get(seed.slot)
            if slot is None:
                slot = self._slots[seed.slot] = _Slot(seed.slot)
            before = slot.seed
            if before is None or before.stage is not seed.stage or before.blueprint_id != seed.blueprint_id:
                self._stage(slot, before, seed, epoch, ts)
            if seed.blueprint_id is not None:
                point = (epoch, seed.alpha, seed.grad_norm, seed.gain or 0.0, str(seed.health), ts)
                while slot.series and slot.series[-1][0] >= epoch:  # decisions moved it, or a rollback undid epochs
                    slot.series.pop()
                slot.series.append(point)
            if seed.blueprint_id is not None and seed.kernel not in ("", "-"):
                last = slot.kernels[-1] if slot.kernels else None
                if last is None or last.kernel != seed.kernel or last.blueprint_id != seed.blueprint_id:
                    version, artifact_id, verification = self._kernels.get(seed.blueprint_id, (None, None, ""))
                    slot.kernels.append(
                        KernelChange(
                            epoch=epoch,
                            ts=ts,
                            blueprint_id=seed.blueprint_id,
                            kernel=seed.kernel,
                            version=version,
                            artifact_id=artifact_id,
                            verification=verification,
                        )
                    )
            if seed.outcome and (before is None or before.outcome != seed.outcome):
                slot.reports.append(FieldNote(epoch=epoch, ts=ts, outcome=seed.outcome))
                self._settle(seed.slot, seed.outcome, ts)
            slot.seed = seed

    def _stage(self, slot: _Slot, before: SeedView | None, seed: SeedView, epoch: int, ts: float) -> None:
        why, slot.why = slot.why, ""
        slot.stages.append(
            StageChange(epoch=epoch, ts=ts, stage=seed.stage, blueprint_id=seed.blueprint_id, reason=why)
        )
        if seed.stage is SeedStage.GERMINATED or (before is not None and before.blueprint_id != seed.blueprint_id):
            slot.germinated_epoch = epoch if seed.blueprint_id is not None else None
        fossilized = why.startswith(f"{Action.FOSSILIZE}:")  # fossilized into the host: it lives on, not a grave
        gone = seed.stage not in _IN_FLIGHT | {SeedStage.FOSSILIZED}
        if before is not None and before.stage in _IN_FLIGHT and gone and not fossilized:
            slot.graveyard.append(
                Grave(
                    blueprint_id=before.blueprint_id,
                    germinated_epoch=slot.germinated_epoch,
                    ended_epoch=epoch,
                    ts=ts,
                    stage=seed.stage,
                    reason=why,
                    gain=before.gain,
                )
            )

    def observe_decision(self, record: DecisionRecord) -> None:
        """A decision, with the validation curve and the slots it was made on."""
        points = [p for p in self._val if record.epoch is None or p[0] <= record.epoch][-DECISION_CURVE:]
        record = msgspec.structs.replace(
            record,
            val_first_epoch=points[0][0] if points else 1,
            val_history=[p[1] for p in points],
            seeds=[slot.seed for slot in self._slots.values() if slot.seed is not None],
        )
        self._decisions.append(record)
        if record.slot is not None and record.action is not Action.WAIT:
            slot = self._slots.get(record.slot)
            if slot is None:
                slot = self._slots[record.slot] = _Slot(record.slot)
            slot.why = f"{record.action}: {record.reason}"
            self._awaiting.setdefault(record.slot, deque(maxlen=DECISIONS_KEPT)).append(record.event_id)

    def _settle(self, slot: str, outcome: str, ts: float) -> None:
        """A field report came in for `slot`: it measured the oldest of its decisions still awaiting one."""
        waiting = self._awaiting.get(slot)
        if waiting:
            self._outcomes[waiting.popleft()] = (outcome, ts)
            while len(self._outcomes) > DECISIONS_KEPT:
                self._outcomes.popitem(last=False)

    def observe_rollback(self, note: RollbackNote) -> None:
        touched = {p.split("/", 1)[0] for p in note.pruned}
        for name in touched:
            slot = self._slots.get(name)
            if slot is None:
                slot = self._slots[name] = _Slot(name)
            slot.rollbacks.append(note)
            slot.why = f"rollback: {note.reason}"
        while self._val and self._val[-1][0] > note.to_epoch:
            self._val.pop()
        self.epoch = note.to_epoch

    def _job(self, blueprint_id: str, shape: str) -> _Job:
        key = (blueprint_id, shape)
        job = self._jobs.get(key)
        if job is None:
            job = self._jobs[key] = _Job(blueprint_id, shape)
            while len(self._jobs) > JOBS_KEPT:
                self._jobs.popitem(last=False)
        return job

    # ------------------------------------------------------------------ freezing

    def details(self, run_id: str, ts: float) -> Details:
        """Everything, frozen: what a detail screen reads (cost grows with the bounds, never with the run)."""
        return Details(
            run_id=run_id,
            ts=ts,
            slots=[slot.freeze() for slot in self._slots.values()],
            jobs=[job.freeze() for job in self._jobs.values()],
            decisions=[
                msgspec.structs.replace(
                    d, outcome=self._outcomes[d.event_id][0], outcome_ts=self._outcomes[d.event_id][1]
                )
                if d.event_id in self._outcomes
                else d
                for d in self._decisions
            ],
            log=list(self.log),
            run=self.run,
            epochs=[p[0] for p in self._val],
            val_history=[p[1] for p in self._val],
            val_times=[p[2] for p in self._val],
        )
