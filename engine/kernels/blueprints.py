"""Blueprint modules: the nn.Module families the forge compiles and seeds graft into the host.

Every module is built as `Module(in_shape, out_shape, **options)` for one slot shape (`shapes.SlotShape`
without the batch dimension) and maps `[batch, *in_shape]` to `[batch, *out_shape]`. Families that serve
several kinds branch in `__init__` on the kind, never on data: a vector `[F]` is read as a 1-channel
sequence by the convolutional and attention families (the MNIST-1D modules, unchanged), a sequence is
`[C, L]`, an image `[C, H, W]`. A family that cannot serve some shapes of its kind says why in a static
`unfit(in_shape, out_shape, **options)`; sequence and image blocks pool down to the output's length or size,
never up.

Their `forward` must compile with `fullgraph=True` (no graph breaks): the forge compiles
`type(module).forward` with the module as an argument, so parameters are graph inputs and one compiled
kernel serves any instance's weights. The artifact records the globals of this module as the compiled code's
scope, so keep forward's free names importable from here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Shape = tuple[int, ...]


def _vector(shape: Shape) -> int:
    """The feature count of a vector shape `[F]`."""
    (features,) = shape
    return features


def pooled_down(in_shape: Shape, out_shape: Shape, **_options: Any) -> str | None:
    """Sequence and image blocks reach the output's length or size by adaptive pooling, which only shrinks."""
    if len(in_shape) == 1:
        return None
    if any(o > i for i, o in zip(in_shape[1:], out_shape[1:], strict=True)):
        return f"output {list(out_shape[1:])} larger than input {list(in_shape[1:])}: this block only pools down"
    return None


def fit_to(h: torch.Tensor, size: Shape) -> torch.Tensor:
    """Pool `[B, C, *spatial]` down to `size` (a no-op when it already has it); the sizes are static."""
    if tuple(h.shape[2:]) == size:
        return h
    if len(size) == 1:
        return F.adaptive_avg_pool1d(h, size[0])
    height, width = size
    return F.adaptive_avg_pool2d(h, (height, width))


class MlpBlock(nn.Module):
    """Two dense layers: the plain baseline growth."""

    def __init__(self, in_shape: Shape, out_shape: Shape, hidden: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(_vector(in_shape), hidden)
        self.fc2 = nn.Linear(hidden, _vector(out_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(F.gelu(self.fc1(x)))
        return out


class ResidualBlock(nn.Module):
    """Pre-norm residual MLP over a projection of the input."""

    def __init__(self, in_shape: Shape, out_shape: Shape, hidden: int = 96) -> None:
        super().__init__()
        out_features = _vector(out_shape)
        self.proj = nn.Linear(_vector(in_shape), out_features)
        self.norm = nn.LayerNorm(out_features)
        self.fc1 = nn.Linear(out_features, hidden)
        self.fc2 = nn.Linear(hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        out: torch.Tensor = h + self.fc2(F.relu(self.fc1(self.norm(h))))
        return out


class Conv1dBlock(nn.Module):
    """Convolutions over the input sequence: MNIST-1D rewards translation-aware features.

    A vector is a 1-channel sequence, strided down and read by a dense head; a sequence keeps its length
    through the convolutions and a 1x1 head gives the output channels."""

    unfit = staticmethod(pooled_down)

    def __init__(self, in_shape: Shape, out_shape: Shape, channels: int = 24, kernel: int = 5) -> None:
        super().__init__()
        pad = kernel // 2
        self.vector = len(in_shape) == 1
        self.size = out_shape[1:]
        stride = 2 if self.vector else 1
        self.conv1 = nn.Conv1d(1 if self.vector else in_shape[0], channels, kernel, padding=pad)
        self.conv2 = nn.Conv1d(channels, channels, kernel, padding=pad, stride=stride)
        self.conv3 = nn.Conv1d(channels, channels, kernel, padding=pad, stride=stride)
        self.head: nn.Module = (
            nn.Linear(channels * ((in_shape[0] + 3) // 4), out_shape[0])
            if self.vector
            else nn.Conv1d(channels, out_shape[0], 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x.unsqueeze(1) if self.vector else x))
        h = F.relu(self.conv2(h))
        h = F.relu(self.conv3(h))
        out: torch.Tensor = self.head(h.flatten(1)) if self.vector else fit_to(self.head(h), self.size)
        return out


class DepthwiseConvBlock(nn.Module):
    """Depthwise-separable convolution: conv features at a fraction of the parameters."""

    def __init__(self, in_shape: Shape, out_shape: Shape, channels: int = 16, kernel: int = 7) -> None:
        super().__init__()
        pad = kernel // 2
        self.vector = len(in_shape) == 1
        self.size = out_shape[1:]
        self.expand = nn.Conv1d(1 if self.vector else in_shape[0], channels, 1)
        self.depthwise = nn.Conv1d(channels, channels, kernel, padding=pad, groups=channels)
        self.pointwise = nn.Conv1d(channels, channels, 1)
        self.head: nn.Module = (
            nn.Linear(channels * (in_shape[0] // 2), out_shape[0])
            if self.vector
            else nn.Conv1d(channels, out_shape[0], 1)
        )

    @staticmethod
    def unfit(in_shape: Shape, out_shape: Shape, **options: Any) -> str | None:
        if len(in_shape) == 1 and in_shape[0] < 2:
            return "a vector slot needs at least 2 features (the block pools pairs)"
        return pooled_down(in_shape, out_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(x.unsqueeze(1) if self.vector else x)
        h = F.relu(self.pointwise(F.relu(self.depthwise(h))))
        if self.vector:
            out: torch.Tensor = self.head(F.max_pool1d(h, 2).flatten(1))
        else:
            out = fit_to(self.head(h), self.size)
        return out


class AttentionBlock(nn.Module):
    """Single-head self-attention: over patches of a vector, or over the positions of a sequence."""

    def __init__(self, in_shape: Shape, out_shape: Shape, patch: int = 4, dim: int = 32) -> None:
        super().__init__()
        self.vector = len(in_shape) == 1
        self.size = out_shape[1:]
        self.patch = patch
        self.tokens = in_shape[0] // patch if self.vector else in_shape[1]
        self.embed = nn.Linear(patch if self.vector else in_shape[0], dim)
        self.pos = nn.Parameter(torch.zeros(self.tokens, dim))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim * self.tokens, out_shape[0]) if self.vector else nn.Linear(dim, out_shape[0])
        self.scale = dim**-0.5

    @staticmethod
    def unfit(in_shape: Shape, out_shape: Shape, patch: int = 4, **options: Any) -> str | None:
        if len(in_shape) == 1 and in_shape[0] < patch:
            return f"a vector slot needs at least one patch of {patch} features"
        return pooled_down(in_shape, out_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.vector:
            t = self.embed(x[:, : self.tokens * self.patch].reshape(x.shape[0], self.tokens, self.patch))
        else:
            t = self.embed(x.transpose(1, 2))
        t = t + self.pos
        q, k, v = self.qkv(t).chunk(3, dim=-1)
        attn = torch.softmax(q @ k.transpose(1, 2) * self.scale, dim=-1)
        if self.vector:
            out: torch.Tensor = self.out((attn @ v + t).flatten(1))
        else:
            out = fit_to(self.out(attn @ v + t).transpose(1, 2), self.size)
        return out


class TemporalConvBlock(nn.Module):
    """Dilated causal convolutions with residuals (a small TCN): long context over a sequence, cheaply."""

    unfit = staticmethod(pooled_down)

    def __init__(self, in_shape: Shape, out_shape: Shape, channels: int = 32, kernel: int = 3, levels: int = 3) -> None:
        super().__init__()
        self.size = out_shape[1:]
        self.pads = [(kernel - 1) * 2**i for i in range(levels)]
        self.inp = nn.Conv1d(in_shape[0], channels, 1)
        self.layers = nn.ModuleList(nn.Conv1d(channels, channels, kernel, dilation=2**i) for i in range(levels))
        self.head = nn.Conv1d(channels, out_shape[0], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for pad, layer in zip(self.pads, self.layers, strict=True):
            h = h + F.relu(layer(F.pad(h, (pad, 0))))
        out: torch.Tensor = fit_to(self.head(h), self.size)
        return out


class Conv2dBlock(nn.Module):
    """Two 3x3 convolutions over a feature map: the plain image growth."""

    unfit = staticmethod(pooled_down)

    def __init__(self, in_shape: Shape, out_shape: Shape, channels: int = 32, kernel: int = 3) -> None:
        super().__init__()
        self.size = out_shape[1:]
        self.conv1 = nn.Conv2d(in_shape[0], channels, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv2d(channels, out_shape[0], kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = fit_to(self.conv2(F.gelu(self.conv1(x))), self.size)
        return out


class SeparableConvBlock(nn.Module):
    """Depthwise-separable 2-D convolution: a per-channel spatial filter, then a 1x1 mix (MobileNet style)."""

    unfit = staticmethod(pooled_down)

    def __init__(self, in_shape: Shape, out_shape: Shape, kernel: int = 3, multiplier: int = 2) -> None:
        super().__init__()
        self.size = out_shape[1:]
        width = in_shape[0] * multiplier
        self.depthwise = nn.Conv2d(in_shape[0], width, kernel, padding=kernel // 2, groups=in_shape[0])
        self.pointwise = nn.Conv2d(width, out_shape[0], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = fit_to(self.pointwise(F.relu(self.depthwise(x))), self.size)
        return out


class ChannelAttentionBlock(nn.Module):
    """Squeeze-and-excitation: a 1x1 projection whose channels are re-weighted by a gate read from the whole map."""

    unfit = staticmethod(pooled_down)

    def __init__(self, in_shape: Shape, out_shape: Shape, reduction: int = 4) -> None:
        super().__init__()
        self.size = out_shape[1:]
        squeezed = max(1, out_shape[0] // reduction)
        self.proj = nn.Conv2d(in_shape[0], out_shape[0], 1)
        self.squeeze = nn.Linear(out_shape[0], squeezed)
        self.excite = nn.Linear(squeezed, out_shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        gate = torch.sigmoid(self.excite(F.relu(self.squeeze(h.mean(dim=(2, 3))))))
        out: torch.Tensor = fit_to(h * gate[:, :, None, None], self.size)
        return out


class LowRankAdapter(nn.Module):
    """LoRA-style low-rank update: tiny, cheap, low risk."""

    def __init__(self, in_shape: Shape, out_shape: Shape, rank: int = 8) -> None:
        super().__init__()
        self.down = nn.Linear(_vector(in_shape), rank, bias=False)
        self.up = nn.Linear(rank, _vector(out_shape), bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.up(self.down(x))
        return out


class GatedBlock(nn.Module):
    """GLU-style gating: the gate learns which features the update may touch."""

    def __init__(self, in_shape: Shape, out_shape: Shape, hidden: int = 64) -> None:
        super().__init__()
        self.value = nn.Linear(_vector(in_shape), hidden)
        self.gate = nn.Linear(_vector(in_shape), hidden)
        self.out = nn.Linear(hidden, _vector(out_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(self.value(x) * torch.sigmoid(self.gate(x)))
        return out
