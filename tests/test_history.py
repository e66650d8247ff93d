"""The history behind the detail views: what the aggregator keeps per seed slot, compile job and decision, its
bounds, that it stays out of snapshots and frames, and a replay's rebuild of it from snapshots alone."""

from __future__ import annotations

import msgspec
import pytest

from benchmarks.story import T0, story
from esper_tui.engine.aggregator import Aggregator
from esper_tui.engine.codec import encode_msgpack
from esper_tui.engine.config import EsperConfig, override
from esper_tui.engine.contracts import ControllerDecision, LogLine
from esper_tui.engine.frames import FrameEncoder, decode_details
from esper_tui.engine.history import SERIES_EPOCHS, Details
from esper_tui.engine.history_replay import as_of, parse_decision, rebuild
from esper_tui.engine.run_info import config_entries, masked_url
from esper_tui.engine.snapshot import EventLine, Snapshot
from esper_tui.engine.vocabulary import Action, Level, SeedStage, Subsystem


def folded(epochs: int = 60, **kwargs: int) -> tuple[Aggregator, list[Snapshot]]:
    """The story folded by a real aggregator, with the snapshot after every event (what a recording keeps)."""
    agg = Aggregator(clock=lambda: T0 + 1000, **kwargs)
    snapshots = []
    for event in story(epochs):
        agg.apply(event)
        snapshots.append(agg.snapshot())
    return agg, snapshots


@pytest.fixture(scope="module")
def run() -> tuple[Details, list[Snapshot]]:
    agg, snapshots = folded()
    return agg.details(), snapshots


def test_a_slot_keeps_its_lifecycle_with_the_reasons(run) -> None:
    details, _ = run
    s0 = details.slot("s0")
    assert s0 is not None
    stages = [(c.stage, c.reason) for c in s0.stages]
    assert stages[0] == (SeedStage.DORMANT, "")
    germinated = next(c for c in s0.stages if c.stage is SeedStage.GERMINATED)
    assert germinated.reason == "germinate: accuracy flat for 3 epochs"
    assert germinated.epoch == 4 and germinated.blueprint_id == "conv1d_block"
    assert [c.stage for c in s0.stages[1:5]] == [
        SeedStage.GERMINATED,
        SeedStage.TRAINING,
        SeedStage.BLENDING,
        SeedStage.HOLDING,
    ]
    assert len(s0.epochs) == len(s0.alpha) == len(s0.grad_norm) == len(s0.gain) == len(s0.times)
    assert max(s0.alpha) == 1.0 and s0.epochs == sorted(s0.epochs)


def test_a_slot_keeps_kernels_reports_rollbacks_and_its_graveyard(run) -> None:
    details, _ = run
    slots = {s.slot: s for s in details.slots}
    kernels = {(k.blueprint_id, k.kernel, k.version) for s in slots.values() for k in s.kernels}
    assert ("conv1d_block", "compiled inductor:default", 1) in kernels  # grafted after the forge stored v1
    assert ("conv1d_block", "compiled inductor:default", None) in kernels  # grafted before: no version known yet
    assert ("residual_block", "eager (faster)") in {(bp, kernel) for bp, kernel, _ in kernels}
    assert any("after 5 ep" in r.outcome for s in slots.values() for r in s.reports)
    touched = [s for s in slots.values() if s.rollbacks]
    assert touched and all(r.reason == "loss went NaN" for s in touched for r in s.rollbacks)
    graves = [g for s in slots.values() for g in s.graveyard]
    assert any(g.blueprint_id == "mlp_block" and g.reason.startswith("prune:") for g in graves), graves
    assert any(g.reason == "rollback: loss went NaN" for g in graves), "a seed taken by the rollback is buried too"
    assert all(g.stage is not SeedStage.FOSSILIZED for g in graves), "a fossilized seed is not dead"


def test_a_job_keeps_every_attempt(run) -> None:
    details, _ = run
    job = details.job("residual_block", "40-64")
    assert job is not None
    assert [(a.attempt, a.outcome) for a in job.attempts] == [
        (1, "failed (will retry)"),
        (2, "failed (will retry)"),
        (3, "compiled"),
    ]
    first, _, last = job.attempts
    assert first.error.startswith("timeout after 30 s") and first.duration_s == pytest.approx(30.0)
    assert first.worker == "local" and first.wal_txn == "7f3a9c0000000001"
    assert first.breakers == {"memory": "closed", "gpu": "unavailable", "timeout": "closed"}
    assert last.breakers["timeout"] == "half_open"
    assert last.worker == "forge-2:4242" and last.artifact_id == "b7e210aa55cc" and last.version == 1
    assert (last.step_ms_compiled, last.step_ms_eager) == (1.32, 1.18)
    assert last.verification.startswith("verified here") and last.wal_txn == "7f3a9c0000000003"
    reused = details.job("mlp_block", "40-64")
    assert reused is not None and [a.outcome for a in reused.attempts] == ["reused"]
    assert job.queued == ["standard: initial scan"]


def test_a_decision_keeps_what_it_saw_weighed_and_led_to(run) -> None:
    details, _ = run
    germinate = next(d for d in details.decisions if d.action is Action.GERMINATE)
    assert germinate.epoch == 4 and germinate.slot == "s0"
    assert germinate.options[0].startswith("conv1d_block -> s0: chosen")
    assert len(germinate.options) == 3
    assert len(germinate.val_history) == 4 and germinate.val_first_epoch == 1
    assert [s.stage for s in germinate.seeds] == [SeedStage.DORMANT, SeedStage.DORMANT]
    assert germinate.outcome == "+0.4 pts after 5 ep, in flight (blending)"
    assert germinate.outcome_ts is not None and germinate.outcome_ts > germinate.ts
    newest = details.decisions[-1]
    assert details.decision(newest.event_id) == newest


def test_the_event_log_keeps_each_event_with_its_line(run) -> None:
    details, _ = run
    entry = next(e for e in details.log if isinstance(e.event, ControllerDecision))
    assert entry.line.source is Subsystem.TAMIYO and entry.line.text.startswith(entry.event.action.value)
    assert details.entry(entry.event_id) == entry
    assert details.run is not None and details.run.run_id == "run-0001" and details.run.cpu_isa == "avx2"


def test_history_is_bounded() -> None:
    agg = Aggregator(scrollback=50)
    for n in range(300):
        agg.apply(LogLine(level=Level.INFO, message=f"line {n}"))
    log = agg.details().log
    assert len(log) == 50 and log[-1].line.text == "line 299"
    agg, _ = folded(epochs=SERIES_EPOCHS + 150)
    details = agg.details()
    assert all(len(s.epochs) <= SERIES_EPOCHS for s in details.slots)
    assert len(details.val_history) == SERIES_EPOCHS and details.epochs[-1] == SERIES_EPOCHS + 150


def test_history_stays_out_of_snapshots_and_frames() -> None:
    """A long run's snapshot and keyframe are no bigger than a short one's: the history never travels with them."""
    short, _ = folded(epochs=60)
    long, _ = folded(epochs=400)
    assert {f.name for f in msgspec.structs.fields(Snapshot)}.isdisjoint({"history", "details", "log"})

    def keyframe_bytes(agg: Aggregator) -> int:
        return len(FrameEncoder().encode(agg.snapshot(), keyframe=True)[0])

    assert keyframe_bytes(long) < keyframe_bytes(short) * 1.2
    assert len(encode_msgpack(long.details())) > 5 * keyframe_bytes(long)


def test_details_survive_the_wire(run) -> None:
    details, _ = run
    assert decode_details(encode_msgpack(details)) == details


def test_a_replay_rebuilds_the_history_from_snapshots(run) -> None:
    details, snapshots = run
    rebuilt = rebuild(snapshots, scrollback=2000).details("run-0001", snapshots[-1].ts)
    s0_live, s0_replay = details.slot("s0"), rebuilt.slot("s0")
    assert s0_live is not None and s0_replay is not None
    assert [(c.epoch, c.stage, c.reason) for c in s0_replay.stages] == [
        (c.epoch, c.stage, c.reason) for c in s0_live.stages
    ]
    # a rollback moves a snapshot's epoch back before the next report, so a replay can miss that one point
    assert abs(len(s0_replay.epochs) - len(s0_live.epochs)) <= 1 and s0_replay.alpha[-5:] == s0_live.alpha[-5:]
    job = rebuilt.job("residual_block", "40-64")
    assert job is not None and [a.outcome for a in job.attempts][-1] == "compiled"
    assert [a.attempt for a in job.attempts] == [1, 2, 3]
    assert [(d.action, d.slot) for d in rebuilt.decisions] == [(d.action, d.slot) for d in details.decisions]
    assert rebuilt.decisions[0].outcome == details.decisions[0].outcome
    assert len(rebuilt.log) == len(details.log)


def test_as_of_cuts_the_history_back_to_a_moment(run) -> None:
    details, _ = run
    germinate = next(d for d in details.decisions if d.action is Action.GERMINATE)
    then = as_of(details, germinate.ts)
    assert then.decisions[-1].event_id == germinate.event_id and then.decisions[-1].outcome == ""
    assert all(e.line.ts <= germinate.ts for e in then.log)
    job = then.job("residual_block", "40-64")
    assert job is not None and [a.outcome for a in job.attempts] == ["compiling"]  # attempt 1 ran until 12:00:32
    assert then.epochs[-1] == germinate.epoch


def test_a_tamiyo_line_reads_back_into_its_decision() -> None:
    line = EventLine(
        ts=1.0, source=Subsystem.TAMIYO, level=Level.INFO, text="germinate s0 <- conv1d_block (flat (3 epochs))"
    )
    decision = parse_decision(line, 7, "x")
    assert decision is not None
    assert (decision.action, decision.slot, decision.blueprint_id, decision.epoch) == (
        Action.GERMINATE,
        "s0",
        "conv1d_block",
        7,
    )
    assert decision.reason == "flat (3 epochs)"
    wait = parse_decision(msgspec.structs.replace(line, text="wait (growth stopped)"), 7)
    assert wait is not None and wait.slot is None and wait.reason == "growth stopped"
    assert parse_decision(msgspec.structs.replace(line, source=Subsystem.TEZZERET), 7) is None


def test_run_info_marks_non_defaults_and_never_shows_a_secret() -> None:
    config = override(
        EsperConfig(),
        {
            "training.epochs": 12,
            "bus.operator_key": "ab" * 32,
            "library.catalog_url": "postgresql://esper:hunter2@db:5432/urza",
        },
    )
    entries = {e.key: e for e in config_entries(config)}
    assert entries["training.epochs"].changed and entries["training.epochs"].value == "12"
    assert not entries["ui.refresh_hz"].changed
    assert entries["bus.operator_key"].value == "(set)" and "ab" * 4 not in repr(entries)
    assert entries["library.catalog_url"].value == "postgresql://esper:***@db:5432/urza"
    assert masked_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
