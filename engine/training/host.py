"""Tolaria's host: a small MLP with Kasmina seed slots as side branches from its input.

    x -> L1 -> (+ seeds of layer 1) -> relu -> L2 -> (+ seeds of layer 2) -> relu -> head -> logits

Slot i ("s0", "s1", ...) reads `x.detach()` and adds `alpha * seed(x)` to the pre-activation of hidden
layer (i % 2) + 1. Reading the *input* keeps every seed's kernel shape `[B, in_features] -> [B, hidden]`,
which is what the forge compiles, whatever the slot.

Isolation during TRAINING (`forward_train`). A TRAINING seed learns through an auxiliary "shadow" pass:
the host's own pre-activation at the seed's layer, *detached*, plus the seed's output at alpha = 1,
continued through the downstream layers with *detached* weights (and the other seeds' contributions
detached too). The auxiliary cross-entropy therefore trains the seed to fix the host's current residual
error, while no gradient from it can reach any host parameter: the host's gradients are bit-for-bit the
gradients of the host loss alone, i.e. identical to a host without the seed. The live forward never
sees the seed until BLENDING.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from esper_tui.engine.training.seeds import SeedSlot, SlotPolicy

DEPTH = 2  # hidden layers a slot can target


class HostNetwork(nn.Module):
    def __init__(
        self,
        in_features: int = 40,
        hidden: int = 64,
        classes: int = 10,
        slots: int = 2,
        policy: SlotPolicy | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.hidden, self.classes = in_features, hidden, classes
        self.l1 = nn.Linear(in_features, hidden)
        self.l2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)
        self.slots = nn.ModuleList(SeedSlot(f"s{i}", (i % DEPTH) + 1, policy) for i in range(slots))

    def describe(self) -> str:
        return f"mlp {self.in_features}-{self.hidden}-{self.hidden}-{self.classes}, {len(self.slots)} slots"

    def seed_slots(self) -> list[SeedSlot]:
        return cast(list[SeedSlot], list(self.slots))

    def slot(self, name: str) -> SeedSlot:
        for s in self.seed_slots():
            if s.name == name:
                return s
        raise KeyError(f"no slot {name!r}")

    def host_parameters(self) -> list[nn.Parameter]:
        """The host's own weights (seed parameters get their own optimizer groups)."""
        return [*self.l1.parameters(), *self.l2.parameters(), *self.head.parameters()]

    def _hidden(self) -> tuple[nn.Linear, nn.Linear]:
        return self.l1, self.l2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The live network: what is evaluated, and what the host trains through."""
        return self.forward_train(x, shadow=False)[0]

    def forward_train(self, x: torch.Tensor, shadow: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Live logits, plus the shadow logits of every TRAINING seed (keyed by slot name)."""
        xd = x.detach()
        extra: list[torch.Tensor | None] = [None] * DEPTH  # seed contributions per hidden layer
        pending: list[tuple[SeedSlot, torch.Tensor]] = []
        for slot in self.seed_slots():
            if slot.contributes:
                y = slot.alpha * slot(xd)
                i = slot.layer - 1
                extra[i] = y if extra[i] is None else extra[i] + y
            elif shadow and slot.shadow_trains:
                pending.append((slot, slot(xd)))

        pre: list[torch.Tensor] = []
        h = x
        for i, lin in enumerate(self._hidden()):
            p = lin(h)
            e = extra[i]
            p = p if e is None else p + e
            pre.append(p)
            h = F.relu(p)
        logits = self.head(h)

        aux = {slot.name: self._shadow_tail(pre, extra, slot.layer, y) for slot, y in pending}
        return logits, aux

    def _shadow_tail(
        self, pre: list[torch.Tensor], extra: list[torch.Tensor | None], layer: int, seed_out: torch.Tensor
    ) -> torch.Tensor:
        """The host from `layer` on, with everything of the host detached: only `seed_out` carries grad."""
        h = F.relu(pre[layer - 1].detach() + seed_out)
        for i in range(layer, DEPTH):
            lin = self._hidden()[i]
            p = F.linear(h, lin.weight.detach(), lin.bias.detach())
            e = extra[i]
            h = F.relu(p if e is None else p + e.detach())
        return F.linear(h, self.head.weight.detach(), self.head.bias.detach())
