"""A task written the way a user writes one: noisy waveforms (sine, square, triangle, sawtooth) told apart by a
small 1-D conv network, with seed slots on its feature maps and on its head.

Run it with

    esper-tui --task examples/waveforms.py:factory

The control room calls `factory(ctx)` in its training process only; everything it needs is in the Task returned.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from esper_tui.task import Data, Slot, Task, TaskContext, accuracy, adam, cross_entropy

LENGTH = 64  # samples per waveform
KINDS = ("sine", "square", "triangle", "sawtooth")


def waveforms(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` waveforms `[n, 1, LENGTH]` of random frequency, phase and amplitude, with noise, and their kinds."""
    kind = torch.randint(0, len(KINDS), (n,), generator=generator)
    cycles = 1.5 + 3.0 * torch.rand(n, 1, generator=generator)  # 1.5 to 4.5 periods in the window
    phase = torch.rand(n, 1, generator=generator)
    amplitude = 0.5 + torch.rand(n, 1, generator=generator)
    t = (torch.arange(LENGTH) / LENGTH * cycles + phase) % 1.0  # position within the period, 0..1
    shapes = torch.stack(
        [
            torch.sin(2 * math.pi * t),
            torch.where(t < 0.5, 1.0, -1.0),
            4 * (t - 0.5).abs() - 1,
            2 * t - 1,
        ]
    )  # [kinds, n, LENGTH]
    clean = shapes[kind, torch.arange(n)] * amplitude
    noisy = clean + 0.6 * torch.randn(n, LENGTH, generator=generator)
    return noisy.unsqueeze(1), kind


class WaveNet(nn.Module):
    """conv (1 -> 8 channels) -> relu -> conv (8 -> 8) -> relu -> mean over 8 windows -> linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 8, 5, padding=2)
        self.head = nn.Linear(8 * 8, len(KINDS))

    def describe(self) -> str:  # optional: what the banner calls this host
        return "wavenet conv8-conv8-pool-linear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(h))
        h = F.adaptive_avg_pool1d(h, 8).flatten(1)
        out: torch.Tensor = self.head(h)
        return out


def factory(ctx: TaskContext) -> Task:
    """The task. The data has a fixed seed of its own, so every run sees the same waveforms; the host's weights
    come from the run's seed (the control room seeds torch before calling this)."""
    host = WaveNet().to(ctx.device)
    g = torch.Generator().manual_seed(2024)
    x_train, y_train = waveforms(2400, g)
    x_test, y_test = waveforms(600, g)
    return Task(
        name="waveforms",
        host=host,
        data=Data(
            train=(x_train.to(ctx.device), y_train.to(ctx.device)),
            test=(x_test.to(ctx.device), y_test.to(ctx.device)),
            val_fraction=0.15,  # no validation split given: 15 % of train is carved, always the same samples
        ),
        loss=cross_entropy,
        metric=accuracy,
        batch_size=64,
        optimizer=adam(3e-3),
        slots=[
            Slot("features", "conv2"),  # a seed reads conv2's input [8, 64] and adds to its output [8, 64]
            Slot("head", "head"),  # a seed reads the pooled features [64] and adds to the class scores [4]
        ],
        description="synthetic, 4 kinds, length 64",
    )
