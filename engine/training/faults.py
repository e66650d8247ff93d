"""Chaos testing and instability detection for Tolaria's rollback path.

`--inject-fault KIND@EPOCH` (repeatable) makes the rollback path run on demand, so anyone can watch it:
- `nan-loss@E`: epoch E's training loss comes out non-finite;
- `seed-explode@E`: a seed's gradients explode in epoch E (or in the first later epoch with a seed training);
- `kernel-crash@E`: a kernel raises in the middle of epoch E.
Each fault fires once: a rollback replays the epochs since its checkpoint, and a fault that fired again there
would roll the run back forever. `FaultPlan` is also where the trainer asks which fault strikes the epoch
about to finish, and where a seed-explode fault marks a seed's health.

`InstabilityDetector` is what notices, fault or not: a non-finite loss, a loss above `spike_factor` times its
moving median over the last `window` epochs, or a seed whose gradients explode.
"""

from __future__ import annotations

import enum
import math
import statistics
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import msgspec

from esper_tui.engine.contracts import SeedHealth
from esper_tui.engine.vocabulary import SeedStage

MIN_SPIKE_LOSS = 0.1
"""A loss below this is never a spike, whatever its ratio: a host that fits its samples (loss ~1e-8) doubles
its loss on noise alone, and that is not instability."""
MIN_SPIKE_HISTORY = 3  # epochs of history before a median means anything


class FaultKind(enum.StrEnum):
    NAN_LOSS = "nan-loss"
    SEED_EXPLODE = "seed-explode"
    KERNEL_CRASH = "kernel-crash"


class FaultSpecError(ValueError):
    """A `--inject-fault` value that does not parse: one line saying what is expected."""


class InjectedKernelCrash(RuntimeError):
    """What a `kernel-crash` fault raises inside an epoch."""


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    epoch: int  # 1-based: the epoch in which it strikes

    def __str__(self) -> str:
        return f"{self.kind.value}@{self.epoch}"


def parse_fault(spec: str) -> Fault:
    """`KIND@EPOCH` -> Fault; FaultSpecError with the accepted forms otherwise."""
    kinds = ", ".join(k.value for k in FaultKind)
    kind_text, sep, epoch_text = spec.strip().partition("@")
    if not sep:
        raise FaultSpecError(f"fault {spec!r}: expected KIND@EPOCH, KIND one of {kinds}")
    try:
        kind = FaultKind(kind_text)
    except ValueError:
        raise FaultSpecError(f"fault {spec!r}: unknown kind {kind_text!r}, expected one of {kinds}") from None
    if not epoch_text.isdigit() or int(epoch_text) < 1:
        raise FaultSpecError(f"fault {spec!r}: the epoch must be a whole number >= 1")
    return Fault(kind, int(epoch_text))


@dataclass
class FaultPlan:
    """The faults to inject, each fired at most once."""

    faults: tuple[Fault, ...] = ()
    fired: set[Fault] = field(default_factory=set)

    @classmethod
    def parse(cls, specs: Iterable[str]) -> FaultPlan:
        return cls(tuple(parse_fault(s) for s in specs))

    def due(self, epoch: int) -> list[Fault]:
        """Faults not yet fired whose epoch has come: a fault that could not strike at its epoch (no seed to
        explode yet) stays due until it can. The caller marks what it injected with `fire`."""
        return [f for f in self.faults if f.epoch <= epoch and f not in self.fired]

    def beyond(self, epochs: int | None) -> list[Fault]:
        """The faults a run of `epochs` epochs never reaches (they used to pass without a word)."""
        return [] if epochs is None else [f for f in self.faults if f.epoch > epochs]

    def fire(self, fault: Fault) -> None:
        self.fired.add(fault)

    def due_of(self, kind: FaultKind, epoch: int) -> Fault | None:
        """The injected fault of `kind` due in `epoch` (the one about to finish), if any."""
        return next((f for f in self.due(epoch) if f.kind is kind), None)

    def explode_seed(self, epoch: int, health: list[SeedHealth]) -> list[SeedHealth]:
        """A due seed-explode fault marks the first training seed's gradients as exploding (it waits for one)."""
        fault = self.due_of(FaultKind.SEED_EXPLODE, epoch)
        target = next((i for i, h in enumerate(health) if h.stage is SeedStage.TRAINING), None)
        if fault is None or target is None:
            return health
        self.fire(fault)
        health = list(health)
        health[target] = msgspec.structs.replace(health[target], exploding=True, grad_norm=1e6)
        return health

    def __bool__(self) -> bool:
        return bool(self.faults)


class InstabilityDetector:
    """Says, after each epoch, whether training has gone unstable (and why)."""

    def __init__(self, spike_factor: float, window: int) -> None:
        self.spike_factor = spike_factor
        self.losses: deque[float] = deque(maxlen=window)

    def check(self, train_loss: float, seeds: Sequence[SeedHealth] = ()) -> str | None:
        """The reason training is unstable after this epoch, or None. Only a stable epoch's loss joins the
        moving window, so one spike never raises the bar for the next."""
        if not math.isfinite(train_loss):
            return f"non-finite training loss ({train_loss})"
        exploding = [s for s in seeds if s.exploding]
        if exploding:
            s = exploding[0]
            return f"seed {s.slot} ({s.blueprint_id}) gradients exploding (norm {s.grad_norm:.2e})"
        if len(self.losses) >= MIN_SPIKE_HISTORY and train_loss > MIN_SPIKE_LOSS:
            median = statistics.median(self.losses)
            if train_loss > self.spike_factor * median:
                return (
                    f"training loss {train_loss:.3g} is {train_loss / median:.1f}x its moving median "
                    f"{median:.3g} (limit {self.spike_factor:g}x)"
                )
        self.losses.append(train_loss)
        return None
