"""The config's sections: the TOML file mirrors these structs, keys follow seed 000.

Unknown keys are errors (forbid_unknown_fields). Each numeric key declares its range on the field, from the
shared ranges in ranges.py, so a value outside it is refused while the file is read.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

from esper_tui.engine.config.ranges import (
    DAY_S,
    DEVICE_PATTERN,
    POLICY_PATTERN,
    TIB_MB,
    TRAIN_SAMPLES,
    Entries,
    Epochs,
    Fraction,
    HexKey,
    Minutes,
    Name,
    Parallel,
    Percent,
    Seconds,
    SecondsOrZero,
    TaskSpec,
    Tries,
)
from esper_tui.engine.vocabulary import Strategy


class DurabilityMode(enum.StrEnum):
    O_DSYNC = "o_dsync"
    FSYNC = "fsync"


class Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every config section."""


class CompilationConfig(Section, frozen=True, kw_only=True):
    """The forge (Tezzeret): how many compiles run, how often one is retried, how each worker is bounded."""

    max_concurrent_jobs: Annotated[
        int,
        Meta(
            ge=0,
            le=64,
            description="compiles at once in this engine, one sandboxed worker each (1 in conservative mode); "
            "0: none here, `esper-tui forge-worker`s take the jobs (needs library.catalog_url and a Redis bus)",
        ),
    ] = 2
    default_strategy: Annotated[
        Strategy, Meta(description="pipeline of a first attempt; `aggressive` also needs enable_aggressive_pipeline")
    ] = Strategy.STANDARD
    enable_aggressive_pipeline: Annotated[
        bool, Meta(description="let high-priority blueprints compile with max-autotune")
    ] = False
    max_attempts: Annotated[
        Tries, Meta(description="attempts per kernel; the last one falls back to the Emergency pipeline")
    ] = 3
    jobs_per_worker: Annotated[
        int,
        Meta(ge=1, le=10_000, description="compiles a worker serves before it is replaced (inductor starts in ~3-4 s)"),
    ] = 16
    worker_idle_s: Annotated[
        Seconds,
        Meta(
            description="a compile worker idle this long leaves (it holds ~440 MB); the next job starts a fresh "
            "one (~4 s)"
        ),
    ] = 60.0
    worker_memory_limit_mb: Annotated[
        int,
        Meta(
            ge=2048,  # inductor's g++ children peak near 1 GB of address space on top of the worker's own
            le=TIB_MB,
            description="RLIMIT_AS (address space) of each sandboxed compile worker",
        ),
    ] = 4096
    timeout_fast_s: Annotated[
        Seconds, Meta(description="a Fast compile is killed after this long (doubled in conservative mode)")
    ] = 120.0
    timeout_standard_s: Annotated[Seconds, Meta(description="the same for a Standard compile")] = 300.0
    timeout_aggressive_s: Annotated[Seconds, Meta(description="the same for an Aggressive compile")] = 900.0
    timeout_emergency_s: Annotated[Seconds, Meta(description="the same for an Emergency (eager) packaging")] = 60.0


class WalConfig(Section, frozen=True, kw_only=True):
    """The forge's write-ahead log: where it lives and how each record reaches the disk."""

    path: Annotated[Name, Meta(description="WAL directory; a relative path is under the state directory")] = (
        "tezzeret/wal"
    )
    durability_mode: Annotated[
        DurabilityMode,
        Meta(description="`o_dsync`: every write is a barrier; `fsync`: an fsync after each commit or abort"),
    ] = DurabilityMode.O_DSYNC


class ConservativeModeConfig(Section, frozen=True, kw_only=True):
    """When the forge backs off (one compile at a time, Fast only, longer timeouts) and when it recovers."""

    gpu_threshold_percent: Annotated[
        Percent, Meta(description="GPU utilisation that trips the gpu breaker once sustained")
    ] = 25.0
    threshold_duration_minutes: Annotated[
        Minutes, Meta(description="how long utilisation must stay above the threshold (0: one sample)")
    ] = 5.0
    calm_period_minutes: Annotated[
        Minutes, Meta(description="time with no breaker open after which the mode ends (0: only the operator ends it)")
    ] = 0.0


class MemoryManagementConfig(Section, frozen=True, kw_only=True):
    """The forge's housekeeping and its memory breaker."""

    cleanup_interval_seconds: Annotated[
        Seconds, Meta(description="how often cached kernels expire and the WAL is checkpointed")
    ] = 300.0
    memory_budget_mb: Annotated[
        int,
        Meta(
            ge=512,  # the engine alone (Python + torch) is resident near 300 MB: less would trip at start-up
            le=TIB_MB,
            description="resident size (engine + workers) above which the memory breaker trips",
        ),
    ] = 8192


class PollingConfig(Section, frozen=True, kw_only=True):
    """How the forge finds blueprints to compile."""

    initial_full_scan: Annotated[
        bool, Meta(description="at start-up, queue every blueprint that has no verified kernel")
    ] = True
    refresh_interval_minutes: Annotated[
        Minutes,
        Meta(
            description="how often the engine and its training process look in the library for user blueprints "
            "added since they started (`esper-tui blueprint add`); 0: only at start"
        ),
    ] = 1.0


class BreakersConfig(Section, frozen=True, kw_only=True):
    """The forge's circuit breakers (memory, gpu, timeout)."""

    failure_threshold: Annotated[Tries, Meta(description="consecutive failures that open a breaker")] = 3
    open_seconds: Annotated[SecondsOrZero, Meta(description="time spent open before half-open")] = 30.0
    half_open_probes: Annotated[
        Parallel, Meta(description="compiles let through while half-open, and successes needed to close")
    ] = 1


class TezzeretConfig(Section, frozen=True, kw_only=True):
    """Seed 000's forge."""

    compilation: CompilationConfig = msgspec.field(default_factory=CompilationConfig)
    wal: WalConfig = msgspec.field(default_factory=WalConfig)
    conservative_mode: ConservativeModeConfig = msgspec.field(default_factory=ConservativeModeConfig)
    memory_management: MemoryManagementConfig = msgspec.field(default_factory=MemoryManagementConfig)
    polling: PollingConfig = msgspec.field(default_factory=PollingConfig)
    breakers: BreakersConfig = msgspec.field(default_factory=BreakersConfig)


class LibraryConfig(Section, frozen=True, kw_only=True):
    """The signed kernel library (Urza)."""

    signing_key: Annotated[
        str, Meta(description="hex HMAC key; ESPER_SIGNING_KEY overrides; generated into the state dir when empty")
    ] = ""
    cache_ttl_seconds: Annotated[SecondsOrZero, Meta(description="how long a loaded kernel stays cached in memory")] = (
        600.0
    )
    catalog_url: Annotated[
        str,
        Meta(
            pattern=r"^((postgresql|postgres)://.*)?$",
            description="postgresql://… : a shared catalog (with artifacts_url); empty: the folder under the state dir",
        ),
    ] = ""
    artifacts_url: Annotated[
        str,
        Meta(
            pattern=r"^((s3://|file:///).*)?$",
            description="where a shared library keeps kernel bytes: s3://bucket/prefix or file:///shared/dir",
        ),
    ] = ""
    artifacts_endpoint: Annotated[
        str,
        Meta(pattern=r"^(https?://.*)?$", description="endpoint of an S3-compatible server (MinIO, SeaweedFS, moto)"),
    ] = ""


class ForgeWorkerConfig(Section, frozen=True, kw_only=True):
    """`esper-tui forge-worker`: compile capacity on other machines, taking jobs from the Oona job stream."""

    concurrency: Annotated[Parallel, Meta(description="compiles at once in this worker (1 in conservative mode)")] = 1
    claim_idle_s: Annotated[
        Seconds, Meta(description="a job idle this long in a silent worker's hands is taken over (XAUTOCLAIM)")
    ] = 15.0
    keepalive_s: Annotated[Seconds, Meta(description="how often a live worker re-claims the jobs it compiles")] = 3.0
    heartbeat_s: Annotated[Seconds, Meta(description="how often a worker announces itself")] = 1.0
    heartbeat_ttl_s: Annotated[Seconds, Meta(description="a worker silent this long is no longer listed")] = 5.0
    max_deliveries: Annotated[
        Tries, Meta(description="deliveries of a job (each a worker that died on it) before it is failed")
    ] = 3
    job_max_age_s: Annotated[
        float,
        Meta(
            ge=60,
            le=7 * DAY_S,
            description="a queued job older than this fails as stale instead of compiling (its engine queues it "
            "again), and news that old is ignored: the window a replayed job or report is refused in",
        ),
    ] = 3600.0


class TrainingConfig(Section, frozen=True, kw_only=True):
    """The training loop (Tolaria) and the seed controller; the task it trains (MNIST-1D by default)."""

    enabled: Annotated[bool, Meta(description="run the training loop (false: the forge only)")] = True
    task: Annotated[
        TaskSpec,
        Meta(
            description="what to train: a built-in task (mnist1d, digits), path/to/file.py:factory or "
            "package.module:factory (loaded in the training process only; README: tasks)"
        ),
    ] = "mnist1d"
    compile: Annotated[
        bool, Meta(description="graft compiled kernels; false runs seeds eagerly (the banner shows EAGER)")
    ] = True
    device: Annotated[
        str,
        Meta(
            pattern=DEVICE_PATTERN,
            description="where the data, host, seeds and kernels live and the forge compiles: auto (CUDA when "
            "torch sees it), cpu, cuda or cuda:N; a CUDA device torch cannot see is refused at start",
        ),
    ] = "auto"
    epochs: (
        Annotated[
            int, Meta(ge=1, le=1_000_000, description="stop after this many epochs; unset runs until interrupted")
        ]
        | None
    ) = None
    batch_size: Annotated[
        int,
        Meta(
            ge=2,
            le=TRAIN_SAMPLES,
            description="mnist1d: samples per step; one above the training split (4000 less val_samples) takes the "
            "whole split (a task file sets its own)",
        ),
    ] = 100
    learning_rate: Annotated[
        float, Meta(gt=0, le=1, description="mnist1d: Adam's learning rate for the host network")
    ] = 3e-3
    hidden: Annotated[
        int, Meta(ge=1, le=4096, description="mnist1d: width of the host's hidden layer, and so of every seed kernel")
    ] = 64
    slots: Annotated[int, Meta(ge=1, le=8, description="mnist1d: seed slots in the host network")] = 2
    dropout: Annotated[
        float,
        Meta(
            ge=0,
            le=0.9,
            description="mnist1d: dropout on the host's hidden activations while training; keeps the host from "
            "memorising its samples, which would leave grafted seeds no gradient",
        ),
    ] = 0.3
    seed: Annotated[
        int, Meta(ge=0, le=2**32 - 1, description="RNG seed of the weights, the shuffling and each seed's init")
    ] = 0
    plateau_epochs: Annotated[
        Epochs, Meta(description="epochs without a plateau_delta gain before a seed is germinated")
    ] = 3
    plateau_delta: Annotated[
        Fraction,
        Meta(
            description="validation metric gain that counts as progress, relative to the metric: a fraction of "
            "its range for a percent metric (accuracy: 0.005 = 0.5 points), else of its magnitude"
        ),
    ] = 0.005
    fossilize_margin: Annotated[
        Fraction,
        Meta(
            description="validation metric gain a held seed must show to be kept, relative like plateau_delta "
            "(accuracy: 0.015 = 1.5 points; the validation split is small and noisy)"
        ),
    ] = 0.015
    blend_epochs: Annotated[Epochs, Meta(description="epochs over which a seed's output is blended in")] = 5
    train_epochs: Annotated[Epochs, Meta(description="epochs a seed trains in isolation before blending")] = 2
    holding_epochs: Annotated[Epochs, Meta(description="epochs a blended seed is watched before it is judged")] = 2
    embargo_epochs: Annotated[Epochs, Meta(description="epochs a slot stays closed after its seed was pruned")] = 3
    val_samples: Annotated[
        int,
        Meta(
            ge=100,
            le=2000,
            description="mnist1d: training samples held out (fixed seed) as the validation split every decision reads; "
            "the test split is only reported",
        ),
    ] = 500
    early_stop_epochs: Annotated[
        int,
        Meta(
            ge=1,
            le=100_000,
            description="without `epochs`: stop once the validation metric has not improved for this many epochs, "
            "restoring the best weights",
        ),
    ] = 40
    give_up_after: Annotated[
        Tries,
        Meta(
            description="failed seeds in a row after which Tamiyo stops growing for the run; each failure "
            "doubles the wait before the next try"
        ),
    ] = 4
    epoch_delay_s: Annotated[SecondsOrZero, Meta(description="pause after each epoch, to slow demos down")] = 0.0
    checkpoint_every_epochs: Annotated[
        int,
        Meta(
            ge=0,
            le=100_000,
            description="write a signed checkpoint (<state>/checkpoints) every this many epochs, and at a clean "
            "stop; 0: only at a clean stop",
        ),
    ] = 5
    checkpoint_min_interval_s: Annotated[
        SecondsOrZero,
        Meta(
            description="and at most one checkpoint this often (the clean stop's is always written): fast epochs "
            "are not fsynced several times a second; 0: every checkpoint_every_epochs epochs, whatever their pace"
        ),
    ] = 2.0
    keep_checkpoints: Annotated[
        int,
        Meta(ge=1, le=1000, description="newest checkpoints kept on disk (the best-validation one is kept too)"),
    ] = 3
    loss_spike_factor: Annotated[
        float,
        Meta(
            gt=1,
            le=1000,
            description="a training loss above this multiple of its moving median is instability: roll back",
        ),
    ] = 3.0
    loss_median_window: Annotated[
        int, Meta(ge=3, le=1000, description="epochs of training loss in the moving median a spike is measured by")
    ] = 10
    report_after_epochs: Annotated[
        int,
        Meta(
            ge=1,
            le=1000,
            description="epochs after a Tamiyo decision at which its outcome is measured for the field reports",
        ),
    ] = 5
    policy: Annotated[
        str,
        Meta(
            pattern=POLICY_PATTERN,
            description="Tamiyo's policy: heuristic, learned (the version Simic published in the library, followed "
            "as new ones are published) or a signed policy file (*.policy); any error falls back to the heuristic",
        ),
    ] = "heuristic"


class BusConfig(Section, frozen=True, kw_only=True):
    """Oona, the message bus: in-process by default, Redis Streams with a URL."""

    redis_url: Annotated[
        str,
        Meta(
            pattern=r"^((redis|rediss|unix)://.*)?$",
            description="redis://, rediss:// or unix:// URL; empty: the in-process bus",
        ),
    ] = ""
    stream_prefix: Annotated[Name, Meta(description="prefix of every stream name, so runs can share a Redis")] = "oona"
    group: Annotated[Name, Meta(description="the engine's consumer group")] = "esper"
    emergency_threshold: Annotated[
        Entries, Meta(description="normal-stream backlog above which commands take the emergency stream")
    ] = 4000
    drop_threshold: Annotated[
        Entries, Meta(description="backlog above which telemetry is dropped and commands are refused")
    ] = 8000
    max_deliveries: Annotated[Tries, Meta(description="deliveries of a failing message before it is dead-lettered")] = 5
    maxlen: Annotated[
        Entries,
        Meta(
            description="entries kept per stream (trimmed approximately); telemetry keeps drop_threshold events, "
            "all a live consumer can be behind"
        ),
    ] = 100_000
    retention_hours: Annotated[
        float,
        Meta(
            ge=0.001,
            le=8760,
            description="how long a run's streams and keys stay on Redis after it stops (its STOPPED heartbeat too, so "
            "`attach --list` shows it), or after its last heartbeat if it died; `esper-tui bus prune` removes them "
            "sooner",
        ),
    ] = 24.0
    operator_key: Annotated[
        HexKey,
        Meta(
            description="hex HMAC key that signs operator commands; ESPER_OPERATOR_KEY overrides; "
            "empty: <state>/keys/operator.key (the engine creates it)"
        ),
    ] = ""
    frame_key: Annotated[
        HexKey,
        Meta(
            description="hex secret the engine signs control-room frames with (Ed25519 seed); ESPER_FRAME_KEY "
            "overrides; empty: <state>/keys/frames.key (the engine creates it)"
        ),
    ] = ""
    engine_key: Annotated[
        str,
        Meta(
            pattern=r"^([0-9a-fA-F]{64})?$",
            description="a control room's pinned Ed25519 public key of the engine (64 hex digits, printed by "
            "the engine at start); empty: derived from <state>/keys/frames.key when that is readable",
        ),
    ] = ""
    command_skew_s: Annotated[
        float,
        Meta(
            ge=1,
            le=3600,
            description="commands older (or newer) than this are rejected as stale; the window of the replay cache",
        ),
    ] = 30.0


class UiConfig(Section, frozen=True, kw_only=True):
    """The Textual dashboard."""

    refresh_hz: Annotated[float, Meta(gt=0, le=30, description="dashboard redraws per second")] = 4.0
    theme: Annotated[Name, Meta(description="colour theme (esper-dark, esper-light, ...)")] = "esper-dark"
    status_interval_s: Annotated[
        float, Meta(ge=0.05, le=3600, description="headless runs and attach --no-ui: seconds between status lines")
    ] = 1.0
    event_scrollback: Annotated[
        int,
        Meta(
            ge=50,
            le=100_000,
            description="event-log lines kept for scrolling and `/` filtering (the panel shows the newest)",
        ),
    ] = 2000


class SimicConfig(Section, frozen=True, kw_only=True):
    """Simic: trains Tamiyo's policy from short growth episodes (`esper-tui simic train`), gates it against the
    heuristic on held-out data seeds, and publishes it in the library."""

    episodes: Annotated[int, Meta(ge=1, le=100_000, description="training episodes of a full `simic train`")] = 60
    episode_epochs: Annotated[int, Meta(ge=2, le=10_000, description="epochs each episode's growth run trains")] = 40
    episode_wall_s: Annotated[
        Seconds, Meta(description="an episode still running after this many seconds is stopped where it is")
    ] = 120.0
    workers: Annotated[Parallel, Meta(description="episodes run at once, each in a worker process")] = 2
    horizon_epochs: Annotated[
        int, Meta(ge=1, le=1000, description="epochs over which a decision's validation gain is its reward")
    ] = 8
    rent_per_kparam: Annotated[
        float,
        Meta(ge=0, le=100, description="reward's rent for a kept seed: points per 1000 parameters it adds"),
    ] = 0.05
    wasted_graft_penalty: Annotated[
        float, Meta(ge=0, le=100, description="reward's penalty, in points, for a seed germinated and then pruned")
    ] = 1.0
    exploration: Annotated[
        float, Meta(ge=0, le=100, description="the bandit's optimism (LinUCB alpha) while it trains")
    ] = 1.0
    epsilon: Annotated[
        Fraction,
        Meta(
            description="share of training decisions taken at random among the legal actions, decaying to a tenth "
            "of it over the run (every blueprint and slot gets tried)"
        ),
    ] = 0.4
    gate_seeds: Annotated[
        int, Meta(ge=1, le=100, description="held-out data seeds the validation gate plays each policy on")
    ] = 3
    gate_epochs: Annotated[
        int, Meta(ge=2, le=10_000, description="epochs of each gate run (early stop after half of them flat)")
    ] = 60


class RecordingConfig(Section, frozen=True, kw_only=True):
    """Every run's snapshots in <state>/runs/<run_id>.esrec, for `esper-tui replay`, `runs` and `plot`."""

    enabled: Annotated[bool, Meta(description="record each run's snapshot stream (off: nothing is written)")] = True
    keep_runs: Annotated[
        int, Meta(ge=1, le=100_000, description="recordings kept; the oldest go first when a run starts")
    ] = 50
    max_total_mb: Annotated[
        int, Meta(ge=1, le=TIB_MB, description="total size of the recordings kept, in MB (the oldest go first)")
    ] = 1024
    compression_level: Annotated[
        int, Meta(ge=1, le=22, description="zstd level of each recorded snapshot (higher: smaller, slower)")
    ] = 3


class NissaConfig(Section, frozen=True, kw_only=True):
    """Nissa, observability: the Prometheus endpoints (off unless a port is given) and the four alerts,
    which the engine evaluates whether or not anything scrapes it."""

    port: Annotated[
        int,
        Meta(ge=0, le=65_535, description="serve /metrics, /healthz and /api/v1/status on this TCP port; 0: off"),
    ] = 0
    host: Annotated[Name, Meta(description="address the endpoints listen on (0.0.0.0 for every interface)")] = (
        "127.0.0.1"
    )
    max_connections: Annotated[
        int,
        Meta(
            ge=1,
            le=1024,
            description="open connections the endpoints keep at most; past it the one quiet longest is closed, so"
            " idle clients can never take the engine's file descriptors",
        ),
    ] = 32
    header_timeout_s: Annotated[
        Seconds, Meta(description="a connection that has not sent a whole request within this time is closed")
    ] = 5.0
    idle_timeout_s: Annotated[
        Seconds, Meta(description="a kept-alive connection waiting this long for its next request is closed")
    ] = 15.0
    epoch_latency_s: Annotated[
        Seconds, Meta(description="training_latency_high fires after three consecutive epochs slower than this")
    ] = 60.0
    queue_depth: Annotated[
        Entries, Meta(description="oona_queue_depth fires while a stream's unacknowledged backlog exceeds this")
    ] = 4000
    compile_retries: Annotated[
        Tries, Meta(description="tezzeret_compile_retry_high fires at this many compile retries within the window")
    ] = 3
    retry_window_s: Annotated[
        Seconds, Meta(description="the sliding window of tezzeret_compile_retry_high, in seconds")
    ] = 600.0
    isolation_window_s: Annotated[
        Seconds, Meta(description="kasmina_isolation_violation stays active this long after the last violation")
    ] = 300.0
    no_worker_s: Annotated[
        Seconds,
        Meta(
            description="tezzeret_no_forge_worker fires, and the event log says so, once forge jobs have waited this"
            " long with no forge worker announced (an engine with --forge-workers 0)"
        ),
    ] = 30.0


class EsperConfig(Section, frozen=True, kw_only=True):
    tezzeret: TezzeretConfig = msgspec.field(default_factory=TezzeretConfig)
    library: LibraryConfig = msgspec.field(default_factory=LibraryConfig)
    training: TrainingConfig = msgspec.field(default_factory=TrainingConfig)
    bus: BusConfig = msgspec.field(default_factory=BusConfig)
    ui: UiConfig = msgspec.field(default_factory=UiConfig)
    nissa: NissaConfig = msgspec.field(default_factory=NissaConfig)
    recording: RecordingConfig = msgspec.field(default_factory=RecordingConfig)
    forge_worker: ForgeWorkerConfig = msgspec.field(default_factory=ForgeWorkerConfig)
    simic: SimicConfig = msgspec.field(default_factory=SimicConfig)


def wal_directory(config: EsperConfig, state_dir: Path) -> Path:
    """tezzeret.wal.path, relative to the state directory unless absolute."""
    path = Path(config.tezzeret.wal.path)
    return path if path.is_absolute() else state_dir / path
