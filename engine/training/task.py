"""The Task API: what a user hands the control room so that it trains their model on their data.

A task is a small file the user owns (`--task path/to/file.py:factory`, or `package.module:factory`): a factory
takes a `TaskContext` (the device and the run's seed) and returns a `Task`, the way uvicorn takes `app:factory`.
The control room needs exactly what a training loop needs, and nothing of the user's code runs anywhere but in
the training process (task_loader.py says how that is kept):

- `host`: the user's `nn.Module`, trained as it is;
- `data`: train, validation and test splits as tensors `(x, y)`; with no validation split one is carved from the
  training samples with a fixed seed (`carve_seed`), so every run decides on the same held-out samples;
- `loss(outputs, targets)` and `metric(outputs, targets)`: what the host trains on, and what Tamiyo decides on
  (validation only) with its direction; the test split is only ever reported;
- `batch_size` and `optimizer` (a function of the parameters, called again for a restore);
- `slots`: seed slots, each naming a host submodule by its dotted path (`named_modules()`). A slot's seed reads that
  module's input (or `reads`'s input) and adds to its output; one forward pass on a sample batch finds the shape.

Every number has a declared range (the constants below) and a value outside it is one line of `TaskError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from esper_tui.engine.vocabulary import MetricInfo

Split = tuple[torch.Tensor, torch.Tensor]
"""`(inputs, targets)`: the first dimension counts the samples of both."""

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"
"""A task's or a slot's name: it appears in events, metrics labels, recordings and file names."""
MAX_BATCH = 65_536  # samples per step: beyond this one step of even a tiny host does not fit in memory
MAX_SLOTS = 16
VAL_FRACTION = (0.0, 0.5)  # exclusive lower bound, inclusive upper: at least half the samples still train
MAX_SEED = 2**32 - 1  # numpy's and torch's seed range
DEFAULT_CARVE_SEED = 20_250_607  # data.VAL_SPLIT_SEED: the same fixed validation carve as MNIST-1D's
DEFAULT_VAL_FRACTION = 0.125  # MNIST-1D's 500 of 4000


class TaskError(ValueError):
    """A task that cannot be trained: one line saying why (the engine exits 2 with it)."""


def one_line(text: str, limit: int = 300) -> str:
    """The first line of a message, cut to `limit` characters: what an error says in a log line or on exit."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= limit else first[: limit - 1] + "…"


def rng_devices(device: torch.device) -> list[int]:
    """The CUDA devices whose generator `torch.random.fork_rng` must fork along with the CPU's for `device`."""
    if device.type != "cuda":
        return []
    return [torch.cuda.current_device() if device.index is None else device.index]


def _name_problem(what: str, name: object) -> str | None:
    if not isinstance(name, str) or re.match(NAME_PATTERN, name) is None:
        return f"{what} {name!r}: a name is a letter then up to 63 letters, digits, '_', '.' or '-'"
    return None


@dataclass(frozen=True)
class Metric:
    """What Tamiyo decides on: `fn(outputs, targets)` over a whole split, a finite number, and its direction.
    `percent` says the value is a fraction shown as a percentage (accuracy)."""

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], float | torch.Tensor]
    higher_is_better: bool = True
    percent: bool = False

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        return float(self.fn(outputs, targets))

    def info(self) -> MetricInfo:
        """What the engine and every surface know of it (they never see `fn`: it is the user's code)."""
        return MetricInfo(name=self.name, higher_is_better=self.higher_is_better, percent=self.percent)


def _accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    return float((outputs.argmax(1) == targets).float().mean())


accuracy = Metric("accuracy", _accuracy, higher_is_better=True, percent=True)
"""Classification accuracy over class scores `[B, classes]` (the argmax against integer labels)."""


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The classification loss (a named function, so a task's loss reads `loss=cross_entropy`)."""
    return F.cross_entropy(outputs, targets)


def adam(lr: float = 1e-3, weight_decay: float = 0.0) -> OptimizerFactory:
    """Adam over whatever parameters it is given: the host's, and each seed's group as it is grafted."""
    if not (isinstance(lr, int | float) and 0 < lr <= 1):
        raise TaskError(f"adam: lr must lie in (0, 1], got {lr!r}")
    if not (isinstance(weight_decay, int | float) and 0 <= weight_decay <= 1):
        raise TaskError(f"adam: weight_decay must lie in [0, 1], got {weight_decay!r}")

    def make(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)

    return make


@dataclass(frozen=True)
class Slot:
    """A seed slot on the host submodule `module` (a dotted path from `named_modules()`). Its seed reads that
    module's input, or the input of `reads` when given (a module run before it), and adds to the module's output."""

    name: str
    module: str
    reads: str | None = None


@dataclass(frozen=True)
class Data:
    """The splits as tensors. `val=None` carves `val_fraction` of the training samples with `carve_seed`."""

    train: Split
    test: Split
    val: Split | None = None
    val_fraction: float = DEFAULT_VAL_FRACTION
    carve_seed: int = DEFAULT_CARVE_SEED

    def problem(self) -> str | None:
        """Why these splits cannot be trained on, or None."""
        for name, split in (("train", self.train), ("val", self.val), ("test", self.test)):
            if split is None:
                continue
            if not (isinstance(split, tuple) and len(split) == 2 and all(isinstance(t, torch.Tensor) for t in split)):
                return f"data.{name} must be a tuple of two tensors (inputs, targets)"
            x, y = split
            if x.dim() == 0 or y.dim() == 0 or len(x) != len(y) or len(x) == 0:
                return f"data.{name}: inputs and targets must hold the same number (>= 1) of samples"
            if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                return f"data.{name}: the inputs hold NaN or infinite values"
        low, high = VAL_FRACTION
        if not (isinstance(self.val_fraction, int | float) and low < self.val_fraction <= high):
            return f"data.val_fraction must lie in ({low:g}, {high:g}], got {self.val_fraction!r}"
        if not (isinstance(self.carve_seed, int) and 0 <= self.carve_seed <= MAX_SEED):
            return f"data.carve_seed must lie in [0, {MAX_SEED}], got {self.carve_seed!r}"
        if self.val is None and len(self.train[0]) < 2:
            return "data.train: carving a validation split needs at least 2 samples"
        return None

    def splits(self) -> tuple[Split, Split, Split]:
        """(train, val, test); the carve is a fixed-seed permutation, the same on every run and machine."""
        if self.val is not None:
            return self.train, self.val, self.test
        x, y = self.train
        n = len(y)
        n_val = min(n - 1, max(1, round(n * self.val_fraction)))
        train_idx, val_idx = carve_indices(n, n_val, self.carve_seed)
        return (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx]), self.test


def carve_indices(n: int, n_val: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) indices, each in ascending order: `n_val` of `n` held out by a PCG64 permutation."""
    order = np.random.Generator(np.random.PCG64(seed)).permutation(n)
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    return torch.from_numpy(train), torch.from_numpy(val)


@dataclass(frozen=True)
class TaskContext:
    """What a factory is told: where to put tensors, the run's seed (the host's init is already seeded with it),
    and a directory it may cache generated data in (None: keep nothing)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    data_dir: Path | None = None


@dataclass(frozen=True)
class Task:
    """Everything the control room trains. `description` says what the data is (the banner shows it)."""

    name: str
    host: nn.Module
    data: Data
    loss: LossFn
    metric: Metric
    batch_size: int
    optimizer: OptimizerFactory
    slots: Sequence[Slot]
    description: str = ""

    def problem(self) -> str | None:
        """Why this task cannot be trained, judged from its form alone (no forward pass), or None."""
        if (p := _name_problem("task name", self.name)) is not None:
            return p
        # a user's factory is not type-checked: every field is judged as whatever it turned out to be
        given: dict[str, object] = dict(vars(self))
        for name, kind in (("host", nn.Module), ("data", Data), ("metric", Metric)):
            if not isinstance(given[name], kind):
                return f"{name} must be a {kind.__name__}, not {type(given[name]).__name__}"
        if (p := _name_problem("metric", self.metric.name)) is not None:
            return p
        if not all(callable(given[f]) for f in ("loss", "optimizer")) or not callable(cast(object, self.metric.fn)):
            return "loss, optimizer and metric.fn must be callables"
        batch = given["batch_size"]
        if not (isinstance(batch, int) and 1 <= batch <= MAX_BATCH):
            return f"batch_size must lie in [1, {MAX_BATCH}], got {batch!r}"
        slots: list[object] = list(self.slots)
        if not slots:
            return "the task has no slots: name at least one host module a seed can grow on"
        if len(slots) > MAX_SLOTS:
            return f"{len(slots)} slots: at most {MAX_SLOTS}"
        names = [getattr(s, "name", None) for s in slots]
        for s in slots:
            if not isinstance(s, Slot):
                return f"slots must be Slot(name, module), not {type(s).__name__}"
            if (p := _name_problem("slot", s.name)) is not None:
                return p
        if len(set(names)) != len(names):
            return f"slot names must be unique: {names}"
        return self.data.problem()
