"""Simic's training run: episodes in worker processes, the bandit learning from them, the gate, the library.

`train` runs rounds of `workers` episodes at once (a process pool: the engine's loop and the training process
never share a core-hungry interpreter with it), each episode on a training data seed of its own, the bandit
choosing with LinUCB's optimism; after each round the bandit learns from the round's decisions and the run writes
its checkpoint (`<state>/simic/checkpoint`, signed with the engine's key, so a resumed run never trusts a file it
did not write) and its status (`status.json`, what `simic status` and the control room read). Once all episodes
are done the candidate is signed and stored in the library as the next version, gated on held-out data seeds,
the verdict recorded, and, if it passed, published (the library's signed pointer, and the Oona policy stream
when a Redis bus is configured).

Telemetry (`telemetry.jsonl` beside the checkpoint; seed 004's names): `simic.training.reward` (each episode's
return), `simic.training.loss` (the bandit's prediction error on each round before learning it),
`simic.validation.pass` (1 or 0 per verdict).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import msgspec
import torch

from esper_tui.engine.config import EsperConfig
from esper_tui.engine.fsutil import fsync_dir, write_all, write_durable
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.kernels.shapes import vector
from esper_tui.engine.library import signing
from esper_tui.engine.library.policies import Policies, Published, open_policies
from esper_tui.engine.library.policy_file import PolicyInvalid, PolicyMeta, encode
from esper_tui.engine.simic import gate
from esper_tui.engine.simic.bandit import LinUCB
from esper_tui.engine.simic.episode import TASK, EpisodeResult, EpisodeSpec, run_episode
from esper_tui.engine.simic.experience import report_samples
from esper_tui.engine.simic.reward import RewardSpec, decision_rewards, episode_return
from esper_tui.engine.simic.status import SIMIC_DIR, Progress, SimicError, Verdict, record_verdict
from esper_tui.engine.training.learned import KIND, STATE_FEATURES, Layout
from esper_tui.engine.vocabulary import Struct

TRAIN_DATA_SEEDS = tuple(range(1000, 1008))  # the episodes' data; held-out seeds never come from here
GATE_DATA_SEED = 2000  # the gate's held-out seeds: 2000, 2001, ...
BENCH_DATA_SEED = 3000  # the benchmark's: 3000, 3001, ... (neither trained nor gated on)


@dataclass(frozen=True)
class Plan:
    episodes: int
    epochs: int
    wall_s: float
    workers: int
    reward: RewardSpec
    explore: float
    epsilon: float
    gate_seeds: int
    gate_epochs: int

    @classmethod
    def from_config(cls, config: EsperConfig, *, episodes: int | None = None, quick: bool = False) -> Plan:
        s = config.simic
        return cls(
            episodes=episodes or (min(s.episodes, 16) if quick else s.episodes),
            epochs=min(s.episode_epochs, 30) if quick else s.episode_epochs,
            wall_s=s.episode_wall_s,
            workers=s.workers,
            reward=RewardSpec(s.horizon_epochs, s.rent_per_kparam, s.wasted_graft_penalty),
            explore=s.exploration,
            epsilon=s.epsilon,
            gate_seeds=min(s.gate_seeds, 2) if quick else s.gate_seeds,
            gate_epochs=min(s.gate_epochs, 40) if quick else s.gate_epochs,
        )


class Checkpoint(Struct, kw_only=True):
    progress: Progress
    a: list[list[float]]
    b: list[float]
    samples: int


@dataclass
class Simic:
    """One `simic train` over a state directory."""

    config: EsperConfig
    state_dir: Path
    key: bytes
    plan: Plan
    on_round: Callable[[Progress], None] | None = None

    @property
    def dir(self) -> Path:
        return self.state_dir / SIMIC_DIR

    def layout(self) -> Layout:
        shape = vector(40, self.config.training.hidden)
        blueprints = [bp.blueprint_id for bp in Catalog().fitting(shape)]
        return Layout(blueprints, [f"s{i}" for i in range(self.config.training.slots)])

    # ------------------------------------------------------------------ checkpoint

    def _load(self, layout: Layout) -> tuple[Progress, LinUCB]:
        path = self.dir / "checkpoint"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            progress = Progress(episodes_total=self.plan.episodes, blueprints=layout.blueprints, slots=layout.slots)
            return progress, LinUCB(layout.dim)
        signature, _, body = raw.partition(b"\n")
        if not signing.verify(self.key, body, signature.decode(errors="replace")):
            raise SimicError(f"{path}: fails its signature (altered, or another key's): remove it to start afresh")
        try:
            ck = msgspec.msgpack.decode(body, type=Checkpoint)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise SimicError(f"{path}: does not decode ({exc}): remove it to start afresh") from None
        if ck.progress.blueprints != layout.blueprints or ck.progress.slots != layout.slots:
            raise SimicError(f"{path}: trained for other blueprints or slots: remove it to start afresh")
        bandit = LinUCB.from_tensors(
            {"a": torch.tensor(ck.a), "b": torch.tensor(ck.b), "samples": torch.tensor([ck.samples])}
        )
        done = ck.progress.episodes_done
        progress = msgspec.structs.replace(
            ck.progress,
            episodes_total=max(self.plan.episodes, done),
            finished=ck.progress.finished and done >= self.plan.episodes,
        )
        return progress, bandit

    def _save(self, progress: Progress, bandit: LinUCB) -> None:
        ck = Checkpoint(progress=progress, a=bandit.a.tolist(), b=bandit.b.tolist(), samples=bandit.samples)
        body = msgspec.msgpack.encode(ck)
        _atomic(self.dir / "checkpoint", signing.sign(self.key, body).encode() + b"\n" + body)
        _atomic(self.dir / "status.json", msgspec.json.encode(progress))

    def _telemetry(self, name: str, value: float, **labels: object) -> None:
        line = msgspec.json.encode({"ts": time.time(), "name": name, "value": value, **labels}) + b"\n"
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "telemetry.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            write_all(fd, line)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ episodes

    def _spec(self, i: int, bandit: LinUCB, layout: Layout, *, explore: float) -> EpisodeSpec:
        """Episode i: its own training data seed and weights; exploration decays from epsilon to a tenth of it."""
        total = max(1, self.plan.episodes)
        return EpisodeSpec(
            data_seed=TRAIN_DATA_SEEDS[i % len(TRAIN_DATA_SEEDS)],
            train_seed=i,
            epochs=self.plan.epochs,
            wall_s=self.plan.wall_s,
            data_dir=str(self.state_dir / "data"),
            theta=bandit.theta.tolist(),
            layout=(layout.blueprints, layout.slots),
            a_inv=bandit.a_inv.tolist() if explore > 0 else None,
            explore=explore,
            epsilon=self.plan.epsilon * max(0.1, 1.0 - i / total),
        )

    def train(self, pool: Pool) -> Progress:
        """Run the episodes still to do (resuming from the checkpoint), then build, gate and publish."""
        layout = self.layout()
        progress, bandit = self._load(layout)
        if progress.episodes_done == 0 and bandit.samples == 0:  # a fresh run starts from the field reports
            warm = report_samples(self.state_dir, layout, self.plan.reward, self.config.training.hidden)
            bandit.update(warm)
            progress = msgspec.structs.replace(progress, field_reports=len(warm))
        while progress.episodes_done < progress.episodes_total:
            t0 = time.perf_counter()
            n = min(self.plan.workers, progress.episodes_total - progress.episodes_done)
            first = progress.episodes_done
            specs = [self._spec(first + k, bandit, layout, explore=self.plan.explore) for k in range(n)]
            results = pool(specs)
            pairs = [pair for r in results for pair in decision_rewards(r, self.plan.reward)]
            loss = bandit.loss(pairs)
            bandit.update(pairs)
            returns = [episode_return(r, self.plan.reward) for r in results]
            for k, ret in enumerate(returns):
                self._telemetry("simic.training.reward", ret, episode=first + k + 1)
            if loss is not None:
                self._telemetry("simic.training.loss", loss, episode=first + n)
            progress = msgspec.structs.replace(
                progress,
                episodes_done=first + n,
                returns=[*progress.returns, *returns],
                losses=[*progress.losses, loss] if loss is not None else progress.losses,
                wall_s=progress.wall_s + time.perf_counter() - t0,
                updated_ts=time.time(),
            )
            self._save(progress, bandit)
            if self.on_round is not None:
                self.on_round(progress)
        if not progress.finished:
            progress = self._conclude(progress, bandit, layout, pool)
            self._save(progress, bandit)
        return progress

    # ------------------------------------------------------------------ candidate, gate, publish

    def _conclude(self, progress: Progress, bandit: LinUCB, layout: Layout, pool: Pool) -> Progress:
        policies = open_policies(self.config.library, self.state_dir, self.key)
        try:
            published = policies.published()
        except PolicyInvalid:
            published = None  # an unreadable pointer: the candidate is judged against the heuristic alone
        meta = PolicyMeta(
            version=policies.next_version(),
            kind=KIND,
            task=TASK,
            features=list(STATE_FEATURES),
            blueprints=layout.blueprints,
            slots=layout.slots,
            episodes=progress.episodes_done,
            parent=published.version if published is not None else "",
            note=f"LinUCB, {bandit.samples} decisions ({progress.field_reports} from field reports), "
            f"reward {self.plan.reward}",
        )
        stored = policies.store(encode(meta, {"theta": bandit.theta}, self.key))
        verdict = self._gate(policies, stored.version, published, pool)
        if verdict.passed:
            why = "; ".join(verdict.reasons)
            policies.publish(stored.version, why)
            verdict = msgspec.structs.replace(
                verdict, published=True, reasons=[*verdict.reasons, *self._announce(stored.version, verdict)]
            )
        record_verdict(self.state_dir, verdict)
        self._telemetry("simic.validation.pass", 1.0 if verdict.passed else 0.0, candidate=stored.version)
        return msgspec.structs.replace(
            progress,
            candidate=stored.version,
            current=stored.version if verdict.passed else (published.version if published else "heuristic"),
            verdict=verdict,
            finished=True,
            updated_ts=time.time(),
        )

    def _gate(self, policies: Policies, version: str, published: Published | None, pool: Pool) -> Verdict:
        seeds = [GATE_DATA_SEED + i for i in range(self.plan.gate_seeds)]
        heuristic = EpisodeSpec(
            data_seed=0,
            train_seed=0,
            epochs=self.plan.gate_epochs,
            wall_s=self.plan.wall_s * 4,
            data_dir=str(self.state_dir / "data"),
            version="heuristic",
        )
        candidate = self._policy_spec(policies, version, heuristic)
        current = self._policy_spec(policies, published.version, heuristic) if published is not None else None
        return gate.judge(candidate, heuristic, current, seeds, self.plan.gate_epochs, pool)

    @staticmethod
    def _policy_spec(policies: Policies, version: str, base: EpisodeSpec) -> EpisodeSpec:
        meta, tensors = policies.load(version)
        theta = tensors["theta"].tolist()
        return replace(base, theta=theta, layout=(list(meta.blueprints), list(meta.slots)), version=version)

    def _announce(self, version: str, verdict: Verdict) -> list[str]:
        """Tell every engine on the Oona policy stream (a Redis bus only); the words for the verdict's reasons."""
        url = self.config.bus.redis_url
        if not url:
            return [f"published {version} in the library (no Redis bus configured: no Oona announcement)"]
        stream = f"{self.config.bus.stream_prefix}.policy"
        try:
            import redis

            client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
            try:
                body = msgspec.msgpack.encode({"version": version, "verdict_id": verdict.verdict_id, "ts": time.time()})
                client.xadd(stream, {"policy": body}, maxlen=1000, approximate=True)
            finally:
                client.close()
        except Exception as exc:  # the library holds the truth; a missed announcement is said, not fatal
            return [f"published {version} in the library; Oona announcement on {stream} failed: {exc}"]
        return [f"published {version} in the library and announced on {stream}"]


Pool = Callable[[list[EpisodeSpec]], list[EpisodeResult]]


def process_pool(workers: int) -> tuple[Pool, Callable[[], None]]:
    """Episodes in `workers` spawned processes (a fresh interpreter each: no fork of a threaded parent)."""
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))

    def play(specs: list[EpisodeSpec]) -> list[EpisodeResult]:
        return list(executor.map(run_episode, specs))

    return play, lambda: executor.shutdown(wait=True, cancel_futures=True)


def _atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_durable(tmp, data)
    os.replace(tmp, path)
    fsync_dir(path.parent)
