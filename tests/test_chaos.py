"""Chaos in CI: a few SIGKILLs of the forge at random moments; the full 50 rounds run in benchmarks/forge.py.

CI's count compiles with the Fast pipeline (aot_eager through torch.compile, under a second a kernel): what is
under test is the write-ahead log and the library across kills, and the rounds then each kill a whole forge pass
rather than waiting on inductor. `ESPER_FULL_TESTS=1` runs it on the Standard pipeline (inductor) with later kills.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.chaos import run_chaos
from tests.budget import FULL

FAST = '[tezzeret.compilation]\ndefault_strategy = "fast"\n'


@pytest.mark.slow
@pytest.mark.compile
def test_sigkill_loop_leaves_a_consistent_forge(tmp_path: Path) -> None:
    rounds = int(os.environ.get("ESPER_CHAOS_ROUNDS", "3"))
    config = None
    if not FULL:
        config = tmp_path / "fast.toml"
        config.write_text(FAST)
    result = run_chaos(
        tmp_path / "state",
        rounds,
        seed=int(os.environ.get("ESPER_CHAOS_SEED", "7")),
        max_kill_s=20.0 if FULL else 8.0,
        config=config,
    )
    assert result.failures == [], "\n".join(result.failures)
    assert result.kills >= 1, "no round was killed: the test proved nothing"
