"""The aggregator: events fold into immutable snapshots whose seq moves only when something changed."""

from __future__ import annotations

import json

import msgspec
import pytest

from esper_tui.engine.aggregator import Aggregator
from esper_tui.engine.codec import decode_event_json, decode_snapshot_json, encode_json
from esper_tui.engine.contracts import (
    AlertChanged,
    ArtifactQuarantined,
    BreakerChanged,
    CommandObeyed,
    CommandRefused,
    ConservativeModeChanged,
    ControllerDecision,
    EngineStarted,
    EngineStopping,
    EpochCompleted,
    JobCompiled,
    JobFailed,
    JobQueued,
    JobStarted,
    LogLine,
    Metric,
    MetricsReport,
    Rollback,
    SeedHealth,
    SeedsReport,
    TrainingFailed,
    TrainingFinished,
    TrainingPaused,
    TrainingStarted,
    TrainingWaiting,
    WalStatus,
)
from esper_tui.engine.snapshot import BusNote, BusView, Snapshot, StreamBacklog, seeds_run
from esper_tui.engine.vocabulary import (
    Action,
    BreakerState,
    GradientHealth,
    JobStatus,
    Level,
    SeedStage,
    Strategy,
    Subsystem,
    TrainingStatus,
)
from esper_tui.ui.status_line import status_line


@pytest.fixture
def agg(fake_clock) -> Aggregator:
    return Aggregator(max_concurrency=2, history=5, max_events=20, clock=fake_clock)


def queued(bid="mlp_block", strategy=Strategy.STANDARD, **kw):
    return JobQueued(blueprint_id=bid, strategy=strategy, reason="initial scan", **kw)


def started(bid="mlp_block", strategy=Strategy.STANDARD, attempt=1, **kw):
    return JobStarted(blueprint_id=bid, strategy=strategy, attempt=attempt, **kw)


def compiled(bid="mlp_block", version=1, reused=False, **kw):
    return JobCompiled(
        blueprint_id=bid,
        strategy=Strategy.STANDARD,
        artifact_id="a" * 64,
        version=version,
        backend="inductor",
        mode="default",
        compile_s=4.5,
        step_ms_compiled=0.5,
        step_ms_eager=0.6,
        reused=reused,
        **kw,
    )


def failed(bid="mlp_block", will_retry=True, attempt=1, **kw):
    return JobFailed(
        blueprint_id=bid, strategy=Strategy.STANDARD, error="boom", attempt=attempt, will_retry=will_retry, **kw
    )


def wal_status(**kw):
    fields = {
        "path": "/s/wal",
        "segments": 1,
        "size_bytes": 512,
        "open_transactions": ["tx"],
        "commits": 3,
        "last_checkpoint_ts": 12.5,
        "durability_mode": "o_dsync",
    }
    fields.update(kw)
    return WalStatus(**fields)


def seed(slot="slot-0", stage=SeedStage.TRAINING, bid="mlp_block", **kw):
    fields = {
        "slot": slot,
        "stage": stage,
        "blueprint_id": bid,
        "alpha": 0.25,
        "grad_norm": 0.1,
        "gain": 0.01,
        "epochs_in_stage": 2,
        "kernel": "compiled inductor:default",
    }
    fields.update(kw)
    return SeedHealth(**fields)


def training_started(enabled=True):
    return TrainingStarted(
        compile_enabled=enabled,
        compile_backend="inductor" if enabled else None,
        compile_mode="default" if enabled else None,
        dataset="mnist1d",
        host="mlp",
        slots=2,
        epochs=10,
        device="cpu",
    )


# ---------------------------------------------------------------------------------- folding


def test_job_lifecycle_folds(agg, fake_clock):
    agg.apply(queued())
    job = agg.snapshot().forge.jobs[0]
    assert (job.blueprint_id, job.strategy, job.status) == ("mlp_block", Strategy.STANDARD, JobStatus.QUEUED)
    assert agg.snapshot().forge.health.queue_depth == 1

    agg.apply(started(ts=100.0))
    job = agg.snapshot().forge.jobs[0]
    assert (job.status, job.attempt, job.started_ts) == (JobStatus.COMPILING, 1, 100.0)
    health = agg.snapshot().forge.health
    assert (health.concurrency, health.queue_depth, health.max_concurrency) == (1, 0, 2)

    agg.apply(compiled())
    job = agg.snapshot().forge.jobs[0]
    assert job.status is JobStatus.COMPILED
    assert (job.version, job.artifact_id, job.backend, job.duration_s) == (1, "a" * 64, "inductor:default", 4.5)
    assert (job.step_ms_compiled, job.step_ms_eager, job.reused, job.attempt) == (0.5, 0.6, False, 1)
    assert agg.snapshot().forge.health.compiled == 1

    # A recompile is queued and started: the stored version stays on display meanwhile.
    agg.apply(queued(strategy=Strategy.FAST))
    agg.apply(started(strategy=Strategy.FAST, ts=200.0))
    job = agg.snapshot().forge.jobs[0]
    assert (job.status, job.strategy, job.version, job.artifact_id) == (JobStatus.COMPILING, Strategy.FAST, 1, "a" * 64)


def test_failure_with_retry_is_queued_and_final_failure_is_failed(agg):
    agg.apply(started(ts=100.0))
    agg.apply(failed(will_retry=True, ts=103.0))
    job = agg.snapshot().forge.jobs[0]
    assert (job.status, job.error, job.attempt, job.duration_s) == (JobStatus.QUEUED, "boom", 1, 3.0)
    agg.apply(started(attempt=2, ts=110.0))
    agg.apply(failed(will_retry=False, attempt=2, ts=111.0))
    snap = agg.snapshot()
    assert snap.forge.jobs[0].status is JobStatus.FAILED
    assert snap.forge.health.failed == 1
    levels = [line.level for line in snap.events if "failed" in line.text]
    assert levels == [Level.WARNING, Level.ERROR]


def test_failed_recompile_keeps_the_stored_version_on_display(agg):
    agg.apply(compiled(version=1))
    agg.apply(started(ts=10.0))
    agg.apply(failed(will_retry=False, ts=11.0))
    job = agg.snapshot().forge.jobs[0]
    assert (job.version, job.artifact_id) == (1, "a" * 64)


def test_reused_job_is_marked(agg):
    agg.apply(compiled(reused=True))
    snap = agg.snapshot()
    assert snap.forge.jobs[0].reused is True
    assert "reused" in snap.events[-1].text


def test_breaker_changes_fold_keeping_readings_on_transitions(agg):
    agg.apply(
        BreakerChanged(
            name="timeout",
            state=BreakerState.CLOSED,
            previous=BreakerState.CLOSED,
            transition=False,
            reading=0.0,
            threshold=3.0,
            unit="timeouts",
            failures=0,
        )
    )
    agg.apply(
        BreakerChanged(
            name="memory",
            state=BreakerState.CLOSED,
            previous=BreakerState.CLOSED,
            transition=False,
            reading=900.0,
            threshold=8192.0,
            unit="MB",
        )
    )
    agg.apply(
        BreakerChanged(
            name="gpu",
            state=BreakerState.UNAVAILABLE,
            previous=BreakerState.CLOSED,
            transition=True,
            detail="no GPU: Driver Not Loaded",
        )
    )
    agg.apply(
        BreakerChanged(
            name="memory",
            state=BreakerState.OPEN,
            previous=BreakerState.CLOSED,
            transition=True,
            detail="rss over budget",
        )
    )
    breakers = agg.snapshot().forge.breakers
    assert [b.name for b in breakers] == ["memory", "gpu", "timeout"]  # fixed order, whatever arrived first
    memory = breakers[0]
    assert (memory.state, memory.reading, memory.threshold, memory.unit, memory.detail) == (
        BreakerState.OPEN,
        900.0,
        8192.0,
        "MB",
        "rss over budget",
    )
    assert breakers[1].state is BreakerState.UNAVAILABLE and "no GPU" in breakers[1].detail
    assert any("breaker memory: closed -> open" in line.text for line in agg.snapshot().events)
    # Readings without a transition do not add event lines.
    before = len(agg.snapshot().events)
    agg.apply(
        BreakerChanged(
            name="memory",
            state=BreakerState.OPEN,
            previous=BreakerState.OPEN,
            transition=False,
            reading=9000.0,
            threshold=8192.0,
            unit="MB",
            failures=1,
        )
    )
    snap = agg.snapshot()
    assert len(snap.events) == before and snap.forge.breakers[0].reading == 9000.0
    assert snap.forge.breakers[0].failures == 1


def test_conservative_mode_folds(agg):
    agg.apply(ConservativeModeChanged(active=True, reason="memory breaker open"))
    snap = agg.snapshot()
    assert snap.forge.conservative_mode and snap.forge.conservative_reason == "memory breaker open"
    assert snap.forge.health.max_concurrency == 1
    agg.apply(ConservativeModeChanged(active=False, reason="operator"))
    snap = agg.snapshot()
    assert not snap.forge.conservative_mode and snap.forge.conservative_reason == ""
    assert snap.forge.health.max_concurrency == 2


def test_wal_status_folds(agg):
    agg.apply(wal_status())
    wal = agg.snapshot().forge.wal
    assert (wal.path, wal.segments, wal.size_bytes, wal.open_transactions, wal.commits, wal.durability_mode) == (
        "/s/wal",
        1,
        512,
        ["tx"],
        3,
        "o_dsync",
    )
    assert agg.snapshot().forge.health.last_checkpoint_ts == 12.5
    agg.apply(wal_status(open_transactions=[], commits=4))
    assert agg.snapshot().forge.wal.open_transactions == [] and agg.snapshot().forge.wal.commits == 4


def test_engine_and_training_events_fold(agg):
    agg.apply(EngineStarted(run_id="run1", bus="embedded", state_dir="/s", device="cpu", torch_version="2.13.0"))
    snap = agg.snapshot()
    assert snap.run_id == "run1" and snap.infrastructure.bus == "embedded"
    assert snap.infrastructure.torch_version == "2.13.0" and snap.infrastructure.compile_enabled is False

    agg.apply(training_started())
    snap = agg.snapshot()
    infra = snap.infrastructure
    assert (infra.compile_enabled, infra.compile_backend, infra.compile_mode) == (True, "inductor", "default")
    assert (snap.training.status, snap.training.epochs_total) == (TrainingStatus.RUNNING, 10)

    for epoch, acc in enumerate([0.5, 0.7, 0.6], start=1):
        agg.apply(
            EpochCompleted(
                epoch=epoch,
                train_loss=1.0 / epoch,
                val_loss=1.1 / epoch,
                val_metric=acc,
                samples_per_s=1000.0,
                epoch_s=2.0,
            )
        )
    t = agg.snapshot().training
    assert (t.epoch, t.val_metric, t.best_val_metric, t.loss) == (3, 0.6, 0.7, 1.0 / 3)
    assert t.val_metric_history == [0.5, 0.7, 0.6] and len(t.loss_history) == 3

    agg.apply(
        SeedsReport(
            epoch=3, seeds=[seed(), seed("slot-1", SeedStage.DORMANT, None, alpha=0.0), seed("slot-2", exploding=True)]
        )
    )
    seeds = agg.snapshot().training.seeds
    assert [(s.slot, s.stage, s.alpha) for s in seeds] == [
        ("slot-0", SeedStage.TRAINING, 0.25),
        ("slot-1", SeedStage.DORMANT, 0.0),
        ("slot-2", SeedStage.TRAINING, 0.25),
    ]
    assert [s.health for s in seeds] == [GradientHealth.OK, GradientHealth.NONE, GradientHealth.EXPLODING]

    agg.apply(TrainingPaused(paused=True))
    assert agg.snapshot().training.status is TrainingStatus.PAUSED
    agg.apply(TrainingPaused(paused=False))
    assert agg.snapshot().training.status is TrainingStatus.RUNNING
    agg.apply(TrainingFinished(epochs=3, val_metric=0.6, best_val_metric=0.7, best_epoch=2))
    snap = agg.snapshot()
    assert snap.training.status is TrainingStatus.FINISHED
    assert snap.events[-1].text == "training finished after 3 epochs, best validation accuracy 70.0 %"


def test_eager_training_shows_compile_disabled(agg):
    agg.apply(training_started(enabled=False))
    infra = agg.snapshot().infrastructure
    assert (infra.compile_enabled, infra.compile_backend, infra.compile_mode) == (False, None, None)
    assert "EAGER" in agg.snapshot().events[-1].text


def test_history_is_bounded(agg):
    for epoch in range(1, 9):
        agg.apply(
            EpochCompleted(
                epoch=epoch,
                train_loss=float(epoch),
                val_loss=0.0,
                val_metric=epoch / 10,
                samples_per_s=1.0,
                epoch_s=1.0,
            )
        )
    t = agg.snapshot().training
    assert t.loss_history == [4.0, 5.0, 6.0, 7.0, 8.0]  # history=5


def test_metrics_report_replaces_metrics(agg):
    agg.apply(MetricsReport(metrics=[Metric(name="tezzeret.queue_depth", value=2.0)]))
    agg.apply(MetricsReport(metrics=[Metric(name="tezzeret.cache.hit_rate", value=0.5, labels={"a": "b"})]))
    assert agg.snapshot().metrics == [Metric(name="tezzeret.cache.hit_rate", value=0.5, labels={"a": "b"})]


def test_event_lines_describe_and_level(agg):
    agg.apply(LogLine(level=Level.ERROR, message="disk on fire", source=Subsystem.TEZZERET))
    agg.apply(ArtifactQuarantined(blueprint_id="mlp_block", artifact_id="b" * 64, reason="bad sig"))
    agg.apply(ControllerDecision(action=Action.GERMINATE, slot="slot-0", blueprint_id="mlp_block", reason="plateau"))
    agg.apply(EngineStopping(reason="operator"))
    lines = agg.snapshot().events
    assert [(line.level, line.source) for line in lines[:2]] == [
        (Level.ERROR, Subsystem.TEZZERET),
        (Level.WARNING, Subsystem.ENGINE),
    ]
    assert "quarantined: bad sig" in lines[1].text
    assert lines[2].text == "germinate slot-0 <- mlp_block (plateau)"
    assert "engine stopping: operator" in lines[3].text


# ---------------------------------------------------------------------------------- dedupe and seq


def test_duplicate_event_ids_are_ignored(agg):
    e = queued()
    assert agg.apply(e) is True
    seq = agg.snapshot().seq
    assert agg.apply(e) is False
    dup = msgspec.json.decode(encode_json(e), type=JobQueued)  # the same event redelivered over the bus
    assert agg.apply(dup) is False
    snap = agg.snapshot()
    assert snap.seq == seq and len(snap.forge.jobs) == 1
    assert sum("queued" in line.text for line in snap.events) == 1


def test_duplicate_epoch_is_not_counted_twice(agg):
    e = EpochCompleted(epoch=1, train_loss=1.0, val_loss=1.0, val_metric=0.5, samples_per_s=1.0, epoch_s=1.0)
    agg.apply(e)
    agg.apply(e)
    assert agg.snapshot().training.loss_history == [1.0]


def test_seq_moves_only_when_something_changed(agg, fake_clock):
    first = agg.snapshot()
    assert first.seq == 1
    fake_clock.advance(5)
    again = agg.snapshot()
    assert again.seq == 1 and again is first  # nothing new: the very same frame
    agg.apply(queued())
    fake_clock.advance(1)
    second = agg.snapshot()
    assert second.seq == 2 and second.forge.jobs and second.ts == fake_clock.now
    assert agg.snapshot() is second
    agg.apply(queued())  # a different event (new id) with the same content still counts as news
    agg.apply(started())
    assert agg.snapshot().seq == 3
    assert first.forge.jobs == []  # earlier snapshots are never mutated


def test_snapshots_are_immutable(agg):
    snap = agg.snapshot()
    with pytest.raises(AttributeError):
        snap.seq = 9  # type: ignore[misc]


def test_events_list_is_bounded(agg):
    for i in range(100):
        agg.apply(LogLine(level=Level.INFO, message=f"line {i}"))
    snap = agg.snapshot()
    assert len(agg.events) == 20  # max_events
    assert len(snap.events) <= 50
    assert snap.events[-1].text == "line 99" and snap.events[0].text == "line 80"
    big = Aggregator(max_events=500)
    for i in range(300):
        big.apply(LogLine(level=Level.INFO, message=f"line {i}"))
    shown = big.snapshot().events
    assert len(shown) == 50 and shown[-1].text == "line 299"  # the snapshot carries the newest 50


def test_dedupe_memory_is_bounded():
    agg = Aggregator()
    for i in range(10_050):
        agg.apply(LogLine(level=Level.INFO, message="x", event_id=f"id-{i}"))
    assert len(agg._seen) <= 10_000


# ---------------------------------------------------------------------------------- the public JSON


def test_snapshot_json_has_the_public_paths(agg):
    agg.apply(training_started())
    agg.apply(ConservativeModeChanged(active=True, reason="operator"))
    agg.apply(BreakerChanged(name="timeout", state=BreakerState.OPEN, previous=BreakerState.CLOSED, transition=True))
    agg.apply(queued(strategy=Strategy.FAST))
    agg.apply(wal_status())
    agg.apply(EpochCompleted(epoch=4, train_loss=0.3, val_loss=0.4, val_metric=0.81, samples_per_s=1.0, epoch_s=1.0))
    agg.apply(SeedsReport(epoch=4, seeds=[seed(alpha=0.5, stage=SeedStage.BLENDING)]))
    raw = encode_json(agg.snapshot())
    doc = json.loads(raw)

    infra = doc["infrastructure"]
    assert (infra["compile_enabled"], infra["compile_backend"], infra["compile_mode"]) == (True, "inductor", "default")
    forge = doc["forge"]
    assert forge["conservative_mode"] is True
    assert [(b["name"], b["state"]) for b in forge["breakers"]] == [("timeout", "open")]
    assert [(j["blueprint_id"], j["strategy"], j["status"]) for j in forge["jobs"]] == [("mlp_block", "fast", "queued")]
    assert isinstance(forge["wal"], dict) and forge["wal"]["commits"] == 3
    training = doc["training"]
    assert training["epoch"] == 4 and training["val_metric"] == 0.81
    assert [(s["slot"], s["stage"], s["alpha"]) for s in training["seeds"]] == [("slot-0", "blending", 0.5)]
    assert isinstance(doc["events"], list) and doc["seq"] >= 1

    back = decode_snapshot_json(raw)
    assert isinstance(back, Snapshot) and back == agg.snapshot()


# ---------------------------------------------------------------------------------- closed vocabularies


def vocabulary_snapshot(agg: Aggregator) -> Snapshot:
    """A snapshot that uses every closed-vocabulary field: status, seed health, event sources, an action."""
    agg.apply(msgspec.structs.replace(training_started(), source=Subsystem.TOLARIA))
    agg.apply(SeedsReport(source=Subsystem.KASMINA, epoch=1, seeds=[seed(vanishing=True), seed("slot-1", bid=None)]))
    agg.apply(
        ControllerDecision(
            source=Subsystem.TAMIYO, action=Action.PRUNE, slot="slot-0", blueprint_id="mlp_block", reason="vanishing"
        )
    )
    agg.apply(TrainingPaused(source=Subsystem.TOLARIA, paused=True))
    return agg.snapshot()


def test_enum_fields_encode_as_the_same_plain_strings(agg):
    """The enums are StrEnums: `--json` and the bus carry exactly the strings they carried before."""
    doc = json.loads(encode_json(vocabulary_snapshot(agg)))
    training = doc["training"]
    assert training["status"] == "paused" and type(training["status"]) is str
    assert [s["health"] for s in training["seeds"]] == ["vanishing", "-"]
    assert [(e["source"], e["text"].split()[0]) for e in doc["events"]] == [
        ("tolaria", "training"),
        ("tamiyo", "prune"),
        ("tolaria", "training"),
    ]
    decision = json.loads(
        encode_json(ControllerDecision(action=Action.GERMINATE, slot="s0", blueprint_id=None, reason=""))
    )
    assert (decision["action"], decision["source"]) == ("germinate", "engine")


def test_decoded_values_are_the_enums(agg):
    back = decode_snapshot_json(encode_json(vocabulary_snapshot(agg)))
    assert back.training.status is TrainingStatus.PAUSED
    assert [s.health for s in back.training.seeds] == [GradientHealth.VANISHING, GradientHealth.NONE]
    assert {e.source for e in back.events} == {Subsystem.TOLARIA, Subsystem.TAMIYO}
    event = decode_event_json(
        encode_json(ControllerDecision(action=Action.ADVANCE, slot="s0", blueprint_id=None, reason=""))
    )
    assert isinstance(event, ControllerDecision) and event.action is Action.ADVANCE and event.source is Subsystem.ENGINE


@pytest.mark.parametrize(
    ("path", "bad"),
    [
        (("training", "status"), "exploded"),
        (("training", "seeds", 0, "health"), "meh"),
        (("events", 0, "source"), "nissa"),
    ],
)
def test_snapshot_with_an_unknown_value_is_rejected(agg, path, bad):
    doc = json.loads(encode_json(vocabulary_snapshot(agg)))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = bad
    with pytest.raises(msgspec.ValidationError, match=path[-1]):
        decode_snapshot_json(json.dumps(doc))


@pytest.mark.parametrize(("field", "bad"), [("action", "explode"), ("source", "nissa")])
def test_event_with_an_unknown_value_is_rejected(field, bad):
    doc = json.loads(encode_json(ControllerDecision(action=Action.WAIT, slot=None, blueprint_id=None, reason="")))
    doc[field] = bad
    with pytest.raises(msgspec.ValidationError, match=field):
        decode_event_json(json.dumps(doc))


def test_training_failure_shows_as_failed(agg):
    """FAILED was in the status vocabulary but nothing ever set it: a dead loop still read "running"."""
    agg.apply(training_started())
    agg.apply(TrainingFailed(source=Subsystem.TOLARIA, error="RuntimeError: boom"))
    snap = agg.snapshot()
    assert snap.training.status is TrainingStatus.FAILED
    line = snap.events[-1]
    assert (line.level, line.source, line.text) == (
        Level.ERROR,
        Subsystem.TOLARIA,
        "training failed: RuntimeError: boom",
    )
    assert status_line(snap).startswith("[failed]")


# ---------------------------------------------------------------------------------- one compile label


def test_compile_label_is_the_same_everywhere(agg):
    """A run compiling with torch's default mode (mode None) reads `inductor:default` in the event log,
    the infrastructure and the status line alike (the status line used to print `inductor:None`)."""
    agg.apply(
        TrainingStarted(
            compile_enabled=True,
            compile_backend="inductor",
            compile_mode=None,
            dataset="mnist1d",
            host="mlp",
            slots=2,
            epochs=10,
            device="cpu",
        )
    )
    snap = agg.snapshot()
    assert "| kernels inductor:default · no seed grafted yet |" in status_line(snap)
    assert snap.events[-1].text.endswith("(mlp, kernels compiled inductor:default)")
    assert snap.infrastructure.kernels == "inductor:default"


def test_eager_run_says_eager_everywhere(agg):
    agg.apply(training_started(enabled=False))
    snap = agg.snapshot()
    assert snap.infrastructure.kernels == "EAGER"
    assert snap.events[-1].text.endswith("kernels EAGER)")
    assert "| kernels EAGER (compile off) |" in status_line(snap)


# ---------------------------------------------------------------------------------- trouble on the status line


def test_the_status_line_says_rollbacks_alerts_and_the_newest_warning(agg, fake_clock):
    """The headless line never mentioned a rollback, a warning, a quarantine or an alert."""
    agg.apply(training_started())
    quiet = status_line(agg.snapshot())
    assert "rollback" not in quiet and "ALERT" not in quiet and "last warning" not in quiet
    agg.apply(
        ArtifactQuarantined(
            source=Subsystem.URZA,
            blueprint_id="mlp_block",
            artifact_id="a1b2c3d4e5f6a7b8",
            reason="bad signature",
            ts=3661.0,
        )
    )
    line = status_line(agg.snapshot())
    assert line.endswith("| last warning 01:01:01 urza: mlp_block artifact a1b2c3d4e5f6 quarantined: bad signature")
    agg.apply(Rollback(reason="loss is nan", from_epoch=6, to_epoch=4, recovery_s=0.01, pruned=["s0"]))
    agg.apply(
        AlertChanged(
            alertname="training_latency_high", active=True, severity="warning", summary="epochs are slow", ts=7322.0
        )
    )
    line = status_line(agg.snapshot())
    assert "| rollbacks 1 |" in line and "| ALERT training_latency_high |" in line
    assert "| last warning 02:02:02 engine: alert training_latency_high firing: epochs are slow" in line
    agg.apply(LogLine(level=Level.INFO, message="all is well"))  # an info line never hides the warning
    assert "last warning" in status_line(agg.snapshot())


# ---------------------------------------------------------------------------------- what the seeds run


def engine_started(**fields):
    base = dict(run_id="run1", bus="embedded", state_dir="/s", device="cpu", torch_version="2.13.0")
    return EngineStarted(**(base | fields))


def seeds_report(*kernels):
    """s0, s1, ... each grafted and running the kernel named ("-" for a dormant slot)."""
    return SeedsReport(
        epoch=1,
        seeds=[
            SeedHealth(
                slot=f"s{i}",
                stage=SeedStage.DORMANT if kernel == "-" else SeedStage.BLENDING,
                blueprint_id=None if kernel == "-" else "conv1d_block",
                alpha=0.0 if kernel == "-" else 0.5,
                grad_norm=0.1,
                gain=None,
                epochs_in_stage=1,
                kernel=kernel,
                vanishing=False,
                exploding=False,
            )
            for i, kernel in enumerate(kernels)
        ],
    )


def test_before_training_starts_the_run_says_it_waits_for_kernels_and_why(agg):
    """The compile setting arrives with EngineStarted: a compiling run no longer reads EAGER while it waits,
    and the wait has a reason (it took 6-15 s, and longer on a busy machine, with none)."""
    agg.apply(engine_started(compile_enabled=True, compile_backend="inductor", compile_mode="default"))
    agg.apply(TrainingWaiting(reason="a first kernel from the forge"))
    snap = agg.snapshot()
    assert snap.training.status is TrainingStatus.WAITING
    assert snap.training.waiting_for == "a first kernel from the forge"
    assert seeds_run(snap).tag == "waiting for kernels"
    assert "| kernels inductor:default · waiting for a first kernel from the forge |" in status_line(snap)
    assert snap.events[-1].text == "waiting for a first kernel from the forge"
    agg.apply(training_started())
    assert agg.snapshot().training.waiting_for == ""


def test_a_run_that_only_compiles_says_so_not_eager(agg):
    """--forge-only printed `kernels EAGER`: no seed runs anything there."""
    agg.apply(engine_started(training=False, compile_enabled=True, compile_backend="inductor"))
    snap = agg.snapshot()
    assert seeds_run(snap).tag == "no training"
    assert "| kernels no training: this run only compiles |" in status_line(snap)
    assert "EAGER" not in status_line(snap)
    assert status_line(snap).startswith("[forge only] "), "not [waiting]: nothing will ever train"


@pytest.mark.parametrize(
    ("kernels", "tag", "words", "compiled"),
    [
        (("compiled inductor:default", "-"), "compiled", "inductor:default", True),
        (("eager (faster)", "-"), "eager: faster", "eager, measured faster than inductor:default", False),
        (("eager (faster)", "eager (faster)"), "eager: faster", "eager, measured faster than inductor:default", False),
        (
            ("compiled inductor:default", "eager (faster)"),
            "compiled",
            "1 compiled inductor:default, 1 eager (faster)",
            True,
        ),
        (("eager", "-"), "eager", "eager", False),
        (("-", "-"), "compile on", "inductor:default · no seed grafted yet", False),
    ],
)
def test_the_banner_reads_what_the_seeds_run_not_the_compile_setting(agg, kernels, tag, words, compiled):
    """The banner said `TAMIYO [compiled]` while every seed's kernel column said `eager (faster)`."""
    agg.apply(training_started())
    agg.apply(seeds_report(*kernels))
    run = seeds_run(agg.snapshot())
    assert (run.tag, run.words, run.compiled) == (tag, words, compiled)


# ---------------------------------------------------------------------------------- commands and the bus


def test_refused_commands_are_warnings_naming_who_and_why(agg):
    agg.apply(CommandObeyed(command_type="PauseTraining", command_id="c1", issued_by="bob@box"))
    agg.apply(CommandRefused(command_type="Shutdown", command_id="c2", issued_by="alice@host", reason="bad signature"))
    first, second = agg.snapshot().events
    assert (first.level, first.text) == (Level.INFO, "PauseTraining from bob@box")
    assert (second.level, second.source) == (Level.WARNING, Subsystem.ENGINE)
    assert second.text == "rejected Shutdown from alice@host: bad signature"


def test_bus_view_moves_seq_only_when_it_changes(agg):
    first = agg.snapshot()
    assert first.bus == BusView()
    view = BusView(
        backend="redis://127.0.0.1:6379/0",
        connected=False,
        rejected=2,
        backlogs=[StreamBacklog(stream="oona.normal.r1", backlog=3)],
        rejections=[BusNote(ts=1.0, stream="oona.emergency.r1", reason="rejected: unsigned")],
        server_errors={"oom": 1},
        last_error="OOM command not allowed",
        control_rooms=2,
    )
    agg.set_bus(view)
    second = agg.snapshot()
    assert second.seq == first.seq + 1 and second.bus == view
    agg.set_bus(msgspec.structs.replace(view))  # an equal reading is no news: the same snapshot again
    assert agg.snapshot() is second
    agg.set_bus(msgspec.structs.replace(view, control_rooms=3))
    third = agg.snapshot()
    assert third.seq == second.seq + 1 and third.bus.control_rooms == 3
    assert second.bus.control_rooms == 2  # earlier snapshots keep their reading
    assert decode_snapshot_json(encode_json(third)).bus == third.bus
