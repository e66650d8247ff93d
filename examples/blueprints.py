"""A user blueprint, written the way a user writes one: `esper-tui blueprint add examples/blueprints.py:GatedResidual`.

A blueprint is one self-contained module (it may import installed packages such as torch, nothing beside it)
with an nn.Module class that:

- is built as `GatedResidual(in_shape, out_shape)`, the slot's shapes without the batch dimension
  (`(40,)` and `(64,)` for the MNIST-1D host's vector slots);
- maps `[B, *in_shape]` to `[B, *out_shape]` and compiles with `torch.compile(fullgraph=True)`: no prints, no
  `.item()` branches, no files, no I/O in `forward`;
- says which slot kinds it serves in `serves` (`vector`, `sequence`, `image`; `("vector",)` when absent).

The forge validates it in its sandboxed compile worker (built, one forward checked for shape and finite values,
compiled and compared with eager, its step timed); Tamiyo may then germinate it like any built-in blueprint.
Its code runs only in that worker and in the training process of the engine that grafts it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GatedResidual(nn.Module):
    """A projected residual update whose hidden features a learned gate opens one by one."""

    serves = ("vector",)

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], hidden: int = 48) -> None:
        super().__init__()
        (in_features,), (out_features,) = in_shape, out_shape
        self.proj = nn.Linear(in_features, out_features)
        self.value = nn.Linear(out_features, hidden)
        self.gate = nn.Linear(out_features, hidden)
        self.out = nn.Linear(hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        out: torch.Tensor = h + self.out(F.silu(self.value(h)) * torch.sigmoid(self.gate(h)))
        return out
