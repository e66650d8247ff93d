"""Seed 004's four alerts and the forge's own, evaluated inside the engine from the events and snapshots the
dashboard sees.

Each rule is defined precisely below; deploy/prometheus/esper-alerts.yml states the same rules as PromQL over
the exported metrics, so an operator's Prometheus and the dashboard's alert strip agree. The evaluator is
pure and synchronous: `observe(event)` and `tick(snapshot, now)` return the AlertChanged events to emit
(only transitions), which keeps it re-entrancy free when called from the engine's emit path.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from esper_tui.engine.config import NissaConfig
from esper_tui.engine.contracts import (
    AlertChanged,
    AnyEvent,
    ArtifactQuarantined,
    EpochCompleted,
    JobFailed,
    SeedsReport,
)
from esper_tui.engine.snapshot import Snapshot

SLOW_EPOCHS = 3
"""training_latency_high needs this many consecutive slow epochs (seed 004: "three consecutive epochs")."""


@dataclass(frozen=True)
class AlertRule:
    alertname: str
    severity: str  # seed 004's routing: page, slack, email
    description: str


ALERT_RULES = (
    AlertRule(
        "training_latency_high",
        "warning",
        "the last three consecutive epochs each took longer than nissa.epoch_latency_s (EpochCompleted.epoch_s); "
        "resolves at the first epoch at or below it",
    ),
    AlertRule(
        "kasmina_isolation_violation",
        "critical",
        "a seed slot turned to exploding gradients (non-finite, or above the seed policy's bound) or a stored "
        "kernel was quarantined, within the last nissa.isolation_window_s seconds",
    ),
    AlertRule(
        "oona_queue_depth",
        "warning",
        "a bus stream's unacknowledged backlog (Snapshot.bus.backlogs, the slowest live group) exceeds "
        "nissa.queue_depth entries",
    ),
    AlertRule(
        "tezzeret_compile_retry_high",
        "warning",
        "at least nissa.compile_retries compile attempts failed and were retried within the last "
        "nissa.retry_window_s seconds",
    ),
    AlertRule(
        "tezzeret_no_forge_worker",
        "critical",
        "forge jobs have waited nissa.no_worker_s seconds for a forge worker (Snapshot.forge.jobs_awaiting_worker) "
        "and none has announced itself (Snapshot.forge.workers is empty): nothing will compile them",
    ),
)
ALERT_NAMES = tuple(rule.alertname for rule in ALERT_RULES)
_SEVERITY = {rule.alertname: rule.severity for rule in ALERT_RULES}


class AlertEvaluator:
    """The rules' state. Time comes from the caller (event timestamps, the tick's clock), never read here,
    so tests drive transitions without sleeping."""

    def __init__(self, config: NissaConfig) -> None:
        self.config = config
        self.slow_epochs = 0  # consecutive epochs above epoch_latency_s (exported as a gauge)
        self.violations_total = 0  # isolation violations (exported as a counter)
        self._last_violation_ts: float | None = None
        self._exploding: set[str] = set()
        self._retries: deque[float] = deque()
        self._unserved_since: float | None = None  # jobs awaiting a worker, and no worker, since then
        self._active: dict[str, str] = {}  # alertname -> summary of the firing alert

    @property
    def active(self) -> dict[str, str]:
        """Firing alerts and their summaries."""
        return dict(self._active)

    def observe(self, event: AnyEvent) -> list[AlertChanged]:
        """Fold one event into the rules it feeds; returns the transitions it caused."""
        match event:
            case EpochCompleted():
                slow = event.epoch_s > self.config.epoch_latency_s
                self.slow_epochs = self.slow_epochs + 1 if slow else 0
                summary = (
                    f"{self.slow_epochs} consecutive epochs over {self.config.epoch_latency_s:g} s "
                    f"(last {event.epoch_s:.2f} s)"
                )
                return self._set("training_latency_high", self.slow_epochs >= SLOW_EPOCHS, summary, event.ts)
            case SeedsReport():
                exploding = {seed.slot for seed in event.seeds if seed.exploding}
                new, self._exploding = sorted(exploding - self._exploding), exploding
                if new:
                    return self._violation(len(new), f"exploding gradients in {', '.join(new)}", event.ts)
            case ArtifactQuarantined():
                return self._violation(1, f"kernel {event.blueprint_id} quarantined: {event.reason}", event.ts)
            case JobFailed(will_retry=True):
                self._retries.append(event.ts)
                return self._retry_rule(event.ts)
        return []

    def tick(self, snapshot: Snapshot | None, now: float) -> list[AlertChanged]:
        """Time-based rules: windows expire, and the bus backlog is read from the newest snapshot."""
        changes = self._retry_rule(now)
        if self._last_violation_ts is not None and now - self._last_violation_ts > self.config.isolation_window_s:
            changes += self._set("kasmina_isolation_violation", False, "", now)
        if snapshot is not None:
            deepest = max(snapshot.bus.backlogs, key=lambda b: b.backlog, default=None)
            over = deepest is not None and deepest.backlog > self.config.queue_depth
            summary = f"{deepest.stream} backlog {deepest.backlog} > {self.config.queue_depth}" if deepest else ""
            changes += self._set("oona_queue_depth", over, summary, now)
            changes += self._worker_rule(snapshot, now)
        return changes

    def _worker_rule(self, snapshot: Snapshot, now: float) -> list[AlertChanged]:
        waiting = snapshot.forge.jobs_awaiting_worker
        if not waiting or snapshot.forge.workers:
            self._unserved_since = None
            return self._set("tezzeret_no_forge_worker", False, "", now)
        if self._unserved_since is None:
            self._unserved_since = now
        waited = now - self._unserved_since
        summary = f"{waiting} forge jobs waiting {waited:.0f} s with no forge worker announced"
        return self._set("tezzeret_no_forge_worker", waited > self.config.no_worker_s, summary, now)

    def _violation(self, count: int, summary: str, ts: float) -> list[AlertChanged]:
        """Counted, and the window restarts: the alert stays up isolation_window_s after the newest one."""
        self.violations_total += count
        self._last_violation_ts = ts
        return self._set("kasmina_isolation_violation", True, summary, ts)

    def _retry_rule(self, now: float) -> list[AlertChanged]:
        while self._retries and now - self._retries[0] > self.config.retry_window_s:
            self._retries.popleft()
        count = len(self._retries)
        summary = f"{count} compile retries in the last {self.config.retry_window_s:g} s"
        return self._set("tezzeret_compile_retry_high", count >= self.config.compile_retries, summary, now)

    def _set(self, name: str, firing: bool, summary: str, ts: float) -> list[AlertChanged]:
        """Only a transition becomes an AlertChanged: a firing alert keeps the summary it fired with."""
        if firing == (name in self._active):
            return []
        if firing:
            self._active[name] = summary
        else:
            self._active.pop(name, None)
        return [AlertChanged(alertname=name, active=firing, severity=_SEVERITY[name], summary=summary, ts=ts)]
