"""Checkpoints, rollback, fault injection and field reports, end to end through the CLI (real subprocesses)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

CLI = [sys.executable, "-m", "esper_tui"]
GROW = """[tezzeret.polling]
initial_full_scan = false
[training]
plateau_epochs = 1
plateau_delta = 0.5
train_epochs = 3
report_after_epochs = 1
checkpoint_every_epochs = 2
checkpoint_min_interval_s = 0
"""
"""No forge scan (eager seeds need no compiles) and a controller that grows a seed within a few epochs."""


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "grow.toml"
    path.write_text(GROW + extra)
    return path


def headless(state: Path, cfg: Path, epochs: int, *extra: str) -> list[str]:
    return ["--no-ui", "--eager", "--json", "--interval", "0.5", "--epochs", str(epochs), "--config", str(cfg),
            "--state-dir", str(state), *extra]  # fmt: skip


def final(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr[-2000:]
    snap: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return snap


def texts(snap: dict[str, Any]) -> list[str]:
    return [e["text"] for e in snap["events"]]


def test_kill_9_then_restart_resumes_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    epochs = 10
    cfg = config(tmp_path, "epoch_delay_s = 0.3\n")  # slow enough to kill between checkpoints
    state = tmp_path / "killed"
    proc = subprocess.Popen(
        [*CLI, *headless(state, cfg, epochs)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # kill -9 the engine and its compile workers alike
    )
    deadline = time.monotonic() + 240
    try:
        while not list((state / "checkpoints").glob("epoch-*")):
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    resumed = final(cli(*headless(state, cfg, epochs)))
    training = resumed["training"]
    assert training["resumed_from_epoch"] is not None and 0 < training["resumed_from_epoch"] < epochs
    assert training["status"] == "finished" and training["epoch"] == epochs
    assert any(f"resumed at epoch {training['resumed_from_epoch']}" in t for t in texts(resumed))
    # eager seeds, fixed seeds, every RNG in the checkpoint: the resumed run is the uninterrupted one exactly
    straight = final(cli(*headless(tmp_path / "straight", cfg, epochs)))["training"]
    assert straight["resumed_from_epoch"] is None
    assert training["val_metric"] == straight["val_metric"]
    assert training["test_metric"] == straight["test_metric"]


def test_a_tampered_checkpoint_is_skipped_with_a_warning(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    state = tmp_path / "s"
    final(cli(*headless(state, cfg, 4)))  # checkpoints at epochs 2 and 4
    newest = state / "checkpoints" / "epoch-000004" / "state.msgpack"
    newest.write_bytes(newest.read_bytes() + b"x")
    snap = final(cli(*headless(state, cfg, 5)))
    assert snap["training"]["resumed_from_epoch"] == 2
    assert any("checkpoint skipped" in t and "epoch-000004" in t for t in texts(snap))
    assert snap["training"]["epoch"] == 5


def test_a_resumed_run_with_nothing_left_ends_at_its_last_epoch(tmp_path: Path) -> None:
    """It ended with `"epoch": 0` (and resumed_from_epoch 3): `runs` listed it as 0 epochs."""
    cfg, state = config(tmp_path), tmp_path / "s"
    final(cli(*headless(state, cfg, 3)))
    again = final(cli(*headless(state, cfg, 3)))
    training = again["training"]
    assert (training["resumed_from_epoch"], training["epoch"], training["status"]) == (3, 3, "finished")
    runs = cli("runs", "--state-dir", str(state), "--json")
    assert runs.returncode == 0, runs.stderr
    rows = [json.loads(line) for line in runs.stdout.splitlines()]
    assert [row["epochs"] for row in rows] == [3, 3], rows


@pytest.mark.parametrize("fault", ["nan-loss@3", "seed-explode@3", "kernel-crash@3"])
def test_each_injected_fault_ends_in_a_rollback_and_a_finished_run(tmp_path: Path, fault: str) -> None:
    snap = final(cli(*headless(tmp_path / "s", config(tmp_path), 8, "--inject-fault", fault)))
    training = snap["training"]
    assert training["rollbacks"] >= 1
    assert training["status"] == "finished" and training["epoch"] == 8
    lines = texts(snap)
    assert any(t.startswith("rollback: ") for t in lines), lines
    assert any("conservative mode ON: tamiyo emergency" in t for t in lines), lines


def test_a_bad_fault_spec_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = cli("--no-ui", "--epochs", "1", "--state-dir", str(tmp_path / "s"), "--inject-fault", "nan@x")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--inject-fault" in proc.stderr and "nan-loss" in proc.stderr


def test_a_fault_beyond_the_last_epoch_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """`--inject-fault nan-loss@40` with `--epochs 12` passed silently and never fired."""
    state = tmp_path / "s"
    proc = cli("--no-ui", "--epochs", "12", "--state-dir", str(state), "--inject-fault", "nan-loss@40")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "--inject-fault nan-loss@40: the run stops after epoch 12 (--epochs), so it would never fire" in proc.stderr
    assert not state.exists(), "refused before an engine started"


def test_field_reports_are_written_shown_and_printed(tmp_path: Path) -> None:
    state = tmp_path / "s"
    snap = final(cli(*headless(state, config(tmp_path), 6)))
    assert any(seed["outcome"] for seed in snap["training"]["seeds"])  # the seeds panel's note
    printed = cli("reports", "--state-dir", str(state))
    assert printed.returncode == 0, printed.stderr
    assert "germinate" in printed.stdout and "pts after 1 ep" in printed.stdout
    rows = [json.loads(line) for line in cli("reports", "--state-dir", str(state), "--json").stdout.splitlines()]
    assert rows and {row["run_id"] for row in rows} == {snap["run_id"]}, "each report names the run that decided"
