"""Tamiyo's field reports: outcomes measured N epochs on, durable lines, torn tails, and `esper-tui reports`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from esper_tui.engine.training.controller import Decision
from esper_tui.engine.training.reports import (
    ROLLED_BACK,
    FieldReports,
    PendingDecision,
    ReportsInvalid,
    read,
    reports_path,
    settled_later,
)
from esper_tui.engine.vocabulary import Action, SeedStage

S = SeedStage
GERMINATE = Decision(Action.GERMINATE, "s1", "conv1d_block", "accuracy flat for 3 epochs at 61.0 %")
PRUNE = Decision(Action.PRUNE, "s2", "mlp_block", "gradients vanishing (norm 2.30e-08)")
ROLLBACK = Decision(Action.ROLLBACK, None, None, "non-finite training loss (nan)")


def test_a_decision_is_reported_with_its_outcome_after_n_epochs(tmp_path: Path) -> None:
    path = reports_path(tmp_path)
    reports = FieldReports(path, after_epochs=3)
    reports.decided(10, GERMINATE, 0.61)
    reports.decided(11, PRUNE, 0.62)
    assert reports.epoch_done(12, 0.64, {"s1": S.TRAINING, "s2": S.EMBARGOED}) == []
    assert not path.exists()  # nothing is written before its outcome is due
    first = reports.epoch_done(13, 0.70, {"s1": S.FOSSILIZED, "s2": S.EMBARGOED})
    assert [(r.slot, r.action, r.seed, r.epochs_later) for r in first] == [("s1", "germinate", "kept", 3)]
    assert first[0].gain == pytest.approx(0.09)
    second = reports.epoch_done(14, 0.71, {"s1": S.FOSSILIZED, "s2": S.DORMANT})
    assert [(r.slot, r.seed) for r in second] == [("s2", "pruned")]
    assert reports.pending == []
    assert read(path) == first + second
    assert {k: v.seed for k, v in reports.latest.items()} == {"s1": "kept", "s2": "pruned"}
    assert first[0].outcome() == "+9.0 pts after 3 ep, kept"


FOSSILIZE = Decision(Action.FOSSILIZE, "s1", "conv1d_block", "gain held for 2 epochs")


def test_a_kept_seed_no_longer_reads_in_flight_and_reports_name_their_run(tmp_path: Path) -> None:
    """A germination read "in flight (blending)" for good (its report is written a few epochs on, never
    rewritten) although the seed was kept; the reports had no run column and no --run."""
    path = reports_path(tmp_path)
    first = FieldReports(path, after_epochs=2, run_id="aaaa11112222")
    first.decided(4, GERMINATE, 0.60)
    first.epoch_done(6, 0.62, {"s1": S.BLENDING})
    first.decided(8, FOSSILIZE, 0.66)
    first.epoch_done(10, 0.67, {"s1": S.FOSSILIZED})
    second = FieldReports(path, after_epochs=2, run_id="bbbb33334444")  # a later run: its own seed in s1
    second.decided(3, GERMINATE, 0.55)
    second.epoch_done(5, 0.56, {"s1": S.TRAINING})
    assert settled_later(read(path)) == ["kept", None, None]

    table = cli("reports", "--state-dir", str(tmp_path))
    assert table.returncode == 0, table.stderr
    rows = [line.split(maxsplit=1) for line in table.stdout.splitlines()[1:]]
    assert [run for run, _ in rows] == ["aaaa11112222", "aaaa11112222", "bbbb33334444"]
    assert rows[0][1].endswith("in flight (blending), later kept")
    assert rows[2][1].endswith("in flight (training)"), "another run's fossilize settles nothing here"
    only = cli("reports", "--state-dir", str(tmp_path), "--run", "bbbb", "--json")
    assert [json.loads(line)["run_id"] for line in only.stdout.splitlines()] == ["bbbb33334444"]
    kept = cli("reports", "--state-dir", str(tmp_path), "--run", "aaaa", "--json")
    assert [json.loads(line)["seed_later"] for line in kept.stdout.splitlines()] == ["kept", None]
    none = cli("reports", "--state-dir", str(tmp_path), "--run", "cccc")
    assert none.returncode == 1 and none.stderr.count("\n") == 1
    assert "runs there: aaaa11112222, bbbb33334444" in none.stderr


def test_a_seed_still_growing_and_a_decision_without_a_seed(tmp_path: Path) -> None:
    reports = FieldReports(reports_path(tmp_path), after_epochs=2)
    reports.decided(1, GERMINATE, 0.5)
    reports.decided(1, ROLLBACK, 0.5)
    out = reports.epoch_done(3, 0.45, {"s1": S.BLENDING})
    assert [r.seed for r in out] == ["in flight (blending)", "-"]
    assert out[1].outcome() == "-5.0 pts after 2 ep"


def test_a_rollback_reports_the_decisions_it_undid(tmp_path: Path) -> None:
    reports = FieldReports(reports_path(tmp_path), after_epochs=5)
    reports.decided(4, PRUNE, 0.6)
    reports.decided(7, GERMINATE, 0.62)
    out = reports.rolled_back(5, 0.6)
    assert [(r.epoch, r.seed, r.outcome_epoch) for r in out] == [(7, ROLLED_BACK, 5)]
    assert [p.epoch for p in reports.pending] == [4]


def test_pending_decisions_survive_a_restart_and_are_reported_once(tmp_path: Path) -> None:
    """The checkpoint of epoch 5 holds two pending decisions; the run reports one at epoch 7 and dies. Resumed
    from epoch 5 (the pending list through msgpack, as a checkpoint carries it), the file ends with one line each."""
    path = reports_path(tmp_path)
    first = FieldReports(path, after_epochs=3)
    first.decided(4, GERMINATE, 0.61)
    first.decided(5, PRUNE, 0.62)
    saved = msgspec.msgpack.encode(first.pending)  # the checkpoint of epoch 5
    first.epoch_done(6, 0.63, {"s1": S.TRAINING})
    assert [r.epoch for r in first.epoch_done(7, 0.64, {"s1": S.BLENDING})] == [4]
    first.decided(7, ROLLBACK, 0.64)  # a decision after the checkpoint, lost with the crash
    with path.open("ab") as f:
        f.write(b'{"epoch": 7, "act')  # torn by the crash
    again = FieldReports(path, after_epochs=3)
    again.resumed(5, msgspec.msgpack.decode(saved, type=list[PendingDecision]))
    assert read(path) == [] and [p.epoch for p in again.pending] == [4, 5]
    again.epoch_done(6, 0.63, {"s1": S.TRAINING})
    again.epoch_done(7, 0.65, {"s1": S.BLENDING})
    again.epoch_done(8, 0.66, {"s1": S.BLENDING, "s2": S.EMBARGOED})
    assert [(r.epoch, r.action, r.outcome_epoch, r.seed) for r in read(path)] == [
        (4, "germinate", 7, "in flight (blending)"),
        (5, "prune", 8, "pruned"),
    ]


def test_a_resume_keeps_earlier_reports_and_drops_decisions_after_its_epoch(tmp_path: Path) -> None:
    path = reports_path(tmp_path)
    first = FieldReports(path, after_epochs=1)
    first.decided(1, GERMINATE, 0.5)
    first.epoch_done(2, 0.6, {"s1": S.TRAINING})
    first.decided(3, PRUNE, 0.6)
    first.epoch_done(4, 0.6, {"s2": S.PRUNED})
    again = FieldReports(path, after_epochs=1)
    late = PendingDecision(epoch=3, action=Action.PRUNE, slot="s2", blueprint_id=None, reason="", val_metric=0.6)
    again.resumed(2, [late])  # an early-stopped run's checkpoint: its best epoch, with later decisions pending
    assert again.pending == []
    assert [r.epoch for r in read(path)] == [1]
    assert again.latest["s1"].seed == "in flight (training)"  # the seeds panel's column survives the restart


def test_a_torn_last_line_is_tolerated_and_cut_before_the_next_append(tmp_path: Path) -> None:
    path = reports_path(tmp_path)
    reports = FieldReports(path, after_epochs=1)
    reports.decided(1, GERMINATE, 0.5)
    reports.epoch_done(2, 0.6, {"s1": S.TRAINING})
    whole = path.read_bytes()
    with path.open("ab") as f:
        f.write(whole[: len(whole) // 2])  # a crash mid-line
    assert len(read(path)) == 1
    later = FieldReports(path, after_epochs=1)  # the next run appends
    later.decided(3, PRUNE, 0.6)
    later.epoch_done(4, 0.6, {"s2": S.PRUNED})
    assert [r.action for r in read(path)] == ["germinate", "prune"]


def test_a_bad_line_in_the_middle_or_no_file_is_one_clear_error(tmp_path: Path) -> None:
    path = reports_path(tmp_path)
    with pytest.raises(ReportsInvalid, match="no field reports at"):
        read(path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"not": "a report"}\n{"epoch": 1}\n')
    with pytest.raises(ReportsInvalid, match="line 1 is not a field report"):
        read(path)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "esper_tui", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_the_reports_command_prints_a_table_json_and_clear_errors(tmp_path: Path) -> None:
    reports = FieldReports(reports_path(tmp_path), after_epochs=2)
    reports.decided(10, GERMINATE, 0.61)
    reports.decided(12, PRUNE, 0.66)
    reports.epoch_done(12, 0.66, {"s1": S.TRAINING})
    reports.epoch_done(14, 0.68, {"s1": S.FOSSILIZED, "s2": S.EMBARGOED})

    table = cli("reports", "--state-dir", str(tmp_path))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["RUN", "EPOCH", "SLOT", "ACTION", "BLUEPRINT", "REASON", "OUTCOME"]
    assert lines[1].split()[:5] == ["-", "10", "s1", "germinate", "conv1d_block"]  # written before runs were named
    assert lines[1].endswith("+5.0 pts after 2 ep, in flight (training)")
    assert lines[2].endswith("+2.0 pts after 2 ep, pruned")

    as_json = cli("reports", "--state-dir", str(tmp_path), "--json")
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [(r["epoch"], r["slot"], r["seed"], r["seed_later"]) for r in rows] == [
        (10, "s1", "in flight (training)", None),
        (12, "s2", "pruned", None),
    ]

    missing = cli("reports", "--state-dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.startswith("esper-tui: no state directory at") and len(missing.stderr.splitlines()) == 1
    (tmp_path / "fresh").mkdir()  # a state directory whose run decided nothing yet: an answer, not an error
    fresh = cli("reports", "--state-dir", str(tmp_path / "fresh"))
    assert fresh.returncode == 0 and fresh.stdout.startswith("no field reports yet in"), fresh.stderr
    reports_path(tmp_path).write_bytes(b"garbage\n")
    bad = cli("reports", "--state-dir", str(tmp_path))
    assert bad.returncode == 1 and "line 1 is not a field report" in bad.stderr and "Traceback" not in bad.stderr
