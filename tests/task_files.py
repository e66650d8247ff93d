"""A task reached as `package.module:factory` (tests/test_tasks.py): the form a user's installed package takes."""

from __future__ import annotations

import torch
from torch import nn

from esper_tui.task import Data, Slot, Task, TaskContext, accuracy, adam, cross_entropy


def factory(ctx: TaskContext) -> Task:
    x, y = torch.randn(40, 4), torch.randint(0, 2, (40,))
    return Task(
        name="from-module",
        host=nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).to(ctx.device),
        data=Data(train=(x, y), test=(x[:4], y[:4])),
        loss=cross_entropy,
        metric=accuracy,
        batch_size=8,
        optimizer=adam(),
        slots=[Slot("s0", "2")],
    )
