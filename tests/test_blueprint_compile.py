"""Every family an image or sequence slot needs compiles with fullgraph=True for a slot shape, keeps the output
shape and matches eager (real inductor compiles, tiny shapes); compile_kernel refuses a wrong shape or NaNs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.kernels.compiled import FN_FILES, KERNEL_DIR, WEIGHTS_FILE, KernelError, compile_kernel
from esper_tui.engine.kernels.pipelines import settings_for
from esper_tui.engine.kernels.shapes import SlotShape
from esper_tui.engine.vocabulary import Strategy

pytestmark = pytest.mark.compile


@pytest.mark.parametrize(
    ("blueprint_id", "tag"),
    [
        ("conv2d_block", "8x8x8-16x8x8"),
        ("separable_conv", "3x8x8-4x4x4"),
        ("channel_attention", "8x8x8-16x8x8"),
        ("temporal_conv", "4x16-6x8"),
        ("conv1d_block", "4x16-6x8"),  # a vector family that serves sequences too
    ],
)
def test_family_compiles_for_its_shape_and_matches_eager(blueprint_id: str, tag: str, tmp_path: Path) -> None:
    shape = SlotShape.parse(tag)
    out = compile_kernel(Catalog().get(blueprint_id), shape, settings_for(Strategy.STANDARD), tmp_path / "k")
    assert out.max_abs_error < 1e-3  # compile_kernel also checked both outputs' shape and finiteness
    assert {FN_FILES[True], FN_FILES[False], WEIGHTS_FILE} <= set(out.files)
    assert any(f.startswith(KERNEL_DIR + "/") and f.endswith(".so") for f in out.files), out.files
    assert out.step_ms_compiled > 0 and out.step_ms_eager > 0


class WrongShape(nn.Module):
    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.fc = nn.Linear(in_shape[0], out_shape[0] + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(x)
        return out


class NotFinite(WrongShape):
    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        super().__init__(in_shape, (out_shape[0] - 1,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(x) / 0.0
        return out


@pytest.mark.parametrize(
    ("module", "error"), [(WrongShape, r"output \[5\], the slot needs \[8\] -> \[4\]"), (NotFinite, "not finite")]
)
def test_compile_kernel_refuses_a_wrong_output_shape_or_non_finite_output(module, error, tmp_path: Path) -> None:
    bp = dataclasses.replace(Catalog().get("mlp_block"), blueprint_id="bad", module=module)
    with pytest.raises(KernelError, match=error):
        compile_kernel(bp, SlotShape((8,), (4,)), settings_for(Strategy.EMERGENCY), tmp_path / "k")
