"""Rewards that do not pay for growth itself: validation gained, less a rent on kept parameters and a penalty for
each seed grafted and then pruned (a wasted graft).

Per decision (the bandit's): a grow decision at epoch t earns the validation gain over the next `horizon` epochs
(the mean of the window's last three epochs less epoch t's, in points); a germination pays the rent for its seed
if the seed is kept, or the penalty if it is pruned. A judgement earns, for fossilizing, the seed's gain since it
germinated less its rent, and nothing for pruning (the waste was charged to its germination).

Per episode (the learning curve, the same for every learner): the validation gain from the first epoch to the
last, less the rent of every kept seed and the penalty of every wasted graft.
"""

from __future__ import annotations

from dataclasses import dataclass

from esper_tui.engine.simic.episode import EpisodeResult, Seed
from esper_tui.engine.vocabulary import Action


@dataclass(frozen=True)
class RewardSpec:
    horizon: int = 8
    rent_per_kparam: float = 0.05
    waste: float = 1.0

    def rent(self, seed: Seed) -> float:
        return self.rent_per_kparam * seed.params / 1000


def _pts(gain: float) -> float:
    return 100.0 * gain  # accuracy, the episodes' metric: a fraction, so points are hundredths


def _seed(
    result: EpisodeResult, slot: str | None, *, germinated: int | None = None, judged: int | None = None
) -> Seed | None:
    for s in result.seeds:
        if (
            s.slot == slot
            and (germinated is None or s.epoch == germinated)
            and (judged is None or s.fate_epoch == judged)
        ):
            return s
    return None


def decision_rewards(result: EpisodeResult, spec: RewardSpec) -> list[tuple[list[float], float]]:
    """(features of the action taken, its reward) for every decision point whose outcome the episode saw."""
    out: list[tuple[list[float], float]] = []
    val = result.val
    for p in result.points:
        t = p.epoch
        arm = p.arms[p.chosen]
        window = val[t : t + spec.horizon]
        if t < 1 or not window:
            continue
        tail = window[-3:]
        reward = _pts(sum(tail) / len(tail) - val[t - 1])
        if p.kind == "judge":
            seed = _seed(result, arm.slot, judged=t)
            if arm.action is Action.FOSSILIZE and seed is not None:
                reward = _pts(val[t - 1] - val[seed.epoch - 1]) - spec.rent(seed) if seed.epoch >= 1 else 0.0
            else:
                reward = 0.0
        elif arm.action is Action.GERMINATE:
            seed = _seed(result, arm.slot, germinated=t)
            if seed is not None and seed.fate == "pruned":
                reward -= spec.waste
            elif seed is not None and seed.fate == "kept":
                reward -= spec.rent(seed)
        out.append((p.features[p.chosen], reward))
    return out


def episode_return(result: EpisodeResult, spec: RewardSpec) -> float:
    """The episode's return: validation gained over it, less rent for kept seeds and penalties for wasted grafts."""
    if not result.val:
        return 0.0
    gained = _pts(result.val[-1] - result.val[0])
    return gained - sum(spec.rent(s) for s in result.seeds if s.fate == "kept") - spec.waste * result.pruned
