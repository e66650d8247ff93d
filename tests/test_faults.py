"""Fault injection specs and the instability detector (the triggers of Tolaria's rollback)."""

from __future__ import annotations

import math

import pytest

from esper_tui.engine.contracts import SeedHealth
from esper_tui.engine.training.faults import (
    Fault,
    FaultKind,
    FaultPlan,
    FaultSpecError,
    InstabilityDetector,
    parse_fault,
)
from esper_tui.engine.vocabulary import SeedStage


def test_specs_parse_and_several_are_allowed() -> None:
    plan = FaultPlan.parse(["nan-loss@3", "seed-explode@5", " kernel-crash@12 "])
    assert plan.faults == (
        Fault(FaultKind.NAN_LOSS, 3),
        Fault(FaultKind.SEED_EXPLODE, 5),
        Fault(FaultKind.KERNEL_CRASH, 12),
    )
    assert str(plan.faults[1]) == "seed-explode@5"
    assert plan and not FaultPlan.parse([])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nan-loss", "expected KIND@EPOCH"),
        ("nan@3", "unknown kind 'nan'"),
        ("nan-loss@0", "whole number >= 1"),
        ("nan-loss@x", "whole number >= 1"),
        ("nan-loss@-2", "whole number >= 1"),
        ("", "expected KIND@EPOCH"),
    ],
)
def test_bad_specs_are_one_clear_line(spec: str, message: str) -> None:
    with pytest.raises(FaultSpecError, match=message) as info:
        parse_fault(spec)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"fault {spec!r}: ")


def test_a_fault_fires_once_and_waits_until_it_can() -> None:
    plan = FaultPlan.parse(["nan-loss@3", "seed-explode@4"])
    assert plan.due(2) == []
    assert plan.due(3) == [Fault(FaultKind.NAN_LOSS, 3)]
    plan.fire(Fault(FaultKind.NAN_LOSS, 3))
    assert plan.due(3) == []  # a rollback replaying epoch 3 does not trip it again
    assert plan.due(6) == [Fault(FaultKind.SEED_EXPLODE, 4)]  # not fired at 4 (no seed yet): still due


def seed(exploding: bool = False, norm: float = 1.0) -> SeedHealth:
    return SeedHealth(
        slot="s1",
        stage=SeedStage.TRAINING,
        blueprint_id="mlp_block",
        alpha=0.0,
        grad_norm=norm,
        gain=None,
        epochs_in_stage=1,
        kernel="eager",
        vanishing=False,
        exploding=exploding,
    )


def test_non_finite_loss_and_exploding_seeds_are_instability() -> None:
    d = InstabilityDetector(spike_factor=3.0, window=5)
    assert d.check(math.nan) == "non-finite training loss (nan)"
    assert d.check(math.inf) == "non-finite training loss (inf)"
    assert d.check(1.0, [seed()]) is None
    reason = d.check(1.0, [seed(exploding=True, norm=math.inf)])
    assert reason is not None and reason.startswith("seed s1 (mlp_block) gradients exploding")


def test_a_spike_over_the_moving_median() -> None:
    d = InstabilityDetector(spike_factor=3.0, window=4)
    assert d.check(2.0) is None
    assert d.check(9.0) is None  # too little history to judge: no median yet
    assert d.check(1.0) is None
    # history 2, 9, 1: median 2; 5.9 is under 3x, 6.5 over
    assert d.check(5.9) is None
    assert list(d.losses) == [2.0, 9.0, 1.0, 5.9]
    for loss in (0.5, 0.5, 0.5):  # the window slides: only the last 4 count
        assert d.check(loss) is None
    reason = d.check(2.5)  # median of 5.9, 0.5, 0.5, 0.5 is 0.5
    assert reason is not None and "5.0x its moving median 0.5 (limit 3x)" in reason
    assert list(d.losses) == [5.9, 0.5, 0.5, 0.5]  # a spike never joins the window


def test_a_memorising_host_is_not_a_spike() -> None:
    """Loss ~1e-8 doubling on noise is no instability: below MIN_SPIKE_LOSS ratios do not count."""
    d = InstabilityDetector(spike_factor=3.0, window=5)
    for loss in (1e-8, 1e-8, 1e-8, 5e-8):
        assert d.check(loss) is None
