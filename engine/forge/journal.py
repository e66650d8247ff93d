"""What the forge writes in its WAL: one msgspec Struct per record type, so a crash leaves typed payloads.

A compile is the transaction BEGIN (JobBegin) -> DATA (JobStaged) -> COMMIT (JobCommitted) or ABORT
(JobAborted). The union is tagged by the WAL record type each payload travels in, not by a field inside
it: the record type already says which Struct a payload is, an inner tag could only disagree with it,
and without one the bytes are the JSON objects the forge wrote before these types existed, so a WAL
left by an older forge still recovers. Payloads are JSON (msgspec.json) so `wal inspect` and a hex dump
stay readable. Decoding never raises anything but JournalError: a damaged payload is reported, never a
crash of recovery.
"""

from __future__ import annotations

import msgspec

from esper_tui.engine.vocabulary import Strategy
from esper_tui.engine.wal.format import RecordType


class JobBegin(msgspec.Struct, frozen=True, kw_only=True):
    """BEGIN: what is compiled and why; enough to requeue the job after a crash."""

    blueprint_id: str
    strategy: Strategy
    attempt: int
    key: str
    reason: str
    shape: str = ""  # the slot shape's tag; "" in a WAL written before shapes: LEGACY_SHAPE


class JobStaged(msgspec.Struct, frozen=True, kw_only=True):
    """DATA: a worker finished; its files wait in staging for the library commit."""

    staged: str
    worker_pid: int
    wall_s: float = 0.0


class JobCommitted(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """COMMIT: the artifact the job stored (or found already stored: reused)."""

    artifact_id: str
    version: int
    reused: bool = False


class JobAborted(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """ABORT: why the job ended without an artifact (an error, a clean stop, or recovery after a crash)."""

    error: str | None = None
    stopped: bool = False
    recovered: bool = False


JournalEntry = JobBegin | JobStaged | JobCommitted | JobAborted

PAYLOAD_TYPES: dict[RecordType, type[JournalEntry]] = {
    RecordType.BEGIN: JobBegin,
    RecordType.DATA: JobStaged,
    RecordType.COMMIT: JobCommitted,
    RecordType.ABORT: JobAborted,
}

_ENCODER = msgspec.json.Encoder()
_DECODERS = {rtype: msgspec.json.Decoder(kind) for rtype, kind in PAYLOAD_TYPES.items()}


class JournalError(ValueError):
    """A WAL payload that is not the Struct its record type calls for."""

    def __init__(self, record: RecordType, reason: str) -> None:
        super().__init__(f"unreadable {record.name} payload: {reason}")
        self.record = record
        self.reason = reason


def encode(entry: JournalEntry) -> bytes:
    return _ENCODER.encode(entry)


def decode(record: RecordType, payload: bytes) -> JournalEntry:
    """The payload of a `record` record; JournalError if it is damaged or of another shape."""
    decoder = _DECODERS.get(record)
    if decoder is None:
        raise JournalError(record, "the forge writes no payload of this record type")
    try:
        entry: JournalEntry = decoder.decode(payload)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise JournalError(record, str(exc)) from None
    return entry


def decode_begin(payload: bytes) -> JobBegin:
    entry = decode(RecordType.BEGIN, payload)
    assert isinstance(entry, JobBegin)
    return entry
