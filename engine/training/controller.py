"""Tamiyo's heuristic: when to grow a seed, how far to take it, and whether to keep it.

Pure decision logic over what the training loop reports each epoch (no tensors), so it is cheap to
test and deterministic: the same sequence of epoch states always yields the same decisions.

Split discipline: every decision reads `EpochState`, which carries the validation metric (a split
carved from the training samples) and nothing of the test split, so no decision can be tuned on the
number the run reports.

The metric is the task's (`MetricInfo`): higher or lower may be better, and it may be a fraction or a loss of
any size. Every comparison goes through its direction (`gain`: positive when better), and the thresholds
(`plateau_delta`, `fossilize_margin`, `collapse`) are relative to it (`MetricInfo.scale`): a fraction of the
range for a percent metric (0.005 of accuracy = 0.5 points, as before), else of the value's magnitude.

The policy:
- Germinate when the validation metric has plateaued (no new best by `plateau_delta` within the last
  `plateau_epochs` epochs), a slot is DORMANT, kernels are offered, and no other seed is in flight.
  One seed at a time, because a seed is judged by the metric's change since it germinated; two growing
  together would share (and blur) that signal.
- A blueprint is offered per slot shape, and germinates only in a dormant slot of the shape it was offered for.
- Blueprint choice rotates through the offers ranked by (times pruned, times tried, catalog priority,
  risk, measured step time): never-pruned first, then the least tried, the most promising, the safest,
  the fastest.
- Advance GERMINATED -> TRAINING -> BLENDING -> HOLDING by epochs in stage.
- In HOLDING, after `holding_epochs`: fossilize on a gain of at least `fossilize_margin`, prune on a
  loss; an in-between result may hold as long again before it is pruned for bringing nothing.
- Prune at once, at any in-flight stage, a seed whose gradients explode or vanish, or one that makes
  the metric worse by `collapse` or more while it is blended in.
After a seed is judged, the plateau window restarts, so the host is measured afresh before the next one.

No churn (a memorising host starves every seed of gradient, and the old rule re-grew one every epoch):
- a blueprint that failed in a slot is not tried there again before `embargo_epochs * 2**(n-1)` epochs
  have passed, n being its failures there;
- failures in a row hold all growth back the same way (the wait doubles with each);
- after `give_up_after` failures in a row Tamiyo stops growing for the run, and says why once.
A seed that is kept resets the run of failures.

A learned policy (`policy`, a `PolicyHook`; Simic trains it, training/learned.py follows it) may take the two
choices that are judgement, not bookkeeping: whether and what to germinate once growth is allowed (no seed in
flight, the failure back-off over), and whether a held seed is kept, pruned or held longer. The guards stay the
heuristic's: gradients exploding or vanishing, a collapse while blended, the back-off and giving up, embargoes.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Protocol

from esper_tui.engine.config import TrainingConfig
from esper_tui.engine.contracts import SeedHealth
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.training.kernel_source import KernelOffer
from esper_tui.engine.vocabulary import ACCURACY, Action, MetricInfo, SeedStage

S = SeedStage
_IN_FLIGHT = frozenset({S.GERMINATED, S.TRAINING, S.BLENDING, S.HOLDING})
OPTIONS_SHOWN = 8
"""Offers a germination's decision lists (the catalog is a handful of blueprints per shape)."""
MEMORISED_LOSS = 1e-3  # a mean training loss below this: the host fits its samples, seeds see no gradient


@dataclass(frozen=True)
class Decision:
    action: Action
    slot: str | None = None
    blueprint_id: str | None = None
    reason: str = ""
    notable: bool = False  # a WAIT worth one event (e.g. why growth stopped); other WAITs stay silent
    options: tuple[str, ...] = field(default=(), compare=False)  # what was weighed, the chosen one first (explanation)


@dataclass(frozen=True)
class EpochState:
    """Everything a decision may read after an epoch; `val_metric` is in the metric's own units.

    There is deliberately no test-split field: the controller cannot see the reported number.
    `train_loss` is the mean loss over the epoch's training steps (it tells a memorising host).
    `slot_shapes` names each slot's shape tag: an offer goes only to a slot of its `shape` (with no map, every
    offer fits every slot)."""

    epoch: int
    val_metric: float
    seeds: tuple[SeedHealth, ...]
    offers: tuple[KernelOffer, ...]
    train_loss: float | None = None
    slot_shapes: dict[str, str] = field(default_factory=dict)

    def fits(self, slot: str, offer: KernelOffer) -> bool:
        return not self.slot_shapes or self.slot_shapes.get(slot) == offer.shape


@dataclass
class ControllerState:
    """The controller's memory as plain data (a checkpoint or a best-epoch restore carries it whole).

    Keys of the per-slot maps are "slot/blueprint"."""

    window_best: float | None = None  # best validation metric since the plateau window opened
    flat_epochs: int = 0  # epochs since the window last gained plateau_delta
    uses: dict[str, int] = field(default_factory=dict)
    pruned: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    retry_after: dict[str, int] = field(default_factory=dict)  # epoch from which the pair may be tried again
    failures_in_a_row: int = 0
    growth_after: int = 0  # no germination anywhere before this epoch
    last_failure: str = ""
    gave_up: bool = False


def _pair(slot: str, blueprint_id: str) -> str:
    return f"{slot}/{blueprint_id}"


class PolicyHook(Protocol):
    """A policy that takes Tamiyo's decision points in place of the heuristic (the guards stay the heuristic's)."""

    def ready(self, state: EpochState) -> bool:
        """Asked once per epoch, before any decision (between epochs: where a new policy may be loaded); False
        lets the heuristic decide this epoch (no policy yet, or it failed)."""
        ...

    def grow(self, controller: Controller, state: EpochState, options: list[tuple[KernelOffer, str]]) -> Decision:
        """WAIT, or GERMINATE one of `options` ((offer, dormant slot) pairs, the controller's ranking first)."""
        ...

    def judge(self, controller: Controller, state: EpochState, seed: SeedHealth) -> Decision | None:
        """A seed held for `holding_epochs`: FOSSILIZE, PRUNE or None to hold it longer (until twice as long)."""
        ...


class Controller:
    def __init__(
        self,
        cfg: TrainingConfig,
        catalog: Catalog,
        *,
        fossilize_margin: float | None = None,
        collapse: float = 0.05,
        germinated_epochs: int = 1,
        metric: MetricInfo = ACCURACY,
    ) -> None:
        self.cfg = cfg
        self.catalog = catalog
        self.metric = metric
        self.fossilize_margin = cfg.fossilize_margin if fossilize_margin is None else fossilize_margin
        self.collapse = collapse
        self.germinated_epochs = germinated_epochs
        self.s = ControllerState()
        self.policy: PolicyHook | None = None  # None: the heuristic decides everything
        self._learned = False  # this epoch's decision points are the policy's

    # ------------------------------------------------------------------ state

    def state(self) -> ControllerState:
        """A copy of the controller's memory (see ControllerState)."""
        return copy.deepcopy(self.s)

    def restore(self, state: ControllerState) -> None:
        self.s = copy.deepcopy(state)

    # ------------------------------------------------------------------ plateau

    def _observe(self, value: float) -> None:
        """Fold one epoch into the plateau window: constant memory, however long the run."""
        s, m = self.s, self.metric
        if s.window_best is None:
            s.window_best, s.flat_epochs = value, 0
            return
        progress = m.gain(value, s.window_best) >= self.cfg.plateau_delta * m.scale(s.window_best)
        s.flat_epochs = 0 if progress else s.flat_epochs + 1
        if m.better(value, s.window_best):
            s.window_best = value

    def _change(self, gain: float) -> str:
        """A seed's gain as the metric moved ("accuracy +1.2 points", "mse -0.0031")."""
        m = self.metric
        return f"{m.name} {m.format(gain if m.higher_is_better else -gain, signed=True)}"

    def _restart_window(self) -> None:
        self.s.window_best, self.s.flat_epochs = None, 0

    def plateau(self) -> int | None:
        """Epochs since the metric last beat its best by `plateau_delta`, once that is >= plateau_epochs."""
        if self.s.window_best is None:
            return None
        flat = self.s.flat_epochs
        return flat if flat >= self.cfg.plateau_epochs else None

    def rank(self, offers: tuple[KernelOffer, ...] | list[KernelOffer]) -> list[KernelOffer]:
        """Offers best first: (times pruned, times tried, -catalog priority, risk, step time, id).

        Priority comes before risk: it is the catalog's judgement of which families are worth growing
        first (on MNIST-1D the convolutional ones lift accuracy from ~60 % to ~90 %); the catalog says it once for
        every task (there is no per-task priority)."""
        known = [o for o in offers if o.blueprint_id in self.catalog]

        def key(o: KernelOffer) -> tuple[int, int, int, float, float, str]:
            step = o.step_ms if o.step_ms is not None else math.inf
            priority = self.catalog.get(o.blueprint_id).priority
            bp = o.blueprint_id
            return self.s.pruned.get(bp, 0), self.s.uses.get(bp, 0), -priority, o.risk, step, bp

        return sorted(known, key=key)

    # ------------------------------------------------------------------ decisions

    def _judge(self, seed: SeedHealth, state: EpochState) -> Decision | None:
        """The decision for one seed this epoch, or None to leave it be."""
        value = state.val_metric
        name, bp = seed.slot, seed.blueprint_id
        gain = seed.gain if seed.gain is not None else 0.0
        scale = self.metric.scale(value)
        n = seed.epochs_in_stage
        if seed.stage in _IN_FLIGHT and seed.stage is not S.GERMINATED and (seed.exploding or seed.vanishing):
            what = "exploding" if seed.exploding else "vanishing"
            return Decision(Action.PRUNE, name, bp, f"gradients {what} (norm {seed.grad_norm:.2e})")
        if seed.stage in (S.BLENDING, S.HOLDING) and gain <= -self.collapse * scale:
            return Decision(Action.PRUNE, name, bp, f"{self._change(gain)} since germination")
        if seed.stage is S.GERMINATED and n >= self.germinated_epochs:
            return Decision(
                Action.ADVANCE, name, bp, f"kernel loaded; training in isolation for {self.cfg.train_epochs} epochs"
            )
        if seed.stage is S.TRAINING and n >= self.cfg.train_epochs:
            return Decision(
                Action.ADVANCE,
                name,
                bp,
                f"trained {n} epochs in isolation; blending over {self.cfg.blend_epochs} epochs",
            )
        if seed.stage is S.BLENDING and n >= self.cfg.blend_epochs:
            return Decision(Action.ADVANCE, name, bp, f"blend complete; holding for {self.cfg.holding_epochs} epochs")
        if seed.stage is S.HOLDING and n >= self.cfg.holding_epochs and self._learned:
            held = self.policy.judge(self, state, seed) if self.policy is not None else None
            if held is not None or n < 2 * self.cfg.holding_epochs:
                return held
            return Decision(Action.PRUNE, name, bp, f"held {n} epochs without a verdict")
        if seed.stage is S.HOLDING and n >= self.cfg.holding_epochs:
            verdict = f"{self._change(gain)} since germination, now {self.metric.format(value)}"
            if gain >= self.fossilize_margin * scale:
                return Decision(Action.FOSSILIZE, name, bp, verdict)
            if gain < 0:
                return Decision(Action.PRUNE, name, bp, verdict)
            if n >= 2 * self.cfg.holding_epochs:
                bar = self.metric.format(self.fossilize_margin * scale, signed=True)
                return Decision(Action.PRUNE, name, bp, f"{verdict}: below the {bar} bar")
        return None

    def _wait_epochs(self, failures: int) -> int:
        """The back-off after `failures` failures: the embargo, doubled for each failure after the first."""
        return max(1, self.cfg.embargo_epochs) << (max(1, failures) - 1)

    def _failed(self, d: Decision, state: EpochState) -> Decision | None:
        """Book a pruned seed; the one WAIT that explains why growth stops, when this failure ends it."""
        s, bp = self.s, d.blueprint_id
        if bp is None or d.slot is None:
            return None
        s.pruned[bp] = s.pruned.get(bp, 0) + 1
        pair = _pair(d.slot, bp)
        s.failures[pair] = s.failures.get(pair, 0) + 1
        s.retry_after[pair] = state.epoch + self._wait_epochs(s.failures[pair])
        s.failures_in_a_row += 1
        s.growth_after = state.epoch + self._wait_epochs(s.failures_in_a_row)
        s.last_failure = f"last: {bp} in {d.slot}, {d.reason}"
        if s.failures_in_a_row < self.cfg.give_up_after or s.gave_up:
            return None
        s.gave_up = True
        why = f"stopped growing for this run: {s.failures_in_a_row} seeds failed in a row ({s.last_failure})"
        if state.train_loss is not None and state.train_loss < MEMORISED_LOSS:
            why += (
                f"; training loss {state.train_loss:.1e}: the network fits its training samples, "
                "so a new seed gets almost no gradient"
            )
        return Decision(Action.WAIT, reason=why, notable=True)

    def _germinate(self, state: EpochState) -> Decision:
        """Germinate if everything lines up; otherwise a WAIT that says why not."""
        s = self.s
        if s.gave_up:
            return Decision(Action.WAIT, reason="growth stopped for this run")
        if any(seed.stage in _IN_FLIGHT for seed in state.seeds):
            return Decision(Action.WAIT, reason="a seed is in flight")
        if self._learned:
            return self._policy_grows(state)
        flat = self.plateau()
        if flat is None:
            return Decision(
                Action.WAIT, reason=f"{self.metric.name} still improving ({self.metric.format(state.val_metric)})"
            )
        why = f"{self.metric.name} flat for {flat} epochs at {self.metric.format(state.val_metric)}"
        if state.epoch < s.growth_after:
            n = s.failures_in_a_row
            return Decision(
                Action.WAIT, reason=f"{why}, but {n} seeds failed in a row: waiting until epoch {s.growth_after}"
            )
        dormant = [seed.slot for seed in state.seeds if seed.stage is S.DORMANT]
        if not dormant:
            return Decision(Action.WAIT, reason=f"{why}, but no dormant slot")
        ranked = self.rank(state.offers)
        if not ranked:
            return Decision(Action.WAIT, reason=f"{why}, but no kernels offered yet")
        for offer in ranked:
            for slot in dormant:
                if state.fits(slot, offer) and state.epoch >= s.retry_after.get(_pair(slot, offer.blueprint_id), 0):
                    options = self._weighed(ranked, offer, slot, dormant, state)  # the ranks it was chosen by
                    s.uses[offer.blueprint_id] = s.uses.get(offer.blueprint_id, 0) + 1
                    return Decision(Action.GERMINATE, slot, offer.blueprint_id, why, options=options)
        return Decision(
            Action.WAIT, reason=f"{why}, but no offered blueprint fits a free slot without having failed there recently"
        )

    def options(self, state: EpochState) -> list[tuple[KernelOffer, str]]:
        """Every (offer, dormant slot) germination allowed now, best ranked first: the offer fits the slot's shape
        and the pair is not embargoed after a failure."""
        dormant = [seed.slot for seed in state.seeds if seed.stage is S.DORMANT]
        return [
            (offer, slot)
            for offer in self.rank(state.offers)
            for slot in dormant
            if state.fits(slot, offer) and state.epoch >= self.s.retry_after.get(_pair(slot, offer.blueprint_id), 0)
        ]

    def _policy_grows(self, state: EpochState) -> Decision:
        """The learned policy's growth decision, once the heuristic's back-off allows growth at all."""
        s = self.s
        if state.epoch < s.growth_after:
            return Decision(
                Action.WAIT, reason=f"{s.failures_in_a_row} seeds failed in a row: waiting until epoch {s.growth_after}"
            )
        options = self.options(state)
        if not options:
            return Decision(Action.WAIT, reason="no offered blueprint fits a free slot now")
        d = self.policy.grow(self, state, options) if self.policy is not None else Decision(Action.WAIT)
        if d.action is Action.GERMINATE and d.blueprint_id is not None:
            s.uses[d.blueprint_id] = s.uses.get(d.blueprint_id, 0) + 1
        return d

    def _weighed(
        self, ranked: list[KernelOffer], chosen: KernelOffer, slot: str, dormant: list[str], state: EpochState
    ) -> tuple[str, ...]:
        """The offers a germination weighed, the chosen one first, each with what ranked it (see `rank`) and why
        it was passed over; at most OPTIONS_SHOWN."""
        s = self.s

        def words(o: KernelOffer) -> str:
            bp = o.blueprint_id
            step = f"{o.step_ms:.2f} ms" if o.step_ms is not None else "step -"
            rank = (
                f"pruned {s.pruned.get(bp, 0)}, used {s.uses.get(bp, 0)}, "
                f"priority {self.catalog.get(bp).priority}, risk {o.risk:g}, {step}"
            )
            if o is chosen:
                served = f"{o.label}: {o.why}" if o.why else o.label
                return f"{bp} -> {slot}: chosen, serves {served} ({rank})"
            if not any(state.fits(name, o) for name in dormant):
                return f"{bp}: fits no free slot ({rank})"
            waits = min(s.retry_after.get(_pair(name, bp), 0) for name in dormant if state.fits(name, o))
            if state.epoch < waits:
                return f"{bp}: failed here recently, not before epoch {waits} ({rank})"
            return f"{bp}: ranked lower ({rank})"

        return tuple(words(o) for o in [chosen, *(o for o in ranked if o is not chosen)][:OPTIONS_SHOWN])

    def decide(self, state: EpochState) -> list[Decision]:
        """The decisions for this epoch (never empty: a lone WAIT says why nothing happens)."""
        self._observe(state.val_metric)
        self._learned = self.policy is not None and self.policy.ready(state)
        decisions = [d for seed in state.seeds if (d := self._judge(seed, state)) is not None]
        notes: list[Decision] = []
        for d in decisions:
            if d.action is Action.FOSSILIZE:
                self.s.failures_in_a_row = 0
                self._restart_window()
            elif d.action is Action.PRUNE:
                if (note := self._failed(d, state)) is not None:
                    notes.append(note)
                self._restart_window()
        if decisions:
            return decisions + notes
        return [self._germinate(state)]
