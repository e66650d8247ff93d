"""Tolaria end to end on real MNIST-1D with real torch: learning, seeds, events, pause/stop, fallbacks."""

from __future__ import annotations

import dataclasses
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec
import numpy as np
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
from esper_tui.engine.kernels.shapes import SlotShape, vector
from esper_tui.engine.training.control import TrainingControl
from esper_tui.engine.training.controller import Decision, EpochState
from esper_tui.engine.training.data import Splits, carve, load_mnist1d
from esper_tui.engine.training.kernel_source import EagerKernelSource, Kernel, KernelOffer, KernelUnavailable
from esper_tui.engine.training.loop import Trainer
from esper_tui.engine.training.seeds import IN_FLIGHT
from esper_tui.engine.vocabulary import Action, Level, SeedStage, Subsystem

CATALOG = Catalog()
MNIST1D = vector(40, TrainingConfig().hidden)  # the MLP host's slot shape


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


def trainer(
    cache_dir: Path,
    kernels=None,
    control: TrainingControl | None = None,
    *,
    splits: Splits | None = None,
    early_stop: bool | None = None,
    **cfg,
) -> tuple[Trainer, Recorder]:
    rec = Recorder()
    config = msgspec.structs.replace(TrainingConfig(seed=0), **cfg)
    source = kernels or EagerKernelSource(CATALOG)
    return Trainer(config, CATALOG, source, rec, control, cache_dir, splits=splits, early_stop=early_stop), rec


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
    host = sum(p.numel() for p in t.host.host_parameters())
    assert epochs[0].parameters == host  # the network as it computes: no seed adds to the output yet
    assert all(e.parameters is not None and e.parameters >= host for e in epochs)
    assert all(e.source is Subsystem.TOLARIA and e.samples_per_s > 0 and e.epoch_s > 0 for e in epochs)
    assert finished.val_metric == epochs[-1].val_metric > 0.40  # chance is 0.10
    assert finished.best_val_metric == max(e.val_metric for e in epochs)
    assert epochs[finished.best_epoch - 1].val_metric == finished.best_val_metric
    assert finished.reason == "epoch budget reached (25 epochs)"  # a budget: no early stop, no restore
    assert finished.test_metric == epochs[-1].test_metric and all(e.test_metric is not None for e in epochs)
    assert "3500 train / 500 val / 1000 test" in started.dataset

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
        if isinstance(e, ControllerDecision) and e.action is Action.GERMINATE:
            # the seeds table follows at once: the next report (same epoch) no longer shows the slot DORMANT
            j = next(j for j in range(i + 1, len(body)) if isinstance(body[j], SeedsReport))
            after = body[j]
            assert not any(isinstance(x, EpochCompleted) for x in body[i + 1 : j]), "not an epoch later"
            (seed,) = [s for s in after.seeds if s.slot == e.slot]
            assert seed.stage is SeedStage.GERMINATED and seed.blueprint_id == e.blueprint_id, seed

    decisions = rec.of(ControllerDecision)
    assert decisions and decisions[0].action is Action.GERMINATE and "flat for" in decisions[0].reason
    stages = {s.stage for r in rec.of(SeedsReport) for s in r.seeds}
    assert stages - {SeedStage.DORMANT, SeedStage.GERMINATED}, stages  # a seed got past germination
    # the epoch's own reports (a second one after a decision shows a slot that has not trained yet)
    measured = [body[i + 1] for i, e in enumerate(body) if isinstance(e, EpochCompleted)]
    live = [s for r in measured for s in r.seeds if s.stage is SeedStage.TRAINING]
    assert live and all(s.grad_norm > 0 and s.kernel == "eager" for s in live)
    assert not rec.of(LogLine)
    assert torch.get_num_threads() >= 1


def test_runs_are_deterministic_for_a_seed(cache_dir: Path) -> None:
    def accuracies(seed: int) -> list[float]:
        t, rec = trainer(cache_dir, epochs=3, seed=seed)
        t.run()
        return [e.val_metric for e in rec.of(EpochCompleted)]

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

    def offers(self, shape: SlotShape = MNIST1D) -> list[KernelOffer]:
        return [
            KernelOffer(self.blueprint_id, "art-1", ("dense",), 0.05, "inductor:default", 1.0, 1.2, shape=shape.tag)
        ]

    def load(self, blueprint_id: str, shape: SlotShape = MNIST1D) -> tuple[Kernel, KernelOffer]:
        if blueprint_id != self.blueprint_id:
            raise KernelUnavailable(blueprint_id)

        def kernel(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
            self.calls.append((x.requires_grad, torch.is_grad_enabled(), x.shape[0]))
            if self.fail_after is not None and len(self.calls) > self.fail_after:
                raise RuntimeError("guard failure")
            return module(x)

        return kernel, self.offers(shape)[0]


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
        def load(self, blueprint_id: str, shape: SlotShape = MNIST1D) -> tuple[Kernel, KernelOffer]:
            return (lambda m, x: m(x)[:, :3]), self.offers(shape)[0]

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
        def load(self, blueprint_id: str, shape: SlotShape = MNIST1D) -> tuple[Kernel, KernelOffer]:
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


# ---------------------------------------------------------------- split discipline


def test_the_controller_input_has_no_test_split() -> None:
    """Every decision reads an EpochState; the type has nowhere to put a test-split number."""
    names = {f.name for f in dataclasses.fields(EpochState)}
    assert names == {"epoch", "val_metric", "seeds", "offers", "train_loss", "slot_shapes"}
    assert not any("test" in name for name in names)


def poisoned(splits: Splits) -> Splits:
    """The same splits with the test split replaced by noise and wrong labels."""
    rng = np.random.default_rng(0)
    noise = (rng.normal(size=splits.x_test.shape) * 100).astype(np.float32)
    return dataclasses.replace(splits, x_test=noise, y_test=(splits.y_test + 1) % 10)


def test_poisoning_the_test_split_changes_no_decision(cache_dir: Path) -> None:
    splits = carve(load_mnist1d(42, cache_dir), 500)

    def run(sp: Splits) -> tuple[list[tuple[object, ...]], list[tuple[float, ...]], list[float | None]]:
        t, rec = trainer(cache_dir, epochs=12, splits=sp, **FAST_LIFECYCLE)
        t.run()
        decisions = [(d.action, d.slot, d.blueprint_id, d.reason) for d in rec.of(ControllerDecision)]
        seen = [(e.val_metric, e.val_loss, e.train_loss) for e in rec.of(EpochCompleted)]
        return decisions, seen, [e.test_metric for e in rec.of(EpochCompleted)]

    clean, dirty = run(splits), run(poisoned(splits))
    assert {d[0] for d in clean[0]} >= {Action.GERMINATE, Action.ADVANCE}  # decisions were taken
    assert clean[0] == dirty[0]  # the same decisions for the same reasons, in the same epochs
    assert clean[1] == dirty[1]  # and the same validation and training numbers
    assert clean[2] != dirty[2] and max(a for a in dirty[2] if a is not None) < 0.3  # the poison did reach the report


# ---------------------------------------------------------------- no churn


class ZeroLibrary(FakeLibrary):
    """Every seed it serves outputs zeros: its gradients vanish, exactly as under a memorising host."""

    def offers(self, shape: SlotShape = MNIST1D) -> list[KernelOffer]:
        return [
            KernelOffer(bp, f"art-{bp}", ("dense",), 0.05, "inductor:default", 1.0, 1.2, shape=shape.tag)
            for bp in ("lowrank_adapter", "mlp_block")
        ]

    def load(self, blueprint_id: str, shape: SlotShape = MNIST1D) -> tuple[Kernel, KernelOffer]:
        offer = next(o for o in self.offers(shape) if o.blueprint_id == blueprint_id)
        return (lambda module, x: module(x) * 0.0), offer


def test_failing_seeds_back_off_and_growth_stops_with_one_explanation(cache_dir: Path) -> None:
    t, rec = trainer(cache_dir, kernels=ZeroLibrary(), epochs=40, give_up_after=3, embargo_epochs=2, **FAST_LIFECYCLE)
    t.run()
    epoch_of: dict[int, int] = {}
    for i, e in enumerate(rec.events):
        if isinstance(e, EpochCompleted):
            epoch = e.epoch
        epoch_of[i] = epoch if isinstance(e, ControllerDecision) else 0
    decisions = [(epoch_of[i], e) for i, e in enumerate(rec.events) if isinstance(e, ControllerDecision)]
    germinated = [(n, d.slot, d.blueprint_id) for n, d in decisions if d.action is Action.GERMINATE]
    pruned = [(n, d.slot, d.blueprint_id) for n, d in decisions if d.action is Action.PRUNE]
    assert len(germinated) == len(pruned) == 3  # then it stops trying, though slots and epochs remain
    assert all("vanishing" in d.reason for _, d in decisions if d.action is Action.PRUNE)
    # each wait before the next germination at least doubles: 2, then 4 epochs after the prune
    waits = [g[0] - p[0] for p, g in zip(pruned, germinated[1:], strict=False)]
    assert waits[0] >= 2 and waits[1] >= 4 and waits[1] >= 2 * waits[0]
    # a blueprint that just failed in a slot is not the next one grown there
    for (_, slot, bp), (_, next_slot, next_bp) in zip(pruned, germinated[1:], strict=False):
        assert (slot, bp) != (next_slot, next_bp)
    [note] = [d for _, d in decisions if d.action is Action.WAIT]
    assert note.source is Subsystem.TAMIYO and note.reason.startswith("stopped growing for this run: 3 seeds failed")
    assert "gradients vanishing" in note.reason
    assert len(rec.of(EpochCompleted)) == 40


# ---------------------------------------------------------------- stopping and restoring


def test_capture_and_restore_put_back_the_whole_training_state(cache_dir: Path) -> None:
    """Restored, a run continues exactly as it did from the captured epoch: weights, seeds, stages,
    optimizer moments, controller memory and both RNGs all came back."""
    t, rec = trainer(cache_dir, epochs=None, **FAST_LIFECYCLE)
    while not any(s.stage is SeedStage.TRAINING for s in t.host.seed_slots()):
        t._epoch()
    state = t.capture()
    t._epoch()
    first = rec.of(EpochCompleted)[-1]
    assert t._epoch()
    in_flight = [s for s in t.host.seed_slots() if s.stage in IN_FLIGHT]
    assert in_flight
    for s in in_flight:  # change the architecture too: restore must rebuild what it lost
        assert t._apply(Decision(Action.PRUNE, s.name, s.blueprint_id, "test"), 0.0) and s.block is None

    t.restore(state)
    assert t.epoch == state.epoch
    assert [(s.stage, s.blueprint_id) for s in t.host.seed_slots()] == [(s.stage, s.blueprint_id) for s in state.slots]
    assert t.controller.state() == state.controller
    t._epoch()
    again = rec.of(EpochCompleted)[-1]
    assert (again.epoch, again.train_loss, again.val_metric, again.val_loss) == (
        first.epoch,
        first.train_loss,
        first.val_metric,
        first.val_loss,
    )


def test_without_a_budget_the_run_stops_on_its_own_and_restores_the_best_epoch(cache_dir: Path) -> None:
    t, rec = trainer(cache_dir, epochs=None, early_stop_epochs=3)
    finished = t.run()
    epochs = rec.of(EpochCompleted)
    best = max(e.val_metric for e in epochs)
    assert finished.epochs == len(epochs) == finished.best_epoch + 3
    assert finished.best_val_metric == best == epochs[finished.best_epoch - 1].val_metric
    assert finished.reason.startswith("early stop: validation accuracy has not improved for 3 epochs")
    if epochs[-1].val_metric != best:
        assert finished.reason.endswith(f"; the best epoch, {finished.best_epoch}, restored")
    assert finished.val_metric == best  # the weights it ends with are the best epoch's
    assert finished.test_metric is not None and rec.events[-1] is finished


def test_a_budget_never_stops_early_unless_asked(cache_dir: Path) -> None:
    t, _ = trainer(cache_dir, epochs=6, early_stop_epochs=1, learning_rate=1e-9)
    assert t.run().epochs == 6  # validation is flat from epoch 1, but the budget rules
    t, _ = trainer(cache_dir, epochs=6, early_stop_epochs=1, learning_rate=1e-9, early_stop=True)
    finished = t.run()
    assert finished.epochs == 2 and finished.best_epoch == 1


def test_memory_stays_flat_over_many_epochs() -> None:
    """The controller folds epochs into constant state: nothing grows with the epoch count."""
    from esper_tui.engine.training.controller import Controller

    def size_after(epochs: int) -> int:
        ctl = Controller(TrainingConfig(), CATALOG)
        for n in range(1, epochs + 1):
            ctl.decide(EpochState(n, 0.5 + (n % 7) / 100, (), ()))
        return len(msgspec.json.encode(dataclasses.asdict(ctl.state())))

    assert size_after(10_000) - size_after(10) < 8  # a few more digits in the counters, nothing more


# ---------------------------------------------------------------- the fastest variant


def test_the_library_source_serves_the_faster_variant_and_says_why(tmp_path: Path, commit_artifact) -> None:
    from esper_tui.engine.kernels.compiled import LoadedKernel, compiler_id, cpu_isa, kernel_threads
    from esper_tui.engine.library.store import Identity, Library
    from esper_tui.engine.training.kernel_source import eager_kernel
    from esper_tui.engine.training.library_source import LibraryKernelSource

    identity = Identity(
        str(torch.__version__), platform.python_version(), "cpu", cpu_isa(), kernel_threads(), compiler_id()
    )
    lib = Library(tmp_path / "library", bytes(range(32)), CATALOG, identity=identity)
    commit_artifact(lib, "mlp_block", "a" * 64, step_ms_compiled=2.39, step_ms_eager=2.06)
    commit_artifact(lib, "depthwise_conv", "b" * 64, step_ms_compiled=2.92, step_ms_eager=3.66)
    source = LibraryKernelSource(lib, "inductor", "default")
    offers = {o.blueprint_id: o for o in source.offers(MNIST1D)}
    eager, compiled = offers["mlp_block"], offers["depthwise_conv"]
    assert (eager.label, eager.eager_by_choice, eager.step_ms) == ("eager", True, 2.06)
    assert eager.why == "eager: 2.06 ms < compiled 2.39 ms per step"
    assert (compiled.label, compiled.eager_by_choice, compiled.step_ms) == ("inductor:default", False, 2.92)
    assert compiled.why == "compiled: 2.92 ms <= eager 3.66 ms per step"
    kernel, offer = source.load("mlp_block", MNIST1D)
    assert kernel is eager_kernel and offer == eager
    # a trainer grafting it says which variant runs and why, in the event log and the seeds panel
    t, rec = trainer(tmp_path, kernels=source, epochs=1)
    assert t._apply(Decision(Action.GERMINATE, "s0", "mlp_block", "test"), 0.5)
    [log] = rec.of(LogLine)
    assert log.message == "s0 <- mlp_block runs eager: 2.06 ms < compiled 2.39 ms per step"
    assert t.host.slot("s0").health(0.5).kernel == "eager (faster)" and not t.host.slot("s0").compiled
    # the benchmark's switch: always compiled
    always = LibraryKernelSource(lib, "inductor", "default", fastest=False)
    kernel, offer = always.load("mlp_block", MNIST1D)
    assert isinstance(kernel, LoadedKernel) and offer.label == "inductor:default"


async def test_the_engine_stays_up_after_training_stops_on_its_own(tmp_path: Path) -> None:
    """Without --epochs the run ends by early stopping; the engine, its forge and its commands carry on."""
    import asyncio

    from esper_tui.engine.config import parse_config
    from esper_tui.engine.contracts import SetConservativeMode
    from esper_tui.engine.runtime import Engine
    from esper_tui.engine.vocabulary import TrainingStatus

    config = parse_config(
        {
            "tezzeret": {"polling": {"initial_full_scan": False}},
            "training": {"compile": False, "early_stop_epochs": 2, "learning_rate": 1e-9},
        }
    )
    engine = Engine(config, tmp_path / "state")
    await engine.start()
    try:
        async with asyncio.timeout(120):  # only against a hang
            while engine.aggregator.snapshot().training.status is not TrainingStatus.FINISHED:
                await asyncio.sleep(0.05)
        texts = [line.text for line in engine.aggregator.events]
        [done] = [t for t in texts if t.startswith("training finished")]
        assert "early stop: validation accuracy has not improved for 2 epochs" in done
        assert engine.aggregator.snapshot().training.test_metric is not None
        assert not engine.stopped.is_set()
        await engine.send(SetConservativeMode(active=True))
        async with asyncio.timeout(30):
            while not engine.aggregator.snapshot().forge.conservative_mode:
                await asyncio.sleep(0.05)
        assert not engine.stopped.is_set()
    finally:
        await engine.stop()
