"""Durable file-system steps shared by the library, the forge and the WAL: fsync a file, a directory, a rename.

One place for them so the WAL's writer and its recovery (and the library) share one implementation of
each barrier instead of private copies.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


def fsync_path(path: Path, flags: int = os.O_RDONLY) -> None:
    """fsync the file or directory at `path`, opened with `flags` (close-on-exec: never leaks to a child)."""
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a create/rename/unlink in `path` durable (etcd's lesson: the directory needs its own fsync)."""
    fsync_path(path, os.O_RDONLY | os.O_DIRECTORY)


def write_durable(path: Path, data: bytes) -> None:
    """Write and fsync a new file (the caller renames it into place and fsyncs the directory)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_all(fd: int, data: bytes) -> int:
    """Write everything with os.write (which may write less); returns the number of write calls."""
    view = memoryview(data)
    calls = 0
    while view:
        written = os.write(fd, view)
        calls += 1
        if written <= 0:
            raise OSError(errno.EIO, "write returned 0")
        view = view[written:]
    return calls


def write_synced(path: Path, data: bytes) -> None:
    """Create or replace `path` (mode 0o644) with `data` and fsync it (not its directory).

    Unlike write_durable it is unbuffered: every byte goes through os.write, like the WAL's appends.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory below root (a staged artifact, before its atomic rename)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fsync_path(Path(dirpath) / name)
        fsync_dir(Path(dirpath))
