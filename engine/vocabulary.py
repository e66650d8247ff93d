"""The words every engine part shares: schema version, the Struct base, ids, and the closed enums.

Leyline's lowest layer: contracts, snapshot, config and the library's metadata all build on it, and it
builds on nothing of ours.
"""

from __future__ import annotations

import enum
import time
import uuid

import msgspec

SCHEMA_VERSION = 1


def new_id() -> str:
    """A fresh event/command id: consumers dedupe on it (at-least-once delivery can repeat)."""
    return uuid.uuid4().hex


def now() -> float:
    return time.time()


class Struct(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every contract: immutable and keyword-only."""


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
