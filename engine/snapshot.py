"""The snapshot: what every client sees (the dashboard, `--json`, a remote control room).

The aggregator builds one immutable Snapshot from the event stream a few times a second; widgets
each draw one slice of it.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

import msgspec

from esper_tui.engine.contracts import Metric
from esper_tui.engine.vocabulary import (
    ACCURACY,
    SCHEMA_VERSION,
    BreakerState,
    GradientHealth,
    JobStatus,
    Level,
    LinkState,
    MetricInfo,
    SeedStage,
    Strategy,
    Struct,
    Subsystem,
    TrainingStatus,
    kernels_label,
)


class Infrastructure(Struct, kw_only=True):
    training: bool = True  # False: the run only compiles (--forge-only, training.enabled off)
    compile_enabled: bool = False
    compile_backend: str | None = None
    compile_mode: str | None = None
    bus: str = "embedded"
    device: str = "cpu"
    torch_version: str = ""

    @property
    def kernels(self) -> str:
        """What the run's kernels are ("inductor:default" or EAGER), worded as everywhere else."""
        return kernels_label(self.compile_enabled, self.compile_backend, self.compile_mode)


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
    shape: str = ""  # the slot shape's tag: a blueprint has one job per shape
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
    worker: str = ""  # the forge worker compiling (or that compiled) it, when not this engine


class ForgeWorkerView(Struct, kw_only=True):
    """A forge worker elsewhere, as its last heartbeat described it."""

    worker_id: str
    host: str
    pid: int
    jobs: list[str] = msgspec.field(default_factory=list)  # blueprints compiling now
    holding: str = ""  # why it takes no job now ("" when it does)
    concurrency: int = 1
    done: int = 0
    failed: int = 0
    last_beat_ts: float


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
    aggressive_pipeline: bool = False  # tezzeret.compilation.enable_aggressive_pipeline: may Aggressive be asked for
    breakers: list[BreakerView] = msgspec.field(default_factory=list)
    jobs: list[JobView] = msgspec.field(default_factory=list)
    wal: WalView = msgspec.field(default_factory=WalView)
    health: ForgeHealth = msgspec.field(default_factory=ForgeHealth)
    workers: list[ForgeWorkerView] = msgspec.field(default_factory=list)  # remote forge workers (shared library)
    jobs_awaiting_worker: int = 0  # jobs queued for forge workers elsewhere that none has started


class SeedView(Struct, kw_only=True):
    slot: str
    stage: SeedStage
    alpha: float
    blueprint_id: str | None = None
    grad_norm: float = 0.0
    gain: float | None = None  # the metric's change since germination, positive when better
    epochs_in_stage: int = 0
    kernel: str = "-"
    health: GradientHealth = GradientHealth.NONE
    outcome: str = ""  # the latest field report's outcome for this slot


class TrainingView(Struct, kw_only=True):
    """Tolaria's run: the task it trains, the metric it decides on (values are in its units; `metric` says
    which way is better and how to show them) and the device. `val_*` is the validation split (what Tamiyo
    decides on); `test_metric` is the test split, only ever reported."""

    status: TrainingStatus = TrainingStatus.WAITING
    task: str = ""  # "" until training starts
    metric: MetricInfo = ACCURACY
    device: str = ""
    epoch: int = 0
    epochs_total: int | None = None
    loss: float | None = None
    val_loss: float | None = None
    val_metric: float | None = None
    best_val_metric: float | None = None
    test_metric: float | None = None
    samples_per_s: float | None = None
    epoch_s: float | None = None
    parameters: int | None = None  # of the network as it computes (host and contributing seeds), after an epoch
    loss_history: list[float] = msgspec.field(default_factory=list)
    val_metric_history: list[float] = msgspec.field(default_factory=list)
    seeds: list[SeedView] = msgspec.field(default_factory=list)
    resumed_from_epoch: int | None = None  # the checkpoint this run resumed from, if it did
    rollbacks: int = 0
    waiting_for: str = ""  # while WAITING: what training waits for (the forge's first kernel, its process)
    policy: str = "heuristic"  # what Tamiyo follows: "heuristic" or the learned version ("learned v0003")


class EventLine(Struct, kw_only=True, omit_defaults=True):
    ts: float
    source: Subsystem
    level: Level
    text: str
    epoch: int | None = None  # a decision's or rollback's epoch, where the curves mark it (omitted otherwise)


class StreamBacklog(Struct, kw_only=True):
    stream: str
    backlog: int  # entries the slowest live group has not acknowledged


class BusNote(Struct, kw_only=True):
    """A dead letter or a rejected command, as the operator needs to see it."""

    ts: float
    stream: str
    reason: str


class BusView(Struct, kw_only=True):
    """Oona as the engine sees it: backend, link, rates, backlogs, dead letters, rejections, rooms."""

    backend: str = "embedded"  # or the Redis URL without its password
    connected: bool = True
    published: int = 0
    delivered: int = 0
    dropped: int = 0
    dead_lettered: int = 0
    rejected: int = 0
    rate_out: float = 0.0  # messages/s published, over the last few seconds
    rate_in: float = 0.0  # messages/s handled
    backlogs: list[StreamBacklog] = msgspec.field(default_factory=list)
    dead_letters: list[BusNote] = msgspec.field(default_factory=list)  # newest last
    rejections: list[BusNote] = msgspec.field(default_factory=list)  # newest last
    server_errors: dict[str, int] = msgspec.field(default_factory=dict)  # by class: oom, readonly, ...
    last_error: str = ""
    control_rooms: int = 0  # attached control rooms whose presence is signed with the operator key, and fresh
    control_rooms_unverified: int = 0  # other presence keys of rooms: read-only rooms, or anyone's writing


class AlertView(Struct, kw_only=True):
    """A Nissa alert that is firing now (resolved ones leave the list): what the alert strip shows."""

    alertname: str
    severity: str
    summary: str
    since_ts: float


class LinkView(Struct, kw_only=True):
    """Filled by the client, never by the engine: how old this picture is and whether it can be trusted."""

    state: LinkState = LinkState.LOCAL
    run_id: str = ""
    age_s: float = 0.0  # since the engine published the frame shown
    read_only: bool = False
    frames_rejected: int = 0  # frames that failed the signature check (ignored)
    detail: str = ""  # why commands are unavailable, or what went wrong


class SimicView(Struct, kw_only=True):
    """Simic as its state directory says (`esper-tui simic train` writes it; the engine reads it every few seconds):
    how far training got, its learning curve (the newest episodes' returns and rounds' losses), the policy versions
    and the gate's last verdict with its reasons."""

    episodes_done: int = 0
    episodes_total: int = 0
    returns: list[float] = msgspec.field(default_factory=list)
    losses: list[float] = msgspec.field(default_factory=list)
    wall_s: float = 0.0
    candidate: str = ""
    current: str = "heuristic"
    verdict: str = ""  # "passed", "failed", or "" before any
    reasons: list[str] = msgspec.field(default_factory=list)
    finished: bool = False
    updated_ts: float = 0.0


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
    bus: BusView = msgspec.field(default_factory=BusView)
    link: LinkView = msgspec.field(default_factory=LinkView)
    alerts: list[AlertView] = msgspec.field(default_factory=list)  # firing now, oldest first
    simic: SimicView | None = None  # None: Simic never trained in this state directory


COMPILED_KERNEL = "compiled "
"""How a seed's `kernel` column starts when it runs a compiled kernel ("compiled inductor:default")."""
EAGER_FASTER = "eager (faster)"
"""A seed served eager because eager was measured faster than its sound compiled kernel."""


class SeedsRun(NamedTuple):
    """What the seeds actually run, for the banner's title (`tag`) and its text or a status line (`words`)."""

    tag: str
    words: str
    compiled: bool


def seeds_run(snapshot: Snapshot) -> SeedsRun:
    """What the grafted seeds run, read from the seeds themselves rather than from the compile setting: a run
    that compiles can still serve eager kernels (measured faster), or have nothing grafted yet."""
    infra, training = snapshot.infrastructure, snapshot.training
    if not infra.training:
        return SeedsRun("no training", "no training: this run only compiles", compiled=False)
    if not infra.compile_enabled:
        return SeedsRun("eager: compile off", f"{infra.kernels} (compile off)", compiled=False)
    setting = infra.kernels  # what seeds will be compiled with (the title says compile on, or waiting)
    kernels = Counter(seed.kernel for seed in training.seeds if seed.blueprint_id is not None and seed.kernel != "-")
    if not kernels:
        if training.status is TrainingStatus.WAITING:
            waits = f"waiting for {training.waiting_for}" if training.waiting_for else "waiting for kernels"
            return SeedsRun("waiting for kernels", f"{setting} · {waits}", compiled=False)
        return SeedsRun("compile on", f"{setting} · no seed grafted yet", compiled=False)
    words = next(iter(kernels)) if len(kernels) == 1 else ", ".join(f"{n} {kernel}" for kernel, n in kernels.items())
    if any(kernel.startswith(COMPILED_KERNEL) for kernel in kernels):  # the tag says compiled: name the label
        return SeedsRun("compiled", words.removeprefix(COMPILED_KERNEL), compiled=True)
    if set(kernels) == {EAGER_FASTER}:
        return SeedsRun("eager: faster", f"eager, measured faster than {infra.kernels}", compiled=False)
    return SeedsRun("eager", words, compiled=False)
