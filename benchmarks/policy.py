"""Policy benchmark: does Simic's learned policy match Tamiyo's heuristic with fewer epochs or fewer wasted grafts?

    python -m benchmarks.policy [--quick] [--state-dir DIR] [--seeds 5] [--workers 2] --json FILE

1. Simic trains (`engine/simic/trainer.py`, a fresh state directory): the linear contextual bandit on its episodes,
   then its candidate is gated and stored. Beside it, MaskablePPO (stable-baselines3 / sb3-contrib) trains on the
   same number of episodes of the same decision points (`engine/simic/ppo.py`). Both learning curves (each
   episode's return: validation gained less rent and wasted-graft penalties) are reported; the learner whose
   curve ends higher is named, with the numbers.
2. The heuristic and the bandit's policy each play `--seeds` held-out MNIST-1D data seeds (3000, 3001, ...: never
   an episode's or the gate's), the same seeds for both, under one protocol: at most `max_epochs` epochs, early stop
   after `patience` without a validation gain, best epoch restored, test evaluated once (decisions read validation
   only). Eager seeds: compile jobs are counted as the distinct blueprints a run grafted (each needs one kernel).
3. The goal (issue 17): the learned policy's test accuracy within two standard errors of the heuristic's, and at
   least 25 % fewer epochs to the best validation or at least 25 % fewer wasted grafts (seeds grafted, then pruned).
   The table says plainly whether it was met.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import msgspec
import torch

from benchmarks.report import write_json
from esper_tui.engine.config import EsperConfig
from esper_tui.engine.library.policies import open_policies
from esper_tui.engine.library.signing import load_or_create_key
from esper_tui.engine.simic.episode import EpisodeResult, EpisodeSpec
from esper_tui.engine.simic.status import Progress
from esper_tui.engine.simic.trainer import BENCH_DATA_SEED, TRAIN_DATA_SEEDS, Plan, Simic, process_pool

HEURISTIC = "heuristic"


def summary(name: str, runs: list[EpisodeResult]) -> dict[str, object]:
    acc = [r.test_metric or 0.0 for r in runs]
    return {
        "name": name,
        "test_accuracy_mean": statistics.mean(acc),
        "test_accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
        "epochs_to_best_mean": statistics.mean(r.best_epoch for r in runs),
        "wasted_grafts_mean": statistics.mean(r.pruned for r in runs),
        "grafted_mean": statistics.mean(len(r.seeds) for r in runs),
        "pruned_mean": statistics.mean(r.pruned for r in runs),
        "params_mean": statistics.mean(r.params for r in runs),
        "compile_jobs_mean": statistics.mean(len({s.blueprint_id for s in r.seeds}) for r in runs),
        "epochs_mean": statistics.mean(r.epochs for r in runs),
        "runs": len(runs),
        "per_run": [
            {
                "data_seed": r.spec.data_seed,
                "test_accuracy": r.test_metric,
                "best_val": r.best_val,
                "best_epoch": r.best_epoch,
                "epochs": r.epochs,
                "params": r.params,
                "seeds": [f"ep{s.epoch} {s.blueprint_id}->{s.slot} {s.fate}" for s in r.seeds],
                "wall_s": r.wall_s,
            }
            for r in runs
        ],
    }


def goal(heuristic: dict[str, float], learned: dict[str, float], h_runs: list[float], l_runs: list[float]) -> str:
    """The issue's goal in words: met or not, and by how much."""
    diff = statistics.mean(l_runs) - statistics.mean(h_runs)
    se = math.sqrt(statistics.variance(h_runs) / len(h_runs) + statistics.variance(l_runs) / len(l_runs))
    matched = abs(diff) <= 2 * se or diff > 0
    ep_h, ep_l = heuristic["epochs_to_best_mean"], learned["epochs_to_best_mean"]
    w_h, w_l = heuristic["wasted_grafts_mean"], learned["wasted_grafts_mean"]
    fewer_epochs = (ep_h - ep_l) / ep_h if ep_h else 0.0
    fewer_waste = (w_h - w_l) / w_h if w_h else 0.0  # none wasted by the heuristic: nothing to do better
    met = matched and (fewer_epochs >= 0.25 or fewer_waste >= 0.25)
    return (
        f"GOAL {'MET' if met else 'NOT MET'}: test accuracy {diff * 100:+.1f} points vs the heuristic "
        f"(2 SE = {2 * se * 100:.1f}: {'matched' if matched else 'not matched'}); epochs to best "
        f"{fewer_epochs:+.0%} fewer ({ep_l:.1f} vs {ep_h:.1f}); wasted grafts {fewer_waste:+.0%} fewer "
        f"({w_l:.2f} vs {w_h:.2f}); the goal needs accuracy matched and >= 25 % fewer of either"
    )


def curve_verdict(bandit: list[float], ppo: list[float]) -> tuple[str, str]:
    """Which learner's curve ends higher (mean return of the last third of its episodes, with its standard error),
    and why. Curves within two standard errors of each other are a tie, and the bandit is kept: a tenth of PPO's
    machinery, a policy that reads as weights, and the one the gate judged."""

    def third(xs: list[float], last: bool) -> list[float]:
        k = max(1, len(xs) // 3)
        return xs[-k:] if last else xs[:k]

    def se(xs: list[float]) -> float:
        return statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else 0.0

    b, p = third(bandit, True), third(ppo, True)
    diff = statistics.mean(p) - statistics.mean(b)
    two_se = 2 * math.sqrt(se(b) ** 2 + se(p) ** 2)
    tie = abs(diff) <= two_se
    chosen = "bandit" if tie or diff < 0 else "ppo"
    why = (
        f"last third of {len(bandit)} and {len(ppo)} episodes: bandit return {statistics.mean(b):+.2f} (first third "
        f"{statistics.mean(third(bandit, False)):+.2f}), PPO {statistics.mean(p):+.2f} (first third "
        f"{statistics.mean(third(ppo, False)):+.2f}); PPO - bandit {diff:+.2f} (2 SE = {two_se:.2f}): "
        + (
            "a tie, so the bandit is kept (cheaper, readable weights, the policy the gate judged)"
            if tie
            else f"{chosen} learns better"
        )
    )
    return chosen, why


def table(rows: list[dict[str, object]]) -> str:
    head = (
        f"{'policy':<22} {'test accuracy':>15} {'ep to best':>10} {'grafted':>8} {'wasted':>7} "
        f"{'params':>8} {'compiles':>8} {'runs':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        acc = f"{float(r['test_accuracy_mean']):.1%} ± {float(r['test_accuracy_std']) * 100:.1f}"  # type: ignore[arg-type]
        lines.append(
            f"{r['name']!s:<22} {acc:>15} {float(r['epochs_to_best_mean']):>10.1f} "  # type: ignore[arg-type]
            f"{float(r['grafted_mean']):>8.2f} {float(r['wasted_grafts_mean']):>7.2f} "  # type: ignore[arg-type]
            f"{float(r['params_mean']):>8.0f} {float(r['compile_jobs_mean']):>8.1f} {r['runs']!s:>5}"  # type: ignore[arg-type]
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="16 short episodes, 60-epoch evaluation runs (<= 10 min)")
    ap.add_argument("--state-dir", type=Path, default=Path("var/bench-policy"), help="emptied first (Simic's state)")
    ap.add_argument("--seeds", type=int, default=5, help="held-out data seeds per policy (at least 5 for the table)")
    ap.add_argument("--workers", type=int, default=2, help="episodes at once, each in a worker process")
    ap.add_argument("--episodes", type=int, help="training episodes (default: 16 quick, simic.episodes full)")
    ap.add_argument("--no-ppo", action="store_true", help="skip the PPO comparison")
    ap.add_argument("--json", type=Path, metavar="FILE")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    config = EsperConfig()
    config = msgspec.structs.replace(config, simic=msgspec.structs.replace(config.simic, workers=args.workers))
    plan = Plan.from_config(config, episodes=args.episodes, quick=args.quick)
    max_epochs, patience = (60, 20) if args.quick else (150, 40)
    shutil.rmtree(args.state_dir / "simic", ignore_errors=True)
    shutil.rmtree(args.state_dir / "library" / "policies", ignore_errors=True)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    key = load_or_create_key(args.state_dir)
    print(
        f"simic: {plan.episodes} episodes x {plan.epochs} epochs, {plan.workers} workers, {torch.get_num_threads()} "
        f"threads here; evaluation: {args.seeds} held-out data seeds, <= {max_epochs} epochs, patience {patience}",
        flush=True,
    )
    pool, close = process_pool(plan.workers)
    try:
        t0 = time.perf_counter()

        def show(p: Progress) -> None:
            print(f"  bandit {p.episodes_done}/{p.episodes_total} return {p.returns[-1]:+.2f}", flush=True)

        simic = Simic(config, args.state_dir, key, plan, on_round=show)
        progress = simic.train(pool)
        bandit_s = time.perf_counter() - t0
        verdict = progress.verdict
        print(f"bandit trained in {bandit_s:.0f} s; gate: {verdict.passed if verdict else None}", flush=True)
        ppo_curve: list[float] = []
        ppo_entropy: list[float] = []
        ppo_value: list[float] = []
        ppo_s = 0.0
        layout = simic.layout()
        if not args.no_ppo:
            from esper_tui.engine.simic.ppo import train_ppo

            t1 = time.perf_counter()

            def spec(i: int) -> EpisodeSpec:
                return EpisodeSpec(
                    data_seed=TRAIN_DATA_SEEDS[i % len(TRAIN_DATA_SEEDS)],
                    train_seed=i,
                    epochs=plan.epochs,
                    wall_s=plan.wall_s,
                    data_dir=str(args.state_dir / "data"),
                )

            curve = train_ppo(layout, spec, plan.reward, progress.episodes_done, plan.workers)
            ppo_curve, ppo_entropy, ppo_value = curve.returns, curve.entropy, curve.value_loss
            ppo_s = time.perf_counter() - t1
            print(f"ppo trained in {ppo_s:.0f} s over {len(ppo_curve)} episodes", flush=True)
        chosen, why = curve_verdict(progress.returns, ppo_curve) if ppo_curve else ("bandit", "PPO not run")
        policies = open_policies(config.library, args.state_dir, key)
        meta, tensors = policies.load(progress.candidate)
        base = EpisodeSpec(
            data_seed=0,
            train_seed=0,
            epochs=max_epochs,
            wall_s=3600.0,
            data_dir=str(args.state_dir / "data"),
            early_stop=patience,
            report_test=True,
            version=HEURISTIC,
        )
        learned = replace(
            base,
            theta=tensors["theta"].tolist(),
            layout=(list(meta.blueprints), list(meta.slots)),
            version=meta.version,
        )
        seeds = [BENCH_DATA_SEED + i for i in range(args.seeds)]
        specs = [replace(b, data_seed=s, train_seed=s) for b in (base, learned) for s in seeds]
        t2 = time.perf_counter()
        results = pool(specs)
        eval_s = time.perf_counter() - t2
    finally:
        close()
    h_runs, l_runs = results[: len(seeds)], results[len(seeds) :]
    rows = [summary(HEURISTIC, h_runs), summary(f"learned {meta.version}", l_runs)]
    print("\n" + table(rows))
    sentence = goal(
        rows[0],  # type: ignore[arg-type]
        rows[1],  # type: ignore[arg-type]
        [r.test_metric or 0.0 for r in h_runs],
        [r.test_metric or 0.0 for r in l_runs],
    )
    print("\n" + sentence)
    print(f"learner: {chosen} ({why})")
    cost = {
        "episodes": progress.episodes_done,
        "episode_epochs": plan.epochs,
        "bandit_wall_s": bandit_s,
        "ppo_wall_s": ppo_s,
        "workers": plan.workers,
        "machine": "2 cores shared with other sessions",
    }
    print(
        f"training cost: {cost['episodes']} episodes, bandit {bandit_s / 60:.1f} min (gate included), "
        f"PPO {ppo_s / 60:.1f} min, {plan.workers} worker processes; evaluation {eval_s / 60:.1f} min"
    )
    wall = time.perf_counter() - started
    print(f"decisions on validation; torch {torch.__version__}; {wall / 60:.1f} min", flush=True)
    if args.json:
        write_json(
            args.json,
            {
                "rows": rows,
                "goal": sentence,
                "learner": {"chosen": chosen, "why": why},
                "curves": {
                    "bandit_returns": progress.returns,
                    "bandit_loss": progress.losses,
                    "ppo_returns": ppo_curve,
                    "ppo_entropy_loss": ppo_entropy,
                    "ppo_value_loss": ppo_value,
                },
                "gate": msgspec.to_builtins(verdict) if verdict is not None else None,
                "training_cost": cost,
                "protocol": {
                    "quick": args.quick,
                    "held_out_data_seeds": seeds,
                    "max_epochs": max_epochs,
                    "patience": patience,
                    "train_data_seeds": list(TRAIN_DATA_SEEDS),
                    "reward": msgspec.to_builtins(plan.reward.__dict__),
                    "decisions_split": "validation",
                    "kernels": "eager",
                },
                "eval_wall_s": eval_s,
                "wall_s": wall,
                "torch": str(torch.__version__),
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
