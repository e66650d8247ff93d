"""Leyline's wire: the events the engine publishes and the commands it obeys.

Events and commands are tagged unions, so the same bytes decode back to the right type over the
in-process bus, Redis Streams and files alike (codec.py). Bump SCHEMA_VERSION on any incompatible change.
"""

from __future__ import annotations

import msgspec

from esper_tui.engine.vocabulary import (
    ACCURACY,
    SCHEMA_VERSION,
    Action,
    BreakerState,
    Level,
    MetricInfo,
    SeedStage,
    Strategy,
    Struct,
    Subsystem,
    new_id,
    now,
)

# --------------------------------------------------------------------------- events


class Event(Struct, tag_field="type", kw_only=True):
    """Common envelope fields. `source` is the Esper subsystem that speaks (tezzeret, urza, tolaria, ...)."""

    schema_version: int = SCHEMA_VERSION
    event_id: str = msgspec.field(default_factory=new_id)
    ts: float = msgspec.field(default_factory=now)
    source: Subsystem = Subsystem.ENGINE


class ConfigEntry(Struct, kw_only=True):
    """One effective config key as run info shows it (`changed`: it differs from the default). Secrets are
    never carried: a key that holds one reads "(set)"."""

    key: str
    value: str
    default: str
    changed: bool = False


class EngineStarted(Event, tag="engine_started", kw_only=True):
    """The run begins. The compile settings and whether anything trains are known from here on, so the
    banner can say what seeds will run before the training process has even started. The identity, the
    effective config and the key fingerprints (never the keys) are what run info shows."""

    run_id: str
    bus: str
    state_dir: str
    device: str
    torch_version: str
    training: bool = True  # False: --forge-only or training.enabled off, no seed will ever run
    compile_enabled: bool = False
    compile_backend: str | None = None
    compile_mode: str | None = None
    python_version: str = ""
    cpu_isa: str = ""
    host: str = ""
    pid: int = 0
    library: str = ""  # the library's location, URLs without their passwords
    key_fingerprints: dict[str, str] = msgspec.field(default_factory=dict)  # what the key is for -> fingerprint
    config: list[ConfigEntry] = msgspec.field(default_factory=list)


class EngineStopping(Event, tag="engine_stopping", kw_only=True):
    reason: str


class JobQueued(Event, tag="job_queued", kw_only=True):
    blueprint_id: str
    shape: str = ""  # the slot shape's tag the kernel is compiled for
    strategy: Strategy
    reason: str


class JobStarted(Event, tag="job_started", kw_only=True):
    blueprint_id: str
    shape: str = ""  # the slot shape's tag the kernel is compiled for
    strategy: Strategy
    attempt: int
    worker: str = ""  # a forge worker elsewhere ("host:pid"); "" for this engine's own sandbox
    wal_txn: str = ""  # the WAL transaction the attempt runs in
    breakers: dict[str, str] = msgspec.field(default_factory=dict)  # each breaker's state when it started


class JobCompiled(Event, tag="job_compiled", kw_only=True):
    blueprint_id: str
    shape: str = ""  # the slot shape's tag the kernel is compiled for
    strategy: Strategy
    artifact_id: str
    version: int
    backend: str
    mode: str
    compile_s: float
    step_ms_compiled: float
    step_ms_eager: float
    reused: bool = False  # an identical artifact already existed (same key); nothing was compiled
    worker: str = ""  # the forge worker that compiled it, when not this engine
    wal_txn: str = ""
    verification: str = ""  # how the stored kernel was checked (signed here, verified from a worker, ...)


class JobFailed(Event, tag="job_failed", kw_only=True):
    blueprint_id: str
    shape: str = ""  # the slot shape's tag the kernel is compiled for
    strategy: Strategy
    error: str
    attempt: int
    will_retry: bool
    wal_txn: str = ""


class BreakerChanged(Event, tag="breaker_changed", kw_only=True):
    """A breaker's state or reading changed; `transition` is true when the state itself moved."""

    name: str
    state: BreakerState
    previous: BreakerState
    transition: bool
    reading: float | None = None
    threshold: float | None = None
    unit: str = ""
    failures: int = 0
    detail: str = ""


class ConservativeModeChanged(Event, tag="conservative_mode_changed", kw_only=True):
    active: bool
    reason: str


class WalStatus(Event, tag="wal_status", kw_only=True):
    path: str
    segments: int
    size_bytes: int
    open_transactions: list[str]
    commits: int
    last_checkpoint_ts: float | None
    durability_mode: str


class ArtifactQuarantined(Event, tag="artifact_quarantined", kw_only=True):
    blueprint_id: str
    artifact_id: str
    reason: str


class TrainingStarted(Event, tag="training_started", kw_only=True):
    """Seed 002 (TELE-760): compile status is captured once, at training start; so is what the run trains
    (`task`), the metric it decides on and the device it runs on."""

    compile_enabled: bool
    compile_backend: str | None
    compile_mode: str | None
    dataset: str
    host: str
    slots: int
    epochs: int | None
    device: str
    resumed_from_epoch: int | None = None  # the checkpoint's epoch a restarted run continues from
    task: str = "mnist1d"
    metric: MetricInfo = ACCURACY


class EpochCompleted(Event, tag="epoch_completed", kw_only=True):
    """One epoch's numbers, the metric being the task's (TrainingStarted.metric). `val_*` is the validation
    split, the only split Tamiyo decides on; `test_metric` is the test split, only ever reported."""

    epoch: int
    train_loss: float
    val_loss: float
    val_metric: float
    samples_per_s: float
    epoch_s: float
    test_metric: float | None = None
    parameters: int | None = None  # the network as it computes after this epoch: host and contributing seeds


class SeedHealth(Struct, kw_only=True):
    slot: str
    stage: SeedStage
    blueprint_id: str | None
    alpha: float
    grad_norm: float
    gain: float | None  # the metric's change since the seed germinated, positive when better (MetricInfo.gain)
    epochs_in_stage: int
    kernel: str  # "compiled inductor:default", "eager", or "-"
    vanishing: bool = False
    exploding: bool = False
    outcome: str = ""  # the slot's latest field report outcome (Tamiyo's decision, measured later)


class SeedsReport(Event, tag="seeds_report", kw_only=True):
    epoch: int
    seeds: list[SeedHealth]


class PolicyChanged(Event, tag="policy_changed", kw_only=True):
    """Tamiyo follows another policy: `policy` is "heuristic" or "learned v0003"; `fallback`: an error (a refused
    signature, a missing file) sent it back to the heuristic, which `reason` names."""

    policy: str
    reason: str
    fallback: bool = False


class ControllerDecision(Event, tag="controller_decision", kw_only=True):
    action: Action
    slot: str | None
    blueprint_id: str | None
    reason: str
    epoch: int | None = None  # the epoch it was made after (None in recordings from before it was sent)
    options: list[str] = msgspec.field(default_factory=list)  # what it weighed, the chosen one first


class Rollback(Event, tag="rollback", kw_only=True):
    """Tamiyo's emergency: training went unstable, Tolaria restored `to_epoch`, the seeds grafted since were
    pruned and embargoed (`pruned`: "slot/blueprint"), and the forge turns conservative."""

    reason: str
    from_epoch: int
    to_epoch: int
    recovery_s: float
    pruned: list[str] = msgspec.field(default_factory=list)


class TrainingFinished(Event, tag="training_finished", kw_only=True):
    """The run's end: `val_metric` and `test_metric` are those of the weights it ends with (the best
    epoch's, restored, after an early stop); `reason` says why it ended."""

    epochs: int
    val_metric: float
    best_val_metric: float
    best_epoch: int
    test_metric: float | None = None
    reason: str = ""


class TrainingFailed(Event, tag="training_failed", kw_only=True):
    """The training loop died with an error (the engine stops too): the snapshot's status says FAILED."""

    error: str


class TrainingPaused(Event, tag="training_paused", kw_only=True):
    paused: bool


class TrainingWaiting(Event, tag="training_waiting", kw_only=True):
    """Why training has not started yet (it can take a while: the forge's first kernel, then a process that
    imports torch and loads its data), so a WAITING status is never silent."""

    reason: str


class Metric(Struct, kw_only=True):
    """One Nissa-style metric sample, e.g. tezzeret.compilation.duration_ms{strategy="standard"}."""

    name: str
    value: float
    labels: dict[str, str] = msgspec.field(default_factory=dict)


class MetricsReport(Event, tag="metrics", kw_only=True):
    metrics: list[Metric]


class LogLine(Event, tag="log", kw_only=True):
    level: Level
    message: str


class CommandObeyed(Event, tag="command_obeyed", kw_only=True):
    """A command passed the engine's checks and was carried out: who steered the engine, and with what."""

    command_type: str  # the command's class name, e.g. "Shutdown"
    command_id: str
    issued_by: str


class CommandRefused(Event, tag="command_refused", kw_only=True):
    """A command the engine refused (unsigned, badly signed, stale, replayed, another run's): a warning in the
    event log, so an operator sees that someone tried to steer the engine and why it did not listen."""

    command_type: str
    command_id: str
    issued_by: str  # as the command claims it
    sender_verified: bool = True  # False: unsigned or badly signed, so `issued_by` is only a claim
    reason: str


class AlertChanged(Event, tag="alert_changed", kw_only=True):
    """One of Nissa's alerts fired (`active`) or resolved: the dashboard's alert strip and the event log
    follow it, and so can any consumer of the telemetry stream. The source is the engine, which evaluates it."""

    alertname: str
    active: bool
    severity: str
    summary: str


AnyEvent = (
    EngineStarted
    | EngineStopping
    | JobQueued
    | JobStarted
    | JobCompiled
    | JobFailed
    | BreakerChanged
    | ConservativeModeChanged
    | WalStatus
    | ArtifactQuarantined
    | TrainingStarted
    | EpochCompleted
    | SeedsReport
    | ControllerDecision
    | PolicyChanged
    | Rollback
    | TrainingFinished
    | TrainingFailed
    | TrainingPaused
    | TrainingWaiting
    | MetricsReport
    | LogLine
    | CommandObeyed
    | CommandRefused
    | AlertChanged
)


# --------------------------------------------------------------------------- commands


class Command(Struct, tag_field="type", kw_only=True):
    """An operator's instruction. Signed (bus/auth.py) over every field but `signature`."""

    schema_version: int = SCHEMA_VERSION
    command_id: str = msgspec.field(default_factory=new_id)
    ts: float = msgspec.field(default_factory=now)
    issued_by: str = "operator"  # who: user@host of the control room that sent it
    target: str = ""  # the run id it is meant for; empty: whichever engine reads it
    signature: str = ""  # hex HMAC-SHA256 with the operator key


class Recompile(Command, tag="recompile", kw_only=True):
    blueprint_id: str
    strategy: Strategy | None = None  # None: Standard (the operator default)


class RecompileAll(Command, tag="recompile_all", kw_only=True):
    strategy: Strategy | None = None


class SetConservativeMode(Command, tag="set_conservative_mode", kw_only=True):
    active: bool


class PauseTraining(Command, tag="pause_training", kw_only=True):
    paused: bool


class Shutdown(Command, tag="shutdown", kw_only=True):
    reason: str = "operator"


class SetPolicy(Command, tag="set_policy", kw_only=True):
    """What Tamiyo follows from the next epoch on: "heuristic", "learned" or a policy file (training.policy)."""

    policy: str


AnyCommand = Recompile | RecompileAll | SetConservativeMode | PauseTraining | Shutdown | SetPolicy
