"""Nissa: the engine's metrics, health and alerts, for Prometheus, Grafana and the dashboard.

`metrics` turns events (as they happen) and snapshots (at scrape time) into Prometheus samples, `alerts`
evaluates seed 004's four alerts inside the engine, and `server` serves /metrics, /healthz and
/api/v1/status from the engine's own asyncio loop (no extra thread).
"""

from esper_tui.engine.nissa.alerts import ALERT_RULES, AlertEvaluator
from esper_tui.engine.nissa.metrics import EngineFacts, NissaMetrics
from esper_tui.engine.nissa.server import MetricsServer, PortInUse, health

__all__ = ["ALERT_RULES", "AlertEvaluator", "EngineFacts", "MetricsServer", "NissaMetrics", "PortInUse", "health"]
