"""A learned Tamiyo policy: what it observes, the actions it weighs, and how it scores them (Simic trains it).

Decision points (GUIDE 15: most epochs are "wait", so a policy acts only where there is a choice), as the
controller offers them (controller.PolicyHook): *grow* (no seed in flight, the failure back-off over, at least one
(blueprint, dormant slot) allowed: wait, or germinate blueprint b into slot s, among the `GROW_CHOICES`
best-ranked pairs) and *judge* (a seed held for
`holding_epochs`: fossilize or prune). Advancing through the stages and the safety prunes stay the
heuristic's rules.

Observations are only what Tamiyo sees (`STATE_FEATURES`): the validation history, the slots' stages, the judged
seed's health (its gain since germination, epochs held), the controller's ranking of the offers and its failure
record, and the training loss. There is no test-split number anywhere in an `EpochState`, so none can appear here.

Scoring is linear in a joint feature vector phi(state, action) (`arm_features`): the state features in the block of
the action's kind (wait, germinate, fossilize, prune), and for a germination the blueprint and slot one-hots, its
rank among the offers, and how often it was tried and pruned in this run. One weight vector `theta` scores every
action; the best legal one is taken (a trainer may choose otherwise: `Chooser`, for exploration).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from esper_tui.engine.contracts import SeedHealth
from esper_tui.engine.library.policy_file import PolicyInvalid, PolicyMeta
from esper_tui.engine.training.controller import Controller, Decision, EpochState
from esper_tui.engine.training.kernel_source import KernelOffer
from esper_tui.engine.vocabulary import Action, SeedStage

KIND = "linear-bandit"
STATE_FEATURES = (
    "bias",
    "val_metric",  # the validation metric itself (percent metrics; 0 for others)
    "gap_to_best",  # points below the run's best validation so far, / 10
    "slope3",  # points gained over the last 3 epochs, / 10
    "flat_epochs",  # epochs without a plateau_delta gain, / plateau_epochs
    "epoch",  # / 50
    "fossilized",  # share of slots holding a kept seed
    "dormant",  # share of slots free
    "failures",  # failures in a row / give_up_after
    "train_loss",  # the epoch's mean training loss, capped at 3, / 3
    "seed_gain",  # judge: the held seed's gain since germination in points / 10
    "seed_epochs",  # judge: epochs held / holding_epochs
)
KINDS = (Action.WAIT, Action.GERMINATE, Action.FOSSILIZE, Action.PRUNE)
GERMINATE_EXTRAS = ("rank", "tried", "pruned", "compiled")
HISTORY = 16
GROW_CHOICES = 4
"""The germinations a policy weighs at a grow point: the controller's best-ranked (offer, dormant slot) pairs (two
blueprints into either of two slots). The ranking (catalog priority, tries, prunes) is the prior a handful of
episodes cannot learn: with every blueprint in every slot as an action, 16 episodes (65 decisions) never tried
conv1d_block, the family that lifts MNIST-1D most. The policy learns when to grow, which of the best to take, and
what to keep."""


def points(controller: Controller, gain: float, at: float) -> float:
    """A gain in points: hundredths of the metric's scale at `at` (accuracy: percentage points)."""
    return 100.0 * gain / controller.metric.scale(at)


@dataclass(frozen=True)
class Arm:
    """One legal action at a decision point."""

    action: Action
    slot: str | None = None
    blueprint_id: str | None = None
    offer: KernelOffer | None = None
    rank: int = 0


@dataclass
class Layout:
    """The order of the feature vector: kinds' state blocks, then the blueprint, slot and germination extras."""

    blueprints: list[str]
    slots: list[str]

    @property
    def dim(self) -> int:
        return len(KINDS) * len(STATE_FEATURES) + len(self.blueprints) + len(self.slots) + len(GERMINATE_EXTRAS)


def state_features(
    controller: Controller, state: EpochState, history: Sequence[float], seed: SeedHealth | None = None
) -> list[float]:
    """The observation at a decision point (see STATE_FEATURES); `history`: the validation metric, oldest first."""
    m, cfg, s = controller.metric, controller.cfg, controller.s
    val = state.val_metric
    best = max(history, key=lambda v: m.gain(v, val)) if history else val
    back = history[-4] if len(history) >= 4 else (history[0] if history else val)
    stages = [h.stage for h in state.seeds]
    n = max(1, len(stages))
    loss = state.train_loss if state.train_loss is not None and state.train_loss == state.train_loss else 3.0
    gain = seed.gain if seed is not None and seed.gain is not None else 0.0
    return [
        1.0,
        val if m.percent else 0.0,
        points(controller, m.gain(val, best), val) / 10,
        points(controller, m.gain(val, back), val) / 10,
        min(s.flat_epochs / max(1, cfg.plateau_epochs), 4.0),
        min(state.epoch / 50, 3.0),
        stages.count(SeedStage.FOSSILIZED) / n,
        stages.count(SeedStage.DORMANT) / n,
        s.failures_in_a_row / max(1, cfg.give_up_after),
        min(loss, 3.0) / 3,
        points(controller, gain, val) / 10 if seed is not None else 0.0,
        seed.epochs_in_stage / max(1, cfg.holding_epochs) if seed is not None else 0.0,
    ]


def arm_features(layout: Layout, controller: Controller, base: list[float], arm: Arm, options: int) -> list[float]:
    """phi(state, arm): the state in its kind's block, and a germination's blueprint, slot and record."""
    if arm.action is Action.GERMINATE and arm.blueprint_id is not None:
        s = controller.s
        extras = (
            arm.rank / max(1, options),
            float(s.uses.get(arm.blueprint_id, 0)),
            float(s.pruned.get(arm.blueprint_id, 0)),
            1.0 if arm.offer is not None and arm.offer.compiled else 0.0,
        )
        return germinate_features(layout, base, arm.blueprint_id, arm.slot, extras)
    f = len(STATE_FEATURES)
    out = [0.0] * layout.dim
    k = KINDS.index(arm.action)
    out[k * f : (k + 1) * f] = base
    return out


def germinate_features(
    layout: Layout, base: list[float], blueprint_id: str, slot: str | None, extras: tuple[float, ...] = (0.0,) * 4
) -> list[float]:
    """phi(state, germinate blueprint into slot); `extras` in GERMINATE_EXTRAS order (rank, tried, pruned,
    compiled). Also how a field report's germination becomes a sample (engine/simic/experience.py)."""
    f = len(STATE_FEATURES)
    out = [0.0] * layout.dim
    k = KINDS.index(Action.GERMINATE)
    out[k * f : (k + 1) * f] = base
    at = len(KINDS) * f
    if blueprint_id in layout.blueprints:
        out[at + layout.blueprints.index(blueprint_id)] = 1.0
    at += len(layout.blueprints)
    if slot in layout.slots:
        out[at + layout.slots.index(slot)] = 1.0
    at += len(layout.slots)
    out[at : at + len(GERMINATE_EXTRAS)] = list(extras)
    return out


@dataclass
class DecisionPoint:
    """A decision as a learner needs it: every legal arm's features, the one taken, when, and what it was."""

    epoch: int
    kind: str  # "grow" or "judge"
    features: list[list[float]]
    chosen: int
    arms: list[Arm]
    val_metric: float


Chooser = Callable[[torch.Tensor, torch.Tensor], int]
"""(features [arms, dim], scores [arms]) -> the index to take."""


def greedy(features: torch.Tensor, scores: torch.Tensor) -> int:
    return int(torch.argmax(scores))


@dataclass
class LinearPolicy:
    """The controller's PolicyHook for a linear policy; `points` records every decision taken (for Simic)."""

    version: str
    layout: Layout
    theta: torch.Tensor
    choose: Chooser = greedy
    record: bool = False
    points: list[DecisionPoint] = field(default_factory=list)
    history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))

    def ready(self, state: EpochState) -> bool:
        self.history.append(state.val_metric)
        return True

    def _pick(
        self, controller: Controller, state: EpochState, arms: list[Arm], base: list[float], kind: str
    ) -> tuple[Arm, str]:
        feats = torch.tensor([arm_features(self.layout, controller, base, a, len(arms) - 1) for a in arms])
        scores = feats @ self.theta
        i = self.choose(feats, scores)
        if self.record:
            self.points.append(DecisionPoint(state.epoch, kind, feats.tolist(), i, arms, state.val_metric))
        others = ", ".join(
            f"{_label(a)} {float(s):+.2f}" for a, s in zip(arms, scores, strict=True) if a is not arms[i]
        )
        return arms[i], f"policy {self.version}: score {float(scores[i]):+.2f} (vs {others or 'nothing'})"

    def grow(self, controller: Controller, state: EpochState, options: list[tuple[KernelOffer, str]]) -> Decision:
        arms = [Arm(Action.WAIT)] + [
            Arm(Action.GERMINATE, slot, offer.blueprint_id, offer, rank)
            for rank, (offer, slot) in enumerate(options[:GROW_CHOICES])
        ]
        arm, why = self._pick(controller, state, arms, state_features(controller, state, self.history), "grow")
        return Decision(arm.action, arm.slot, arm.blueprint_id, why)

    def judge(self, controller: Controller, state: EpochState, seed: SeedHealth) -> Decision | None:
        arms = [Arm(Action.FOSSILIZE, seed.slot, seed.blueprint_id), Arm(Action.PRUNE, seed.slot, seed.blueprint_id)]
        base = state_features(controller, state, self.history, seed)
        arm, why = self._pick(controller, state, arms, base, "judge")
        gain = controller.metric.format(seed.gain or 0.0, signed=True)
        return Decision(
            arm.action, arm.slot, arm.blueprint_id, f"{controller.metric.name} {gain} since germination; {why}"
        )


def _label(arm: Arm) -> str:
    if arm.action is Action.GERMINATE:
        return f"{arm.blueprint_id}->{arm.slot}"
    return str(arm.action.value)


def from_file(meta: PolicyMeta, tensors: dict[str, torch.Tensor], choose: Chooser = greedy) -> LinearPolicy:
    """The policy a verified file describes; PolicyInvalid when its weights do not fit its own layout."""
    if meta.kind != KIND:
        raise PolicyInvalid(f"policy {meta.version}: kind {meta.kind!r}, Tamiyo follows {KIND!r}")
    if list(meta.features) != list(STATE_FEATURES):
        raise PolicyInvalid(f"policy {meta.version}: trained on other features than this engine observes")
    layout = Layout(list(meta.blueprints), list(meta.slots))
    theta = tensors.get("theta")
    if theta is None or tuple(theta.shape) != (layout.dim,) or not bool(torch.isfinite(theta).all()):
        raise PolicyInvalid(f"policy {meta.version}: weights missing, of the wrong shape or not finite")
    return LinearPolicy(meta.version, layout, theta.to(torch.float32), choose)
