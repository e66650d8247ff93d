"""Encoding and decoding of the wire: msgpack on the bus and Redis, JSON on stdout and in files.

A well-formed message of another schema version raises SchemaMismatch: never guess at its meaning.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import msgspec

from esper_tui.engine.contracts import AnyCommand, AnyEvent
from esper_tui.engine.snapshot import Snapshot
from esper_tui.engine.vocabulary import SCHEMA_VERSION

_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()
_event_json: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)
_event_msgpack: msgspec.msgpack.Decoder[AnyEvent] = msgspec.msgpack.Decoder(AnyEvent)
_command_json: msgspec.json.Decoder[AnyCommand] = msgspec.json.Decoder(AnyCommand)
_command_msgpack: msgspec.msgpack.Decoder[AnyCommand] = msgspec.msgpack.Decoder(AnyCommand)
_snapshot_json = msgspec.json.Decoder(Snapshot)


class SchemaMismatch(ValueError):
    """Raised for a well-formed message of another schema version: never guess at its meaning."""


class _Versioned(Protocol):
    @property
    def schema_version(self) -> int: ...


V = TypeVar("V", bound=_Versioned)


def checked(msg: V) -> V:
    """`msg` if it speaks this schema version; else SchemaMismatch."""
    if msg.schema_version != SCHEMA_VERSION:
        raise SchemaMismatch(f"schema version {msg.schema_version}, expected {SCHEMA_VERSION}")
    return msg


def encode_json(obj: Any) -> bytes:
    return _json_encoder.encode(obj)


def encode_msgpack(obj: Any) -> bytes:
    return _msgpack_encoder.encode(obj)


def decode_event(data: bytes) -> AnyEvent:
    return checked(_event_msgpack.decode(data))


def decode_event_json(data: bytes | str) -> AnyEvent:
    return checked(_event_json.decode(data))


def decode_command(data: bytes) -> AnyCommand:
    return checked(_command_msgpack.decode(data))


def decode_command_json(data: bytes | str) -> AnyCommand:
    return checked(_command_json.decode(data))


def decode_snapshot_json(data: bytes | str) -> Snapshot:
    return checked(_snapshot_json.decode(data))
