"""Oona's data and configuration types: errors, options, counters, stream names, dead letters.

Kept apart from ``base.py`` so the backends, the dashboard and tests can use these plain values
without reading the delivery algorithm; ``base.py`` and the package re-export them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Self

PAYLOAD = b"m"
"""The field of a stream entry that carries one msgpack-encoded contract Struct."""

BATCH = b"b"
"""The field of a telemetry entry that carries many events: a msgpack array of bin, each an encoded event.

A field of its own, so an entry written before batching (PAYLOAD) still decodes."""

SERVER_ERROR_KINDS = ("oom", "readonly", "wrongtype", "misconf", "loading", "busy", "other")
"""What a Redis error reply says is wrong, as BusServerError.kind and a key of BusMetrics.server_errors."""

LINK_ERROR_KINDS = ("disconnected", "timeout")
"""BusUnavailable.kind: no connection at all, or no reply in time (CLIENT PAUSE, an overloaded server)."""


class BusError(Exception):
    """Base of the bus's own errors; `kind` names the class of trouble for the counters and the dashboard."""

    def __init__(self, message: str = "", *, kind: str = "other") -> None:
        super().__init__(message)
        self.kind = kind

    def retold(self, context: str) -> Self:
        """The same error (class and kind) with `context` in front, for the one line the caller shows."""
        return type(self)(f"{context}: {self}", kind=self.kind)


class BusBackpressure(BusError):
    """A command could not be queued because its stream is too far behind; commands are never dropped."""


class BusUnavailable(BusError):
    """The backend cannot be reached (Redis down, connection refused or lost) or did not answer in time."""

    def __init__(self, message: str = "", *, kind: str = "disconnected") -> None:
        super().__init__(message, kind=kind)


class BusServerError(BusError):
    """The server answered with an error: out of memory, read-only replica, a key of the wrong type,
    failing persistence (MISCONF), still loading, busy with a script, or something else (`kind`).

    Telemetry is dropped and counted, consumers back off and retry until the server is fixed, and a
    command that could not be sent raises this with the stream and the server's reason."""


class GroupMissing(BusError):
    """The consumer group or its stream vanished (Redis restarted without persistence, key deleted).

    Raised by a backend primitive; the consumer loop recreates the group and carries on.
    """


@dataclass(slots=True)
class BusMetrics:
    """Counters since the bus was created; `metrics()` hands out copies. Counts are of messages
    (events and commands), whichever way they were packed into stream entries."""

    published: int = 0  # messages added to telemetry/normal/emergency
    delivered: int = 0  # handler calls
    acked: int = 0  # messages handled successfully (their entry is acknowledged once all its messages are done)
    redelivered: int = 0  # entries received again (pending replay or reclaimed)
    dead_lettered: int = 0  # messages moved to the dead-letter stream
    duplicates_skipped: int = 0  # messages whose id this group had already handled
    rerouted: int = 0  # normal commands sent on the emergency stream because normal was backed up
    dropped: int = 0  # telemetry events not sent (backlog above drop_threshold, buffer full, backend trouble)
    decode_errors: int = 0  # messages that did not decode (bad bytes, other schema version)
    handler_errors: int = 0  # handler calls that raised (the message stays pending)
    rejected: int = 0  # commands a handler refused (CommandRejected): dead-lettered at once
    connected: bool = False  # the backend answered the last request
    server_errors: dict[str, int] = field(default_factory=dict)  # failed requests by kind (see *_ERROR_KINDS)
    last_error: str = ""  # the newest one, as one line
    last_error_ts: float | None = None  # when (time.time())


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
    request_timeout_s: float = 5.0  # a request without a reply by then (plus any blocking time) has failed
    publish_buffer: int = 50_000  # telemetry events waiting for the flusher; more are dropped and counted
    batch_events: int = 1_000  # telemetry events packed into one stream entry at most
    batch_bytes: int = 512 * 1024  # and their encoded size at most (a single larger event still goes alone)


@dataclass(frozen=True, slots=True)
class StreamNames:
    """The stream keys of one bus, all under the configured prefix (runbook: oona.normal, ...).

    With a run id, the streams of one engine are its own (`oona.emergency.3f2a9c`), so several
    engines share a Redis and a control room picks one; dead letters stay in one stream per prefix.
    """

    telemetry: str
    normal: str
    emergency: str
    frames: str
    deadletter: str

    @property
    def owned(self) -> tuple[str, ...]:
        """The streams that belong to this run alone (dead letters are shared): what retention expires."""
        return (self.telemetry, self.normal, self.emergency, self.frames)

    @classmethod
    def for_prefix(cls, prefix: str, run_id: str = "") -> StreamNames:
        suffix = f".{run_id}" if run_id else ""
        return cls(
            telemetry=f"{prefix}.telemetry{suffix}",
            normal=f"{prefix}.normal{suffix}",
            emergency=f"{prefix}.emergency{suffix}",
            frames=f"{prefix}.frames{suffix}",
            deadletter=f"{prefix}.deadletter",
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that was given up on, with why; `data` is the original message, undecoded.

    `index` is its place inside a batch entry (None for an entry that carried one message)."""

    entry_id: str
    stream: str
    original_id: str
    group: str
    consumer: str
    reason: str
    deliveries: int
    data: bytes
    index: int | None = None

    @classmethod
    def from_fields(cls, entry_id: str, fields: Mapping[bytes, bytes]) -> DeadLetter:
        def text(key: bytes) -> str:
            return fields.get(key, b"").decode("utf-8", "replace")

        index = fields.get(b"index")
        return cls(
            entry_id=entry_id,
            stream=text(b"stream"),
            original_id=text(b"id"),
            group=text(b"group"),
            consumer=text(b"consumer"),
            reason=text(b"reason"),
            deliveries=int(fields.get(b"deliveries", b"0") or 0),
            data=fields.get(PAYLOAD, b""),
            index=int(index) if index else None,
        )
