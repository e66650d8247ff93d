"""The palette's SetPolicy through a running engine: the command crosses to the training process, whose follower
loads, verifies and adopts (or refuses) the policy between epochs, and the snapshot and event log say so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from esper_tui.engine.config import LibraryConfig, parse_config
from esper_tui.engine.contracts import SetPolicy
from esper_tui.engine.library.policies import open_policies
from esper_tui.engine.library.signing import load_or_create_key
from esper_tui.engine.runtime import Engine
from esper_tui.engine.vocabulary import Level
from tests.test_simic_policy_file import policy_bytes
from tests.test_training_process import QUIET, training
from tests.waits import eventually


def lines(engine: Engine, level: Level | None = None) -> list[str]:
    return [e.text for e in engine.aggregator.snapshot().events if level is None or e.level is level]


async def test_set_policy_reaches_the_training_process_and_the_snapshot_names_it(tmp_path: Path) -> None:
    config: dict[str, Any] = {**QUIET, "training": {**QUIET["training"], "epochs": 100_000}}
    engine = Engine(parse_config(config), tmp_path / "state")
    await engine.start()
    try:
        await eventually(lambda: training(engine).epoch >= 1, "a first epoch")
        assert training(engine).policy == "heuristic"

        await engine.send(SetPolicy(policy="learned"))  # nothing published yet: the heuristic stays, saying why
        nothing = "policy: heuristic (no learned policy published yet; the heuristic decides)"
        await eventually(lambda: nothing in lines(engine), "the follower's answer")
        assert training(engine).policy == "heuristic"

        key = load_or_create_key(engine.state_dir)  # the engine's library key: what its follower verifies with
        policies = open_policies(LibraryConfig(), engine.state_dir, key)
        policies.store(policy_bytes("v0001", key=key))
        policies.publish("v0001", "published by this test")
        await eventually(lambda: training(engine).policy == "learned v0001", "the published policy adopted")
        assert any("signature verified" in t for t in lines(engine)), lines(engine)

        await engine.send(SetPolicy(policy="heuristic"))
        await eventually(lambda: training(engine).policy == "heuristic", "the operator's heuristic")

        await engine.send(SetPolicy(policy="no such thing"))
        await eventually(lambda: any("refused: heuristic, learned or" in t for t in lines(engine)), "a refusal")
        assert training(engine).policy == "heuristic"
    finally:
        await engine.stop()
