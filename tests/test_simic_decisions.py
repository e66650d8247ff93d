"""The learned policy's decision points in Tamiyo: where it decides, what it sees, and the guards it cannot lift."""

from __future__ import annotations

import pytest
import torch

from esper_tui.engine.config import TrainingConfig
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.kernels.shapes import vector
from esper_tui.engine.training.controller import Controller, EpochState
from esper_tui.engine.training.kernel_source import EagerKernelSource
from esper_tui.engine.training.learned import GROW_CHOICES, KINDS, STATE_FEATURES, Layout, LinearPolicy
from esper_tui.engine.vocabulary import Action, SeedStage
from tests.test_controller import seed  # one SeedHealth builder for every controller test

S = SeedStage
CFG = TrainingConfig(plateau_epochs=3, train_epochs=2, blend_epochs=5, holding_epochs=2)
CATALOG = Catalog()
OFFERS = tuple(EagerKernelSource(CATALOG).offers(vector(40, 64)))
LAYOUT = Layout([b.blueprint_id for b in CATALOG.fitting(vector(40, 64))], ["s0", "s1"])
F = len(STATE_FEATURES)


def theta(kind: Action, *, blueprint: str | None = None, slot: str | None = None, on: int = 0) -> torch.Tensor:
    """Weights that score `kind` +1 on state feature `on` (the bias by default), the blueprint and slot +1 more."""
    t = torch.zeros(LAYOUT.dim)
    t[KINDS.index(kind) * F + on] = 1.0
    if blueprint is not None:
        t[len(KINDS) * F + LAYOUT.blueprints.index(blueprint)] = 1.0
    if slot is not None:
        t[len(KINDS) * F + len(LAYOUT.blueprints) + LAYOUT.slots.index(slot)] = 1.0
    return t


def controller(t: torch.Tensor) -> tuple[Controller, LinearPolicy]:
    ctl = Controller(CFG, CATALOG)
    policy = LinearPolicy("v0001", LAYOUT, t, record=True)
    ctl.policy = policy
    return ctl, policy


def test_the_policy_germinates_without_waiting_for_a_plateau_and_picks_blueprint_and_slot() -> None:
    second = Controller(CFG, CATALOG).rank(OFFERS)[1].blueprint_id  # the heuristic's second choice
    ctl, policy = controller(theta(Action.GERMINATE, blueprint=second, slot="s1"))
    [d] = ctl.decide(EpochState(1, 0.30, (seed("s0"), seed("s1")), OFFERS))
    assert (d.action, d.blueprint_id, d.slot) == (Action.GERMINATE, second, "s1")
    assert "policy v0001" in d.reason
    [point] = policy.points
    assert point.kind == "grow" and len(point.arms) == 1 + GROW_CHOICES  # wait, and the best-ranked (offer, slot)s
    assert {a.blueprint_id for a in point.arms[1:]} == {
        b.blueprint_id for b in Controller(CFG, CATALOG).rank(OFFERS)[:2]
    }


def test_a_policy_that_prefers_waiting_waits_and_the_heuristic_without_one_would_too() -> None:
    ctl, _ = controller(theta(Action.WAIT))
    [d] = ctl.decide(EpochState(1, 0.30, (seed("s0"), seed("s1")), OFFERS))
    assert d.action is Action.WAIT


def test_no_decision_point_while_a_seed_is_in_flight_or_the_backoff_holds() -> None:
    ctl, policy = controller(theta(Action.GERMINATE))
    [d] = ctl.decide(EpochState(1, 0.3, (seed("s0", S.TRAINING, epochs=0, bp="mlp_block"), seed("s1")), OFFERS))
    assert d.action is Action.WAIT and d.reason == "a seed is in flight" and not policy.points
    ctl.s.growth_after = 10
    [d] = ctl.decide(EpochState(2, 0.3, (seed("s0"), seed("s1")), OFFERS))
    assert d.action is Action.WAIT and "waiting until epoch 10" in d.reason and not policy.points


def test_judgement_is_the_policys_and_the_safety_prunes_stay_the_heuristics() -> None:
    held = seed("s0", S.HOLDING, epochs=2, delta=0.001, bp="mlp_block")
    ctl, policy = controller(theta(Action.FOSSILIZE))
    [d] = ctl.decide(EpochState(9, 0.6, (held, seed("s1")), OFFERS))
    assert d.action is Action.FOSSILIZE  # the heuristic would hold it: +0.1 points is under the 1.5-point bar
    assert policy.points[-1].kind == "judge"
    ctl, policy = controller(theta(Action.FOSSILIZE))
    exploding = seed("s0", S.BLENDING, epochs=1, delta=0.05, bp="mlp_block", exploding=True)
    [d] = ctl.decide(EpochState(9, 0.6, (exploding, seed("s1")), OFFERS))
    assert d.action is Action.PRUNE and "exploding" in d.reason and not policy.points


def test_the_judged_seeds_gain_is_observed_in_points() -> None:
    ctl, policy = controller(theta(Action.PRUNE, on=STATE_FEATURES.index("seed_gain")))
    held = seed("s0", S.HOLDING, epochs=2, delta=0.03, bp="mlp_block")
    ctl.decide(EpochState(9, 0.6, (held, seed("s1")), OFFERS))
    fossilize, _prune = policy.points[-1].features
    at = KINDS.index(Action.FOSSILIZE) * F + STATE_FEATURES.index("seed_gain")
    assert fossilize[at] == pytest.approx(0.3)  # 3 points / 10
