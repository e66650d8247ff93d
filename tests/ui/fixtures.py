"""Deterministic snapshots for the dashboard tests and screenshots.

Every value is fixed (timestamps included), so the rendered dashboard is identical on every run and
machine: the SVG snapshot tests depend on it. The rich snapshot exercises every state each panel can
show: six jobs in all four states, a breaker of each kind (one with no GPU), an open WAL transaction,
a blending seed next to a dormant one, 20 epochs of history and events at every level. The bus and
remote-link variants show Oona in trouble and a control room attached from elsewhere.
"""

from __future__ import annotations

import datetime as dt
import math

import msgspec

from esper_tui.engine.snapshot import (
    BreakerView,
    BusNote,
    BusView,
    EventLine,
    ForgeHealth,
    ForgeView,
    ForgeWorkerView,
    Infrastructure,
    JobView,
    LinkView,
    SeedView,
    Snapshot,
    StreamBacklog,
    TrainingView,
    WalView,
)
from esper_tui.engine.vocabulary import (
    BreakerState,
    GradientHealth,
    JobStatus,
    Level,
    LinkState,
    SeedStage,
    Strategy,
    Subsystem,
    TrainingStatus,
)

T0 = dt.datetime(2025, 6, 1, 12, 1, 15, tzinfo=dt.UTC).timestamp()
"""The snapshot's clock: 12:01:15 UTC."""


def jobs() -> list[JobView]:
    return [
        JobView(
            blueprint_id="mlp_block",
            strategy=Strategy.STANDARD,
            status=JobStatus.COMPILED,
            attempt=1,
            started_ts=T0 - 95,
            duration_s=7.9,
            artifact_id="a1f3c9",
            version=2,
            backend="inductor",
            step_ms_compiled=0.41,
            step_ms_eager=0.47,
        ),
        JobView(
            blueprint_id="res_block",
            strategy=Strategy.STANDARD,
            status=JobStatus.COMPILING,
            attempt=1,
            started_ts=T0 - 5.1,
        ),
        JobView(blueprint_id="conv1d_block", strategy=Strategy.FAST, status=JobStatus.QUEUED),
        JobView(
            blueprint_id="attention_block",
            strategy=Strategy.STANDARD,
            status=JobStatus.COMPILED,
            attempt=1,
            duration_s=10.6,
            artifact_id="b7e210",
            version=1,
            backend="inductor",
            step_ms_compiled=1.32,
            step_ms_eager=1.18,
        ),
        JobView(
            blueprint_id="gru_block",
            strategy=Strategy.AGGRESSIVE,
            status=JobStatus.FAILED,
            attempt=3,
            duration_s=300.0,
            error="timeout after 300 s (worker group killed)",
        ),
        JobView(
            blueprint_id="layernorm_mlp",
            strategy=Strategy.FAST,
            status=JobStatus.COMPILED,
            attempt=1,
            duration_s=2.1,
            artifact_id="c40d5e",
            version=1,
            backend="aot_eager",
            step_ms_compiled=0.52,
            step_ms_eager=0.55,
        ),
    ]


def breakers() -> list[BreakerView]:
    return [
        BreakerView(name="memory", state=BreakerState.CLOSED, reading=1.2, threshold=8.0, unit="GiB"),
        BreakerView(name="gpu", state=BreakerState.UNAVAILABLE, detail="no GPU"),
        BreakerView(
            name="timeout",
            state=BreakerState.HALF_OPEN,
            reading=312.0,
            threshold=300.0,
            unit="s",
            failures=2,
            detail="probing",
        ),
    ]


def seeds() -> list[SeedView]:
    return [
        SeedView(
            slot="s0",
            stage=SeedStage.BLENDING,
            alpha=0.45,
            blueprint_id="conv1d_block",
            grad_norm=0.91,
            gain=0.012,
            epochs_in_stage=3,
            kernel="compiled inductor:default",
            health=GradientHealth.OK,
        ),
        SeedView(slot="s1", stage=SeedStage.DORMANT, alpha=0.0),
    ]


def loss_history() -> list[float]:
    """20 epochs of a loss that falls with a little wobble."""
    return [round(2.3 * math.exp(-i / 7) + 0.35 + 0.04 * math.sin(i), 4) for i in range(20)]


def accuracy_history() -> list[float]:
    """20 epochs of validation accuracy climbing towards 72 %."""
    return [round(0.72 - 0.5 * math.exp(-i / 5) + 0.01 * math.cos(i), 4) for i in range(20)]


def events() -> list[EventLine]:
    """Eight lines, oldest first (the aggregator's order), at every level."""
    lines = [
        (-302, Subsystem.ENGINE, Level.INFO, "engine started · bus embedded · device cpu · torch 2.13.0"),
        (-300, Subsystem.TOLARIA, Level.INFO, "training started: mnist1d, mlp host, 2 slots, compile inductor:default"),
        (-120, Subsystem.TEZZERET, Level.ERROR, "gru_block failed (Aggressive), attempt 3: timeout after 300 s"),
        (-95, Subsystem.TEZZERET, Level.INFO, "mlp_block compiled v2 (Standard) in 7.9 s · 0.41/0.47 ms"),
        (-40, Subsystem.TEZZERET, Level.WARNING, "timeout breaker half-open after 2 failures"),
        (-34, Subsystem.TEZZERET, Level.INFO, "res_block compiling (Standard), attempt 1"),
        (-12, Subsystem.TAMIYO, Level.INFO, "germinate s0 <- conv1d_block (accuracy flat for 3 epochs at 68.2 %)"),
        (-3, Subsystem.KASMINA, Level.INFO, "s0 blending alpha 0.45"),
    ]
    return [EventLine(ts=T0 + offset, source=source, level=level, text=text) for offset, source, level, text in lines]


def rich_snapshot(seq: int = 42) -> Snapshot:
    """The full dashboard: compiling run, forge busy, training mid-way."""
    return Snapshot(
        seq=seq,
        ts=T0,
        run_id="run-0001",
        uptime_s=302.0,
        infrastructure=Infrastructure(
            compile_enabled=True,
            compile_backend="inductor",
            compile_mode="default",
            bus="embedded",
            device="cpu",
            torch_version="2.13.0",
        ),
        forge=ForgeView(
            conservative_mode=False,
            breakers=breakers(),
            jobs=jobs(),
            wal=WalView(
                path="var/tezzeret/wal",
                segments=2,
                size_bytes=48 * 1024,
                open_transactions=["7f3a9c"],
                commits=212,
                last_checkpoint_ts=T0 - 12,
                durability_mode="o_dsync",
            ),
            health=ForgeHealth(
                concurrency=1,
                max_concurrency=2,
                queue_depth=1,
                compiled=3,
                failed=1,
                last_checkpoint_ts=T0 - 12,
            ),
        ),
        training=TrainingView(
            status=TrainingStatus.RUNNING,
            task="mnist1d",
            device="cpu",
            epoch=17,
            epochs_total=30,
            loss=0.912,
            val_loss=0.95,
            val_metric=0.714,
            best_val_metric=0.72,
            test_metric=0.702,
            samples_per_s=412.0,
            epoch_s=9.7,
            loss_history=loss_history(),
            val_metric_history=accuracy_history(),
            seeds=seeds(),
        ),
        events=events(),
        bus=BusView(
            backend="embedded",
            published=48211,
            delivered=48190,
            rate_out=412.0,
            rate_in=409.8,
            backlogs=[
                StreamBacklog(stream="oona.telemetry.run-0001", backlog=21),
                StreamBacklog(stream="oona.normal.run-0001", backlog=0),
                StreamBacklog(stream="oona.emergency.run-0001", backlog=0),
            ],
        ),
    )


def bus_trouble_snapshot(seq: int = 42) -> Snapshot:
    """Oona over Redis having a bad day: link down, dead letters, forged commands rejected, server errors."""
    bus = BusView(
        backend="redis://10.0.0.7:6379/0",
        connected=False,
        published=48211,
        delivered=48190,
        dropped=317,
        dead_lettered=1,
        rejected=2,
        rate_out=0.0,
        rate_in=12.5,
        backlogs=[
            StreamBacklog(stream="oona.telemetry.run-0001", backlog=2450),
            StreamBacklog(stream="oona.normal.run-0001", backlog=0),
            StreamBacklog(stream="oona.emergency.run-0001", backlog=1),
        ],
        dead_letters=[
            BusNote(ts=T0 - 50, stream="oona.telemetry.run-0001", reason="decode error: unexpected end of data")
        ],
        rejections=[
            BusNote(ts=T0 - 30, stream="oona.emergency.run-0001", reason="Shutdown from eve@lab-3: unsigned"),
            BusNote(ts=T0 - 8, stream="oona.normal.run-0001", reason="Recompile from bob@lab-1: bad signature"),
        ],
        server_errors={"oom": 3, "wrongtype": 1},
        last_error="OOM command not allowed when used memory > 'maxmemory'",
        control_rooms=2,
    )
    return msgspec.structs.replace(rich_snapshot(seq), bus=bus)


def remote_snapshot(state: LinkState, age_s: float, *, seq: int = 42, **link: object) -> Snapshot:
    """The rich snapshot as a control room attached from elsewhere sees it."""
    view = LinkView(state=state, run_id="run-0001", age_s=age_s, **link)  # type: ignore[arg-type]
    return msgspec.structs.replace(rich_snapshot(seq), link=view)


def compile_disabled_snapshot(seq: int = 42) -> Snapshot:
    """The same run with torch.compile off: the banner must say TAMIYO and EAGER (seed 002)."""
    snapshot = rich_snapshot(seq)
    eager_seeds = [msgspec.structs.replace(seed, kernel="eager") if seed.blueprint_id else seed for seed in seeds()]
    return msgspec.structs.replace(
        snapshot,
        infrastructure=msgspec.structs.replace(
            snapshot.infrastructure, compile_enabled=False, compile_backend=None, compile_mode=None
        ),
        training=msgspec.structs.replace(snapshot.training, seeds=eager_seeds),
    )


def with_job(snapshot: Snapshot, blueprint_id: str, **changes: object) -> Snapshot:
    """`snapshot` with one job changed and seq bumped, as the aggregator would publish it."""
    new_jobs = [
        msgspec.structs.replace(job, **changes) if job.blueprint_id == blueprint_id else job
        for job in snapshot.forge.jobs
    ]
    return msgspec.structs.replace(
        snapshot, seq=snapshot.seq + 1, forge=msgspec.structs.replace(snapshot.forge, jobs=new_jobs)
    )


def forge_workers_snapshot(seq: int = 42) -> Snapshot:
    """An engine with --forge-workers 0: two forge workers elsewhere compile, one is quiet for 4 s."""
    snapshot = rich_snapshot(seq)
    jobs = [
        msgspec.structs.replace(job, worker="gpu-box-2:4117")
        if job.status is JobStatus.COMPILING
        else msgspec.structs.replace(job, worker="gpu-box-1:2203")
        if job.status is JobStatus.COMPILED and not job.reused
        else job
        for job in snapshot.forge.jobs
    ]
    workers = [
        ForgeWorkerView(worker_id="w1", host="gpu-box-1", pid=2203, done=4, last_beat_ts=T0 - 0.4),
        ForgeWorkerView(worker_id="w2", host="gpu-box-2", pid=4117, jobs=["res_block"], done=2, last_beat_ts=T0 - 4.2),
    ]
    forge = msgspec.structs.replace(snapshot.forge, jobs=jobs, workers=workers)
    return msgspec.structs.replace(snapshot, forge=forge)


def silent_snapshot() -> Snapshot:
    """Attached from elsewhere, the engine quiet for 12 s, three forged frames ignored, read-only."""
    return remote_snapshot(LinkState.SILENT, 12.4, read_only=True, frames_rejected=3)


def stopped_snapshot() -> Snapshot:
    """Attached from elsewhere, the engine's final picture."""
    return remote_snapshot(LinkState.STOPPED, 4.2)


def live_snapshot() -> Snapshot:
    """Attached from elsewhere, frames arriving on time."""
    return remote_snapshot(LinkState.LIVE, 0.34)
