"""Simic's training run on tiny episodes: rewards, the bandit, the checkpoint, the gate, the library, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from esper_tui.engine.config import EsperConfig, LibraryConfig
from esper_tui.engine.library.policies import open_policies
from esper_tui.engine.library.signing import load_or_create_key
from esper_tui.engine.simic.episode import EpisodeResult, EpisodeSpec, Seed, run_episode
from esper_tui.engine.simic.reward import RewardSpec, decision_rewards, episode_return
from esper_tui.engine.simic.status import SimicError, verdicts
from esper_tui.engine.simic.trainer import Plan, Simic
from esper_tui.engine.training.learned import Arm, DecisionPoint
from esper_tui.engine.vocabulary import Action

CLI = [sys.executable, "-m", "esper_tui"]
TINY = """
[simic]
episodes = 2
episode_epochs = 4
workers = 1
gate_seeds = 1
gate_epochs = 4
"""


def tiny_config(episodes: int = 2) -> EsperConfig:
    config = EsperConfig()
    simic = msgspec.structs.replace(
        config.simic, episodes=episodes, episode_epochs=4, workers=1, gate_seeds=1, gate_epochs=4
    )
    return msgspec.structs.replace(config, simic=simic)


def inline(specs: list[EpisodeSpec]) -> list[EpisodeResult]:
    return [run_episode(s) for s in specs]


def point(epoch: int, action: Action, slot: str | None = None) -> DecisionPoint:
    arm = Arm(action, slot, "mlp_block" if slot else None)
    return DecisionPoint(epoch, "grow", [[float(epoch)]], 0, [arm], 0.5)


def test_rewards_pay_for_validation_gained_not_for_growth() -> None:
    spec = EpisodeSpec(data_seed=1, train_seed=1, epochs=6, wall_s=9, data_dir="-")
    result = EpisodeResult(spec=spec, val=[0.50, 0.50, 0.52, 0.54, 0.54, 0.54])
    result.points = [point(1, Action.WAIT), point(2, Action.GERMINATE, "s0"), point(3, Action.GERMINATE, "s1")]
    result.seeds = [Seed("s0", "mlp_block", 2, "pruned", 5, 8000), Seed("s1", "mlp_block", 3, "kept", 6, 8000)]
    r = RewardSpec(horizon=3, rent_per_kparam=0.05, waste=1.0)
    (_, wait), (_, wasted), (_, kept) = decision_rewards(result, r)
    assert wait == pytest.approx(100 * ((0.50 + 0.52 + 0.54) / 3 - 0.50))
    assert wasted == pytest.approx(100 * ((0.52 + 0.54 + 0.54) / 3 - 0.50) - 1.0)  # the penalty for a wasted graft
    assert kept == pytest.approx(100 * ((0.54 + 0.54 + 0.54) / 3 - 0.52) - 0.4)  # the rent of 8000 parameters
    assert episode_return(result, r) == pytest.approx(4.0 - 1.0 - 0.4)


def test_a_tiny_training_stores_gates_records_and_resumes(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path)
    config = tiny_config()
    progress = Simic(config, tmp_path, key, Plan.from_config(config)).train(inline)
    assert progress.finished and progress.episodes_done == 2 and len(progress.returns) == 2
    assert progress.candidate == "v0001" and progress.verdict is not None and progress.verdict.reasons
    [verdict] = verdicts(tmp_path)
    assert verdict.candidate == "v0001" and verdict.seeds == [2000] and verdict.current == "heuristic"
    policies = open_policies(LibraryConfig(), tmp_path, key)
    meta, tensors = policies.load("v0001")
    assert meta.episodes == 2 and tensors["theta"].shape[0] > 0
    published = policies.published()
    assert (published is not None) == verdict.passed == verdict.published
    names = {json.loads(line)["name"] for line in (tmp_path / "simic" / "telemetry.jsonl").read_text().splitlines()}
    assert names == {"simic.training.reward", "simic.training.loss", "simic.validation.pass"}
    # resumed with one more episode: it continues from its checkpoint and makes the next candidate
    more = tiny_config(episodes=3)
    progress = Simic(more, tmp_path, key, Plan.from_config(more)).train(inline)
    assert progress.episodes_done == 3 and len(progress.returns) == 3 and progress.candidate == "v0002"
    # a checkpoint altered by hand is never trusted
    ck = tmp_path / "simic" / "checkpoint"
    data = bytearray(ck.read_bytes())
    data[-2] ^= 0x01
    ck.write_bytes(bytes(data))
    with pytest.raises(SimicError, match="fails its signature"):
        Simic(more, tmp_path, key, Plan.from_config(more)).train(inline)


@pytest.mark.slow
def test_the_cli_trains_in_worker_processes_and_tamiyo_follows_the_published_policy(tmp_path: Path) -> None:
    """`simic train` with a progress line per round, `simic status`, then `--policy learned` in a real engine run:
    its last snapshot names the learned version; a tampered file given as --policy falls back and says so."""
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY)
    state = tmp_path / "state"
    env = {**os.environ}
    train = subprocess.run(
        [*CLI, "simic", "train", "--state-dir", str(state), "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert train.returncode == 0, train.stderr[-2000:]
    assert "2/2 episodes" in train.stderr and "candidate v0001" in train.stdout
    status = subprocess.run(
        [*CLI, "simic", "status", "--state-dir", str(state), "--json"], capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 0 and json.loads(status.stdout)["versions"] == ["v0001"]
    key = load_or_create_key(state)
    policies = open_policies(LibraryConfig(), state, key)
    if policies.published() is None:  # the gate may refuse so small a policy: publish it by hand for Tamiyo's side
        policies.publish("v0001", "test")

    def engine_run(epochs: int, policy: str) -> subprocess.CompletedProcess[str]:
        args = ["--no-ui", "--eager", "--epochs", str(epochs), "--json", "--interval", "0.2", "--policy", policy]
        return subprocess.run(
            [*CLI, *args, "--state-dir", str(state)], capture_output=True, text=True, timeout=300, env=env
        )

    run = engine_run(4, "learned")
    assert run.returncode == 0, run.stderr[-2000:]
    last = json.loads([line for line in run.stdout.splitlines() if line.startswith("{")][-1])
    assert last["training"]["policy"] == "learned v0001"
    bad = tmp_path / "bad.policy"  # the run below resumes at epoch 4 from the checkpoint above and trains 5-6
    data = bytearray(policies.backend.get("v0001") or b"")
    data[-4] ^= 0x01
    bad.write_bytes(bytes(data))
    run = engine_run(6, str(bad))
    assert run.returncode == 0, run.stderr[-2000:]
    snapshots = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert snapshots[-1]["training"]["policy"] == "heuristic"
    texts = {e["text"] for snap in snapshots for e in snap["events"]}
    assert any("policy refused" in t and "altered" in t and "heuristic decides" in t for t in texts), texts


def test_bad_flags_are_one_line_and_exit_2(tmp_path: Path) -> None:
    for args in (
        ["simic", "train", "--task", "digits"],
        ["simic", "train", "--episodes", "0"],
        ["--no-ui", "--policy", "sometimes"],
    ):
        proc = subprocess.run([*CLI, *args, "--state-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and proc.stderr.count("\n") <= 3, proc.stderr


def test_field_reports_become_the_bandits_first_samples(tmp_path: Path) -> None:
    from esper_tui.engine.simic.experience import report_samples
    from esper_tui.engine.training.learned import Layout
    from esper_tui.engine.training.reports import FieldReport, reports_path

    def report(epoch: int, action: str, slot: str, seed: str, gain: float) -> FieldReport:
        return FieldReport(
            epoch=epoch,
            action=action,
            slot=slot,
            blueprint_id="mlp_block",
            reason="r",
            val_metric=0.6,
            outcome_epoch=epoch + 5,
            val_metric_after=0.6 + gain,
            gain=gain,
            seed=seed,
            run_id="run",
        )

    path = reports_path(tmp_path)
    path.parent.mkdir(parents=True)
    lines = [
        report(3, "germinate", "s0", "in flight (blending)", 0.02),  # kept later, as the next report settles
        report(13, "fossilize", "s0", "kept", 0.0),
        report(20, "germinate", "s1", "pruned", -0.01),
        report(25, "germinate", "s9", "pruned", 0.0),  # a slot the policy does not know: still a blueprint sample
    ]
    path.write_bytes(b"".join(msgspec.json.encode(r) + b"\n" for r in lines))
    layout = Layout(["mlp_block", "conv1d_block"], ["s0", "s1"])
    r = RewardSpec(rent_per_kparam=0.0, waste=1.0)
    samples = report_samples(tmp_path, layout, r)
    assert [round(v, 6) for _, v in samples] == [2.0, -2.0, -1.0]
    assert report_samples(tmp_path / "none", layout, r) == []
