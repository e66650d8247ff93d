"""Tolaria in a process of its own: the engine's trainer is a real child process, mirrors pause and stop, reports
how it died, and never outlives the engine (real processes and signals throughout)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest

from esper_tui.engine.codec import encode_msgpack
from esper_tui.engine.config import parse_config
from esper_tui.engine.contracts import EpochCompleted, PauseTraining, TrainingFinished
from esper_tui.engine.library.signing import load_or_create_key
from esper_tui.engine.runtime import Engine
from esper_tui.engine.training import checkpoint as ckpt
from esper_tui.engine.training import process
from esper_tui.engine.vocabulary import TrainingStatus
from tests.headless_engine import HeadlessEngine, wait_for
from tests.waits import eventually

QUIET = {
    "tezzeret": {"polling": {"initial_full_scan": False}},  # nothing to compile: eager seeds, an idle forge
    "training": {"compile": False, "plateau_epochs": 10_000, "early_stop_epochs": 100_000, "epoch_delay_s": 0.05},
}


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    e = Engine(parse_config(QUIET), tmp_path / "state")
    await e.start()
    try:
        yield e
    finally:
        await e.stop()


def trainer_pid(engine: Engine) -> int:
    assert engine.trainer is not None and engine.trainer._proc is not None
    return engine.trainer._proc.pid


def training(engine: Engine) -> Any:
    return engine.aggregator.snapshot().training


async def test_the_engine_trains_in_a_child_that_obeys_pause_and_stop(engine: Engine) -> None:
    await eventually(lambda: training(engine).epoch >= 2, "epochs from the training process")
    pid = trainer_pid(engine)
    assert pid != os.getpid() and psutil.Process(pid).ppid() == os.getpid()
    engine.control.pause()
    await eventually(lambda: training(engine).status is TrainingStatus.PAUSED, "the pause mirrored into the child")
    paused_at = training(engine).epoch
    await asyncio.sleep(0.5)
    assert training(engine).epoch == paused_at  # a paused child trains nothing
    engine.control.resume()
    await eventually(lambda: training(engine).epoch > paused_at, "training resumed")
    await engine.stop()
    finished = [e for e in engine.aggregator.snapshot().events if "training finished" in e.text]
    assert finished and "stop requested" in finished[-1].text
    assert engine.trainer is not None and engine.trainer._proc is not None
    assert engine.trainer._proc.returncode == 0
    # the clean-stop checkpoint, written by the child with the engine's signing key
    found, skipped = ckpt.latest_valid(ckpt.checkpoints_dir(engine.state_dir), load_or_create_key(engine.state_dir))
    assert found is not None and not skipped and found[0].epoch >= paused_at


async def test_the_wait_before_the_first_epoch_has_a_reason(engine: Engine) -> None:
    """Training read "waiting" for 6-15 s with nothing to say why; the banner read EAGER before it knew."""
    await eventually(lambda: training(engine).epoch >= 1, "a first epoch")
    snapshot = engine.aggregator.snapshot()
    assert "waiting for the training process to start (torch, data)" in [e.text for e in snapshot.events]
    assert snapshot.training.waiting_for == ""  # said while waiting, gone once training runs
    assert snapshot.infrastructure.training and not snapshot.infrastructure.compile_enabled


async def test_a_pause_after_training_finished_is_answered(tmp_path: Path) -> None:
    """`p` after the last epoch passed without a word; the engine now says why nothing happens."""
    quiet = {**QUIET, "training": {**QUIET["training"], "epochs": 1}}
    engine = Engine(parse_config(quiet), tmp_path / "state")
    await engine.start()
    try:
        await eventually(lambda: training(engine).status is TrainingStatus.FINISHED, "the one epoch")
        await eventually(lambda: engine._training_over(), "the training process gone")
        await engine.send(PauseTraining(paused=True))
        texts = lambda: [e.text for e in engine.aggregator.snapshot().events]  # noqa: E731
        await eventually(lambda: "pause ignored: training is over" in texts(), "the answer in the event log")
        assert not engine.control.paused
    finally:
        await engine.stop()


async def test_a_killed_training_process_fails_the_run_in_one_line(engine: Engine) -> None:
    await eventually(lambda: training(engine).epoch >= 1, "a first epoch")
    os.kill(trainer_pid(engine), signal.SIGKILL)
    await eventually(lambda: engine.stopped.is_set(), "the engine stopping on its trainer's death")
    assert engine.failure == "TrainingProcessError: the training process died (killed by signal 9)"
    assert training(engine).status is TrainingStatus.FAILED


async def test_an_engine_that_stops_watching_its_trainer_kills_it(engine: Engine) -> None:
    await eventually(lambda: training(engine).epoch >= 1, "a first epoch")
    pid = trainer_pid(engine)
    task = engine._trainer_task
    assert task is not None
    task.cancel()
    async with asyncio.timeout(60):  # without the kill, the watch would wait on a child that trains on forever
        await asyncio.gather(task, return_exceptions=True)
    assert not psutil.pid_exists(pid)  # killed and reaped: no trainer runs on unwatched


def test_a_killed_engine_takes_its_training_process_with_it(tmp_path: Path) -> None:
    """kill -9 of the engine alone (not its process group): the child must not live on writing checkpoints into
    the state directory the next engine resumes from."""
    with HeadlessEngine(tmp_path, "--eager", "--state-dir", str(tmp_path / "s"), "--interval", "0.2") as eng:
        wait_for(lambda: any(s["training"]["epoch"] >= 1 for s in eng.snapshots()), "a first epoch", eng.alive)
        children = [
            c for c in psutil.Process(eng.proc.pid).children() if "esper_tui.engine.training.process" in c.cmdline()
        ]
        assert len(children) == 1
        child = children[0]
        eng.proc.kill()
        eng.proc.wait()
        gone, alive = psutil.wait_procs([child], timeout=10)
        assert gone and not alive


def test_the_child_exits_at_once_when_its_engine_goes_away(tmp_path: Path) -> None:
    """End of file on the child's stdin (the engine is gone, on any OS): exit 0, no clean-stop checkpoint."""
    state = tmp_path / "s"
    state.mkdir()
    config = parse_config({**QUIET, "training": {**QUIET["training"], "checkpoint_every_epochs": 0}})
    start = process.Start(config=config, state_dir=str(state), signing_key=load_or_create_key(state), faults=[])
    child = subprocess.Popen(
        [sys.executable, "-m", process.__name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(process.frame(start) + process.frame(process.Begin()))
    child.stdin.flush()
    decoder = msgspec.msgpack.Decoder(process.FromTrainer)
    while True:  # every byte on the channel is a frame: nothing stray reaches it
        n = process.HEADER.unpack(child.stdout.read(process.HEADER.size))[0]
        message = decoder.decode(child.stdout.read(n))
        if isinstance(message, process.Emitted) and isinstance(message.event, EpochCompleted):
            break
    child.stdin.close()
    assert child.wait(timeout=30) == 0
    rest = child.stdout.read()
    assert b"training_finished" not in rest  # it did not finish its run: it just ended
    assert not list(ckpt.checkpoints_dir(state).glob("epoch-*"))


def test_frames_round_trip_and_a_broken_one_is_refused() -> None:
    event = TrainingFinished(epochs=3, val_metric=0.5, best_val_metric=0.5, best_epoch=3, reason="done")
    data = process.frame(process.Emitted(event=event))
    n = process._length(data[: process.HEADER.size])
    message = process._decode(process._from_trainer, data[process.HEADER.size :][:n])
    assert message == process.Emitted(event=event)
    with pytest.raises(process.ChannelBroken, match="a frame of"):
        process._length(process.HEADER.pack(process.MAX_FRAME + 1))
    with pytest.raises(process.ChannelBroken):
        process._decode(process._from_trainer, encode_msgpack({"type": "nonsense"}))
    with pytest.raises(process.ChannelBroken):
        process._decode(process._to_trainer, b"\xc1")
