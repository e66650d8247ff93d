"""Nissa on a live engine over real HTTP, promtool on its real output, the alert rules, the port-in-use error.

Engines here train eagerly (no compiles: nothing is queued) on the embedded bus, so they are cheap. Waits
only guard against hangs; nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
from prometheus_client import generate_latest

from esper_tui.engine.config import NissaConfig, parse_config
from esper_tui.engine.contracts import (
    AlertChanged,
    ArtifactQuarantined,
    EpochCompleted,
    JobFailed,
    SeedHealth,
    SeedsReport,
)
from esper_tui.engine.nissa import AlertEvaluator, EngineFacts, NissaMetrics, health
from esper_tui.engine.runtime import Engine
from esper_tui.engine.snapshot import BusView, ForgeView, ForgeWorkerView, Snapshot, StreamBacklog, TrainingView
from esper_tui.engine.vocabulary import SeedStage, Strategy, TrainingStatus
from tests.ui.fixtures import bus_trouble_snapshot, rich_snapshot
from tests.waits import eventually

CLI = [sys.executable, "-m", "esper_tui", "--no-ui", "--eager", "--epochs", "1"]


def promtool() -> str:
    """promtool must be there (scripts/ensure-promtool.sh installs it for `make test`): fail, never skip."""
    path = shutil.which("promtool")
    assert path, "promtool is not installed: run `. scripts/ensure-promtool.sh` (Debian package prometheus)"
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def epoch(n: int, epoch_s: float) -> EpochCompleted:
    return EpochCompleted(
        epoch=n, train_loss=1.0, val_loss=1.0, val_metric=0.5, samples_per_s=1.0, epoch_s=epoch_s, ts=float(n)
    )


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[tuple[Engine, str]]:
    """A real engine training two eager epochs, its endpoints on a free port; stopped afterwards."""
    port = free_port()
    config = parse_config(
        {
            "tezzeret": {"polling": {"initial_full_scan": False}},
            "training": {"compile": False, "epochs": 2},
            "ui": {"refresh_hz": 10},
            "nissa": {"port": port},
        }
    )
    engine = Engine(config, tmp_path / "state")
    await engine.start()
    try:
        yield engine, f"http://127.0.0.1:{port}"
    finally:
        await engine.stop()


async def get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


async def test_endpoints_over_http_on_a_live_engine(live: tuple[Engine, str]) -> None:
    engine, base = live

    def trained() -> bool:
        snap = engine.latest()
        return snap is not None and snap.training.status is TrainingStatus.FINISHED

    await eventually(trained, "two epochs trained")
    await asyncio.sleep(0.3)  # a snapshot after the last event (the publisher runs at 10 Hz)
    status, ctype, text = await get(f"{base}/metrics")
    assert status == 200 and ctype.startswith("text/plain"), (status, ctype)
    assert 'esper_training_loss{split="train"}' in text
    assert 'esper_training_metric{metric="accuracy",split="test"}' in text
    info = next(line for line in text.splitlines() if line.startswith("esper_engine_info{"))
    assert 'task="mnist1d"' in info and 'metric="accuracy"' in info and 'device="cpu"' in info, info
    assert "esper_epoch_duration_seconds_count 2.0" in text  # fed by events: both epochs, not a snapshot's last
    assert 'esper_alert_active{alertname="training_latency_high"} 0.0' in text
    assert "esper_bus_published_total" in text and "esper_wal_recovery_seconds" in text
    check = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr

    for path in ("/healthz", "/health"):
        status, ctype, text = await get(base + path)
        body = msgspec.json.decode(text)
        assert status == 200 and body["status"] == "ok" and body["reasons"] == [], body
        assert {"concurrency", "queue_depth", "last_wal_checkpoint_ts", "conservative_mode"} <= body.keys()
        assert body["run_id"] == engine.run_id

    status, ctype, text = await get(f"{base}/api/v1/status")
    snap = msgspec.json.decode(text, type=Snapshot)
    assert status == 200 and ctype == "application/json" and snap.run_id == engine.run_id
    assert snap.training.epoch == 2


async def test_an_alert_fires_as_event_snapshot_and_metric_then_resolves(live: tuple[Engine, str]) -> None:
    """Three slow epochs injected into a live engine: the event log, Snapshot.alerts and /metrics agree."""
    engine, base = live
    slow = engine.config.nissa.epoch_latency_s + 1
    for n in range(101, 104):
        engine.emit(epoch(n, slow))

    def firing() -> bool:
        snap = engine.latest()
        return snap is not None and [a.alertname for a in snap.alerts] == ["training_latency_high"]

    await eventually(firing, "the alert in the snapshot")
    snap = engine.latest()
    assert snap is not None and any("alert training_latency_high firing" in e.text for e in snap.events)
    _, _, text = await get(f"{base}/metrics")
    assert 'esper_alert_active{alertname="training_latency_high"} 1.0' in text
    status, _, body = await get(f"{base}/healthz")
    assert status == 200 and msgspec.json.decode(body)["alerts"] == ["training_latency_high"]

    engine.emit(epoch(104, 0.1))
    await eventually(lambda: (s := engine.latest()) is not None and not s.alerts, "the alert resolved")
    _, _, text = await get(f"{base}/metrics")
    assert 'esper_alert_active{alertname="training_latency_high"} 0.0' in text


def test_healthz_is_503_with_reasons() -> None:
    snap = Snapshot(
        training=TrainingView(status=TrainingStatus.FAILED),
        bus=BusView(connected=False, last_error="Connection refused"),
    )
    code, body = health(snap, EngineFacts(run_id="r1", forge_fatal="WAL fsync failed"))
    assert code == 503 and body["status"] == "unhealthy"
    assert body["reasons"] == ["forge fatal: WAL fsync failed", "training failed", "bus down: Connection refused"]
    assert health(Snapshot(), EngineFacts())[0] == 200


def test_metrics_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [*CLI, "--state-dir", str(tmp_path / "state"), "--metrics-port", str(port)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"esper-tui: --metrics-port {port}: address already in use\n"


# --------------------------------------------------------------------------- alert transitions


def names(changes: list[AlertChanged]) -> list[tuple[str, bool]]:
    return [(c.alertname, c.active) for c in changes]


def test_training_latency_high_needs_three_consecutive_slow_epochs() -> None:
    alerts = AlertEvaluator(NissaConfig(epoch_latency_s=10))
    assert names(alerts.observe(epoch(1, 11))) == []
    assert names(alerts.observe(epoch(2, 11))) == []
    assert names(alerts.observe(epoch(3, 10))) == []  # at the threshold is not above it: the streak restarts
    for n in (4, 5):
        assert names(alerts.observe(epoch(n, 12))) == []
    assert names(alerts.observe(epoch(6, 12))) == [("training_latency_high", True)]
    assert names(alerts.observe(epoch(7, 12))) == []  # only transitions are events
    assert names(alerts.observe(epoch(8, 1))) == [("training_latency_high", False)]


def seeds(ts: float, *exploding: str) -> SeedsReport:
    def seed(slot: str) -> SeedHealth:
        return SeedHealth(
            slot=slot,
            stage=SeedStage.TRAINING,
            blueprint_id="b",
            alpha=0.0,
            grad_norm=1.0,
            gain=None,
            epochs_in_stage=1,
            kernel="eager",
            exploding=slot in exploding,
        )

    return SeedsReport(epoch=1, seeds=[seed("s0"), seed("s1")], ts=ts)


def test_isolation_violations_fire_and_expire_after_the_window() -> None:
    alerts = AlertEvaluator(NissaConfig(isolation_window_s=300))
    assert names(alerts.observe(seeds(0))) == []
    assert names(alerts.observe(seeds(10, "s1"))) == [("kasmina_isolation_violation", True)]
    assert names(alerts.observe(seeds(20, "s1"))) == [] and alerts.violations_total == 1  # still exploding: one
    quarantined = ArtifactQuarantined(blueprint_id="b", artifact_id="v1", reason="bad signature", ts=200)
    assert names(alerts.observe(quarantined)) == [] and alerts.violations_total == 2
    assert names(alerts.tick(None, 450)) == []  # within 300 s of the newest violation
    assert names(alerts.tick(None, 501)) == [("kasmina_isolation_violation", False)]


def test_compile_retries_in_a_sliding_window() -> None:
    alerts = AlertEvaluator(NissaConfig(compile_retries=3, retry_window_s=600))

    def failed(ts: float, retry: bool = True) -> JobFailed:
        return JobFailed(blueprint_id="b", strategy=Strategy.FAST, error="x", attempt=1, will_retry=retry, ts=ts)

    assert names(alerts.observe(failed(0))) == []
    assert names(alerts.observe(failed(1, retry=False))) == []  # a final failure is not a retry
    assert names(alerts.observe(failed(100))) == []
    assert names(alerts.observe(failed(200))) == [("tezzeret_compile_retry_high", True)]
    assert names(alerts.tick(None, 600)) == []
    assert names(alerts.tick(None, 601)) == [("tezzeret_compile_retry_high", False)]  # the first left the window


def test_queue_depth_reads_the_deepest_backlog() -> None:
    alerts = AlertEvaluator(NissaConfig(queue_depth=100))

    def snap(*depths: int) -> Snapshot:
        backlogs = [StreamBacklog(stream=f"oona.s{i}", backlog=d) for i, d in enumerate(depths)]
        return Snapshot(bus=BusView(backlogs=backlogs))

    assert names(alerts.tick(snap(5, 100), 0)) == []
    changes = alerts.tick(snap(5, 101), 1)
    assert names(changes) == [("oona_queue_depth", True)] and changes[0].summary == "oona.s1 backlog 101 > 100"
    assert names(alerts.tick(snap(0, 0), 2)) == [("oona_queue_depth", False)]


def test_jobs_waiting_with_no_forge_worker_fire_after_the_wait_and_resolve_when_one_comes() -> None:
    alerts = AlertEvaluator(NissaConfig(no_worker_s=30))
    worker = ForgeWorkerView(worker_id="w1", host="h", pid=1, last_beat_ts=0.0)

    def snap(waiting: int, *workers: ForgeWorkerView) -> Snapshot:
        return Snapshot(forge=ForgeView(jobs_awaiting_worker=waiting, workers=list(workers)))

    assert names(alerts.tick(snap(7), 0)) == []
    assert names(alerts.tick(snap(7), 30)) == []
    changes = alerts.tick(snap(7), 31)
    assert names(changes) == [("tezzeret_no_forge_worker", True)]
    assert changes[0].summary == "7 forge jobs waiting 31 s with no forge worker announced"
    assert names(alerts.tick(snap(7, worker), 32)) == [("tezzeret_no_forge_worker", False)]
    assert names(alerts.tick(snap(7), 33)) == []  # the wait starts over
    assert names(alerts.tick(snap(0), 100)) == []  # nothing waits: no worker is needed
    assert names(alerts.tick(snap(3), 101)) == [] and names(alerts.tick(snap(3), 132)) == [
        ("tezzeret_no_forge_worker", True)
    ]


def test_the_forge_workers_and_waiting_jobs_are_exported() -> None:
    worker = ForgeWorkerView(worker_id="w1", host="h", pid=1, last_beat_ts=0.0)
    snap = Snapshot(forge=ForgeView(jobs_awaiting_worker=7, workers=[worker]))
    text = generate_latest(NissaMetrics(AlertEvaluator(NissaConfig()), lambda: snap, EngineFacts).registry).decode()
    assert "esper_forge_jobs_awaiting_worker 7.0" in text and "esper_forge_workers 1.0" in text


def test_promtool_accepts_every_metric_family_of_a_busy_snapshot() -> None:
    """The live test's short run has no seeds, breakers or jobs; a dashboard fixture has them all."""
    for snap in (rich_snapshot(), bus_trouble_snapshot()):
        metrics = NissaMetrics(AlertEvaluator(NissaConfig()), lambda s=snap: s, EngineFacts)
        text = generate_latest(metrics.registry).decode()
        assert "esper_seeds_active{" in text and "esper_breaker_state{" in text, text
        check = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
