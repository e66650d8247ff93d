"""`digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download) and a small conv host.

The images (0-16 grey levels, scaled to [0, 1]) are split once with fixed seeds: a fifth is the test split (only
ever reported), and an eighth of the rest is carved as the validation split every decision reads. The host is two
3x3 convolutions with BatchNorm, a 2x2 max-pool, dropout and a linear head; its slots sit on the convolutions, so
its seeds see feature maps, not vectors: s0 `[1, 8, 8] -> [8, 8, 8]`, s1 `[8, 8, 8] -> [16, 8, 8]`. BatchNorm is
there on purpose as well: its running statistics are exactly what a seed's shadow pass must not move.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from esper_tui.engine.training.task import (
    Data,
    Slot,
    Task,
    TaskContext,
    accuracy,
    adam,
    carve_indices,
    cross_entropy,
)

NAME = "digits"
TEST_SEED = 1_797  # the test split's own fixed seed: every run reports on the same 359 images
TEST_FRACTION = 0.2
BATCH_SIZE = 64
CHANNELS = (8, 16)
LEARNING_RATE = 3e-3


class DigitsCNN(nn.Module):
    """x [B, 1, 8, 8] -> conv1 (8 ch) -> bn -> relu -> conv2 (16 ch) -> bn -> relu -> maxpool -> dropout -> head."""

    def __init__(self, channels: tuple[int, int] = CHANNELS, classes: int = 10, dropout: float = 0.2) -> None:
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c2)
        self.dropout = dropout
        self.head = nn.Linear(c2 * 4 * 4, classes)

    def describe(self) -> str:
        return f"cnn conv{self.conv1.out_channels}-conv{self.conv2.out_channels}-pool-linear, dropout {self.dropout:g}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = F.dropout(F.max_pool2d(h, 2), self.dropout, self.training)
        out: torch.Tensor = self.head(h.flatten(1))
        return out


def load() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 images as float32 `[N, 1, 8, 8]` in [0, 1], and their int64 labels."""
    from sklearn.datasets import load_digits  # imported here: only a digits run pays for scikit-learn

    raw = load_digits()
    x = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(raw.target, dtype=torch.int64)


def task(ctx: TaskContext, *, channels: tuple[int, int] = CHANNELS) -> Task:
    """`channels`: the two convolutions' widths (a benchmark widens them for a static twin of a grown network)."""
    host = DigitsCNN(channels)
    x, y = load()
    train_idx, test_idx = carve_indices(len(y), round(len(y) * TEST_FRACTION), TEST_SEED)
    x, y = x.to(ctx.device), y.to(ctx.device)
    return Task(
        name=NAME,
        host=host,
        data=Data(train=(x[train_idx], y[train_idx]), test=(x[test_idx], y[test_idx])),
        loss=cross_entropy,
        metric=accuracy,
        batch_size=BATCH_SIZE,
        optimizer=adam(LEARNING_RATE),
        slots=[Slot("s0", "conv1"), Slot("s1", "conv2")],
        description="scikit-learn 8x8 digits",
    )
