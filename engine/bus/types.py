"""Oona's data and configuration types: errors, options, counters, stream names, dead letters.

Kept apart from ``base.py`` so the backends, the dashboard and tests can use these plain values
without reading the delivery algorithm; ``base.py`` and the package re-export them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

PAYLOAD = b"m"
"""The one field of a stream entry that carries the msgpack-encoded contract Struct."""


class BusError(Exception):
    """Base of the bus's own errors."""


class BusBackpressure(BusError):
    """A command could not be queued because its stream is too far behind; commands are never dropped."""


class BusUnavailable(BusError):
    """The backend cannot be reached (Redis down, connection refused or lost)."""


class GroupMissing(BusError):
    """The consumer group or its stream vanished (Redis restarted without persistence, key deleted).

    Raised by a backend primitive; the consumer loop recreates the group and carries on.
    """


@dataclass(slots=True)
class BusMetrics:
    """Counters since the bus was created; `metrics()` hands out copies."""

    published: int = 0  # entries added to telemetry/normal/emergency
    delivered: int = 0  # handler calls
    acked: int = 0  # entries acknowledged after their handler succeeded
    redelivered: int = 0  # entries received again (pending replay or reclaimed)
    dead_lettered: int = 0  # entries moved to the dead-letter stream
    duplicates_skipped: int = 0  # entries whose id this group had already handled
    rerouted: int = 0  # normal commands sent on the emergency stream because normal was backed up
    dropped: int = 0  # telemetry events not sent (backlog above drop_threshold, or backend unreachable)
    decode_errors: int = 0  # entries that did not decode (bad bytes, other schema version)
    handler_errors: int = 0  # handler calls that raised (the entry stays pending)
    connected: bool = False  # the backend answered the last request


@dataclass(frozen=True, slots=True)
class BusOptions:
    """Tuning that is not part of the operator-facing BusConfig.

    `claim_idle_ms` must exceed the slowest handler: a pending entry idle for longer is presumed
    abandoned (dead consumer, or a handler that raised) and is redelivered.
    """

    claim_idle_ms: int = 30_000
    live_window_s: float = 60.0  # a group whose consumers were all idle longer no longer holds back publishers
    dedupe_window: int = 10_000  # ids remembered per consumer group
    batch_size: int = 100  # entries read per request
    depth_refresh_s: float | None = None  # how stale a backlog reading may be; None: backend default


@dataclass(frozen=True, slots=True)
class StreamNames:
    """The stream keys of one bus, all under the configured prefix (runbook: oona.normal, ...)."""

    telemetry: str
    normal: str
    emergency: str
    deadletter: str

    @classmethod
    def for_prefix(cls, prefix: str) -> StreamNames:
        return cls(
            telemetry=f"{prefix}.telemetry",
            normal=f"{prefix}.normal",
            emergency=f"{prefix}.emergency",
            deadletter=f"{prefix}.deadletter",
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An entry that was given up on, with why; `data` is the original payload, undecoded."""

    entry_id: str
    stream: str
    original_id: str
    group: str
    consumer: str
    reason: str
    deliveries: int
    data: bytes

    @classmethod
    def from_fields(cls, entry_id: str, fields: Mapping[bytes, bytes]) -> DeadLetter:
        def text(key: bytes) -> str:
            return fields.get(key, b"").decode("utf-8", "replace")

        return cls(
            entry_id=entry_id,
            stream=text(b"stream"),
            original_id=text(b"id"),
            group=text(b"group"),
            consumer=text(b"consumer"),
            reason=text(b"reason"),
            deliveries=int(fields.get(b"deliveries", b"0") or 0),
            data=fields.get(PAYLOAD, b""),
        )
