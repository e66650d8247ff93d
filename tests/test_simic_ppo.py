"""The same decision points as a gymnasium environment, and MaskablePPO learning over it (tiny episodes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gymnasium.utils.env_checker import check_env

from esper_tui.engine.config import TrainingConfig
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.kernels.shapes import vector
from esper_tui.engine.simic.episode import EpisodeSpec
from esper_tui.engine.simic.ppo import GrowthEnv, train_ppo
from esper_tui.engine.simic.reward import RewardSpec
from esper_tui.engine.training.learned import Layout

LAYOUT = Layout([b.blueprint_id for b in Catalog().fitting(vector(40, 64))], ["s0", "s1"])


def specs(tmp_path: Path, epochs: int = 3):
    def spec(i: int) -> EpisodeSpec:
        return EpisodeSpec(data_seed=1000, train_seed=i, epochs=epochs, wall_s=60.0, data_dir=str(tmp_path))

    return spec


def test_an_episode_steps_through_its_decision_points_with_legal_masks(tmp_path: Path) -> None:
    env = GrowthEnv(LAYOUT, specs(tmp_path), RewardSpec(), TrainingConfig())
    try:
        obs, _ = env.reset(seed=0)
        assert obs.shape == env.observation_space.shape and obs[-1] == 0.0  # a grow point first
        mask = env.action_masks()
        assert mask[0] and mask.sum() > 1 and not mask[-2:].any()  # wait, some germinations, no judgement
        germinate = int(np.flatnonzero(mask)[1])
        steps, done = 0, False
        while not done:
            obs, reward, done, _, _ = env.step(np.int64(germinate if steps == 0 else 0))
            assert np.isfinite(reward)
            steps += 1
        assert steps >= 1
    finally:
        env.close()


def test_the_environment_passes_gymnasiums_checks(tmp_path: Path) -> None:
    env = GrowthEnv(LAYOUT, specs(tmp_path, epochs=2), RewardSpec(), TrainingConfig())
    try:
        check_env(env, skip_render_check=True)
    finally:
        env.close()


def test_maskable_ppo_learns_over_a_few_episodes_and_reports_its_curve(tmp_path: Path) -> None:
    curve = train_ppo(LAYOUT, specs(tmp_path), RewardSpec(), episodes=3, workers=1)
    assert len(curve.returns) >= 3 and all(np.isfinite(curve.returns))
