"""Where seeds get their kernels: the seam between the training plane (Kasmina) and the library (Urza).

Training never compiles anything itself. It asks a `KernelSource` what can be germinated in a slot of a
given shape right now (only blueprints that fit it) and loads one kernel per germination, for that shape.
Two implementations exist: `EagerKernelSource` here (compile disabled,
every catalog blueprint runs as plain PyTorch) and the library-backed source that hands out compiled
artifacts. Keeping the seam this narrow lets the training loop start at once and germinate as soon as
the forge has put something in the library.

Kernel calling convention (the compiled kernels demand it, eager ones tolerate it): call
`kernel(module, x.detach())`, i.e. the input never requires grad, and evaluate under `torch.no_grad()`
so a compiled kernel dispatches to its no-grad variant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.kernels.shapes import SlotShape

Kernel = Callable[[nn.Module, torch.Tensor], torch.Tensor]
"""kernel(module, x) -> y. The module is an argument so its parameters are graph inputs of a compiled
kernel: one artifact serves any instance's weights, and gradients flow into those weights."""

EAGER_LABEL = "eager"


@dataclass(frozen=True)
class KernelOffer:
    """One blueprint that can be germinated now, with what the controller needs to rank it."""

    blueprint_id: str
    artifact_id: str | None
    tags: tuple[str, ...]
    risk: float
    label: str  # "inductor:default" for a compiled kernel, "eager" otherwise
    step_ms_compiled: float | None
    step_ms_eager: float | None
    why: str = ""  # why this variant is served, e.g. "eager: 2.06 ms < compiled 2.39 ms per step"
    eager_by_choice: bool = False  # a sound compiled kernel exists, but eager was measured faster
    shape: str = ""  # the slot shape's tag this offer is for ("" before offers were per shape)

    @property
    def compiled(self) -> bool:
        return self.label != EAGER_LABEL

    @property
    def step_ms(self) -> float | None:
        """The step time this kernel will actually run at (compiled if compiled, else eager)."""
        return self.step_ms_compiled if self.compiled else self.step_ms_eager


class KernelUnavailable(Exception):
    """The requested blueprint has no loadable kernel (unknown, quarantined, not compiled yet)."""


@runtime_checkable
class KernelSource(Protocol):
    """What the training loop needs from a kernel provider; `compile_*` feed TRAINING_STARTED (seed 002)."""

    compile_enabled: bool
    backend: str | None
    mode: str | None

    def offers(self, shape: SlotShape) -> list[KernelOffer]:
        """What can be germinated right now in a slot of that shape, best first (never a blueprint that does
        not fit it)."""
        ...

    def load(self, blueprint_id: str, shape: SlotShape) -> tuple[Kernel, KernelOffer]:
        """A ready-to-call kernel for the blueprint in a slot of that shape; raises KernelUnavailable."""
        ...


def eager_kernel(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The trivial kernel: run the module as plain PyTorch."""
    out: torch.Tensor = module(x)
    return out


class EagerKernelSource:
    """Compile disabled: every catalog blueprint is offered and runs eagerly (the banner says EAGER)."""

    compile_enabled: bool = False
    backend: str | None = None
    mode: str | None = None

    def __init__(self, catalog: Catalog | None = None) -> None:
        self._catalog = catalog if catalog is not None else Catalog()

    def _offer(self, blueprint_id: str, shape: SlotShape) -> KernelOffer:
        b = self._catalog.get(blueprint_id)
        return KernelOffer(
            blueprint_id=b.blueprint_id,
            artifact_id=None,
            tags=b.tags,
            risk=b.risk,
            label=EAGER_LABEL,
            step_ms_compiled=None,
            step_ms_eager=None,
            shape=shape.tag,
        )

    def offers(self, shape: SlotShape) -> list[KernelOffer]:
        """The blueprints that fit, in catalog order by compile priority, like the forge would produce them."""
        ranked = sorted(self._catalog.fitting(shape), key=lambda b: (-b.priority, b.blueprint_id))
        return [self._offer(b.blueprint_id, shape) for b in ranked]

    def load(self, blueprint_id: str, shape: SlotShape) -> tuple[Kernel, KernelOffer]:
        if blueprint_id not in self._catalog:
            raise KernelUnavailable(f"{blueprint_id!r} is not in the catalog")
        if (unfit := self._catalog.get(blueprint_id).unfit(shape)) is not None:
            raise KernelUnavailable(unfit)
        return eager_kernel, self._offer(blueprint_id, shape)
