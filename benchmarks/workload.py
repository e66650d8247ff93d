"""What the growth and dashboard benchmarks train: a built-in task (`--task mnist1d|digits`), with what their
comparison rows need beside it: the task for a training seed (optionally with a wider host, the static twin of a
grown network's parameter count), the same host as plain PyTorch for the bare loops, and the data once.

mnist1d keeps the rows it always had (its MLP host, the hidden width as its size); digits' size is its conv host's
channel width (c, 2c), 8 by default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import msgspec
import torch
from torch import nn

from esper_tui.engine.config import TrainingConfig
from esper_tui.engine.training.data import Splits, carve, load_mnist1d
from esper_tui.engine.training.task import Split, Task, TaskContext
from esper_tui.engine.training.task_loader import LoadedTask, call_factory
from esper_tui.engine.training.tasks import digits, mnist1d

TASKS = ("mnist1d", "digits")


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass
class Workload:
    name: str
    base: TrainingConfig
    data_dir: Path
    width: int  # the host's size knob at its default
    host_kind: str  # what the static twin of the grown network's parameter count is: "MLP", "CNN"
    _splits: Splits | None = None
    _data: tuple[Split, Split, Split] | None = field(default=None, repr=False)

    @classmethod
    def named(cls, name: str, base: TrainingConfig, data_dir: Path) -> Workload:
        if name == "mnist1d":
            return cls(name, base, data_dir, base.hidden, "MLP")
        if name == "digits":
            return cls(name, base, data_dir, digits.CHANNELS[0], "CNN")
        raise ValueError(f"--task {name!r}: the benchmarks know {', '.join(TASKS)}")

    def _factory(self, width: int | None) -> Callable[[TaskContext], Task]:
        w = width or self.width
        if self.name == "digits":
            return partial(digits.task, channels=(w, 2 * w))
        if self._splits is None:  # MNIST-1D generated (or read from the cache) once for every row
            self._splits = carve(load_mnist1d(cache_dir=self.data_dir), self.base.val_samples)
        cfg = self.base if width is None else msgspec.structs.replace(self.base, hidden=w, slots=1)
        return partial(mnist1d.task, cfg=cfg, splits=self._splits)

    def task(self, seed: int, width: int | None = None) -> LoadedTask:
        """The task for one training seed (the host initialised from it), its host `width` wide if given."""
        return call_factory(self._factory(width), TaskContext(seed=seed, data_dir=self.data_dir), self.name)

    def data(self) -> tuple[Split, Split, Split]:
        """(train, val, test) tensors, the same for every row."""
        if self._data is None:
            loaded = self.task(0)
            self._data = (loaded.train, loaded.val, loaded.test)
        return self._data

    def bare_host(self, width: int | None = None) -> nn.Module:
        """The host as a PyTorch user writes it, no slots: what the bare loops train."""
        w = width or self.width
        if self.name == "digits":
            return digits.DigitsCNN((w, 2 * w))
        h, drop = w, self.base.dropout
        layers = [nn.Linear(40, h), nn.ReLU(), nn.Dropout(drop), nn.Linear(h, h), nn.ReLU(), nn.Dropout(drop)]
        return nn.Sequential(*layers, nn.Linear(h, 10))

    def width_for(self, count: int) -> int:
        """The host width whose parameter count is nearest `count` (the static twin of a grown network)."""
        with torch.random.fork_rng(devices=[]):
            return min(range(1, 4 * self.width + 1), key=lambda w: abs(params(self.bare_host(w)) - count))

    def in_features(self) -> int:
        return int(self.data()[0][0][0].numel())

    def describe(self) -> str:
        (xt, _), (xv, _), (xs, _) = self.data()
        return f"{self.name} ({len(xt)} train / {len(xv)} val / {len(xs)} test)"
