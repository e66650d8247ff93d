"""Durable file-system steps shared by the library, the forge and the WAL: fsync a file, a directory, a rename.

One place for them so the WAL's writer and its recovery (and the library) share one implementation of
each barrier instead of private copies.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Callable
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


class StateDirError(Exception):
    """The state directory cannot be held: another esper-tui process has it, or it cannot be created or
    opened. The message is one line for the operator."""


def lock_state_dir(state_dir: Path) -> int:
    """Hold `<state>/engine.lock` (flock) for this process's lifetime and write its pid; returns the fd.

    One process per state directory: its compile workers are registered (and reaped) there, so an engine
    and a forge worker, or two of either, must never share one. Raises StateDirError.
    """
    if state_dir.exists() and not state_dir.is_dir():
        raise StateDirError(f"state directory {state_dir} is not a directory")
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(state_dir / "engine.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StateDirError(f"state directory {state_dir}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateDirError(f"another esper-tui engine or forge worker is using {state_dir}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class NotRegularFile(Exception):
    """A path that should hold a regular file holds a directory, symlink, FIFO, device or socket."""


_KINDS = (
    (stat.S_ISDIR, "directory"),
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)


def kind_of(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "special file")


def read_regular(
    path: Path, label: str, *, sync: bool = False, check: Callable[[os.stat_result], None] | None = None
) -> bytes:
    """A regular file's bytes; anything else raises NotRegularFile without being opened or waited on.

    lstat first (a device is never opened, a symlink never followed), then O_NOFOLLOW | O_NONBLOCK and
    fstat on the descriptor, so a file swapped for a FIFO in between is refused too, not blocked on.
    `check` sees that fstat (the opened file's own owner and mode) before a byte is read, and may raise.
    OSError (missing, unreadable) is the caller's to report.
    """
    mode = os.lstat(path).st_mode
    if stat.S_ISREG(mode):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            mode = stat.S_IFLNK
        else:
            try:
                st = os.fstat(fd)
                mode = st.st_mode
                if stat.S_ISREG(mode):
                    if check is not None:
                        check(st)
                    with open(fd, "rb", closefd=False) as f:
                        data = f.read()
                    if sync:
                        os.fsync(fd)
                    return data
            finally:
                os.close(fd)
    raise NotRegularFile(f"{label} is a {kind_of(mode)}, not a regular file")
