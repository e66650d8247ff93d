"""Chaos in CI: a few SIGKILLs of the forge at random moments; the full 50 rounds run in benchmarks/forge.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.chaos import run_chaos


@pytest.mark.slow
@pytest.mark.compile
def test_sigkill_loop_leaves_a_consistent_forge(tmp_path: Path) -> None:
    rounds = int(os.environ.get("ESPER_CHAOS_ROUNDS", "3"))
    result = run_chaos(tmp_path / "state", rounds, seed=int(os.environ.get("ESPER_CHAOS_SEED", "7")), max_kill_s=20.0)
    assert result.failures == [], "\n".join(result.failures)
