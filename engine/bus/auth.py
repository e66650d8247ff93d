"""Signed control: who may steer an engine, and how a control room knows a frame came from it.

Commands carry an HMAC-SHA256 made with the operator key over their canonical bytes (msgpack of the
command with an empty signature: msgspec encodes a Struct deterministically, field by field), which
covers the issuer, the timestamp, the unique id and every argument. The engine rejects a command that
is unsigned, badly signed, outside the skew window, issued before the engine started (a new consumer
group reads the retained stream from its start), or already seen inside the window (the replay cache).

Frames (snapshots for control rooms) are signed with Ed25519: the engine holds the private key, and a
control room needs only the public key, so a read-only viewer can check frames but can neither steer the
engine nor paint a false picture for anybody else.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import os
import socket
import time
from collections.abc import Callable
from typing import TypeVar

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from esper_tui.engine.codec import encode_msgpack
from esper_tui.engine.contracts import AnyCommand
from esper_tui.engine.frames import ControlRoom
from esper_tui.engine.freshness import ReplayWindow, Stale

_COMMAND_DOMAIN = b"esper.command.v1\0"
_ROOM_DOMAIN = b"esper.room.v1\0"
_FRAME_SEED_DOMAIN = b"esper.frame-key.v1\0"

C = TypeVar("C", bound=AnyCommand)


def operator_name() -> str:
    """user@host: who sent a command, as the engine's event log shows it."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name (a container without a passwd entry)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


class CommandRejected(Exception):
    """A command the engine must not obey; the message is the reason (shown, counted, dead-lettered).

    `signed` says whether the command carried a valid operator signature: only then is its `issued_by` the
    operator's word rather than a claim anyone could write.
    """

    def __init__(self, reason: str, *, signed: bool = True) -> None:
        super().__init__(reason)
        self.signed = signed


def _mac(key: bytes, domain: bytes, signed: AnyCommand | ControlRoom) -> str:
    canonical = encode_msgpack(msgspec.structs.replace(signed, signature=""))
    return hmac.new(key, domain + canonical, hashlib.sha256).hexdigest()


def sign_command(key: bytes, command: C) -> C:
    """The command with its signature; sign after every other field is final."""
    return msgspec.structs.replace(command, signature=_mac(key, _COMMAND_DOMAIN, command))


def sign_room(key: bytes, room: ControlRoom) -> ControlRoom:
    """A control room's presence, signed with the operator key: the engine counts it as a room."""
    return msgspec.structs.replace(room, signature=_mac(key, _ROOM_DOMAIN, room))


def room_signed(key: bytes, room: ControlRoom) -> bool:
    """Whether a room's presence carries a valid operator signature (its time is the reader's to check)."""
    return bool(room.signature) and hmac.compare_digest(
        _mac(key, _ROOM_DOMAIN, room).encode(), room.signature.encode(errors="replace")
    )


class CommandVerifier:
    """The engine's gate for commands: signature, then freshness and replay (freshness.ReplayWindow)."""

    def __init__(self, key: bytes, *, skew_s: float, not_before: float, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self._window = ReplayWindow(max_age_s=skew_s, max_ahead_s=skew_s, not_before=not_before, clock=clock)

    def check(self, command: AnyCommand) -> None:
        """Raise CommandRejected with the reason, or return: then the command is recorded as seen."""
        if not command.signature:
            raise CommandRejected("unsigned", signed=False)
        mac = _mac(self._key, _COMMAND_DOMAIN, command)
        if not hmac.compare_digest(mac.encode(), command.signature.encode(errors="replace")):
            raise CommandRejected("bad signature", signed=False)
        try:
            self._window.admit(command.command_id, command.ts)
        except Stale as exc:
            raise CommandRejected(str(exc)) from None


def _frame_private(key: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(_FRAME_SEED_DOMAIN + key).digest())


def frame_public_key(key: bytes) -> str:
    """The public half of the frame key, as hex: what a control room pins (`--engine-key`)."""
    raw = _frame_private(key).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return raw.hex()


class FrameSigner:
    """Signs frame payloads with the engine's private frame key."""

    def __init__(self, key: bytes) -> None:
        self._private = _frame_private(key)
        self.public_key = frame_public_key(key)

    def sign(self, payload: bytes) -> bytes:
        return self._private.sign(payload)


class FrameVerifier:
    """Checks frame payloads against a pinned public key (hex)."""

    def __init__(self, public_key_hex: str) -> None:
        try:
            raw = bytes.fromhex(public_key_hex.strip())
            self._public = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError:
            raise ValueError(
                f"engine key must be 64 hex digits (an Ed25519 public key), got {public_key_hex!r}"
            ) from None

    def verify(self, payload: bytes, signature: bytes) -> bool:
        try:
            self._public.verify(signature, payload)
        except InvalidSignature:
            return False
        return True
