"""Slot shapes: what a seed slot reads and writes, without the batch dimension.

The forge compiles one kernel per blueprint and slot shape, the library keys kernels by it, and Tamiyo offers a
blueprint only to a slot whose shape it serves. A shape's kind follows from its rank: a vector `[F]`, a sequence
`[C, L]` or an image `[C, H, W]`; a slot reads and writes tensors of the same kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SlotKind = Literal["vector", "sequence", "image"]
KINDS: dict[int, SlotKind] = {1: "vector", 2: "sequence", 3: "image"}
MAX_DIM = 1 << 20  # one dimension of a slot: beyond this a seed's activations alone would not fit in memory


class ShapeError(ValueError):
    """A slot shape no blueprint can serve: wrong rank, mixed kinds, or a dimension out of range."""


@dataclass(frozen=True, order=True)
class SlotShape:
    """`[B, *in_shape] -> [B, *out_shape]`."""

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        for name, dims in (("input", self.in_shape), ("output", self.out_shape)):
            if len(dims) not in KINDS:
                raise ShapeError(f"slot {name} {list(dims)}: a slot reads and writes [F], [C, L] or [C, H, W]")
            if not all(isinstance(d, int) and 1 <= d <= MAX_DIM for d in dims):
                raise ShapeError(f"slot {name} {list(dims)}: every dimension must be 1-{MAX_DIM}")
        if len(self.in_shape) != len(self.out_shape):
            raise ShapeError(f"slot {self.tag}: input and output must be of one kind (vector, sequence or image)")

    @property
    def kind(self) -> SlotKind:
        return KINDS[len(self.in_shape)]

    @property
    def tag(self) -> str:
        """A stable, path-safe name: `40-64` for a vector slot, `8x8x8-16x8x8` for an image slot."""
        return "-".join("x".join(str(d) for d in dims) for dims in (self.in_shape, self.out_shape))

    @classmethod
    def parse(cls, tag: str) -> SlotShape:
        """The shape a `tag` names; ShapeError for anything else."""
        try:
            left, right = tag.split("-")
            return cls(tuple(int(d) for d in left.split("x")), tuple(int(d) for d in right.split("x")))
        except ValueError as exc:
            if isinstance(exc, ShapeError):
                raise
            raise ShapeError(f"not a slot shape: {tag!r} (expected e.g. 40-64 or 8x8x8-16x8x8)") from None

    def __str__(self) -> str:
        return f"{list(self.in_shape)} -> {list(self.out_shape)}"


def vector(in_features: int, out_features: int) -> SlotShape:
    """The shape of a slot that maps `[B, in_features]` to `[B, out_features]` (the MNIST-1D host's slots)."""
    return SlotShape((in_features,), (out_features,))
