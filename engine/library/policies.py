"""Learned policies in the library: every version Simic trained, and which one is published to Tamiyo.

A version is stored as its signed file (library/policy_file.py), never changed once written. Publishing is a
signed pointer, {version, ts, id}: a pointer altered by hand fails its signature and nothing is published. Two
backends keep the same bytes through `PolicyBackend`: the file library (`<library>/policies/`) and the shared one
(engine/library/policies_shared.py: PostgreSQL rows, the bytes in the object store by sha256).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Protocol

import msgspec
import torch

from esper_tui.engine import fsutil
from esper_tui.engine.config import LibraryConfig
from esper_tui.engine.fsutil import fsync_dir, write_durable
from esper_tui.engine.library import signing
from esper_tui.engine.library.factory import is_shared
from esper_tui.engine.library.policy_file import VERSION_PATTERN, PolicyInvalid, PolicyMeta, decode
from esper_tui.engine.vocabulary import Struct, new_id

_VERSION = re.compile(VERSION_PATTERN)
POINTER = "published"


class Published(Struct, kw_only=True):
    """The signed pointer to the version Tamiyo should follow."""

    version: str
    ts: float = msgspec.field(default_factory=time.time)
    pointer_id: str = msgspec.field(default_factory=new_id)
    reason: str = ""


class PolicyBackend(Protocol):
    """Where a library keeps policy files and the published pointer (both as signed bytes)."""

    def put(self, version: str, data: bytes) -> bool:
        """Store a new version; False when that version exists (versions are never overwritten)."""
        ...

    def get(self, version: str) -> bytes | None: ...

    def versions(self) -> list[str]: ...

    def set_pointer(self, document: bytes, signature: str) -> None: ...

    def pointer(self) -> tuple[bytes, str] | None: ...


def _check_version(version: str) -> str:
    if not _VERSION.match(version):  # never a path: the pattern has no separator or dot
        raise PolicyInvalid(f"{version!r} is not a policy version")
    return version


class FilePolicies:
    """A `PolicyBackend` in a directory: `<version>.policy` files and `published` (signature line, document)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _write(self, name: str, data: bytes, *, replace: bool) -> bool:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{name}.{os.urandom(4).hex()}.tmp"
        try:
            write_durable(tmp, data)
            if replace:
                os.replace(tmp, self.root / name)
            else:
                try:
                    os.link(tmp, self.root / name)  # fails when it exists: no overwrite
                except FileExistsError:
                    return False
            fsync_dir(self.root)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def put(self, version: str, data: bytes) -> bool:
        return self._write(f"{_check_version(version)}.policy", data, replace=False)

    def get(self, version: str) -> bytes | None:
        path = self.root / f"{_check_version(version)}.policy"
        try:
            return fsutil.read_regular(path, path.name)
        except FileNotFoundError:
            return None
        except (OSError, fsutil.NotRegularFile) as exc:
            raise PolicyInvalid(f"{path}: unreadable ({exc})") from None

    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("v*.policy") if _VERSION.match(p.stem))

    def set_pointer(self, document: bytes, signature: str) -> None:
        self._write(POINTER, signature.encode() + b"\n" + document, replace=True)

    def pointer(self) -> tuple[bytes, str] | None:
        try:
            raw = fsutil.read_regular(self.root / POINTER, POINTER)
        except FileNotFoundError:
            return None
        except (OSError, fsutil.NotRegularFile) as exc:
            raise PolicyInvalid(f"{self.root / POINTER}: unreadable ({exc})") from None
        signature, _, document = raw.partition(b"\n")
        return document, signature.decode(errors="replace")


class Policies:
    """Store, read (verified) and publish policy versions over a `PolicyBackend`."""

    def __init__(self, backend: PolicyBackend, key: bytes) -> None:
        self.backend = backend
        self._key = key

    def next_version(self) -> str:
        versions = self.backend.versions()
        return f"v{int(versions[-1][1:]) + 1 if versions else 1:04d}"

    def store(self, data: bytes) -> PolicyMeta:
        """Store a signed policy file under its own version; PolicyInvalid if it does not verify or exists."""
        meta, _ = decode(data, self._key)
        if not self.backend.put(meta.version, data):
            raise PolicyInvalid(f"policy {meta.version} exists already (versions are never overwritten)")
        return meta

    def load(self, version: str) -> tuple[PolicyMeta, dict[str, torch.Tensor]]:
        data = self.backend.get(version)
        if data is None:
            raise PolicyInvalid(f"no policy {version} in the library")
        meta, tensors = decode(data, self._key, where=f"policy {version}")
        if meta.version != version:
            raise PolicyInvalid(f"policy {version}: signed as {meta.version} (copied or renamed)")
        return meta, tensors

    def publish(self, version: str, reason: str) -> Published:
        self.load(version)  # only a version that verifies is ever published
        pointer = Published(version=version, reason=reason)
        document = msgspec.json.encode(pointer)
        self.backend.set_pointer(document, signing.sign(self._key, document))
        return pointer

    def published(self) -> Published | None:
        """The verified pointer, None when nothing is published; PolicyInvalid when it fails its signature."""
        stored = self.backend.pointer()
        if stored is None:
            return None
        document, signature = stored
        if not signing.verify(self._key, document, signature):
            raise PolicyInvalid("the published-policy pointer fails its signature (altered, or another key's)")
        try:
            return msgspec.json.decode(document, type=Published)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise PolicyInvalid(f"the published-policy pointer does not decode ({exc})") from None

    def versions(self) -> list[str]:
        return self.backend.versions()


def open_policies(config: LibraryConfig, state_dir: Path, key: bytes) -> Policies:
    """The policies of the library the config names: `<state>/library/policies`, or the shared library's."""
    if is_shared(config):
        from esper_tui.engine.library.policies_shared import shared_policies

        return Policies(shared_policies(config), key)
    return Policies(FilePolicies(state_dir / "library" / "policies"), key)
