"""Tasks through the engine: the training process loads the task (the engine never imports it), reports it before
training, refuses a bad one in one line with exit 2, and a stop while it loads is clean. Real processes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from esper_tui.engine.config import parse_config
from esper_tui.engine.runtime import Engine
from esper_tui.engine.training import process
from esper_tui.engine.vocabulary import ACCURACY, MetricInfo
from tests.waits import eventually

QUIET = {
    "tezzeret": {"polling": {"initial_full_scan": False}},  # nothing to compile: eager seeds, an idle forge
    "training": {"compile": False, "plateau_epochs": 10_000, "early_stop_epochs": 100_000},
}

# A task file that records which process imported it: the engine must never be one of them.
SPY = """
import os, pathlib
import torch
from torch import nn
from esper_tui.task import Data, Slot, Task, accuracy, adam, cross_entropy

with pathlib.Path({marker!r}).open("a") as f:
    f.write(f"{{os.getpid()}}\\n")

def factory(ctx):
    import time
    time.sleep({delay})
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 5, generator=g)
    y = (x[:, 0] > 0).long()
    return Task(name="spy", host=nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 2)),
                data=Data(train=(x, y), test=(x[:16], y[:16])), loss=cross_entropy, metric=accuracy,
                batch_size=16, optimizer=adam(1e-2), slots=[Slot("s0", "0")])
"""


def spy_task(tmp_path: Path, delay: float = 0.0) -> tuple[str, Path]:
    marker = tmp_path / "imported-by"
    path = tmp_path / "spy_task.py"
    path.write_text(SPY.format(marker=str(marker), delay=delay))
    return f"{path}:factory", marker


@pytest.fixture
async def engine_for(tmp_path: Path) -> AsyncIterator[object]:
    engines: list[Engine] = []

    async def start(task: str, **training: object) -> Engine:
        config = parse_config({**QUIET, "training": {**QUIET["training"], "task": task, **training}})
        e = Engine(config, tmp_path / "state")
        engines.append(e)
        await e.start()
        return e

    yield start
    for e in engines:
        await e.stop()


async def test_the_task_is_loaded_in_the_training_process_only(engine_for, tmp_path: Path) -> None:
    spec, marker = spy_task(tmp_path)
    engine = await engine_for(spec, epochs=3)
    await eventually(lambda: engine.aggregator.snapshot().training.epoch >= 3, "three epochs of the spy task")
    trainer = engine.trainer
    assert trainer is not None and trainer._proc is not None and trainer.loaded is not None
    assert marker.read_text().split() == [str(trainer._proc.pid)]  # imported once, by the child
    spy_file = str((tmp_path / "spy_task.py").resolve())
    imported = [m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == spy_file]
    assert imported == []  # never in the engine's process (other tests may load their own tasks in this one)
    assert (trainer.loaded.task, trainer.loaded.metric, trainer.loaded.device) == ("spy", ACCURACY, "cpu")
    assert [(s.name, s.shape) for s in trainer.loaded.slots] == [("s0", "5-7")]
    assert any("task spy on cpu: accuracy (higher is better), slots s0 [5] -> [7]" in e.text
               for e in engine.aggregator.snapshot().events)  # fmt: skip


async def test_a_refused_task_stops_the_engine_with_one_line_and_exit_2(engine_for, tmp_path: Path) -> None:
    path = tmp_path / "broken.py"
    path.write_text("def factory(ctx):\n    raise ValueError('the data is not there\\nsecond line')\n")
    engine = await engine_for(f"{path}:factory")
    await eventually(lambda: engine.stopped.is_set(), "the engine stopping on the refusal")
    assert engine.failure == f"task {path}:factory: the factory raised ValueError: the data is not there"
    assert engine.failure_code == 2


async def test_stopping_while_the_task_loads_is_clean(engine_for, tmp_path: Path) -> None:
    spec, marker = spy_task(tmp_path, delay=3.0)
    engine = await engine_for(spec)
    await eventually(lambda: marker.exists(), "the child importing the task")
    await engine.stop()
    assert engine.failure is None
    assert engine.trainer is not None and engine.trainer._proc is not None
    assert engine.trainer._proc.returncode == 0


def test_the_child_refuses_a_bad_task_before_training(tmp_path: Path) -> None:
    """The protocol itself: TaskRefused is the child's first frame, then it exits 2 without training."""
    state = tmp_path / "s"
    state.mkdir()
    config = parse_config({**QUIET, "training": {**QUIET["training"], "task": "tests.task_files:no_such"}})
    start = process.Start(config=config, state_dir=str(state), signing_key=b"k" * 32, faults=[])
    child = subprocess.Popen(
        [sys.executable, "-m", process.__name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(process.frame(start))  # and stdin stays open: end-of-file would mean the engine is gone
    child.stdin.flush()
    head = process.HEADER.size
    n = process.HEADER.unpack(child.stdout.read(head))[0]
    message = msgspec.msgpack.decode(child.stdout.read(n), type=process.FromTrainer)
    reason = "task tests.task_files:no_such: tests.task_files has no function no_such"
    assert message == process.TaskRefused(reason=reason)
    assert child.wait(timeout=60) == 2
    assert child.stdout.read() == b""  # nothing after it
    child.stdin.close()


CLI = [sys.executable, "-m", "esper_tui"]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("cifar", "--task 'cifar': no such built-in task (known: mnist1d, digits)"),
        ("nowhere/task.py:factory", "--task 'nowhere/task.py:factory': no file nowhere/task.py"),
        ("tests.task_files:no_such", "task tests.task_files:no_such: tests.task_files has no function no_such"),
    ],
)
def test_a_bad_task_exits_2_in_one_line(task: str, expected: str, tmp_path: Path) -> None:
    proc = run_cli("--no-ui", "--eager", "--epochs", "2", "--task", task, "--state-dir", str(tmp_path / "s"),
                   cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("esper-tui: ") and "engine " not in line]
    assert errors == [f"esper-tui: {expected}"], proc.stderr
    assert "Traceback" not in proc.stderr


def test_digits_runs_headless_and_its_final_snapshot_names_the_task(tmp_path: Path) -> None:
    config = tmp_path / "quiet.toml"
    config.write_text("[tezzeret.polling]\ninitial_full_scan = false\n")
    proc = run_cli("--no-ui", "--eager", "--task", "digits", "--epochs", "15", "--json", "--interval", "5",
                   "--config", str(config), "--state-dir", str(tmp_path / "s"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    snapshot = json.loads(proc.stdout.splitlines()[-1])
    final = snapshot["training"]
    assert final["epoch"] == 15 and final["status"] == "finished"
    assert any("on digits (" in e["text"] for e in snapshot["events"])
    assert (final["task"], final["metric"]["name"]) == ("digits", "accuracy")
    value = final["val_metric"]
    assert math.isfinite(value) and value > 0.5  # ten classes: chance is 0.1


def test_the_example_task_runs_end_to_end_and_grafts_a_seed(tmp_path: Path) -> None:
    """examples/waveforms.py, as the README runs it: the engine loads it through --task, Tamiyo germinates a
    seed on one of its slots and the seed is grafted (it trains, blends and is judged)."""
    config = tmp_path / "fast.toml"
    config.write_text(
        "[tezzeret.polling]\ninitial_full_scan = false\n"
        "[training]\nplateau_epochs = 1\nplateau_delta = 1.0\ntrain_epochs = 1\nblend_epochs = 1\nholding_epochs = 1\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = run_cli("--no-ui", "--eager", "--task", "examples/waveforms.py:factory", "--epochs", "8", "--json",
                   "--interval", "5", "--config", str(config), "--state-dir", str(tmp_path / "s"),
                   cwd=root)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    snapshot = json.loads(proc.stdout.splitlines()[-1])
    texts = [e["text"] for e in snapshot["events"]]
    assert any("task waveforms on cpu: accuracy (higher is better), slots features [8, 64] -> [8, 64], head [64] -> [4]"
               in t for t in texts), texts  # fmt: skip
    grafted = [s for s in snapshot["training"]["seeds"] if s["stage"].upper() not in ("DORMANT", "GERMINATED")]
    assert grafted and all(s["blueprint_id"] for s in grafted), snapshot["training"]["seeds"]
    assert snapshot["training"]["epoch"] == 8 and math.isfinite(snapshot["training"]["val_metric"])
    assert snapshot["training"]["task"] == "waveforms"


async def test_a_lower_is_better_metric_reaches_the_engine_and_the_snapshot(engine_for, tmp_path: Path) -> None:
    """A task deciding on an error rate: the engine hears its direction in TaskLoaded, says so, and the snapshot
    names it; the user's metric function itself never leaves the training process."""
    spec, _ = spy_task(tmp_path)
    path = Path(spec.rsplit(":", 1)[0])
    path.write_text(
        path.read_text()
        .replace("metric=accuracy", "metric=ERROR")
        .replace("def factory(ctx):", ERROR_METRIC + "\ndef factory(ctx):")
    )
    engine = await engine_for(spec, epochs=2)
    await eventually(lambda: engine.aggregator.snapshot().training.epoch >= 2, "two epochs")
    assert engine.trainer is not None and engine.trainer.loaded is not None
    assert engine.trainer.loaded.metric == MetricInfo(name="error", higher_is_better=False, percent=True)
    training = engine.aggregator.snapshot().training
    assert training.task == "spy" and training.metric == engine.trainer.loaded.metric
    assert any("spy on cpu: error (lower is better)" in e.text for e in engine.aggregator.snapshot().events)


ERROR_METRIC = """
from esper_tui.task import Metric
ERROR = Metric("error", lambda out, y: (out.argmax(1) != y).float().mean(), higher_is_better=False, percent=True)
"""
