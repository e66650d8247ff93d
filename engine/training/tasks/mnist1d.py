"""`mnist1d`, the default task: today's reference workload, kept exactly as it was before tasks existed.

The host is the 40-64-64-10 MLP with dropout on its hidden activations, initialised from the run's seed in the same
order as before (so a seed's weights, and the growth table, are unchanged). Dropout (0.3 by default) keeps the host
from memorising its training samples: a host that fits them exactly leaves a grafted seed no gradient to learn from
(measured: grown test accuracy 79 % without it, 92-96 % with 0.3).

Slot i reads the host's *input* and adds to the pre-activation of hidden layer (i % 2) + 1: slot s0 sits on `l1`,
slot s1 on `l2` reading `l1`'s input. Every seed's kernel therefore has the shape `[B, 40] -> [B, hidden]` (the
40-64 vector shape the forge compiles), whatever the slot. Its knobs are the `[training]` keys hidden, slots,
dropout, val_samples, batch_size and learning_rate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from esper_tui.engine.config import TrainingConfig
from esper_tui.engine.training.data import CLASSES, DEFAULT_DATA_SEED, SEQ_LEN, Splits, carve, load_mnist1d
from esper_tui.engine.training.task import Data, Slot, Task, TaskContext, accuracy, adam, cross_entropy

NAME = "mnist1d"


class Mnist1dMLP(nn.Module):
    """x -> l1 -> relu -> dropout -> l2 -> relu -> dropout -> head -> logits."""

    def __init__(
        self, in_features: int = SEQ_LEN, hidden: int = 64, classes: int = CLASSES, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.in_features, self.hidden, self.classes, self.dropout = in_features, hidden, classes, dropout
        self.l1 = nn.Linear(in_features, hidden)
        self.l2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def describe(self) -> str:
        drop = f", dropout {self.dropout:g}" if self.dropout else ""
        return f"mlp {self.in_features}-{self.hidden}-{self.hidden}-{self.classes}{drop}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for lin in (self.l1, self.l2):
            h = F.relu(lin(h))
            if self.dropout > 0:
                h = F.dropout(h, self.dropout, self.training)
        out: torch.Tensor = self.head(h)
        return out


def slots(count: int) -> list[Slot]:
    """s0, s2, ... on the first hidden layer; s1, s3, ... on the second, reading the first layer's input."""
    return [Slot(f"s{i}", "l1") if i % 2 == 0 else Slot(f"s{i}", "l2", reads="l1") for i in range(count)]


def task(
    ctx: TaskContext,
    cfg: TrainingConfig,
    *,
    data_seed: int = DEFAULT_DATA_SEED,
    splits: Splits | None = None,
    cache_dir: Path | None = None,
) -> Task:
    """`splits` replaces the carved MNIST-1D splits (benchmarks load them once; tests poison them)."""
    host = Mnist1dMLP(hidden=cfg.hidden, dropout=cfg.dropout)  # first: the seeded RNG gives it today's weights
    sp = splits if splits is not None else carve(load_mnist1d(data_seed, cache_dir or ctx.data_dir), cfg.val_samples)

    def on_device(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).to(ctx.device)

    return Task(
        name=NAME,
        host=host,
        data=Data(
            train=(on_device(sp.x_train), on_device(sp.y_train)),
            val=(on_device(sp.x_val), on_device(sp.y_val)),
            test=(on_device(sp.x_test), on_device(sp.y_test)),
        ),
        loss=cross_entropy,
        metric=accuracy,
        batch_size=cfg.batch_size,
        optimizer=adam(cfg.learning_rate),
        slots=slots(cfg.slots),
        description=f"seed {data_seed}",
    )
