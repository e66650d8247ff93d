"""Leyline: every structure that crosses a boundary (bus, Redis, JSONL, the UI) is defined here once.

All structs are frozen and keyword-only; events and commands are tagged unions so the same bytes
decode back to the right type over the in-process bus, Redis Streams and files alike. Bump
SCHEMA_VERSION on any incompatible change; decoders reject other versions instead of guessing.
"""

from __future__ import annotations

import enum
import time
import uuid
from typing import Any

import msgspec

SCHEMA_VERSION = 1


def new_id() -> str:
    """A fresh event/command id: consumers dedupe on it (at-least-once delivery can repeat)."""
    return uuid.uuid4().hex


def now() -> float:
    return time.time()


class Struct(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every contract: immutable and keyword-only."""


# --------------------------------------------------------------------------- enums


class Strategy(enum.StrEnum):
    FAST = "fast"
    STANDARD = "standard"
    AGGRESSIVE = "aggressive"
    EMERGENCY = "emergency"


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    COMPILING = "compiling"
    COMPILED = "compiled"
    FAILED = "failed"


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    UNAVAILABLE = "unavailable"  # e.g. the gpu breaker on a machine with no GPU


class SeedStage(enum.StrEnum):
    DORMANT = "dormant"
    GERMINATED = "germinated"
    TRAINING = "training"
    BLENDING = "blending"
    HOLDING = "holding"
    FOSSILIZED = "fossilized"
    PRUNED = "pruned"
    EMBARGOED = "embargoed"
    RESETTING = "resetting"


class Level(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


# --------------------------------------------------------------------------- events


class Event(Struct, tag_field="type", kw_only=True):
    """Common envelope fields. `source` is the Esper subsystem (tezzeret, urza, tolaria, ...)."""

    schema_version: int = SCHEMA_VERSION
    event_id: str = msgspec.field(default_factory=new_id)
    ts: float = msgspec.field(default_factory=now)
    source: str = "engine"


class EngineStarted(Event, tag="engine_started", kw_only=True):
    run_id: str
    bus: str
    state_dir: str
    device: str
    torch_version: str


class EngineStopping(Event, tag="engine_stopping", kw_only=True):
    reason: str


class JobQueued(Event, tag="job_queued", kw_only=True):
    blueprint_id: str
    strategy: Strategy
    reason: str


class JobStarted(Event, tag="job_started", kw_only=True):
    blueprint_id: str
    strategy: Strategy
    attempt: int


class JobCompiled(Event, tag="job_compiled", kw_only=True):
    blueprint_id: str
    strategy: Strategy
    artifact_id: str
    version: int
    backend: str
    mode: str
    compile_s: float
    step_ms_compiled: float
    step_ms_eager: float
    reused: bool = False  # an identical artifact already existed (same key); nothing was compiled


class JobFailed(Event, tag="job_failed", kw_only=True):
    blueprint_id: str
    strategy: Strategy
    error: str
    attempt: int
    will_retry: bool


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
    """Seed 002 (TELE-760): compile status is captured once, at training start."""

    compile_enabled: bool
    compile_backend: str | None
    compile_mode: str | None
    dataset: str
    host: str
    slots: int
    epochs: int | None
    device: str


class EpochCompleted(Event, tag="epoch_completed", kw_only=True):
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    samples_per_s: float
    epoch_s: float


class SeedHealth(Struct, kw_only=True):
    slot: str
    stage: SeedStage
    blueprint_id: str | None
    alpha: float
    grad_norm: float
    acc_delta: float | None
    epochs_in_stage: int
    kernel: str  # "compiled inductor:default", "eager", or "-"
    vanishing: bool = False
    exploding: bool = False


class SeedsReport(Event, tag="seeds_report", kw_only=True):
    epoch: int
    seeds: list[SeedHealth]


class ControllerDecision(Event, tag="controller_decision", kw_only=True):
    action: str  # germinate | advance | fossilize | prune | wait
    slot: str | None
    blueprint_id: str | None
    reason: str


class TrainingFinished(Event, tag="training_finished", kw_only=True):
    epochs: int
    final_accuracy: float
    best_accuracy: float


class TrainingPaused(Event, tag="training_paused", kw_only=True):
    paused: bool


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
    | TrainingFinished
    | TrainingPaused
    | MetricsReport
    | LogLine
)


# --------------------------------------------------------------------------- commands


class Command(Struct, tag_field="type", kw_only=True):
    schema_version: int = SCHEMA_VERSION
    command_id: str = msgspec.field(default_factory=new_id)
    ts: float = msgspec.field(default_factory=now)
    issued_by: str = "operator"


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


AnyCommand = Recompile | RecompileAll | SetConservativeMode | PauseTraining | Shutdown


# --------------------------------------------------------------------------- snapshot


class Infrastructure(Struct, kw_only=True):
    compile_enabled: bool = False
    compile_backend: str | None = None
    compile_mode: str | None = None
    bus: str = "embedded"
    device: str = "cpu"
    torch_version: str = ""


class BreakerView(Struct, kw_only=True):
    name: str
    state: BreakerState
    reading: float | None = None
    threshold: float | None = None
    unit: str = ""
    failures: int = 0
    detail: str = ""


class JobView(Struct, kw_only=True):
    blueprint_id: str
    strategy: Strategy
    status: JobStatus
    attempt: int = 0
    started_ts: float | None = None
    duration_s: float | None = None
    artifact_id: str | None = None
    version: int | None = None
    backend: str | None = None
    step_ms_compiled: float | None = None
    step_ms_eager: float | None = None
    error: str | None = None
    reused: bool = False  # served from the library (already compiled), not compiled in this run


class WalView(Struct, kw_only=True):
    path: str = ""
    segments: int = 0
    size_bytes: int = 0
    open_transactions: list[str] = msgspec.field(default_factory=list)
    commits: int = 0
    last_checkpoint_ts: float | None = None
    durability_mode: str = ""


class ForgeHealth(Struct, kw_only=True):
    concurrency: int = 0
    max_concurrency: int = 0
    queue_depth: int = 0
    compiled: int = 0
    failed: int = 0
    last_checkpoint_ts: float | None = None


class ForgeView(Struct, kw_only=True):
    conservative_mode: bool = False
    conservative_reason: str = ""
    breakers: list[BreakerView] = msgspec.field(default_factory=list)
    jobs: list[JobView] = msgspec.field(default_factory=list)
    wal: WalView = msgspec.field(default_factory=WalView)
    health: ForgeHealth = msgspec.field(default_factory=ForgeHealth)


class SeedView(Struct, kw_only=True):
    slot: str
    stage: SeedStage
    alpha: float
    blueprint_id: str | None = None
    grad_norm: float = 0.0
    acc_delta: float | None = None
    epochs_in_stage: int = 0
    kernel: str = "-"
    health: str = "-"  # ok | vanishing | exploding | -


class TrainingView(Struct, kw_only=True):
    status: str = "waiting"  # waiting | running | paused | finished | failed
    epoch: int = 0
    epochs_total: int | None = None
    loss: float | None = None
    val_loss: float | None = None
    accuracy: float | None = None
    best_accuracy: float | None = None
    samples_per_s: float | None = None
    epoch_s: float | None = None
    loss_history: list[float] = msgspec.field(default_factory=list)
    accuracy_history: list[float] = msgspec.field(default_factory=list)
    seeds: list[SeedView] = msgspec.field(default_factory=list)


class EventLine(Struct, kw_only=True):
    ts: float
    source: str
    level: Level
    text: str


class Snapshot(Struct, kw_only=True):
    """What every client sees: the dashboard, `--json`, and a remote control room."""

    schema_version: int = SCHEMA_VERSION
    seq: int = 0
    ts: float = 0.0
    run_id: str = ""
    uptime_s: float = 0.0
    infrastructure: Infrastructure = msgspec.field(default_factory=Infrastructure)
    forge: ForgeView = msgspec.field(default_factory=ForgeView)
    training: TrainingView = msgspec.field(default_factory=TrainingView)
    metrics: list[Metric] = msgspec.field(default_factory=list)
    events: list[EventLine] = msgspec.field(default_factory=list)


# --------------------------------------------------------------------------- artifacts


class ArtifactFile(Struct, kw_only=True):
    name: str
    sha256: str
    size: int


class ArtifactMeta(Struct, kw_only=True):
    """Everything needed to decide whether a stored kernel may be loaded here, and how fast it is."""

    schema_version: int = SCHEMA_VERSION
    artifact_id: str  # the key: hash of blueprint IR, options and torch/system identity
    blueprint_id: str
    version: int
    ir_hash: str
    strategy: Strategy
    backend: str
    mode: str
    options: dict[str, Any]
    torch_version: str
    python_version: str
    device: str
    cpu_isa: str
    in_features: int
    batch_min: int
    batch_max: int
    grad_modes: list[bool]
    compile_s: float
    step_ms_compiled: float
    step_ms_eager: float
    created_ts: float
    files: list[ArtifactFile]


# --------------------------------------------------------------------------- codecs

_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()
_event_json = msgspec.json.Decoder(AnyEvent)
_event_msgpack = msgspec.msgpack.Decoder(AnyEvent)
_command_json = msgspec.json.Decoder(AnyCommand)
_command_msgpack = msgspec.msgpack.Decoder(AnyCommand)
_snapshot_json = msgspec.json.Decoder(Snapshot)


class SchemaMismatch(ValueError):
    """Raised for a well-formed message of another schema version: never guess at its meaning."""


def _checked(msg: Any) -> Any:
    if msg.schema_version != SCHEMA_VERSION:
        raise SchemaMismatch(f"schema version {msg.schema_version}, expected {SCHEMA_VERSION}")
    return msg


def encode_json(obj: Any) -> bytes:
    return _json_encoder.encode(obj)


def encode_msgpack(obj: Any) -> bytes:
    return _msgpack_encoder.encode(obj)


def decode_event(data: bytes) -> AnyEvent:
    return _checked(_event_msgpack.decode(data))


def decode_event_json(data: bytes | str) -> AnyEvent:
    return _checked(_event_json.decode(data))


def decode_command(data: bytes) -> AnyCommand:
    return _checked(_command_msgpack.decode(data))


def decode_command_json(data: bytes | str) -> AnyCommand:
    return _checked(_command_json.decode(data))


def decode_snapshot_json(data: bytes | str) -> Snapshot:
    return _checked(_snapshot_json.decode(data))


# --------------------------------------------------------------------------- config
# The TOML file mirrors these sections; keys follow seed 000. Unknown keys are errors (forbid_unknown_fields).


class DurabilityMode(enum.StrEnum):
    O_DSYNC = "o_dsync"
    FSYNC = "fsync"


class Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every config section."""


class CompilationConfig(Section, kw_only=True):
    max_concurrent_jobs: int = 2
    default_strategy: Strategy = Strategy.STANDARD
    enable_aggressive_pipeline: bool = False
    max_attempts: int = 3
    jobs_per_worker: int = 16  # a worker is reused this many times (inductor start-up is ~3-4 s)
    worker_memory_limit_mb: int = 4096  # RLIMIT_AS per sandboxed worker (g++ peaks near 1 GB)
    timeout_fast_s: float = 120.0
    timeout_standard_s: float = 300.0
    timeout_aggressive_s: float = 900.0
    timeout_emergency_s: float = 60.0


class WalConfig(Section, kw_only=True):
    path: str = "tezzeret/wal"  # relative paths are under the state directory
    durability_mode: DurabilityMode = DurabilityMode.O_DSYNC


class ConservativeModeConfig(Section, kw_only=True):
    gpu_threshold_percent: float = 25.0
    threshold_duration_minutes: float = 5.0
    calm_period_minutes: float = 0.0  # 0: only the operator leaves conservative mode


class MemoryManagementConfig(Section, kw_only=True):
    cleanup_interval_seconds: float = 300.0
    memory_budget_mb: int = 8192  # the memory breaker trips above this resident size (engine + workers)


class PollingConfig(Section, kw_only=True):
    initial_full_scan: bool = True
    refresh_interval_minutes: float = 0.0  # 0 disables periodic refresh


class BreakersConfig(Section, kw_only=True):
    failure_threshold: int = 3  # consecutive failures that open a breaker
    open_seconds: float = 30.0  # time spent open before half-open
    half_open_probes: int = 1  # calls let through while half-open


class TezzeretConfig(Section, kw_only=True):
    compilation: CompilationConfig = msgspec.field(default_factory=CompilationConfig)
    wal: WalConfig = msgspec.field(default_factory=WalConfig)
    conservative_mode: ConservativeModeConfig = msgspec.field(default_factory=ConservativeModeConfig)
    memory_management: MemoryManagementConfig = msgspec.field(default_factory=MemoryManagementConfig)
    polling: PollingConfig = msgspec.field(default_factory=PollingConfig)
    breakers: BreakersConfig = msgspec.field(default_factory=BreakersConfig)


class LibraryConfig(Section, kw_only=True):
    signing_key: str = ""  # hex; ESPER_SIGNING_KEY overrides; generated into the state dir when absent
    cache_ttl_seconds: float = 600.0


class TrainingConfig(Section, kw_only=True):
    enabled: bool = True
    compile: bool = True  # graft compiled kernels; false runs seeds eagerly (banner shows EAGER)
    epochs: int | None = None  # None: run until interrupted
    batch_size: int = 100
    learning_rate: float = 3e-3
    hidden: int = 64
    slots: int = 2
    seed: int = 0
    plateau_epochs: int = 3
    plateau_delta: float = 0.005
    fossilize_margin: float = 0.015  # accuracy gain a held seed must show; the 1000-sample val set is noisy
    blend_epochs: int = 5
    train_epochs: int = 2  # epochs a seed trains isolated before blending
    holding_epochs: int = 2
    embargo_epochs: int = 3
    epoch_delay_s: float = 0.0  # slow the loop down for demos


class BusConfig(Section, kw_only=True):
    redis_url: str = ""  # empty: the in-process bus
    stream_prefix: str = "oona"
    group: str = "esper"
    emergency_threshold: int = 4000
    drop_threshold: int = 8000
    max_deliveries: int = 5
    maxlen: int = 100_000


class UiConfig(Section, kw_only=True):
    refresh_hz: float = 4.0
    theme: str = "esper-dark"


class EsperConfig(Section, kw_only=True):
    tezzeret: TezzeretConfig = msgspec.field(default_factory=TezzeretConfig)
    library: LibraryConfig = msgspec.field(default_factory=LibraryConfig)
    training: TrainingConfig = msgspec.field(default_factory=TrainingConfig)
    bus: BusConfig = msgspec.field(default_factory=BusConfig)
    ui: UiConfig = msgspec.field(default_factory=UiConfig)


# --------------------------------------------------------------------------- forge worker protocol
# The engine and its sandboxed compile workers speak these over a pipe (length-prefixed msgpack).


class CompileRequest(Struct, kw_only=True):
    job_id: str
    blueprint_id: str
    in_features: int
    out_features: int
    strategy: Strategy
    backend: str
    mode: str | None
    device: str
    out_dir: str


class CompileResponse(Struct, kw_only=True):
    job_id: str
    ok: bool
    error: str = ""
    files: list[str] = msgspec.field(default_factory=list)
    compile_s: float = 0.0
    step_ms_compiled: float = 0.0
    step_ms_eager: float = 0.0
    cpu_isa: str = ""
    max_abs_error: float = 0.0
