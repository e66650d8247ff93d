"""The engine's Prometheus metrics: counters and histograms fed by events as they happen, gauges read from
the newest snapshot at scrape time.

Why two sources: a histogram of compile times built from snapshots would miss every compile that started
and ended between two scrapes, so anything that counts or times happenings is fed from the engine's
in-process event path (`observe`, called where the aggregator applies events). Levels (loss, queue depth,
breaker state) and counters the engine already keeps exactly (bus, WAL commits, cache hits) are read when
Prometheus asks, so they are never older than the snapshot.

Names follow Prometheus conventions while keeping seed 003's recognisable: esper_training_loss,
esper_adaptations_total (seed: esper_adaptation_count), esper_kernel_cache_hits_total (esper_kernel_cache_hits),
esper_seeds_active (esper_seed_active_count), esper_compilation_duration_seconds (esper_compilation_latency).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric as PromMetric
from prometheus_client.registry import Collector

from esper_tui.engine.contracts import (
    AnyEvent,
    ControllerDecision,
    EpochCompleted,
    JobCompiled,
    JobFailed,
    JobStarted,
    WalStatus,
)
from esper_tui.engine.nissa.alerts import ALERT_NAMES, AlertEvaluator
from esper_tui.engine.snapshot import SimicView, Snapshot
from esper_tui.engine.vocabulary import BreakerState, SeedStage

COMPILE_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""Compiles take 0.1 s (a library hit) to 10 min (max-autotune); the default buckets stop at 10 s."""
EPOCH_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
IDLE_STAGES = frozenset({SeedStage.DORMANT, SeedStage.PRUNED, SeedStage.EMBARGOED, SeedStage.RESETTING})
"""Stages in which a slot holds no working seed: not counted by esper_seeds_active."""


@dataclass(frozen=True)
class EngineFacts:
    """What the engine knows beyond the snapshot, read at scrape time (and by /healthz)."""

    run_id: str = ""
    cache_hits: int = 0
    cache_misses: int = 0
    wal_recovery_s: float | None = None  # how long opening (and recovering) the WAL took at start
    forge_fatal: str | None = None  # the forge stopped the engine with this error
    failure: str | None = None  # any engine task died with this error


def _gauge(name: str, doc: str, value: float | None) -> Iterator[PromMetric]:
    """A single unlabelled gauge, left out while there is no value yet (no fake zeros for a loss)."""
    if value is not None:
        yield GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> PromMetric:
    return CounterMetricFamily(name, doc, value=value)


class NissaMetrics(Collector):
    """One registry per engine (never the process-global one: tests start several engines in one process)."""

    def __init__(
        self, alerts: AlertEvaluator, latest: Callable[[], Snapshot | None], facts: Callable[[], EngineFacts]
    ) -> None:
        self.alerts = alerts
        self._latest = latest
        self._facts = facts
        self.registry = CollectorRegistry(auto_describe=False)
        self._started: dict[str, float] = {}  # blueprint id -> JobStarted ts, to time failed attempts
        self._checkpoint_ts: float | None = None
        self._wal_seen = False
        self.epoch_duration = Histogram(
            "esper_epoch_duration_seconds",
            "Wall time of one training epoch (Tolaria)",
            buckets=EPOCH_BUCKETS_S,
            registry=self.registry,
        )
        self.adaptations = Counter(
            "esper_adaptations",
            "Tamiyo's decisions that changed a seed, by action (seed 003: esper_adaptation_count)",
            ["action"],
            registry=self.registry,
        )
        self.compile_duration = Histogram(
            "esper_compilation_duration_seconds",
            "Kernel compile attempts by strategy and outcome (compiled, reused, failed); seed 003: "
            "esper_compilation_latency",
            ["strategy", "outcome"],
            buckets=COMPILE_BUCKETS_S,
            registry=self.registry,
        )
        self.compile_retries = Counter(
            "esper_compile_retries",
            "Compile attempts that failed and were retried, by strategy",
            ["strategy"],
            registry=self.registry,
        )
        self.wal_checkpoints = Counter(
            "esper_wal_checkpoints", "WAL checkpoints seen by this engine", registry=self.registry
        )
        self.registry.register(self)

    # ------------------------------------------------------------------ events, as they happen

    def observe(self, event: AnyEvent) -> None:
        match event:
            case EpochCompleted():
                self.epoch_duration.observe(event.epoch_s)
            case ControllerDecision():
                self.adaptations.labels(action=event.action.value).inc()
            case JobStarted():
                self._started[event.blueprint_id] = event.ts
            case JobCompiled():
                self._started.pop(event.blueprint_id, None)
                outcome = "reused" if event.reused else "compiled"
                self.compile_duration.labels(strategy=event.strategy.value, outcome=outcome).observe(event.compile_s)
            case JobFailed():
                started = self._started.pop(event.blueprint_id, None)
                if started is not None:
                    elapsed = max(0.0, event.ts - started)
                    self.compile_duration.labels(strategy=event.strategy.value, outcome="failed").observe(elapsed)
                if event.will_retry:
                    self.compile_retries.labels(strategy=event.strategy.value).inc()
            case WalStatus():
                ts = event.last_checkpoint_ts
                if self._wal_seen and ts is not None and ts != self._checkpoint_ts:
                    self.wal_checkpoints.inc()
                self._wal_seen, self._checkpoint_ts = True, ts

    # ------------------------------------------------------------------ levels, at scrape time

    def collect(self) -> Iterable[PromMetric]:
        facts = self._facts()
        yield from self._alert_metrics()
        yield _counter("esper_kernel_cache_hits", "Kernel loads served from Urza's memory cache", facts.cache_hits)
        yield _counter("esper_kernel_cache_misses", "Kernel loads that read and verified a file", facts.cache_misses)
        yield from _gauge(
            "esper_wal_recovery_seconds", "Time to open and recover the WAL at engine start", facts.wal_recovery_s
        )
        snap = self._latest()
        if snap is not None:
            yield from _snapshot_metrics(snap)

    def _alert_metrics(self) -> Iterator[PromMetric]:
        active = GaugeMetricFamily("esper_alert_active", "1 while the engine's alert fires", labels=["alertname"])
        firing = self.alerts.active
        for name in ALERT_NAMES:
            active.add_metric([name], 1.0 if name in firing else 0.0)
        yield active
        yield GaugeMetricFamily(
            "esper_training_slow_epochs_consecutive",
            "Consecutive epochs slower than nissa.epoch_latency_s (training_latency_high fires at 3)",
            value=self.alerts.slow_epochs,
        )
        yield _counter(
            "esper_kasmina_isolation_violations",
            "Seeds turning to exploding gradients, and quarantined kernels",
            self.alerts.violations_total,
        )


def _snapshot_metrics(snap: Snapshot) -> Iterator[PromMetric]:
    t, forge, bus = snap.training, snap.forge, snap.bus
    info = GaugeMetricFamily(
        "esper_engine_info",
        "The engine's run id, kernels, the task it trains, the metric it decides on and the device",
        labels=["run_id", "kernels", "task", "metric", "device"],
    )
    device = t.device or snap.infrastructure.device
    info.add_metric([snap.run_id, snap.infrastructure.kernels, t.task, t.metric.name, device], 1.0)
    yield info
    yield GaugeMetricFamily("esper_uptime_seconds", "Seconds since the engine started", value=snap.uptime_s)
    yield from _split("esper_training_loss", "Loss by split (seed 003)", {"train": t.loss, "validation": t.val_loss})
    metric = GaugeMetricFamily(
        "esper_training_metric",
        "The metric the run decides on (esper_engine_info's), by split, in its own units",
        labels=["split", "metric"],
    )
    for split, value in (("validation", t.val_metric), ("test", t.test_metric)):
        if value is not None:
            metric.add_metric([split, t.metric.name], value)
    yield metric
    yield GaugeMetricFamily("esper_training_epoch", "Epochs completed", value=t.epoch)
    seeds = GaugeMetricFamily(
        "esper_seeds_active",
        "Working seeds by slot (each grafts into one host layer) and stage",
        labels=["slot", "stage"],
    )
    counts: dict[tuple[str, str], int] = {}
    for seed in t.seeds:
        if seed.stage not in IDLE_STAGES:
            counts[(seed.slot, seed.stage.value)] = counts.get((seed.slot, seed.stage.value), 0) + 1
    for (slot, stage), n in sorted(counts.items()):
        seeds.add_metric([slot, stage], n)
    yield seeds
    health = forge.health
    yield GaugeMetricFamily("esper_compile_queue_depth", "Blueprints waiting to compile", value=health.queue_depth)
    yield GaugeMetricFamily("esper_forge_workers", "Forge workers announced (heartbeats)", value=len(forge.workers))
    yield GaugeMetricFamily(
        "esper_forge_jobs_awaiting_worker",
        "Jobs queued for forge workers that none has started (--forge-workers 0)",
        value=forge.jobs_awaiting_worker,
    )
    yield GaugeMetricFamily("esper_compile_concurrency", "Compiles running now", value=health.concurrency)
    yield GaugeMetricFamily(
        "esper_compile_max_concurrency",
        "Compiles allowed at once (1 in conservative mode)",
        value=health.max_concurrency,
    )
    breakers = GaugeMetricFamily(
        "esper_breaker_state", "1 for each breaker's current state (a state set)", labels=["breaker", "state"]
    )
    for view in forge.breakers:
        for state in BreakerState:
            breakers.add_metric([view.name, state.value], 1.0 if view.state is state else 0.0)
    yield breakers
    yield GaugeMetricFamily(
        "esper_conservative_mode", "1 while Tezzeret is in conservative mode", value=forge.conservative_mode
    )
    yield _counter("esper_wal_commits", "WAL transactions committed by this engine", forge.wal.commits)
    yield GaugeMetricFamily(
        "esper_wal_open_transactions", "WAL transactions open now", value=len(forge.wal.open_transactions)
    )
    yield from _gauge(
        "esper_wal_last_checkpoint_timestamp_seconds",
        "Unix time of the last WAL checkpoint",
        forge.wal.last_checkpoint_ts,
    )
    yield GaugeMetricFamily("esper_bus_connected", "1 while the bus backend answers", value=bus.connected)
    yield _counter("esper_bus_published", "Messages published on the bus", bus.published)
    yield _counter("esper_bus_delivered", "Messages handled by the engine's consumers", bus.delivered)
    yield _counter("esper_bus_dropped", "Telemetry messages dropped (backpressure or outbox overflow)", bus.dropped)
    yield _counter("esper_bus_dead_lettered", "Messages moved to the dead-letter stream", bus.dead_lettered)
    yield _counter("esper_bus_rejected", "Commands refused by the engine's checks", bus.rejected)
    backlog = GaugeMetricFamily(
        "esper_bus_backlog_messages",
        "Entries the slowest live group has not acknowledged, by stream",
        labels=["stream"],
    )
    for entry in bus.backlogs:
        backlog.add_metric([entry.stream], entry.backlog)
    yield backlog
    yield from _simic_metrics(snap.simic, t.policy)


def _simic_metrics(simic: SimicView | None, policy: str) -> Iterator[PromMetric]:
    """Simic's training and gate (seed 004: simic.training.reward, simic.training.loss, simic.validation.pass), and
    the policy Tamiyo follows; the Simic series are left out while Simic never trained in this state directory."""
    info = GaugeMetricFamily(
        "simic_policy_info", "The policy Tamiyo follows (heuristic or learned vNNNN)", labels=["policy"]
    )
    info.add_metric([policy], 1.0)
    yield info
    if simic is None:
        return
    yield _counter("simic_episodes", "Training episodes Simic has run", simic.episodes_done)
    yield from _gauge(
        "simic_training_reward",
        "The newest training episode's return (points)",
        simic.returns[-1] if simic.returns else None,
    )
    yield from _gauge(
        "simic_training_loss", "The bandit's newest prediction loss", simic.losses[-1] if simic.losses else None
    )
    yield from _gauge(
        "simic_validation_pass",
        "1 when the gate passed the last candidate, 0 when it refused it",
        {"passed": 1.0, "failed": 0.0}.get(simic.verdict),
    )


def _split(name: str, doc: str, values: dict[str, float | None]) -> Iterator[PromMetric]:
    family = GaugeMetricFamily(name, doc, labels=["split"])
    for split, value in values.items():
        if value is not None:
            family.add_metric([split], value)
    yield family
