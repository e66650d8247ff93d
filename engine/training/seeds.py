"""Kasmina: a seed slot and its lifecycle.

A slot grafts one blueprint module (the seed) into the host as a side branch around one host module
(host.py hooks it there). Main line: DORMANT -> GERMINATED -> TRAINING -> BLENDING -> HOLDING -> FOSSILIZED; failure
path: PRUNED -> EMBARGOED -> RESETTING -> DORMANT. What each stage means here:

- GERMINATED: module built, kernel loaded and probed (one no-grad call of the right shape); it neither
  runs in the host nor trains yet (one epoch, so the graft is visible before it does anything).
- TRAINING: the seed learns the host's residual in isolation (see `host.SlottedHost.shadowing`): its
  output is not added to the host; the host's gradients are exactly what they would be without it.
- BLENDING: alpha ramps 0 -> 1 over `blend_epochs`, advanced every optimizer step so the host never
  sees a jump; the seed now trains through the host's own loss.
- HOLDING: alpha = 1 while the controller judges the seed's gain (the metric's change since it germinated).
- FOSSILIZED: permanent. Its parameters keep training with the host (alpha stays 1): the layers after
  it keep moving, and a frozen seed could not follow them; compiled kernels train, so it costs nothing.
- PRUNED: module dropped (its parameters leave the optimizer), then the slot is embargoed for
  `embargo_epochs` so the controller cannot immediately re-grow into the spot that just failed.

Lifecycle timers after a prune are mechanical and run in `end_epoch`; the main-line advances are the
controller's decisions. Any other transition raises `IllegalTransition`. `capture()` / `restore()` take a
slot's whole state out as plain data and put it back (a best-epoch restore, a checkpoint).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch
from torch import nn

from esper_tui.engine.config import TrainingConfig
from esper_tui.engine.contracts import SeedHealth
from esper_tui.engine.kernels.shapes import SlotShape
from esper_tui.engine.training.kernel_source import EAGER_LABEL, Kernel, eager_kernel
from esper_tui.engine.vocabulary import ACCURACY, MetricInfo, SeedStage

S = SeedStage

TRANSITIONS: dict[SeedStage, frozenset[SeedStage]] = {
    S.DORMANT: frozenset({S.GERMINATED}),
    S.GERMINATED: frozenset({S.TRAINING, S.PRUNED}),
    S.TRAINING: frozenset({S.BLENDING, S.PRUNED}),
    S.BLENDING: frozenset({S.HOLDING, S.PRUNED}),
    S.HOLDING: frozenset({S.FOSSILIZED, S.PRUNED}),
    S.FOSSILIZED: frozenset(),
    S.PRUNED: frozenset({S.EMBARGOED}),
    S.EMBARGOED: frozenset({S.RESETTING}),
    S.RESETTING: frozenset({S.DORMANT}),
}
MAIN_LINE: dict[SeedStage, SeedStage] = {
    S.GERMINATED: S.TRAINING,
    S.TRAINING: S.BLENDING,
    S.BLENDING: S.HOLDING,
}
ATTACHED = frozenset({S.GERMINATED, S.TRAINING, S.BLENDING, S.HOLDING, S.FOSSILIZED})  # a module is present
TRAINABLE = frozenset({S.TRAINING, S.BLENDING, S.HOLDING, S.FOSSILIZED})  # its parameters get gradients
IN_FLIGHT = frozenset({S.GERMINATED, S.TRAINING, S.BLENDING, S.HOLDING})  # not yet judged


class IllegalTransition(ValueError):
    """A lifecycle move the state machine does not allow."""


class BlendSchedule(enum.StrEnum):
    LINEAR = "linear"
    COSINE = "cosine"
    SIGMOID = "sigmoid"


_SIGMOID_STEEPNESS = 10.0


def blend_alpha(schedule: BlendSchedule, t: float) -> float:
    """Alpha at blend progress t in [0, 1]: 0 at 0, 1 at 1, monotone between.

    Cosine (the default) starts and ends gently, so neither the host nor the seed sees a sudden step.
    The sigmoid is rescaled so its end points are exactly 0 and 1.
    """
    t = min(1.0, max(0.0, t))
    if schedule is BlendSchedule.LINEAR:
        return t
    if schedule is BlendSchedule.COSINE:
        return 0.5 - 0.5 * math.cos(math.pi * t)

    def sig(u: float) -> float:
        return 1.0 / (1.0 + math.exp(-_SIGMOID_STEEPNESS * (u - 0.5)))

    lo, hi = sig(0.0), sig(1.0)
    return (sig(t) - lo) / (hi - lo)


@dataclass(frozen=True)
class SlotState:
    """A slot's whole state as plain data (weights cloned): what a checkpoint or a best-epoch restore keeps."""

    name: str
    stage: SeedStage
    blueprint_id: str | None
    epochs_in_stage: int
    blend_progress: float
    metric_at_germination: float | None
    kernel_label: str
    kernel_note: str
    weights: dict[str, torch.Tensor] | None  # the seed module's state_dict while one is attached


@dataclass(frozen=True)
class SlotPolicy:
    """The per-slot knobs, lifted out of TrainingConfig so a slot can be built and tested on its own."""

    blend_epochs: int = 5
    embargo_epochs: int = 3
    schedule: BlendSchedule = BlendSchedule.COSINE
    vanishing_below: float = 1e-7
    exploding_above: float = 1e3

    @classmethod
    def from_config(cls, cfg: TrainingConfig, schedule: BlendSchedule = BlendSchedule.COSINE) -> SlotPolicy:
        return cls(blend_epochs=cfg.blend_epochs, embargo_epochs=cfg.embargo_epochs, schedule=schedule)


class SeedSlot(nn.Module):
    """One place in the host where a seed can grow. An nn.Module so train()/eval() reach the seed."""

    def __init__(self, name: str, shape: SlotShape, policy: SlotPolicy | None = None) -> None:
        super().__init__()
        self.name = name
        self.shape = shape  # what its seed reads and writes (host.probe_slots found it)
        self.policy = policy or SlotPolicy()
        self.stage = S.DORMANT
        self.block: nn.Module | None = None
        self.kernel: Kernel | None = None
        self.kernel_label = "-"
        self.kernel_note = ""  # why this variant runs when that is worth saying ("faster" for a chosen eager)
        self.blueprint_id: str | None = None
        self.epochs_in_stage = 0
        self.blend_progress = 0.0  # in epochs of BLENDING done, advanced per optimizer step
        self.metric_at_germination: float | None = None
        self.fallback_reason: str | None = None
        self._grad_norm_sum = 0.0
        self._grad_steps = 0
        self._grad_nonfinite = False

    # ------------------------------------------------------------------ lifecycle

    def _move(self, to: SeedStage) -> None:
        if to not in TRANSITIONS[self.stage]:
            raise IllegalTransition(f"slot {self.name}: {self.stage} -> {to} is not a legal transition")
        self.stage = to
        self.epochs_in_stage = 0

    def germinate(
        self, blueprint_id: str, block: nn.Module, kernel: Kernel, label: str, metric: float, note: str = ""
    ) -> None:
        """Attach a freshly built module and its kernel; `metric` (validation, now) is the baseline of its gain."""
        self._move(S.GERMINATED)
        self.block = block
        self.kernel = kernel
        self.kernel_label = label
        self.kernel_note = note
        self.blueprint_id = blueprint_id
        self.metric_at_germination = metric
        self.blend_progress = 0.0
        self.fallback_reason = None

    def advance(self) -> SeedStage:
        """One step along the main line (GERMINATED -> TRAINING -> BLENDING -> HOLDING)."""
        nxt = MAIN_LINE.get(self.stage)
        if nxt is None:
            raise IllegalTransition(f"slot {self.name}: no main-line advance from {self.stage}")
        self._move(nxt)
        return nxt

    def fossilize(self) -> None:
        self._move(S.FOSSILIZED)

    def prune(self) -> list[nn.Parameter]:
        """Drop the seed; returns its parameters so the optimizer can forget them."""
        params = list(self.block.parameters()) if self.block is not None else []
        self._move(S.PRUNED)
        self.block = None
        self.kernel = None
        self.kernel_label = "-"
        self.kernel_note = ""
        return params

    def capture(self) -> SlotState:
        """This slot as plain data, weights cloned (restore() takes it back)."""
        weights = None
        if self.block is not None:
            weights = {k: v.detach().clone() for k, v in self.block.state_dict().items()}
        return SlotState(
            name=self.name,
            stage=self.stage,
            blueprint_id=self.blueprint_id,
            epochs_in_stage=self.epochs_in_stage,
            blend_progress=self.blend_progress,
            metric_at_germination=self.metric_at_germination,
            kernel_label=self.kernel_label,
            kernel_note=self.kernel_note,
            weights=weights,
        )

    def restore(self, state: SlotState, block: nn.Module | None, kernel: Kernel | None, label: str) -> None:
        """Become `state` again: `block` (built by the caller for state.blueprint_id) gets the saved weights.

        Not a lifecycle move: restoring puts back a state the machine was in, so no transition is checked.
        `label` may differ from the saved one when a compiled kernel can no longer be loaded.
        """
        if (state.weights is None) != (block is None):
            raise ValueError(f"slot {self.name}: restoring {state.stage} needs {'a' if state.weights else 'no'} module")
        if block is not None and state.weights is not None:
            block.load_state_dict(state.weights)
        self.stage = state.stage
        self.block = block
        self.kernel = kernel
        self.kernel_label = label if block is not None else "-"
        self.kernel_note = state.kernel_note if label == state.kernel_label else ""
        self.blueprint_id = state.blueprint_id
        self.epochs_in_stage = state.epochs_in_stage
        self.blend_progress = state.blend_progress
        self.metric_at_germination = state.metric_at_germination
        self.fallback_reason = None
        self.begin_epoch()

    def end_epoch(self) -> None:
        """Count the epoch just completed and run the post-prune timers."""
        self.epochs_in_stage += 1
        if self.stage is S.PRUNED:
            self._move(S.EMBARGOED)
        elif self.stage is S.EMBARGOED and self.epochs_in_stage >= self.policy.embargo_epochs:
            self._move(S.RESETTING)
        elif self.stage is S.RESETTING:
            self._move(S.DORMANT)
            self.blueprint_id = None
            self.metric_at_germination = None
            self.blend_progress = 0.0

    def step(self, fraction_of_epoch: float) -> None:
        """Advance the blend ramp after an optimizer step (per step, so alpha never jumps)."""
        if self.stage is S.BLENDING:
            self.blend_progress += fraction_of_epoch

    # ------------------------------------------------------------------ forward

    @property
    def alpha(self) -> float:
        if self.stage is S.BLENDING:
            if self.policy.blend_epochs <= 0:
                return 1.0
            return blend_alpha(self.policy.schedule, self.blend_progress / self.policy.blend_epochs)
        return 1.0 if self.stage in (S.HOLDING, S.FOSSILIZED) else 0.0

    @property
    def contributes(self) -> bool:
        """Its output is added (scaled by alpha) to the host's live forward."""
        return self.stage in (S.BLENDING, S.HOLDING, S.FOSSILIZED)

    @property
    def shadow_trains(self) -> bool:
        """It trains on the host's residual without touching the host."""
        return self.stage is S.TRAINING

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the seed through its kernel; `x` must not require grad (compiled kernels guard on it)."""
        if self.block is None or self.kernel is None:
            raise RuntimeError(f"slot {self.name} has no seed ({self.stage})")
        return self.kernel(self.block, x)

    @property
    def compiled(self) -> bool:
        """A seed is attached and runs through a compiled kernel."""
        return self.block is not None and self.kernel_label != EAGER_LABEL

    def fall_back_to_eager(self, reason: str) -> None:
        """Seed 003's kernel-failure path: keep the seed, run its module eagerly (same maths)."""
        self.kernel = eager_kernel
        self.kernel_label = EAGER_LABEL
        self.kernel_note = ""
        self.fallback_reason = reason

    # ------------------------------------------------------------------ health

    def begin_epoch(self) -> None:
        self._grad_norm_sum, self._grad_steps, self._grad_nonfinite = 0.0, 0, False

    def record_gradients(self) -> None:
        """Accumulate this step's gradient norm over the seed's parameters (call after backward).

        A non-finite gradient is counted (the seed reports as exploding) and discarded, so the optimizer
        never applies it: a bad seed must not poison its own weights before the controller prunes it.
        """
        if self.block is None or self.stage not in TRAINABLE:
            return
        grads = [p.grad for p in self.block.parameters() if p.grad is not None]
        norm = 0.0
        if grads:
            norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        self._grad_steps += 1
        if math.isfinite(norm):
            self._grad_norm_sum += norm
            return
        self._grad_nonfinite = True
        for p in self.block.parameters():
            p.grad = None

    @property
    def grad_norm(self) -> float:
        return self._grad_norm_sum / self._grad_steps if self._grad_steps else 0.0

    def health(self, value: float, metric: MetricInfo = ACCURACY) -> SeedHealth:
        """The per-epoch report: mean gradient norm over the epoch's steps, flags, and the gain: how much better
        `value` (the validation metric now) is than at germination, by `metric`'s direction."""
        measured = self._grad_steps > 0 and self.stage in TRAINABLE
        norm = self.grad_norm
        exploding = measured and (self._grad_nonfinite or norm > self.policy.exploding_above)
        vanishing = measured and not exploding and norm < self.policy.vanishing_below
        base = self.metric_at_germination if self.stage in ATTACHED else None
        if self.compiled:
            kernel = f"compiled {self.kernel_label}"
        elif self.block is not None:
            kernel = f"{EAGER_LABEL} ({self.kernel_note})" if self.kernel_note else EAGER_LABEL
        else:
            kernel = "-"
        return SeedHealth(
            slot=self.name,
            stage=self.stage,
            blueprint_id=self.blueprint_id,
            alpha=self.alpha,
            grad_norm=norm,
            gain=None if base is None else metric.gain(value, base),
            epochs_in_stage=self.epochs_in_stage,
            kernel=kernel,
            vanishing=vanishing,
            exploding=exploding,
        )
