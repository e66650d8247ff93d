"""Kasmina seed slots and the host they graft into: lifecycle, alpha ramps, isolation, health."""

from __future__ import annotations

import itertools

import pytest
import torch

from esper_tui.engine.kernels.blueprints import Conv1dBlock, MlpBlock
from esper_tui.engine.kernels.shapes import vector
from esper_tui.engine.training.host import SlottedHost, probe_slots
from esper_tui.engine.training.kernel_source import eager_kernel
from esper_tui.engine.training.seeds import BlendSchedule, IllegalTransition, SeedSlot, SlotPolicy, blend_alpha
from esper_tui.engine.training.tasks import mnist1d
from esper_tui.engine.training.tasks.mnist1d import Mnist1dMLP
from esper_tui.engine.vocabulary import SeedStage

S = SeedStage
HIDDEN = 16
SHAPE = vector(40, HIDDEN)


def germinated(slot: SeedSlot, accuracy: float = 0.5, block: torch.nn.Module | None = None) -> SeedSlot:
    slot.germinate("mlp_block", block or MlpBlock((40,), (HIDDEN,)), eager_kernel, "eager", accuracy)
    return slot


def to_stage(slot: SeedSlot, stage: SeedStage) -> SeedSlot:
    """Walk a germinated slot along the main line up to `stage`."""
    while slot.stage is not stage:
        slot.advance()
    return slot


def make_host(slots: int = 2) -> SlottedHost:
    """The mnist1d task's host (narrower), its slots hooked as the task puts them."""
    torch.manual_seed(0)
    net, specs = Mnist1dMLP(hidden=HIDDEN), mnist1d.slots(slots)
    shapes, _ = probe_slots(net, specs, torch.zeros(2, 40))
    return SlottedHost(net, specs, shapes)


# ---------------------------------------------------------------- lifecycle


def test_main_line_to_fossilized() -> None:
    slot = SeedSlot("s0", SHAPE)
    assert slot.stage is S.DORMANT and slot.alpha == 0.0
    germinated(slot)
    assert [slot.advance() for _ in range(3)] == [S.TRAINING, S.BLENDING, S.HOLDING]
    assert slot.alpha == 1.0
    slot.fossilize()
    assert slot.stage is S.FOSSILIZED and slot.alpha == 1.0 and slot.block is not None


def test_prune_path_returns_to_dormant_after_embargo() -> None:
    slot = to_stage(germinated(SeedSlot("s1", SHAPE, SlotPolicy(embargo_epochs=3))), S.BLENDING)
    block = slot.block
    params = slot.prune()
    assert {id(p) for p in params} == {id(p) for p in block.parameters()}
    assert slot.stage is S.PRUNED and slot.block is None and slot.alpha == 0.0
    stages = []
    for _ in range(6):
        slot.end_epoch()
        stages.append(slot.stage)
    assert stages == [S.EMBARGOED, S.EMBARGOED, S.EMBARGOED, S.RESETTING, S.DORMANT, S.DORMANT]
    assert slot.blueprint_id is None and slot.metric_at_germination is None
    germinated(slot)  # usable again


@pytest.mark.parametrize(
    ("stage", "move"),
    [
        (S.DORMANT, "advance"),
        (S.DORMANT, "prune"),
        (S.DORMANT, "fossilize"),
        (S.GERMINATED, "germinate"),
        (S.TRAINING, "fossilize"),
        (S.BLENDING, "fossilize"),
        (S.HOLDING, "advance"),
        (S.FOSSILIZED, "prune"),
        (S.FOSSILIZED, "advance"),
        (S.PRUNED, "germinate"),
        (S.PRUNED, "advance"),
    ],
)
def test_illegal_transitions_raise(stage: SeedStage, move: str) -> None:
    slot = SeedSlot("s0", SHAPE)
    if stage is not S.DORMANT:
        germinated(slot)
        if stage is S.PRUNED:
            slot.prune()
        elif stage is S.FOSSILIZED:
            to_stage(slot, S.HOLDING).fossilize()
        else:
            to_stage(slot, stage)
    before = slot.stage
    with pytest.raises(IllegalTransition):
        if move == "germinate":
            germinated(slot)
        else:
            getattr(slot, move)()
    assert slot.stage is before


# ---------------------------------------------------------------- alpha


@pytest.mark.parametrize("schedule", list(BlendSchedule))
def test_schedules_are_monotone_from_zero_to_one(schedule: BlendSchedule) -> None:
    values = [blend_alpha(schedule, i / 100) for i in range(101)]
    assert values[0] == pytest.approx(0.0, abs=1e-12) and values[-1] == pytest.approx(1.0, abs=1e-12)
    assert all(b >= a for a, b in itertools.pairwise(values))
    assert blend_alpha(schedule, -1.0) == values[0] and blend_alpha(schedule, 2.0) == values[-1]


@pytest.mark.parametrize("schedule", list(BlendSchedule))
def test_blending_ramps_per_step_over_blend_epochs(schedule: BlendSchedule) -> None:
    slot = to_stage(germinated(SeedSlot("s0", SHAPE, SlotPolicy(blend_epochs=2, schedule=schedule))), S.TRAINING)
    slot.step(0.5)  # TRAINING: no ramp
    assert slot.alpha == 0.0
    slot.advance()
    assert slot.alpha == 0.0
    seen = []
    for _ in range(2 * 10):  # two epochs of ten steps
        slot.step(0.1)
        seen.append(slot.alpha)
    assert all(b > a for a, b in itertools.pairwise(seen))
    assert 0.0 < seen[0] < 0.1 and seen[-1] == pytest.approx(1.0)
    slot.step(5.0)
    assert slot.alpha == pytest.approx(1.0)  # clamped


# ---------------------------------------------------------------- host


@pytest.mark.parametrize("active", [0, 1, 2])
def test_host_shapes_with_zero_one_two_seeds(active: int) -> None:
    host = make_host(2)
    for slot in host.seed_slots()[:active]:
        to_stage(germinated(slot, block=Conv1dBlock((40,), (HIDDEN,))), S.HOLDING)
    assert [s.shape for s in host.seed_slots()] == [vector(40, HIDDEN)] * 2
    assert [s.name for s in host.seed_slots()] == ["s0", "s1"]
    x = torch.randn(7, 40)
    assert host(x).shape == (7, 10)
    with torch.no_grad():
        assert host(x).shape == (7, 10)
    seed_params = sum(1 for s in host.seed_slots() if s.block is not None for _ in s.block.parameters())
    assert len(list(host.parameters())) == len(host.host_parameters()) + seed_params
    assert bool(host._handles) == (active > 0)  # a bare host runs without hooks


def test_training_seed_leaves_the_live_output_alone_and_trains_in_its_shadow_pass() -> None:
    host = make_host(2)
    x = torch.randn(5, 40)
    before = host(x)
    for slot in host.seed_slots():
        to_stage(germinated(slot), S.TRAINING)
    assert torch.equal(host(x), before)
    shadows = []
    for slot in host.seed_slots():
        with host.shadowing(slot):
            shadows.append(host(x))
    assert all(s.shape == (5, 10) and not torch.equal(s, before) for s in shadows)
    assert not torch.equal(shadows[0], shadows[1])


def test_a_slot_reading_another_modules_input_gets_that_input() -> None:
    """mnist1d's s1 sits on l2 but reads l1's input (the host's input), so its kernel stays [B, 40] -> [B, hidden]."""
    host = make_host(2)
    seen: list[torch.Tensor] = []

    def kernel(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        return module(x)

    slot = host.seed_slots()[1]
    slot.germinate("mlp_block", MlpBlock((40,), (HIDDEN,)), kernel, "eager", 0.5)
    to_stage(slot, S.HOLDING)
    x = torch.randn(3, 40)
    host(x)
    assert len(seen) == 1 and torch.equal(seen[0], x) and not host._inputs


def test_seed_kernel_gets_a_detached_input_and_blending_changes_the_output() -> None:
    host = make_host(1)
    calls: list[tuple[bool, bool]] = []

    def kernel(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        calls.append((x.requires_grad, torch.is_grad_enabled()))
        return module(x)

    slot = host.seed_slots()[0]
    slot.germinate("mlp_block", MlpBlock((40,), (HIDDEN,)), kernel, "inductor:default", 0.5)
    to_stage(slot, S.BLENDING).step(2.5)
    x = torch.randn(4, 40, requires_grad=True)
    plain = make_host(1)
    assert not torch.equal(host(x), plain(x))
    with torch.no_grad():
        host(x)
    assert calls == [(False, True), (False, False)]
    assert slot.compiled and slot.health(0.6).kernel == "compiled inductor:default"
    slot.fall_back_to_eager("boom")
    assert not slot.compiled and slot.health(0.6).kernel == "eager" and slot.fallback_reason == "boom"


# ---------------------------------------------------------------- health


def _grads(slot: SeedSlot, value: float) -> None:
    for p in slot.block.parameters():
        p.grad = torch.full_like(p, value)


def test_health_reports_grad_norm_flags_and_accuracy_delta() -> None:
    slot = to_stage(germinated(SeedSlot("s0", SHAPE), accuracy=0.6), S.TRAINING)
    slot.begin_epoch()
    _grads(slot, 1e-3)
    slot.record_gradients()
    h = slot.health(0.65)
    assert h.stage is S.TRAINING and h.blueprint_id == "mlp_block" and h.kernel == "eager"
    assert h.grad_norm > 0 and not h.vanishing and not h.exploding
    assert h.gain == pytest.approx(0.05)

    slot.begin_epoch()
    _grads(slot, 0.0)
    slot.record_gradients()
    assert slot.health(0.6).vanishing

    slot.begin_epoch()
    _grads(slot, 100.0)
    slot.record_gradients()
    assert slot.health(0.6).exploding

    slot.begin_epoch()
    _grads(slot, float("nan"))
    slot.record_gradients()
    assert slot.health(0.6).exploding
    assert all(p.grad is None for p in slot.block.parameters())  # never applied


def test_dormant_and_germinated_slots_are_not_flagged() -> None:
    slot = SeedSlot("s0", SHAPE)
    h = slot.health(0.5)
    assert (h.kernel, h.gain, h.vanishing, h.exploding, h.grad_norm) == ("-", None, False, False, 0.0)
    germinated(slot)
    slot.record_gradients()  # GERMINATED does not train: nothing is measured
    h = slot.health(0.5)
    assert not h.vanishing and h.gain == 0.0 and h.epochs_in_stage == 0
    slot.end_epoch()
    assert slot.health(0.5).epochs_in_stage == 1


def test_capture_and_restore_a_slot() -> None:
    slot = to_stage(germinated(SeedSlot("s0", SHAPE), accuracy=0.4), S.BLENDING)
    slot.step(0.5)
    saved = slot.capture()
    assert saved.stage is S.BLENDING and saved.blend_progress == 0.5 and saved.metric_at_germination == 0.4
    assert saved.weights is not None and set(saved.weights) == set(slot.block.state_dict())
    with torch.no_grad():
        for p in slot.block.parameters():
            p.add_(1.0)  # training moved on
    slot.prune()
    fresh = MlpBlock((40,), (HIDDEN,))
    slot.restore(saved, fresh, eager_kernel, "eager")
    assert (slot.stage, slot.blend_progress, slot.block) == (S.BLENDING, 0.5, fresh)
    assert all(torch.equal(v, saved.weights[k]) for k, v in fresh.state_dict().items())
    assert slot.alpha == blend_alpha(BlendSchedule.COSINE, 0.5 / 5)
    empty = SeedSlot("s1", SHAPE).capture()
    assert empty.weights is None and empty.stage is S.DORMANT
    with pytest.raises(ValueError, match="needs no module"):
        SeedSlot("s1", SHAPE).restore(empty, MlpBlock((40,), (HIDDEN,)), eager_kernel, "eager")
