"""The same decision points as a gymnasium environment, learned by stable-baselines3 (sb3-contrib's MaskablePPO).

`GrowthEnv`: one episode per `reset`, one step per decision point. The episode's Trainer runs in a thread of the
environment's process and stops at each decision point (the controller's PolicyHook) until `step` gives the
action; an action is an index into a fixed list (wait, germinate blueprint b into slot s for every pair, fossilize,
prune), and `action_masks` says which are legal now (a busy slot, an embargoed pair, a judgement's two choices).
The observation is training/learned.py's state features and whether the point is a judgement. The reward of a
step is the validation gained since the previous step (points) less the rent of a seed kept and the penalty of a
seed pruned in between: summed over an episode, the same return as the bandit's learning curve (reward.py).

`train_ppo` runs `episodes` episodes in worker processes (SubprocVecEnv), and reports each episode's return and,
per update, PPO's entropy and value loss: the reference's PPO collapsed on both, so both are watched.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from esper_tui.engine.config import TrainingConfig
from esper_tui.engine.contracts import SeedHealth
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.simic.episode import EpisodeSpec, Recorder, blueprint_params, build_trainer
from esper_tui.engine.simic.reward import RewardSpec
from esper_tui.engine.training.control import TrainingControl
from esper_tui.engine.training.controller import Controller, Decision, EpochState
from esper_tui.engine.training.kernel_source import KernelOffer
from esper_tui.engine.training.learned import GROW_CHOICES, HISTORY, STATE_FEATURES, Layout, state_features
from esper_tui.engine.vocabulary import Action

_END = None
OBS_SHAPE = (len(STATE_FEATURES) + 1,)


@dataclass
class _Point:
    obs: np.ndarray
    mask: np.ndarray


@dataclass
class _Bridge:
    """The PolicyHook the episode's thread calls: hands each decision point over and waits for the action."""

    env: GrowthEnv
    history: list[float] = field(default_factory=list)

    def ready(self, state: EpochState) -> bool:
        self.history = [*self.history[-(HISTORY - 1) :], state.val_metric]
        return True

    def _ask(self, obs: list[float], judging: bool, mask: np.ndarray) -> int:
        self.env.points.put(_Point(np.array([*obs, float(judging)], dtype=np.float32), mask))
        action: int = self.env.actions.get()
        return action

    def grow(self, controller: Controller, state: EpochState, options: list[tuple[KernelOffer, str]]) -> Decision:
        env = self.env
        mask = np.zeros(env.n_actions, dtype=np.bool_)
        mask[0] = True
        legal = {}
        for offer, slot in options[:GROW_CHOICES]:
            i = env.germinate_index(offer.blueprint_id, slot)
            if i is not None:
                mask[i], legal[i] = True, (offer, slot)
        obs = state_features(controller, state, self.history)
        a = self._ask(obs, False, mask)
        if a in legal:
            offer, slot = legal[a]
            return Decision(Action.GERMINATE, slot, offer.blueprint_id, "ppo")
        return Decision(Action.WAIT, reason="ppo")

    def judge(self, controller: Controller, state: EpochState, seed: SeedHealth) -> Decision | None:
        env = self.env
        mask = np.zeros(env.n_actions, dtype=np.bool_)
        mask[-2:] = True
        obs = state_features(controller, state, self.history, seed)
        a = self._ask(obs, True, mask)
        action = Action.FOSSILIZE if a == env.n_actions - 2 else Action.PRUNE
        return Decision(action, seed.slot, seed.blueprint_id, "ppo")


class GrowthEnv(gym.Env[np.ndarray, np.int64]):
    """A growth run as an environment: reset starts an episode, each step answers one decision point."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self, layout: Layout, specs: Callable[[int], EpisodeSpec], reward: RewardSpec, base: TrainingConfig
    ) -> None:
        self.layout = layout
        self.specs = specs
        self.reward_spec = reward
        self.base = base
        self.n_actions = 1 + len(layout.blueprints) * len(layout.slots) + 2
        self.action_space = spaces.Discrete(self.n_actions)
        self.observation_space = spaces.Box(-50.0, 50.0, OBS_SHAPE, np.float32)
        self.points: queue.Queue[_Point | None] = queue.Queue()
        self.actions: queue.Queue[int] = queue.Queue()
        self.episode = -1
        self._thread: threading.Thread | None = None
        self._control: TrainingControl | None = None
        self._recorder = Recorder()
        self._mask = np.ones(self.n_actions, dtype=np.bool_)
        self._val_at = 0.0
        self._seen = 0
        self._catalog = Catalog()
        self._sizes: dict[str, int] = {}

    def germinate_index(self, blueprint_id: str, slot: str) -> int | None:
        if blueprint_id not in self.layout.blueprints or slot not in self.layout.slots:
            return None
        return 1 + self.layout.blueprints.index(blueprint_id) * len(self.layout.slots) + self.layout.slots.index(slot)

    def action_masks(self) -> np.ndarray:
        return self._mask

    def _stop(self) -> None:
        if self._thread is not None and self._control is not None:
            self._control.stop()
            while self._thread.is_alive():
                self.actions.put(0)  # unblock a hook waiting for an action
                self._thread.join(0.05)
        self._thread = None
        self.points = queue.Queue()
        self.actions = queue.Queue()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._stop()
        self.episode = seed if seed is not None else self.episode + 1  # a seeded reset replays that episode
        spec = self.specs(self.episode)
        self._recorder, self._control = Recorder(), TrainingControl()
        trainer = build_trainer(spec, self.base, self._recorder, self._control, self._catalog)
        trainer.controller.policy = _Bridge(self)
        points = self.points

        def run() -> None:
            try:
                trainer.run()
            finally:
                points.put(_END)

        self._thread = threading.Thread(target=run, name="simic-episode", daemon=True)
        timer = threading.Timer(spec.wall_s, self._control.stop)
        timer.daemon = True
        timer.start()
        self._thread.start()
        self._val_at, self._seen = 0.0, 0
        obs, _, done, _, info = self._next()
        if done:  # an episode without a single decision point: start another
            return self.reset()
        return obs, info

    def _penalties(self) -> float:
        """Rent and waste for the seeds kept or pruned since the last step."""
        cost = 0.0
        new = self._recorder.decisions[self._seen :]
        self._seen = len(self._recorder.decisions)
        for _, d in new:
            if d.blueprint_id is None:
                continue
            if d.action is Action.PRUNE:
                cost += self.reward_spec.waste
            elif d.action is Action.FOSSILIZE:
                if d.blueprint_id not in self._sizes:
                    self._sizes[d.blueprint_id] = blueprint_params(self._catalog, d.blueprint_id, self.base.hidden)
                cost += self.reward_spec.rent_per_kparam * self._sizes[d.blueprint_id] / 1000
        return cost

    def _next(self) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        point = self.points.get()
        val = self._recorder.val[-1] if self._recorder.val else 0.0
        first = self._val_at == 0.0 and self._seen == 0 and len(self._recorder.val) <= 1
        reward = 0.0 if first else 100.0 * (val - self._val_at) - self._penalties()
        self._val_at = val
        if point is _END:
            self._thread = None
            self._mask = np.ones(self.n_actions, dtype=np.bool_)
            return np.zeros(OBS_SHAPE, dtype=np.float32), reward, True, False, {}
        self._mask = point.mask
        return point.obs, reward, False, False, {}

    def step(self, action: np.int64) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.actions.put(int(action))
        return self._next()

    def close(self) -> None:
        self._stop()


@dataclass
class PpoCurve:
    returns: list[float] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)  # PPO's entropy loss per update (-entropy)
    value_loss: list[float] = field(default_factory=list)


def train_ppo(
    layout: Layout,
    specs: Callable[[int], EpisodeSpec],
    reward: RewardSpec,
    episodes: int,
    workers: int,
    base: TrainingConfig | None = None,
    on_episode: Callable[[PpoCurve], None] | None = None,
) -> PpoCurve:
    """MaskablePPO on `episodes` episodes (`specs(i)`: the i-th; env k plays i = k, k + workers, ...)."""
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    cfg = base or TrainingConfig()
    curve = PpoCurve()

    def make(k: int) -> Callable[[], GrowthEnv]:
        return lambda: GrowthEnv(layout, lambda i: specs(k + i * workers), reward, cfg)

    fns: list[Callable[[], gym.Env[Any, Any]]] = [make(k) for k in range(workers)]
    vec = SubprocVecEnv(fns, start_method="spawn") if workers > 1 else DummyVecEnv(fns)
    running = np.zeros(workers)

    class Episodes(BaseCallback):
        def _on_step(self) -> bool:
            running[:] += self.locals["rewards"]
            for k, done in enumerate(self.locals["dones"]):
                if done:
                    curve.returns.append(float(running[k]))
                    running[k] = 0.0
                    if on_episode is not None:
                        on_episode(curve)
            return len(curve.returns) < episodes

        def _on_rollout_start(self) -> None:
            """The previous update's figures (PPO trains after a rollout ends; its logger keeps them until the
            next dump, after this rollout)."""
            values = self.model.logger.name_to_value
            if "train/entropy_loss" in values:
                curve.entropy.append(float(values["train/entropy_loss"]))
                curve.value_loss.append(float(values["train/value_loss"]))

    model = MaskablePPO(
        "MlpPolicy", vec, n_steps=16, batch_size=16, n_epochs=4, gamma=0.99, ent_coef=0.01, seed=0, device="cpu"
    )
    try:
        model.learn(total_timesteps=10**9, callback=Episodes())
    finally:
        vec.close()
    return curve
