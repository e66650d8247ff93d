"""The file library's user blueprints: `<library>/blueprints/<name>/record` and `source.py`.

`record` is the signature (hex) on its first line and the signed JSON document after it, so a status change
replaces both in one atomic rename and a reader never pairs a new document with an old signature. A new
blueprint is written whole in a hidden directory, fsynced and renamed into place (a name already taken makes
the rename fail: no overwrite); a removed one is renamed aside before it is deleted.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

from esper_tui.engine import fsutil
from esper_tui.engine.fsutil import fsync_dir, write_durable
from esper_tui.engine.library.userbp import NAME_PATTERN, UserBlueprintInvalid, UserBlueprintRecord

RECORD = "record"
SOURCE = "source.py"
_NAME = re.compile(NAME_PATTERN)


class FileRecords:
    """A `RecordBackend` in a directory (created on first write)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, name: str) -> Path:
        if not _NAME.match(name):  # never a path: the pattern has no separator or dot
            raise UserBlueprintInvalid(f"{name!r} is not a blueprint name")
        return self.root / name

    def create(self, record: UserBlueprintRecord, document: bytes, signature: str, source: bytes) -> bool:
        name = record.name
        target = self._dir(name)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{name}.{os.urandom(4).hex()}.tmp"
        tmp.mkdir()
        try:
            write_durable(tmp / SOURCE, source)
            write_durable(tmp / RECORD, signature.encode() + b"\n" + document)
            fsync_dir(tmp)
            try:
                os.rename(tmp, target)
            except OSError:  # EEXIST / ENOTEMPTY: the name is taken
                if target.exists():
                    return False
                raise
            fsync_dir(self.root)
            return True
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def replace(self, record: UserBlueprintRecord, document: bytes, signature: str) -> bool:
        target = self._dir(record.name)
        if not target.is_dir():
            return False
        tmp = target / f".{RECORD}.{os.urandom(4).hex()}.tmp"
        try:
            write_durable(tmp, signature.encode() + b"\n" + document)
            os.replace(tmp, target / RECORD)
        except FileNotFoundError:  # removed meanwhile
            return False
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        fsync_dir(target)
        return True

    def read(self, name: str) -> tuple[bytes, str] | None:
        try:
            raw = fsutil.read_regular(self._dir(name) / RECORD, f"{name}/{RECORD}")
        except FileNotFoundError:
            return None
        except (OSError, fsutil.NotRegularFile) as exc:
            raise UserBlueprintInvalid(f"{name}: record unreadable ({exc})") from None
        signature, _, document = raw.partition(b"\n")
        return document, signature.decode(errors="replace")

    def source(self, name: str, sha256: str) -> bytes:
        try:
            return fsutil.read_regular(self._dir(name) / SOURCE, f"{name}/{SOURCE}")
        except (OSError, fsutil.NotRegularFile) as exc:
            raise UserBlueprintInvalid(f"{name}: source unreadable ({exc})") from None

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if _NAME.match(p.name) and p.is_dir())

    def delete(self, name: str) -> bool:
        target = self._dir(name)
        aside = self.root / f".{name}.{os.urandom(4).hex()}.removed"
        try:
            os.rename(target, aside)
        except FileNotFoundError:
            return False
        fsync_dir(self.root)
        shutil.rmtree(aside, ignore_errors=True)
        return True
