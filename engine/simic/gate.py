"""The validation gate: a candidate policy must be at least as good as the heuristic and the current policy.

Each policy plays the same held-out data seeds (never a training episode's) under one protocol: at most
`epochs` epochs, early stop after half of them without a validation gain, best epoch restored. Only the best
validation metric is compared (the test split is never evaluated here). "At least as good" is judged on the paired
differences, seed by seed: the candidate passes against a rival when the mean difference is not below minus two
standard errors of it (it is not measurably worse). Every verdict is recorded with its reasons
(status.record_verdict), passed or not.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import replace

from esper_tui.engine.simic.episode import EpisodeResult, EpisodeSpec
from esper_tui.engine.simic.status import Verdict


def compare(name: str, candidate: Sequence[float], rival: Sequence[float]) -> tuple[bool, str]:
    """Whether the candidate is not measurably worse than `rival` on paired validation results, and why."""
    diffs = [c - r for c, r in zip(candidate, rival, strict=True)]
    mean = statistics.mean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
    ok = mean >= -2 * se
    word = "at least as good as" if ok else "worse than"
    return ok, (
        f"{word} {name}: validation {mean * 100:+.2f} points on {len(diffs)} held-out seeds "
        f"(2 SE = {2 * se * 100:.2f}; candidate {statistics.mean(candidate):.2%}, {name} {statistics.mean(rival):.2%})"
    )


def gate_specs(base: EpisodeSpec, seeds: Sequence[int], epochs: int) -> list[EpisodeSpec]:
    """The policy of `base` on each held-out seed, greedy, under the gate's protocol."""
    return [
        replace(
            base, data_seed=s, train_seed=s, epochs=epochs, early_stop=max(2, epochs // 2), explore=0.0, epsilon=0.0
        )
        for s in seeds
    ]


def judge(
    candidate: EpisodeSpec,
    heuristic: EpisodeSpec,
    current: EpisodeSpec | None,
    seeds: Sequence[int],
    epochs: int,
    play: Callable[[list[EpisodeSpec]], list[EpisodeResult]],
) -> Verdict:
    """Play every policy on `seeds` (through `play`, which may use worker processes) and judge the candidate."""
    rivals = [("heuristic", heuristic)] + ([(current.version, current)] if current is not None else [])
    specs = [s for _, base in [("candidate", candidate), *rivals] for s in gate_specs(base, seeds, epochs)]
    results = play(specs)
    n = len(seeds)
    vals = [[r.best_val for r in results[i * n : (i + 1) * n]] for i in range(1 + len(rivals))]
    reasons, passed = [], True
    for (name, _), val in zip(rivals, vals[1:], strict=True):
        ok, why = compare(name, vals[0], val)
        passed = passed and ok
        reasons.append(why)
    return Verdict(
        candidate=candidate.version,
        current=current.version if current is not None else "heuristic",
        passed=passed,
        reasons=reasons,
        seeds=list(seeds),
        candidate_val=vals[0],
        heuristic_val=vals[1],
        current_val=vals[2] if current is not None else [],
    )
