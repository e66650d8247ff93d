"""The words every engine part shares: schema version, the Struct base, ids, the closed enums, labels.

Leyline's lowest layer: contracts, snapshot, config and the library's metadata all build on it, and it
builds on nothing of ours.
"""

from __future__ import annotations

import enum
import math
import time
import uuid
from typing import dataclass_transform

import msgspec

SCHEMA_VERSION = 2
"""The wire's and the snapshot's version. 2: the run's metric is the task's (`val_metric`, `gain`, ...), no longer
always accuracy; recordings, checkpoints and field reports of version 1 still open (engine/legacy.py)."""


def new_id() -> str:
    """A fresh event/command id: consumers dedupe on it (at-least-once delivery can repeat)."""
    return uuid.uuid4().hex


def now() -> float:
    return time.time()


@dataclass_transform(field_specifiers=(msgspec.field,), frozen_default=True, kw_only_default=True)
class Struct(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every contract: immutable and keyword-only.

    msgspec subclasses inherit both settings at run time; the decorator tells type checkers so too
    (without it mypy takes every subclass for a mutable dataclass deriving from a frozen one).
    """


_TINY = 1e-12  # the least magnitude a relative threshold scales by: a metric at exactly 0 still has a bar


class MetricInfo(Struct, kw_only=True):
    """The metric a run decides on: its name, its direction and whether it is a fraction shown as a percentage.

    A task brings its own (a loss or an MSE falls, a BLEU rises); every surface formats, ranks and judges a value
    through these helpers, so none of them assumes accuracy. The default is accuracy, what mnist1d measures.
    """

    name: str = "accuracy"
    higher_is_better: bool = True
    percent: bool = True  # a fraction in [0, 1]: "71.4 %", and changes in points

    def format(self, value: float | None, *, signed: bool = False, unit: bool = True) -> str:
        """`value` for display: "71.4 %" or 3 significant digits ("0.912", "0.000123"); `signed` for a change
        ("+1.2 points", "-0.0031"); `unit=False` leaves off " %" / " points" (a narrow column); "-" for None."""
        if value is None:
            return "-"
        if not self.percent:
            return f"{value:+.3g}" if signed else f"{value:.3g}"
        text = f"{value * 100:+.1f}" if signed else f"{value * 100:.1f}"
        return text + ((" points" if signed else " %") if unit else "")

    def better(self, value: float, than: float) -> bool:
        """Whether `value` is strictly better than `than`, by the metric's direction."""
        return self.gain(value, than) > 0

    def gain(self, now: float, before: float) -> float:
        """The change from `before` to `now`, in the metric's units, positive when it got better."""
        return now - before if self.higher_is_better else before - now

    @property
    def worst(self) -> float:
        """A value every real one beats (the starting point of a best-so-far)."""
        return -math.inf if self.higher_is_better else math.inf

    def scale(self, reference: float) -> float:
        """What a relative threshold (plateau_delta, fossilize_margin, ...) is a fraction of near `reference`:
        the whole range for a percent metric (0.005 of accuracy = 0.5 points), else the value's magnitude
        (PyTorch's ReduceLROnPlateau "rel" mode), so a threshold means the same for a loss of 2.3 or of 0.01."""
        return 1.0 if self.percent else max(abs(reference), _TINY)


ACCURACY = MetricInfo()
"""Classification accuracy, the default metric (mnist1d's and digits')."""


class Strategy(enum.StrEnum):
    FAST = "fast"
    STANDARD = "standard"
    AGGRESSIVE = "aggressive"
    EMERGENCY = "emergency"


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    COMPILING = "compiling"
    COMPILED = "compiled"
    FAILED = "failed"


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    UNAVAILABLE = "unavailable"  # e.g. the gpu breaker on a machine with no GPU


class SeedStage(enum.StrEnum):
    DORMANT = "dormant"
    GERMINATED = "germinated"
    TRAINING = "training"
    BLENDING = "blending"
    HOLDING = "holding"
    FOSSILIZED = "fossilized"
    PRUNED = "pruned"
    EMBARGOED = "embargoed"
    RESETTING = "resetting"


class Level(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Subsystem(enum.StrEnum):
    """Which Esper part said something (`Event.source`): the event log's second column."""

    ENGINE = "engine"  # the runtime itself
    TEZZERET = "tezzeret"  # the forge
    URZA = "urza"  # the library
    TOLARIA = "tolaria"  # the training loop
    KASMINA = "kasmina"  # the seed slots
    TAMIYO = "tamiyo"  # the controller


class TrainingStatus(enum.StrEnum):
    WAITING = "waiting"  # no TrainingStarted yet
    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"
    FAILED = "failed"


class EngineState(enum.StrEnum):
    """An engine's lifecycle as its heartbeat announces it."""

    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class LinkState(enum.StrEnum):
    """How a control room's picture relates to the engine: never show a stale picture as live."""

    LOCAL = "local"  # the engine runs in this process: the snapshot is always current
    WAITING = "waiting"  # attached, no verified frame yet
    LIVE = "live"  # frames arrive on time
    SILENT = "silent"  # no frame for longer than the silence limit: the picture is old
    STOPPED = "stopped"  # the engine said it stopped; this is its final picture


class GradientHealth(enum.StrEnum):
    """A seed's gradients over its last epoch; NONE for an empty slot, which has none."""

    OK = "ok"
    VANISHING = "vanishing"
    EXPLODING = "exploding"
    NONE = "-"


class Action(enum.StrEnum):
    """Tamiyo's decisions (ControllerDecision.action)."""

    GERMINATE = "germinate"
    ADVANCE = "advance"
    FOSSILIZE = "fossilize"
    PRUNE = "prune"
    WAIT = "wait"
    ROLLBACK = "rollback"  # an emergency: training went unstable, the last good checkpoint is restored


EAGER_KERNELS = "EAGER"
"""What runs when compilation is off (seed 002: the banner must say so, never name a backend)."""


def compile_label(backend: str | None, mode: str | None) -> str:
    """`backend:mode` as every surface writes it ("inductor:default"); a None mode is torch's default.

    The one place the label is built, so the banner, the event log, the status line, the seeds column
    and the library's loaded kernels can never disagree about what runs.
    """
    return f"{backend or '?'}:{mode or 'default'}"


def kernels_label(compile_enabled: bool, backend: str | None, mode: str | None) -> str:
    """What the run's kernels are: the compile label when compiling, EAGER otherwise."""
    return compile_label(backend, mode) if compile_enabled else EAGER_KERNELS
