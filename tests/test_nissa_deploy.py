"""The monitoring files we ship: promtool checks and unit-tests the alert rules (inside `make test`), and every
expression of the rules and of the Grafana dashboard names a metric the engine really exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from prometheus_client import generate_latest

from esper_tui.engine.config import NissaConfig
from esper_tui.engine.nissa import ALERT_RULES, AlertEvaluator, EngineFacts, NissaMetrics
from esper_tui.engine.nissa.alerts import ALERT_NAMES
from esper_tui.engine.snapshot import Snapshot
from tests.test_nissa import promtool

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "esper-alerts.yml"
RULES_TEST = DEPLOY / "prometheus" / "esper-alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "esper-dashboard.json"
SUFFIXES = {"counter": ("",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exported_names() -> set[str]:
    """Sample names of every family the engine's registry declares (its `# TYPE` lines name counters with _total)."""
    metrics = NissaMetrics(AlertEvaluator(NissaConfig()), Snapshot, lambda: EngineFacts(wal_recovery_s=0.0))
    text = generate_latest(metrics.registry).decode()
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        names |= {name + suffix for suffix in SUFFIXES[kind]}
    return names


def referenced(expr: str) -> set[str]:
    return set(re.findall(r"\besper_[a-z_]+", expr))


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULES_TEST)]):
        proc = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "SUCCESS" in proc.stdout + proc.stderr


def test_rules_are_the_engines_alerts_over_exported_metrics() -> None:
    text = RULES.read_text()
    assert re.findall(r"- alert: (\S+)", text) == [rule.alertname for rule in ALERT_RULES]
    exprs = re.findall(r"expr: (.+)", text)
    assert len(exprs) == len(ALERT_RULES)
    tested = set(re.findall(r"alertname: (\S+)", RULES_TEST.read_text()))
    assert tested == set(ALERT_NAMES), "every rule has a promtool unit test"
    missing = set().union(*map(referenced, exprs)) - exported_names()
    assert not missing, f"rules use metrics the engine does not export: {sorted(missing)}"


def test_grafana_dashboard_is_json_over_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(exprs) >= len(dashboard["panels"]) >= 10
    used = set().union(*map(referenced, exprs))
    missing = used - exported_names()
    assert not missing, f"the dashboard uses metrics the engine does not export: {sorted(missing)}"
    seed_003 = {
        "esper_training_loss",
        "esper_adaptations_total",
        "esper_kernel_cache_hits_total",
        "esper_seeds_active",
        "esper_compilation_duration_seconds_bucket",
        "esper_alert_active",
    }
    assert seed_003 <= used
