"""Tolaria end to end on real MNIST-1D with real torch: learning, seeds, events, pause/stop, fallbacks."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec
import pytest
import torch

from esper_tui.engine.config import TrainingConfig
from esper_tui.engine.contracts import (
    ControllerDecision,
    EpochCompleted,
    LogLine,
    SeedsReport,
    TrainingFailed,
    TrainingFinished,
    TrainingPaused,
    TrainingStarted,
)
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.training.controller import Decision
from esper_tui.engine.training.kernel_source import EagerKernelSource, Kernel, KernelOffer, KernelUnavailable
from esper_tui.engine.training.loop import Trainer, TrainingControl
from esper_tui.engine.vocabulary import Action, Level, SeedStage, Subsystem

CATALOG = Catalog()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mnist1d")


class Recorder:
    """The emit callback: collects events and lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[object] = []
        self._cond = threading.Condition()

    def __call__(self, event: object) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def of(self, kind: type) -> list:
        with self._cond:
            return [e for e in self.events if isinstance(e, kind)]

    def wait_for(self, predicate, timeout: float = 30.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self), timeout), "event never came"


def trainer(cache_dir: Path, kernels=None, control: TrainingControl | None = None, **cfg) -> tuple[Trainer, Recorder]:
    rec = Recorder()
    config = msgspec.structs.replace(TrainingConfig(seed=0), **cfg)
    return Trainer(config, CATALOG, kernels or EagerKernelSource(CATALOG), rec, control, cache_dir), rec


def test_end_to_end_learns_grows_a_seed_and_reports_in_order(cache_dir: Path) -> None:
    t, rec = trainer(cache_dir, epochs=25)
    finished = t.run()
    events = rec.events
    started = events[0]
    assert isinstance(started, TrainingStarted) and started.source is Subsystem.TOLARIA
    assert started.compile_enabled is False
    assert started.compile_backend is None and started.compile_mode is None
    assert (started.slots, started.epochs, started.device) == (2, 25, "cpu")
    assert events[-1] is finished and isinstance(finished, TrainingFinished) and finished.epochs == 25

    epochs = rec.of(EpochCompleted)
    assert [e.epoch for e in epochs] == list(range(1, 26))
    assert all(e.source is Subsystem.TOLARIA and e.samples_per_s > 0 and e.epoch_s > 0 for e in epochs)
    assert finished.final_accuracy == epochs[-1].val_accuracy > 0.40  # chance is 0.10
    assert finished.best_accuracy == max(e.val_accuracy for e in epochs)

    # per epoch: EpochCompleted, SeedsReport, then the decisions taken that epoch
    body = events[1:-1]
    for i, e in enumerate(body):
        if isinstance(e, EpochCompleted):
            report = body[i + 1]
            assert isinstance(report, SeedsReport) and report.epoch == e.epoch and report.source is Subsystem.KASMINA
            assert [s.slot for s in report.seeds] == ["s0", "s1"]
        if isinstance(e, ControllerDecision):
            assert isinstance(body[i - 1], (SeedsReport, ControllerDecision)) and e.source is Subsystem.TAMIYO
            assert e.action is not Action.WAIT

    decisions = rec.of(ControllerDecision)
    assert decisions and decisions[0].action is Action.GERMINATE and "flat for" in decisions[0].reason
    stages = {s.stage for r in rec.of(SeedsReport) for s in r.seeds}
    assert stages - {SeedStage.DORMANT, SeedStage.GERMINATED}, stages  # a seed got past germination
    live = [s for r in rec.of(SeedsReport) for s in r.seeds if s.stage is SeedStage.TRAINING]
    assert live and all(s.grad_norm > 0 and s.kernel == "eager" for s in live)
    assert not rec.of(LogLine)
    assert torch.get_num_threads() >= 1


def test_runs_are_deterministic_for_a_seed(cache_dir: Path) -> None:
    def accuracies(seed: int) -> list[float]:
        t, rec = trainer(cache_dir, epochs=3, seed=seed)
        t.run()
        return [e.val_accuracy for e in rec.of(EpochCompleted)]

    assert accuracies(3) == accuracies(3)
    assert accuracies(3) != accuracies(4)


def test_pause_resume_and_stop_from_another_thread(cache_dir: Path) -> None:
    control = TrainingControl()
    t, rec = trainer(cache_dir, control=control, epochs=None, epoch_delay_s=0.02)
    thread = threading.Thread(target=t.run, daemon=True)
    thread.start()
    rec.wait_for(lambda r: len(r.of(EpochCompleted)) >= 2)

    control.pause()
    rec.wait_for(lambda r: r.of(TrainingPaused))
    done = len(rec.of(EpochCompleted))
    time.sleep(0.3)
    assert len(rec.of(EpochCompleted)) == done and thread.is_alive()  # nothing trains while paused

    control.resume()
    rec.wait_for(lambda r: len(r.of(EpochCompleted)) >= done + 2)
    assert [p.paused for p in rec.of(TrainingPaused)] == [True, False]

    control.stop()
    thread.join(10)
    assert not thread.is_alive()
    finished = rec.events[-1]
    assert isinstance(finished, TrainingFinished) and finished.epochs == len(rec.of(EpochCompleted))


def test_stop_interrupts_the_epoch_delay_and_a_paused_loop(cache_dir: Path) -> None:
    control = TrainingControl()
    t, rec = trainer(cache_dir, control=control, epochs=None, epoch_delay_s=60.0)
    thread = threading.Thread(target=t.run, daemon=True)
    thread.start()
    rec.wait_for(lambda r: r.of(EpochCompleted))
    control.pause()
    control.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert isinstance(rec.events[-1], TrainingFinished) and rec.events[-1].epochs == 1


class FakeLibrary:
    """A compiled-kernel source stand-in: one blueprint, a kernel that records how it is called."""

    compile_enabled = True
    backend = "inductor"
    mode = "default"

    def __init__(self, blueprint_id: str = "lowrank_adapter", fail_after: int | None = None) -> None:
        self.blueprint_id = blueprint_id
        self.fail_after = fail_after
        self.calls: list[tuple[bool, bool, int]] = []

    def offers(self) -> list[KernelOffer]:
        return [KernelOffer(self.blueprint_id, "art-1", ("dense",), 0.05, "inductor:default", 1.0, 1.2)]

    def load(self, blueprint_id: str) -> tuple[Kernel, KernelOffer]:
        if blueprint_id != self.blueprint_id:
            raise KernelUnavailable(blueprint_id)

        def kernel(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
            self.calls.append((x.requires_grad, torch.is_grad_enabled(), x.shape[0]))
            if self.fail_after is not None and len(self.calls) > self.fail_after:
                raise RuntimeError("guard failure")
            return module(x)

        return kernel, self.offers()[0]


FAST_LIFECYCLE = {"plateau_epochs": 1, "plateau_delta": 1.0, "train_epochs": 1, "blend_epochs": 1, "holding_epochs": 1}


def test_compiled_kernels_see_detached_inputs_and_the_banner_fields(cache_dir: Path) -> None:
    lib = FakeLibrary()
    t, rec = trainer(cache_dir, kernels=lib, epochs=7, **FAST_LIFECYCLE)
    t.run()
    started = rec.of(TrainingStarted)[0]
    banner = (started.compile_enabled, started.compile_backend, started.compile_mode)
    assert banner == (True, "inductor", "default")
    assert lib.calls and not any(requires_grad for requires_grad, _, _ in lib.calls)
    assert {grad for _, grad, _ in lib.calls} == {True, False}  # train steps and no-grad evaluation
    assert {batch for _, _, batch in lib.calls} == {100}
    kernels = {s.kernel for r in rec.of(SeedsReport) for s in r.seeds if s.slot == "s0"}
    assert "compiled inductor:default" in kernels


def test_a_failing_compiled_kernel_falls_back_to_eager(cache_dir: Path) -> None:
    lib = FakeLibrary(fail_after=3)
    t, rec = trainer(cache_dir, kernels=lib, epochs=6, **FAST_LIFECYCLE)
    t.run()
    warnings = [e for e in rec.of(LogLine) if e.level is Level.WARNING]
    assert len(warnings) == 1 and "running eagerly" in warnings[0].message and warnings[0].source is Subsystem.KASMINA
    last = rec.of(SeedsReport)[-1].seeds[0]
    assert last.kernel == "eager" and last.stage is not SeedStage.DORMANT
    assert len(rec.of(EpochCompleted)) == 6


def test_germination_probes_the_kernel(cache_dir: Path) -> None:
    t, rec = trainer(cache_dir, kernels=FakeLibrary(fail_after=0), epochs=1)
    assert t._apply(Decision(Action.GERMINATE, "s0", "lowrank_adapter", "test"), 0.5)
    [log] = rec.of(LogLine)
    assert log.level is Level.WARNING and "failed its probe" in log.message
    assert t.host.slot("s0").kernel_label == "eager"  # grown anyway, eagerly

    class WrongShape(EagerKernelSource):
        def load(self, blueprint_id: str) -> tuple[Kernel, KernelOffer]:
            return (lambda m, x: m(x)[:, :3]), self.offers()[0]

    t, rec = trainer(cache_dir, kernels=WrongShape(CATALOG), epochs=1)
    assert not t._apply(Decision(Action.GERMINATE, "s1", "mlp_block", "test"), 0.5)
    [log] = rec.of(LogLine)
    assert log.level is Level.ERROR and "output shape (100, 3)" in log.message
    assert t.host.slot("s1").stage is SeedStage.DORMANT and len(t.optimizer.param_groups) == 1


def test_unavailable_kernel_is_logged_and_prune_releases_the_optimizer(cache_dir: Path) -> None:
    t, rec = trainer(cache_dir, epochs=1)
    assert not t._apply(Decision(Action.GERMINATE, "s0", "no_such_blueprint", "test"), 0.5)
    [log] = rec.of(LogLine)
    assert log.level is Level.WARNING and "no_such_blueprint" in log.message
    assert t.host.slot("s0").stage is SeedStage.DORMANT

    assert t._apply(Decision(Action.GERMINATE, "s0", "mlp_block", "test"), 0.5)
    assert len(t.optimizer.param_groups) == 2
    block_params = list(t.host.slot("s0").block.parameters())
    t.optimizer.state[block_params[0]]["step"] = torch.tensor(1.0)
    assert t._apply(Decision(Action.PRUNE, "s0", "mlp_block", "test"), 0.5)
    assert len(t.optimizer.param_groups) == 1 and not t.optimizer.state
    assert t.host.slot("s0").stage is SeedStage.PRUNED


def test_a_dying_loop_reports_training_failed(cache_dir: Path) -> None:
    """An error out of the loop is reported as TrainingFailed (the snapshot then says FAILED), then re-raised."""

    class Exploding(EagerKernelSource):
        def load(self, blueprint_id: str) -> tuple[Kernel, KernelOffer]:
            raise RuntimeError("library exploded")

    t, rec = trainer(cache_dir, kernels=Exploding(CATALOG), epochs=5, **FAST_LIFECYCLE)
    with pytest.raises(RuntimeError, match="library exploded"):
        t.run()
    last = rec.events[-1]
    assert isinstance(last, TrainingFailed) and last.source is Subsystem.TOLARIA
    assert last.error == "RuntimeError: library exploded"
    assert not rec.of(TrainingFinished)


def test_importing_the_training_plane_loads_no_ui() -> None:
    code = (
        "import sys, esper_tui.engine.training.loop, esper_tui.engine.training.controller; "
        "print(any(m.split('.')[0] in ('textual', 'rich') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
