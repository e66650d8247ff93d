"""User blueprints in the library (Urza's submissions): a signed record and the source it names, per blueprint.

`esper-tui blueprint add` reads the source without running it (kernels/usercode.describe) and stores it with a
record: who submitted it and when, its class, tags, risk and the slot kinds it serves, and its status, which
runs from `unvalidated` to `compiled` or `refused` (with the one-line reason). The record carries the source's
sha256 and is signed with the library's key (HMAC-SHA256, library/signing.py) as one document; a status change
signs it again. Nothing reads a record before its signature and the source's hash are checked
(`UserBlueprints.get`): an unsigned or altered one is listed with its problem and never used.

Both backends keep the same bytes: the file library under `<library>/blueprints/<name>/`, the shared one in a
PostgreSQL row (the signed document) and the object store (the source, by its sha256). `RecordBackend` is the
little each must provide; the signing and checking here are shared.
"""

from __future__ import annotations

import enum
import getpass
import hashlib
import socket
import time
from dataclasses import dataclass
from typing import Annotated, Protocol

import msgspec
from msgspec import Meta

from esper_tui.engine.kernels.catalog import BUILTIN_IDS, USER_FAMILY, Blueprint, Catalog
from esper_tui.engine.kernels.usercode import KINDS
from esper_tui.engine.library import signing
from esper_tui.engine.vocabulary import SCHEMA_VERSION, Struct

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,47}$"
TAG_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"
MAX_TAGS = 16
MAX_SOURCE_BYTES = 1 << 20  # one module of nn.Module code; a bigger "blueprint" is not one
USER_PRIORITY = 1  # compiled after the built-in families of higher priority

BlueprintName = Annotated[str, Meta(pattern=NAME_PATTERN, description="lower case, digits and _, 1-48 characters")]
Tag = Annotated[str, Meta(pattern=TAG_PATTERN)]
Risk = Annotated[float, Meta(ge=0, le=1, description="0 (safe) .. 1 (likely to destabilise training)")]
SlotKind = Annotated[str, Meta(pattern=r"^(vector|sequence|image)$")]
Sha256 = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]


class UserStatus(enum.StrEnum):
    UNVALIDATED = "unvalidated"  # added, not yet compiled by the forge
    COMPILED = "compiled"  # validated against eager and compiled in the sandbox; Tamiyo may germinate it
    REFUSED = "refused"  # the sandbox refused it; `reason` says why in one line


class UserBlueprintRecord(Struct, kw_only=True):
    """The signed description of one user blueprint (the source itself is stored beside it, by hash)."""

    schema_version: int = SCHEMA_VERSION
    name: BlueprintName
    class_name: str
    source_sha256: Sha256
    source_file: str  # the path it was added from, for the operator
    description: str
    serves: Annotated[list[SlotKind], Meta(min_length=1, max_length=3)]
    tags: Annotated[list[Tag], Meta(max_length=MAX_TAGS)]
    risk: Risk
    submitted_by: str  # the OS user who ran `blueprint add`
    submitted_host: str
    submitted_ts: float
    status: UserStatus = UserStatus.UNVALIDATED
    reason: str = ""
    status_ts: float


class UserBlueprintError(Exception):
    """A user blueprint cannot be stored or used; the message is one line for the operator."""


class UserBlueprintInvalid(UserBlueprintError):
    """A stored record fails its signature, its schema or its source's hash: it is never used."""


@dataclass(frozen=True)
class Entry:
    """One stored user blueprint as listed: its verified record, or why it has none."""

    name: str
    record: UserBlueprintRecord | None
    problem: str = ""


class RecordBackend(Protocol):
    """Where a library keeps user blueprint documents (signed record bytes) and their sources."""

    def create(self, record: UserBlueprintRecord, document: bytes, signature: str, source: bytes) -> bool:
        """Store a new blueprint (`document` is `record` signed); False when the name is taken."""
        ...

    def replace(self, record: UserBlueprintRecord, document: bytes, signature: str) -> bool:
        """Replace a record's document (a status change); False when the blueprint is gone."""
        ...

    def read(self, name: str) -> tuple[bytes, str] | None:
        """(document, signature) as stored, unverified; None when there is no such blueprint."""
        ...

    def source(self, name: str, sha256: str) -> bytes:
        """The stored source bytes (the caller checks the hash); raises UserBlueprintInvalid when missing."""
        ...

    def names(self) -> list[str]: ...

    def delete(self, name: str) -> bool: ...


def new_record(
    *,
    name: str,
    class_name: str,
    source: bytes,
    source_file: str,
    description: str,
    serves: tuple[str, ...],
    tags: list[str],
    risk: float,
) -> UserBlueprintRecord:
    """A fresh `unvalidated` record submitted by this OS user, now; UserBlueprintError for a value out of range
    (the name pattern, tags, risk 0-1)."""
    now = time.time()
    fields = {
        "name": name,
        "class_name": class_name,
        "source_sha256": hashlib.sha256(source).hexdigest(),
        "source_file": source_file,
        "description": description,
        "serves": list(serves),
        "tags": tags,
        "risk": risk,
        "submitted_by": getpass.getuser(),
        "submitted_host": socket.gethostname(),
        "submitted_ts": now,
        "status_ts": now,
    }
    try:
        return msgspec.convert(fields, UserBlueprintRecord)
    except msgspec.ValidationError as exc:
        raise UserBlueprintError(_field_message(str(exc))) from None


def _field_message(text: str) -> str:
    """msgspec's `Expected ... - at `$.risk`` as `risk: expected ...`."""
    what, _, where = text.partition(" - at `$.")
    field = where.rstrip("`").split("[", 1)[0]
    return f"{field}: {what[0].lower()}{what[1:]}" if field else text


class UserBlueprints:
    """Sign, verify, list and change user blueprint records over a library's `RecordBackend`."""

    def __init__(self, backend: RecordBackend, key: bytes) -> None:
        self.backend = backend
        self._key = key

    def _sign(self, record: UserBlueprintRecord) -> tuple[bytes, str]:
        document = msgspec.json.encode(record)
        return document, signing.sign(self._key, document)

    def add(self, record: UserBlueprintRecord, source: bytes) -> None:
        """Store a new record and its source; UserBlueprintError when the name is taken or the source is not
        the one the record names."""
        if hashlib.sha256(source).hexdigest() != record.source_sha256:
            raise UserBlueprintError(f"{record.name}: the source is not the one the record names")
        document, signature = self._sign(record)
        if not self.backend.create(record, document, signature, source):
            raise UserBlueprintError(f"{record.name}: a user blueprint of that name exists (blueprint remove it first)")

    def _verified(self, name: str, document: bytes, signature: str) -> UserBlueprintRecord:
        if not signing.verify(self._key, document, signature):
            raise UserBlueprintInvalid(f"{name}: signature mismatch (altered, unsigned or signed with another key)")
        try:
            record = msgspec.json.decode(document, type=UserBlueprintRecord)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise UserBlueprintInvalid(f"{name}: signed record does not decode ({exc})") from None
        if record.name != name:
            raise UserBlueprintInvalid(f"{name}: signed as {record.name!r} (copied or renamed)")
        return record

    def record(self, name: str) -> UserBlueprintRecord | None:
        """The verified record (None when there is no such blueprint); UserBlueprintInvalid when it fails."""
        stored = self.backend.read(name)
        return None if stored is None else self._verified(name, *stored)

    def get(self, name: str) -> tuple[UserBlueprintRecord, str]:
        """The verified record and its source, hash checked: what may be handed to the compile worker or the
        training process. UserBlueprintInvalid when anything fails, UserBlueprintError when there is none."""
        record = self.record(name)
        if record is None:
            raise UserBlueprintError(f"{name}: no such user blueprint")
        source = self.backend.source(name, record.source_sha256)
        if hashlib.sha256(source).hexdigest() != record.source_sha256:
            raise UserBlueprintInvalid(f"{name}: the stored source does not match its signed sha256")
        try:
            return record, source.decode()
        except UnicodeDecodeError:
            raise UserBlueprintInvalid(f"{name}: the stored source is not UTF-8") from None

    def entries(self) -> list[Entry]:
        """Every stored user blueprint by name, each verified (record only) or with its problem."""
        out = []
        for name in sorted(self.backend.names()):
            try:
                record = self.record(name)
            except UserBlueprintInvalid as exc:
                out.append(Entry(name, None, str(exc)))
                continue
            if record is not None:
                out.append(Entry(name, record))
        return out

    def set_status(self, name: str, status: UserStatus, reason: str = "") -> UserBlueprintRecord | None:
        """Sign the record again with a new status (and reason); None when the blueprint is gone or invalid,
        already says so, or was refused (a kernel compiled for another slot shape does not undo a refusal)."""
        try:
            record = self.record(name)
        except UserBlueprintInvalid:
            return None
        if record is None or (record.status, record.reason) == (status, reason):
            return None
        if record.status is UserStatus.REFUSED and status is UserStatus.COMPILED:
            return None  # refused for one slot shape is refused: its code misbehaved, whatever another shape did
        record = msgspec.structs.replace(record, status=status, reason=reason, status_ts=time.time())
        return record if self.backend.replace(record, *self._sign(record)) else None

    def remove(self, name: str) -> bool:
        return self.backend.delete(name)

    def usable(self) -> list[tuple[UserBlueprintRecord, Blueprint]]:
        """The user blueprints a catalog takes: unvalidated (to compile) or compiled, verified (record, source),
        and not named like a built-in. Refused and invalid ones are left out."""
        out = []
        for entry in self.entries():
            record = entry.record
            if record is None or record.status is UserStatus.REFUSED or record.name in BUILTIN_IDS:
                continue
            try:
                record, source = self.get(record.name)
            except UserBlueprintError:
                continue
            out.append((record, as_blueprint(record, source)))
        return out


def extend_catalog(catalog: Catalog, blueprints: UserBlueprints) -> list[str]:
    """Add a library's usable user blueprints to a catalog (their classes unloaded); returns the names still
    unvalidated, which the forge queues. UserBlueprintError when the library cannot list them."""
    pending = []
    for record, bp in blueprints.usable():
        catalog.add(bp)
        if record.status is UserStatus.UNVALIDATED:
            pending.append(record.name)
    return pending


def as_blueprint(record: UserBlueprintRecord, source: str) -> Blueprint:
    """The catalog entry of a verified record: its class is not loaded (kernels/usercode.load does that where
    user code may run)."""
    return Blueprint(
        record.name,
        USER_FAMILY,
        record.description or f"user blueprint {record.class_name}",
        None,
        serves=tuple(k for k in KINDS if k in record.serves),
        tags=tuple(record.tags),
        risk=record.risk,
        priority=USER_PRIORITY,
        source=source,
        class_name=record.class_name,
    )
