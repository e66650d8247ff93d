"""Blueprint modules: the nn.Module families the forge compiles and seeds graft into the host.

Every module maps the host's input signal `[batch, in_features]` to a hidden-layer update
`[batch, out_features]`. Their `forward` must compile with `fullgraph=True` (no graph breaks):
the forge compiles `type(module).forward` with the module as an argument, so parameters are graph
inputs and one compiled kernel serves any instance's weights. The artifact records the globals of
this module as the compiled code's scope, so keep forward's free names importable from here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MlpBlock(nn.Module):
    """Two dense layers: the plain baseline growth."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(F.gelu(self.fc1(x)))
        return out


class ResidualBlock(nn.Module):
    """Pre-norm residual MLP over a projection of the input."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 96) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, out_features)
        self.norm = nn.LayerNorm(out_features)
        self.fc1 = nn.Linear(out_features, hidden)
        self.fc2 = nn.Linear(hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        out: torch.Tensor = h + self.fc2(F.relu(self.fc1(self.norm(h))))
        return out


class Conv1dBlock(nn.Module):
    """Convolutions over the input sequence: MNIST-1D rewards translation-aware features."""

    def __init__(self, in_features: int, out_features: int, channels: int = 24, kernel: int = 5) -> None:
        super().__init__()
        pad = kernel // 2
        self.conv1 = nn.Conv1d(1, channels, kernel, padding=pad)
        self.conv2 = nn.Conv1d(channels, channels, kernel, padding=pad, stride=2)
        self.conv3 = nn.Conv1d(channels, channels, kernel, padding=pad, stride=2)
        self.head = nn.Linear(channels * ((in_features + 3) // 4), out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x.unsqueeze(1)))
        h = F.relu(self.conv2(h))
        h = F.relu(self.conv3(h))
        out: torch.Tensor = self.head(h.flatten(1))
        return out


class DepthwiseConvBlock(nn.Module):
    """Depthwise-separable convolution: conv features at a fraction of the parameters."""

    def __init__(self, in_features: int, out_features: int, channels: int = 16, kernel: int = 7) -> None:
        super().__init__()
        pad = kernel // 2
        self.expand = nn.Conv1d(1, channels, 1)
        self.depthwise = nn.Conv1d(channels, channels, kernel, padding=pad, groups=channels)
        self.pointwise = nn.Conv1d(channels, channels, 1)
        self.head = nn.Linear(channels * (in_features // 2), out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(x.unsqueeze(1))
        h = F.relu(self.pointwise(F.relu(self.depthwise(h))))
        out: torch.Tensor = self.head(F.max_pool1d(h, 2).flatten(1))
        return out


class AttentionBlock(nn.Module):
    """Single-head self-attention over patches of the input sequence."""

    def __init__(self, in_features: int, out_features: int, patch: int = 4, dim: int = 32) -> None:
        super().__init__()
        self.patch = patch
        self.tokens = in_features // patch
        self.embed = nn.Linear(patch, dim)
        self.pos = nn.Parameter(torch.zeros(self.tokens, dim))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim * self.tokens, out_features)
        self.scale = dim**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x[:, : self.tokens * self.patch].reshape(x.shape[0], self.tokens, self.patch)) + self.pos
        q, k, v = self.qkv(t).chunk(3, dim=-1)
        attn = torch.softmax(q @ k.transpose(1, 2) * self.scale, dim=-1)
        out: torch.Tensor = self.out((attn @ v + t).flatten(1))
        return out


class LowRankAdapter(nn.Module):
    """LoRA-style low-rank update: tiny, cheap, low risk."""

    def __init__(self, in_features: int, out_features: int, rank: int = 8) -> None:
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.up(self.down(x))
        return out


class GatedBlock(nn.Module):
    """GLU-style gating: the gate learns which features the update may touch."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 64) -> None:
        super().__init__()
        self.value = nn.Linear(in_features, hidden)
        self.gate = nn.Linear(in_features, hidden)
        self.out = nn.Linear(hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(self.value(x) * torch.sigmoid(self.gate(x)))
        return out
