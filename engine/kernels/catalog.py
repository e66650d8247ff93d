"""The blueprint catalog (Karn's templates, stored in Urza): what the forge discovers at start-up.

A blueprint is a trusted static template: an nn.Module factory built per slot shape, the slot kinds it
serves, a JSON IR describing it, tags for look-up, a risk score the controller weighs, and a priority the
pipeline manager reads. The IR hash covers the IR *and* the module's source, so editing a blueprint's code
invalidates its kernels. The hash does not cover a shape: the library keys kernels by shape beside it.

A user blueprint (`esper-tui blueprint add`) is a Blueprint whose `source` is the module text signed in the
library. In the engine its `module` is None: the engine knows its name, hash, tags and risk, never its class.
Only the sandboxed compile worker and the training process load the class (kernels/usercode.py).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from esper_tui.engine.kernels import blueprints as bp
from esper_tui.engine.kernels.shapes import SlotKind, SlotShape

IO_DIMS: dict[SlotKind, list[str]] = {
    "vector": ["batch", "features"],
    "sequence": ["batch", "channels", "length"],
    "image": ["batch", "channels", "height", "width"],
}


class BlueprintUnloadable(ValueError):
    """A blueprint whose class this process cannot have: a user blueprint's code failed to load here."""


class UserCodeNotLoaded(BlueprintUnloadable):
    """A user blueprint's class was asked for in a process that never loads user code (the engine)."""


USER_FAMILY = "user"


@dataclass(frozen=True)
class Blueprint:
    blueprint_id: str
    family: str
    description: str
    module: type[nn.Module] | None  # None: a user blueprint whose class this process has not loaded
    serves: tuple[SlotKind, ...] = ("vector",)
    options: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    risk: float = 0.1  # 0 (safe) .. 1 (likely to destabilise training)
    priority: int = 1  # higher compiles first and may earn a stronger pipeline
    source: str = ""  # a user blueprint's module source, as signed in the library; "" for the built-in catalog
    class_name: str = ""  # the user blueprint's class in `source`

    @property
    def is_user(self) -> bool:
        return bool(self.source)

    def module_class(self) -> type[nn.Module]:
        """The nn.Module class; UserCodeNotLoaded where a user blueprint's code was never loaded (the engine)."""
        if self.module is None:
            raise UserCodeNotLoaded(
                f"{self.blueprint_id}: a user blueprint's code runs only in the compile worker and the training process"
            )
        return self.module

    def with_module(self, module: type[nn.Module]) -> Blueprint:
        """This user blueprint with its class, once loaded from its source where user code may run."""
        return replace(self, module=module)

    def unfit(self, shape: SlotShape) -> str | None:
        """Why this blueprint cannot serve a slot of that shape (a kind it does not serve, or a limit of its
        family, which the module class states in a static `unfit`), or None when it fits."""
        if shape.kind not in self.serves:
            return f"{self.blueprint_id} serves {', '.join(self.serves)} slots, not {shape.kind} ({shape})"
        family_limit = getattr(self.module, "unfit", None)  # a user blueprint's is checked where it loads
        reason: str | None = family_limit(shape.in_shape, shape.out_shape, **self.options) if family_limit else None
        return None if reason is None else f"{self.blueprint_id} cannot serve {shape}: {reason}"

    def fits(self, shape: SlotShape) -> bool:
        return self.unfit(shape) is None

    def build(self, shape: SlotShape) -> nn.Module:
        """The module for one slot shape; ValueError when the blueprint does not fit it."""
        if (reason := self.unfit(shape)) is not None:
            raise ValueError(reason)
        return self.module_class()(shape.in_shape, shape.out_shape, **self.options)

    def ir(self) -> dict[str, Any]:
        """The JSON IR: a stable, human-readable description of what gets compiled."""
        if self.is_user:
            module = f"{USER_FAMILY}.{self.class_name}"
        else:
            cls = self.module_class()
            module = f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__qualname__}"
        return {
            "ir_version": 2,
            "blueprint_id": self.blueprint_id,
            "family": self.family,
            "module": module,
            "options": self.options,
            "io": {"serves": list(self.serves), **{kind: IO_DIMS[kind] for kind in self.serves}},
            "tags": list(self.tags),
            "risk": self.risk,
        }

    def ir_json(self) -> str:
        return json.dumps(self.ir(), sort_keys=True, separators=(",", ":"))

    def ir_hash(self) -> str:
        h = hashlib.sha256(self.ir_json().encode())
        h.update(self.source.encode() if self.is_user else module_source(self.module_class()))
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
        serves=("vector", "sequence"),
        tags=("conv", "sequence"),
        risk=0.3,
        priority=3,
    ),
    Blueprint(
        "attention_block",
        "attention",
        "single-head self-attention over patches",
        bp.AttentionBlock,
        serves=("vector", "sequence"),
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
        serves=("vector", "sequence"),
        tags=("conv", "sequence", "cheap"),
        risk=0.25,
        priority=2,
    ),
    Blueprint(
        "temporal_conv",
        "temporal",
        "dilated causal convolutions with residuals (TCN)",
        bp.TemporalConvBlock,
        serves=("sequence",),
        tags=("conv", "sequence", "causal"),
        risk=0.3,
        priority=2,
    ),
    Blueprint(
        "conv2d_block",
        "conv2d",
        "two 3x3 convolutions over the feature map",
        bp.Conv2dBlock,
        serves=("image",),
        tags=("conv", "image", "baseline"),
        risk=0.2,
        priority=3,
    ),
    Blueprint(
        "separable_conv",
        "separable",
        "depthwise-separable 2-D convolution",
        bp.SeparableConvBlock,
        serves=("image",),
        tags=("conv", "image", "cheap"),
        risk=0.15,
        priority=2,
    ),
    Blueprint(
        "channel_attention",
        "channel_attention",
        "squeeze-and-excitation channel gate over a 1x1 projection",
        bp.ChannelAttentionBlock,
        serves=("image",),
        tags=("attention", "image", "cheap"),
        risk=0.2,
        priority=1,
    ),
)

BUILTIN_IDS = frozenset(b.blueprint_id for b in CATALOG)


class Catalog:
    """Look-up over a set of blueprints (the built-in CATALOG unless a test passes its own)."""

    def __init__(
        self, blueprints: tuple[Blueprint, ...] = CATALOG, *, loader: Callable[[Blueprint], Blueprint] | None = None
    ) -> None:
        ids = [b.blueprint_id for b in blueprints]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate blueprint ids in catalog: {ids}")
        self._by_id = {b.blueprint_id: b for b in blueprints}
        self._loader = loader  # loads a user blueprint's class: given only where user code may run (the trainer)

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

    def loaded(self, blueprint_id: str) -> Blueprint:
        """The blueprint with its class, loading a user blueprint's code on first use through the catalog's
        loader. UserCodeNotLoaded in a catalog without one (the engine's), BlueprintUnloadable when it fails."""
        bp = self.get(blueprint_id)
        if bp.module is not None:
            return bp
        if self._loader is None:
            return bp.with_module(bp.module_class())  # raises UserCodeNotLoaded: no class, and no way to load it
        try:
            bp = self._loader(bp)
        except Exception as exc:
            raise BlueprintUnloadable(f"{blueprint_id}: {exc}") from None
        self._by_id[blueprint_id] = bp
        return bp

    def by_tag(self, tag: str) -> list[Blueprint]:
        return [b for b in self if tag in b.tags]

    def fits(self, blueprint_id: str, shape: SlotShape) -> bool:
        """Whether a known blueprint serves a slot of that shape (False for an unknown id)."""
        return blueprint_id in self._by_id and self._by_id[blueprint_id].fits(shape)

    def fitting(self, shape: SlotShape) -> list[Blueprint]:
        """The blueprints that serve a slot of that shape, in catalog order."""
        return [b for b in self if b.fits(shape)]

    def subset(self, ids: list[str]) -> Catalog:
        return Catalog(tuple(self.get(i) for i in ids), loader=self._loader)

    def add(self, blueprint: Blueprint) -> bool:
        """Add a user blueprint, or replace one of the same id (its source changed). A built-in id is never
        replaced (`blueprint add` refuses those names; a record claiming one is ignored). Returns whether the
        catalog changed."""
        known = self._by_id.get(blueprint.blueprint_id)
        if known is not None and (not known.is_user or known == blueprint):
            return False
        self._by_id[blueprint.blueprint_id] = blueprint
        return True

    def remove(self, blueprint_id: str) -> None:
        """Forget a user blueprint (removed from the library, or refused); built-ins stay."""
        known = self._by_id.get(blueprint_id)
        if known is not None and known.is_user:
            del self._by_id[blueprint_id]
