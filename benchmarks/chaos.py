"""Chaos: SIGKILL `esper-tui --no-ui --forge-only` at random moments, restart, then check invariants.

Every killed round runs with --recompile-all, so each kill lands on real compile work (a forge with
nothing queued would just exit). Invariants after a final uninterrupted run: every blueprint has
exactly one current artifact (its newest version) and it verifies, every stored version verifies and
version numbers are unique, no staging or temporary files remain, no WAL transaction is open, and no
worker process is left alive.
Used by tests/test_chaos.py (a few rounds) and benchmarks/forge.py (50 rounds).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

CLI = [sys.executable, "-m", "esper_tui"]


@dataclass
class ChaosResult:
    rounds: int
    kills: int = 0
    failures: list[str] = field(default_factory=list)
    kill_times_s: list[float] = field(default_factory=list)


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_invariants(state: Path, blueprints: list[str]) -> list[str]:
    problems = []
    artifacts = state / "library" / "artifacts"
    for bid in blueprints:
        numbers = [p.name.split("-")[0] for p in (artifacts / bid).glob("v*")]
        if not numbers:
            problems.append(f"{bid}: no stored version")
        if len(set(numbers)) != len(numbers):
            problems.append(f"{bid}: duplicate version numbers {sorted(numbers)}")
    staging = state / "library" / "staging"
    leftovers = [*staging.iterdir()] if staging.is_dir() else []
    leftovers += list(state.rglob("*.tmp"))
    problems += [f"temporary file left: {p.relative_to(state)}" for p in leftovers]
    verify = subprocess.run([*CLI, "library", "verify", "--state-dir", str(state)], capture_output=True, text=True)
    if verify.returncode != 0:
        problems.append(f"library verify failed: {verify.stdout.strip()[-500:]} {verify.stderr.strip()[-300:]}")
    inspect = subprocess.run(
        [*CLI, "wal", "inspect", "--json", "--state-dir", str(state)], capture_output=True, text=True
    )
    if inspect.returncode != 0:
        problems.append(f"wal inspect failed: {inspect.stderr.strip()}")
    elif open_tx := json.loads(inspect.stdout)["open_transactions"]:
        problems.append(f"open WAL transactions: {open_tx}")
    registry = state / "workers"
    stale = [int(p.name) for p in registry.iterdir() if _alive(int(p.name))] if registry.is_dir() else []
    if stale:
        problems.append(f"worker process groups still alive: {stale}")
    return problems


def run_chaos(
    state: Path, rounds: int, *, seed: int = 0, max_kill_s: float = 25.0, config: Path | None = None, log=print
) -> ChaosResult:
    """Kill `rounds` runs at random moments, then one run to completion, then check the invariants."""
    from esper_tui.engine.kernels.catalog import Catalog
    from esper_tui.engine.kernels.shapes import vector

    rng = random.Random(seed)
    args = [*CLI, "--no-ui", "--forge-only", "--json", "--state-dir", str(state)]
    if config is not None:
        args += ["--config", str(config)]
    chaos_args = [*args, "--recompile-all"]
    result = ChaosResult(rounds=rounds)
    for i in range(rounds):
        delay = rng.uniform(0.3, max_kill_s)
        proc = subprocess.Popen(chaos_args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            proc.wait(timeout=delay)
            finished = True
        except subprocess.TimeoutExpired:
            finished = False
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            result.kills += 1
            result.kill_times_s.append(round(delay, 2))
        if finished and proc.returncode != 0:
            err = proc.stderr.read().decode()[-400:] if proc.stderr else ""
            result.failures.append(f"round {i}: exit {proc.returncode}: {err}")
        if proc.stderr:
            proc.stderr.close()
        outcome = "finished" if finished else f"killed after {delay:.1f} s"
        log(f"chaos round {i + 1}/{rounds}: {outcome}")
    t0 = time.monotonic()
    final = subprocess.run(args, capture_output=True, text=True, timeout=900)
    if final.returncode != 0:
        result.failures.append(f"final run: exit {final.returncode}: {final.stderr[-800:]}")
    log(f"final run finished in {time.monotonic() - t0:.1f} s")
    result.failures += check_invariants(state, [b.blueprint_id for b in Catalog().fitting(vector(40, 64))])
    return result
