"""`esper-tui compare A B`: the comparison as data (JSON, text), as an image, and its refusals in one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib
import pytest

from esper_tui.commands.cli import main
from esper_tui.engine.aggregator import Aggregator
from esper_tui.engine.contracts import EpochCompleted
from esper_tui.engine.snapshot import Snapshot, TrainingView
from esper_tui.engine.vocabulary import MetricInfo
from tests.recorded_runs import RUN_A, RUN_B, record, run_snapshots, two_runs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    return two_runs(tmp_path / "state" / "runs")


def compare(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["compare", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_has_both_runs_final_metrics_and_the_change(runs, capsys) -> None:
    a, b = runs
    code, out, err = compare(capsys, str(a), str(b), "--no-ui", "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["task"] == "mnist1d" and data["metric"]["name"] == "accuracy"
    ra, rb = data["a"], data["b"]
    assert (ra["run_id"], rb["run_id"]) == (RUN_A, RUN_B)
    assert (ra["last_epoch"], rb["last_epoch"]) == (14, 18)
    assert ra["val_metric"] == pytest.approx(0.4 + 0.3 * (1 - 0.8**14), abs=1e-5)
    assert rb["best_val_metric"] == pytest.approx(0.4 + 0.34 * (1 - 0.8**18), abs=1e-5)
    assert ra["test_metric"] is not None and rb["test_metric"] is not None
    assert (ra["parameters"], rb["parameters"]) == (11_200, 12_700)
    assert (ra["rollbacks"], rb["rollbacks"]) == (0, 1)
    assert [(d["epoch"], d["kind"]) for d in ra["decisions"]] == [(4, "germinate"), (9, "fossilize")]
    assert [d["kind"] for d in rb["decisions"]] == ["germinate", "rollback", "germinate", "prune", "germinate"]
    assert len(ra["curves"]["loss"]) == 14 and len(rb["curves"]["val_metric"]) == 18
    assert [e for e, _ in rb["curves"]["test_metric"]] == [3, 6, 9, 12, 15, 18]  # the epochs it was measured
    diff = data["b_minus_a"]
    assert diff["val_metric"] == pytest.approx(rb["val_metric"] - ra["val_metric"])
    assert (diff["parameters"], diff["epochs"], diff["rollbacks"]) == (1_500, 4, 1)
    assert data["better_on_validation"] == "B"


def test_run_ids_are_looked_up_in_the_state_dir(runs, tmp_path: Path, capsys) -> None:
    code, out, _ = compare(capsys, RUN_B[:6], RUN_A, "--state-dir", str(tmp_path / "state"), "--no-ui", "--json")
    assert code == 0
    data = json.loads(out)
    assert (data["a"]["run_id"], data["b"]["run_id"]) == (RUN_B, RUN_A)
    assert data["better_on_validation"] == "A"  # A is now the better run: the sides follow the order given


def test_text_report_is_the_screens_table(runs, capsys) -> None:
    a, b = runs
    code, out, _ = compare(capsys, str(a), str(b), "--no-ui")
    assert code == 0
    assert f"A {RUN_A}" in out and f"B {RUN_B}" in out
    table = {line.split("   ")[0].strip(): line for line in out.splitlines() if "   " in line}
    assert re.search(r"11,200\s+12,700\s+\+1,500", table["parameters"])
    assert re.search(r"14\s+18\s+\+4", table["epochs"])
    assert "rollback: loss is nan" in out and "fossilize s0" in out


def test_out_png_is_drawn(runs, tmp_path: Path, capsys) -> None:
    a, b = runs
    out = tmp_path / "compare.png"
    code, printed, err = compare(capsys, str(a), str(b), "--out", str(out))
    assert (code, err) == (0, "")
    assert printed == f"{out}: runs {RUN_A} (A) and {RUN_B} (B), mnist1d\n"
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 20_000


def test_out_svg_draws_both_runs_of_every_split(runs, tmp_path: Path, capsys, monkeypatch) -> None:
    """The image overlays each split of both runs: every series is in the legend once per run."""
    monkeypatch.setitem(matplotlib.rcParams, "svg.fonttype", "none")  # legend labels stay text
    a, b = runs
    out = tmp_path / "compare.svg"
    assert compare(capsys, str(a), str(b), "--out", str(out))[0] == 0
    svg = out.read_text()
    for run in ("A", "B"):
        for label in ("train loss", "validation loss", "validation accuracy", "test accuracy"):
            assert f">{run} {label}<" in svg, (run, label)
    for kind in ("germinate", "fossilize", "prune", "rollback"):
        assert f">{kind}<" in svg


def test_a_missing_run_is_one_line_and_exit_1(runs, tmp_path: Path, capsys) -> None:
    a, _ = runs
    code, out, err = compare(capsys, str(a), "nosuchrun", "--state-dir", str(tmp_path / "state"))
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and "no run 'nosuchrun'" in err
    code, _, err = compare(capsys, str(a), str(tmp_path / "gone.esrec"))
    assert code == 1 and err.count("\n") == 1 and "gone.esrec" in err


def test_a_corrupt_recording_is_one_line_and_exit_1(runs, tmp_path: Path, capsys) -> None:
    a, _ = runs
    bad = tmp_path / "bad.esrec"
    bad.write_bytes(b"not a recording at all")
    code, _, err = compare(capsys, str(a), str(bad), "--no-ui", "--json")
    assert code == 1
    assert err == f"esper-tui: {bad}: not an esper-tui recording (bad magic)\n"


def test_runs_of_different_tasks_or_metrics_are_refused_with_exit_2(runs, tmp_path: Path, capsys) -> None:
    a, _ = runs
    digits = record(tmp_path / "d.esrec", run_snapshots("d1d1d1d1d1d1", 5, lift=0.2, decisions=[], task="digits"))
    code, _, err = compare(capsys, str(a), str(digits), "--no-ui", "--json")
    assert code == 2 and err.count("\n") == 1
    assert f"run {RUN_A} trained mnist1d and run d1d1d1d1d1d1 digits" in err
    mse = MetricInfo(name="mse", higher_is_better=False, percent=False)
    other = record(tmp_path / "m.esrec", run_snapshots("m1m1m1m1m1m1", 5, lift=0.2, decisions=[], metric=mse))
    code, _, err = compare(capsys, str(a), str(other), "--no-ui")
    assert code == 2 and err.count("\n") == 1 and "mse (lower is better)" in err


def test_a_run_that_trained_nothing_is_refused_with_the_reason(runs, tmp_path: Path, capsys) -> None:
    a, _ = runs
    done = TrainingView(task="mnist1d", epoch=30, resumed_from_epoch=30)
    path = record(tmp_path / "done.esrec", [Snapshot(seq=1, ts=1.0, run_id="c3c3c3c3c3c3", training=done)])
    code, _, err = compare(capsys, str(a), str(path))
    assert code == 1
    assert err == f"esper-tui: {path}: it resumed at epoch 30 with nothing left to train, nothing to compare\n"


def test_an_image_that_is_not_png_or_svg_is_exit_2(runs, tmp_path: Path, capsys) -> None:
    a, b = runs
    code, _, err = compare(capsys, str(a), str(b), "--out", str(tmp_path / "x.jpg"))
    assert (code, err) == (2, "esper-tui: --out must end in .png or .svg (got 'x.jpg')\n")
    assert not (tmp_path / "x.jpg").exists()


def test_json_without_no_ui_is_a_usage_error(runs, capsys) -> None:
    a, b = runs
    with pytest.raises(SystemExit) as exit_:
        main(["compare", str(a), str(b), "--json"])
    assert exit_.value.code == 2
    assert "--json needs --no-ui" in capsys.readouterr().err


def test_epochs_carry_the_parameter_count_into_the_snapshot() -> None:
    """The final table's parameters come from the snapshot: EpochCompleted carries the count, the aggregator
    keeps the newest."""
    agg = Aggregator()
    for n, count in ((1, 10_000), (2, 11_200)):
        agg.apply(
            EpochCompleted(
                epoch=n, train_loss=1.0, val_loss=1.0, val_metric=0.5, samples_per_s=1.0, epoch_s=0.1, parameters=count
            )
        )
    assert agg.snapshot().training.parameters == 11_200
