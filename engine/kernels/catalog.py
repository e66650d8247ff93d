"""The blueprint catalog (Karn's templates, stored in Urza): what the forge discovers at start-up.

A blueprint is a trusted static template: an nn.Module factory, a JSON IR describing it, tags for
look-up, a risk score the controller weighs, and a priority the pipeline manager reads. The IR hash
covers the IR *and* the module's source, so editing a blueprint's code invalidates its kernels.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from esper_tui.engine.kernels import blueprints as bp


@dataclass(frozen=True)
class Blueprint:
    blueprint_id: str
    family: str
    description: str
    module: type[nn.Module]
    options: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    risk: float = 0.1  # 0 (safe) .. 1 (likely to destabilise training)
    priority: int = 1  # higher compiles first and may earn a stronger pipeline

    def build(self, in_features: int, out_features: int) -> nn.Module:
        return self.module(in_features, out_features, **self.options)

    def ir(self) -> dict[str, Any]:
        """The JSON IR: a stable, human-readable description of what gets compiled."""
        return {
            "ir_version": 1,
            "blueprint_id": self.blueprint_id,
            "family": self.family,
            "module": f"{self.module.__module__.rsplit('.', 1)[-1]}.{self.module.__qualname__}",
            "options": self.options,
            "io": {"input": ["batch", "in_features"], "output": ["batch", "out_features"]},
            "tags": list(self.tags),
            "risk": self.risk,
        }

    def ir_json(self) -> str:
        return json.dumps(self.ir(), sort_keys=True, separators=(",", ":"))

    def ir_hash(self) -> str:
        h = hashlib.sha256(self.ir_json().encode())
        h.update(module_source(self.module))
        return h.hexdigest()


_SOURCES: dict[type[nn.Module], bytes] = {}


def module_source(module: type[nn.Module]) -> bytes:
    """A blueprint module's source, read once per process: it is the code this process imported, whatever the
    file says later, and inspect.getsource costs 1-2 ms a call (it was a tenth of every kernel load)."""
    source = _SOURCES.get(module)
    if source is None:
        source = _SOURCES[module] = inspect.getsource(module).encode()
    return source


CATALOG: tuple[Blueprint, ...] = (
    Blueprint(
        "mlp_block", "mlp", "two dense layers with GELU", bp.MlpBlock, tags=("dense", "baseline"), risk=0.1, priority=2
    ),
    Blueprint(
        "residual_block",
        "residual",
        "pre-norm residual MLP",
        bp.ResidualBlock,
        tags=("dense", "residual", "norm"),
        risk=0.2,
        priority=2,
    ),
    Blueprint(
        "conv1d_block",
        "conv1d",
        "three 1-D convolutions over the sequence",
        bp.Conv1dBlock,
        tags=("conv", "sequence"),
        risk=0.3,
        priority=3,
    ),
    Blueprint(
        "attention_block",
        "attention",
        "single-head self-attention over patches",
        bp.AttentionBlock,
        tags=("attention", "sequence"),
        risk=0.5,
        priority=1,
    ),
    Blueprint(
        "lowrank_adapter",
        "adapter",
        "rank-8 low-rank update (LoRA style)",
        bp.LowRankAdapter,
        tags=("dense", "adapter", "cheap"),
        risk=0.05,
        priority=1,
    ),
    Blueprint(
        "gated_block",
        "gating",
        "GLU-style gated dense update",
        bp.GatedBlock,
        tags=("dense", "gating"),
        risk=0.2,
        priority=1,
    ),
    Blueprint(
        "depthwise_conv",
        "depthwise",
        "depthwise-separable convolution",
        bp.DepthwiseConvBlock,
        tags=("conv", "sequence", "cheap"),
        risk=0.25,
        priority=2,
    ),
)


class Catalog:
    """Look-up over a set of blueprints (the built-in CATALOG unless a test passes its own)."""

    def __init__(self, blueprints: tuple[Blueprint, ...] = CATALOG) -> None:
        ids = [b.blueprint_id for b in blueprints]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate blueprint ids in catalog: {ids}")
        self._by_id = {b.blueprint_id: b for b in blueprints}

    def __iter__(self) -> Iterator[Blueprint]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, blueprint_id: object) -> bool:
        return blueprint_id in self._by_id

    def get(self, blueprint_id: str) -> Blueprint:
        try:
            return self._by_id[blueprint_id]
        except KeyError:
            raise KeyError(f"unknown blueprint {blueprint_id!r}; known: {', '.join(self._by_id)}") from None

    def ids(self) -> list[str]:
        return list(self._by_id)

    def by_tag(self, tag: str) -> list[Blueprint]:
        return [b for b in self if tag in b.tags]

    def subset(self, ids: list[str]) -> Catalog:
        return Catalog(tuple(self.get(i) for i in ids))
