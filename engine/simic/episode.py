"""One Simic episode: a short growth run of MNIST-1D on one data seed, under a fixed epoch and wall-time budget.

The episode is the engine's own training loop (Trainer) with eager seeds (no compile: an episode must be cheap),
one torch thread, and Tamiyo following either the heuristic or a linear policy (training/learned.py) that may
explore (`LinUCB`). It returns what a learner needs: every decision point the policy took, the validation metric
of every epoch, and what became of each seed. Episodes run in worker processes (`run_episode` takes and returns
plain data), so the engine's loop and training process never wait on them.

The test split is evaluated only when `report_test` is set (the benchmark's final rows): a learner's episodes
never carry it.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import msgspec
import torch

from esper_tui.engine.config import TrainingConfig
from esper_tui.engine.contracts import AnyEvent, ControllerDecision, EpochCompleted
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.kernels.shapes import vector
from esper_tui.engine.training.control import TrainingControl
from esper_tui.engine.training.kernel_source import EagerKernelSource
from esper_tui.engine.training.learned import Chooser, DecisionPoint, Layout, LinearPolicy, greedy
from esper_tui.engine.training.loop import Trainer
from esper_tui.engine.training.task import TaskContext
from esper_tui.engine.training.task_loader import call_factory
from esper_tui.engine.training.tasks import mnist1d
from esper_tui.engine.vocabulary import Action

TASK = mnist1d.NAME


@dataclass(frozen=True)
class EpisodeSpec:
    """What to run: data and weight seeds, budget, and the policy (None: the heuristic)."""

    data_seed: int
    train_seed: int
    epochs: int
    wall_s: float
    data_dir: str
    theta: list[float] | None = None  # the linear policy's weights; None: the heuristic decides
    layout: tuple[list[str], list[str]] | None = None  # (blueprints, slots) of the policy's features
    version: str = "candidate"
    a_inv: list[list[float]] | None = None  # LinUCB: the inverse design matrix, for its exploration bonus
    explore: float = 0.0  # LinUCB's alpha; 0: no optimism bonus
    epsilon: float = 0.0  # the share of decisions taken at random among the legal actions (exploration)
    early_stop: int | None = None  # stop once validation has not improved for this many epochs (best restored)
    report_test: bool = False


@dataclass
class Seed:
    slot: str
    blueprint_id: str
    epoch: int
    fate: str = "in flight"  # "kept", "pruned", "in flight"
    fate_epoch: int | None = None
    params: int = 0


@dataclass
class EpisodeResult:
    spec: EpisodeSpec
    val: list[float]  # validation metric after each epoch (index 0: epoch 1)
    points: list[DecisionPoint] = field(default_factory=list)
    seeds: list[Seed] = field(default_factory=list)
    best_epoch: int = 0
    best_val: float = 0.0
    params: int = 0
    wall_s: float = 0.0
    epochs: int = 0
    test_metric: float | None = None
    stopped: bool = False  # the wall-time budget ran out

    @property
    def pruned(self) -> int:
        return sum(s.fate == "pruned" for s in self.seeds)

    @property
    def kept(self) -> int:
        return sum(s.fate == "kept" for s in self.seeds)


def episode_config(base: TrainingConfig, spec: EpisodeSpec) -> TrainingConfig:
    return msgspec.structs.replace(
        base,
        seed=spec.train_seed,
        epochs=spec.epochs,
        early_stop_epochs=spec.early_stop or base.early_stop_epochs,
        checkpoint_every_epochs=0,
        epoch_delay_s=0.0,
        policy="heuristic",
    )


def explorer(a_inv: torch.Tensor | None, alpha: float, epsilon: float, seed: int) -> Chooser:
    """Exploration while training: with probability `epsilon` a legal action at random (every action gets tried,
    whatever its features' scale), else LinUCB's choice, the score plus alpha times the uncertainty of its features
    under the design so far."""
    rng = random.Random(seed)

    def choose(features: torch.Tensor, scores: torch.Tensor) -> int:
        if rng.random() < epsilon:
            return rng.randrange(len(scores))
        if a_inv is None or alpha <= 0:
            return int(torch.argmax(scores))
        bonus = torch.sqrt(torch.clamp(((features @ a_inv) * features).sum(1), min=0.0))
        return int(torch.argmax(scores + alpha * bonus))

    return choose


def blueprint_params(catalog: Catalog, blueprint_id: str, hidden: int) -> int:
    with torch.random.fork_rng(devices=[]):
        module = catalog.get(blueprint_id).build(vector(40, hidden))
    return sum(p.numel() for p in module.parameters())


class Recorder:
    """The emit of an episode's Trainer: each epoch's validation metric and each decision that moved a seed."""

    def __init__(self) -> None:
        self.val: list[float] = []
        self.decisions: list[tuple[int, ControllerDecision]] = []

    def __call__(self, event: AnyEvent) -> None:
        if isinstance(event, EpochCompleted):
            del self.val[event.epoch - 1 :]  # a rollback replays epochs: keep the latest of each
            self.val.append(event.val_metric)
        elif isinstance(event, ControllerDecision) and event.action is not Action.WAIT:
            self.decisions.append((len(self.val), event))


def build_trainer(
    spec: EpisodeSpec, base: TrainingConfig, emit: Recorder, control: TrainingControl, catalog: Catalog
) -> Trainer:
    """The engine's training loop for one episode: MNIST-1D of the spec's data seed, eager seeds, one thread."""
    cfg = episode_config(base, spec)
    factory = partial(mnist1d.task, cfg=cfg, data_seed=spec.data_seed, cache_dir=Path(spec.data_dir))
    loaded = call_factory(factory, TaskContext(seed=cfg.seed, data_dir=Path(spec.data_dir)), TASK)
    return Trainer(
        cfg,
        catalog,
        EagerKernelSource(catalog),
        emit,
        control,
        task=loaded,
        threads=1,
        early_stop=spec.early_stop is not None,
    )


def run_episode(spec: EpisodeSpec, base: TrainingConfig | None = None) -> EpisodeResult:
    """Run one episode in this process (a worker's entry point; picklable in and out)."""
    base = base or TrainingConfig()
    catalog = Catalog()
    recorder, control = Recorder(), TrainingControl()
    trainer = build_trainer(spec, base, recorder, control, catalog)
    policy: LinearPolicy | None = None
    if spec.theta is not None and spec.layout is not None:
        choose: Chooser = greedy
        if spec.explore > 0 or spec.epsilon > 0:
            a_inv = torch.tensor(spec.a_inv) if spec.a_inv is not None else None
            choose = explorer(a_inv, spec.explore, spec.epsilon, spec.train_seed * 7919 + spec.data_seed)
        layout = Layout(list(spec.layout[0]), list(spec.layout[1]))
        policy = LinearPolicy(spec.version, layout, torch.tensor(spec.theta), choose, record=True)
        trainer.controller.policy = policy
    timer = threading.Timer(spec.wall_s, control.stop)
    timer.daemon = True
    t0 = time.perf_counter()
    timer.start()
    try:
        finished = trainer.run()
    finally:
        timer.cancel()
    return EpisodeResult(
        spec=spec,
        val=recorder.val,
        points=policy.points if policy is not None else [],
        seeds=seeds_of(recorder.decisions, catalog, base.hidden),
        best_epoch=finished.best_epoch,
        best_val=finished.best_val_metric,
        params=trainer.parameter_count(),
        wall_s=time.perf_counter() - t0,
        epochs=finished.epochs,
        test_metric=finished.test_metric if spec.report_test else None,
        stopped=control.stopped,
    )


def seeds_of(decisions: list[tuple[int, ControllerDecision]], catalog: Catalog, hidden: int) -> list[Seed]:
    """Every germinated seed with its fate, from the decisions in order."""
    seeds: list[Seed] = []
    live: dict[str, Seed] = {}
    sizes: dict[str, int] = {}
    for epoch, d in decisions:
        if d.slot is None:
            continue
        if d.action is Action.GERMINATE and d.blueprint_id is not None:
            if d.blueprint_id not in sizes:
                sizes[d.blueprint_id] = blueprint_params(catalog, d.blueprint_id, hidden)
            live[d.slot] = seed = Seed(d.slot, d.blueprint_id, epoch, params=sizes[d.blueprint_id])
            seeds.append(seed)
        elif d.action in (Action.FOSSILIZE, Action.PRUNE) and d.slot in live:
            seed = live.pop(d.slot)
            seed.fate = "kept" if d.action is Action.FOSSILIZE else "pruned"
            seed.fate_epoch = epoch
    return seeds
