"""The forge's write-ahead log (Tezzeret WAL): transactions BEGIN -> DATA... -> COMMIT | ABORT.

The byte layout is documented once, in ``format.py``, and the recovery policy (what ``open``
replays, reports and repairs, and what ``inspect`` shows) in ``recovery/__init__.py``. This module holds the
writer (a synchronous API and an asyncio API with group commit) and checkpoints; it re-exports the
recovery side's public names so the WAL is imported from one place.

Durability
    ``o_dsync`` opens segments with ``os.O_DSYNC`` where the platform has it (every write is a
    barrier); otherwise, and in ``fsync`` mode, records are written with ``os.write`` and COMMIT/ABORT
    are followed by ``os.fsync``. BEGIN and DATA are always written before the call returns (so they
    survive the process dying) but in ``fsync`` mode reach the disk only with the next barrier.
    ``commit`` and ``abort`` are durable when they return. The directory is fsynced after every file
    creation, rename and deletion, and creating the directory fsyncs its parent. A failed write or
    fsync is fatal (PostgreSQL's lesson: after a failed fsync the page cache may have dropped the data,
    so a retry could report success for lost bytes): the call raises ``WalFsyncError`` and the log
    refuses every later write until it is reopened.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import math
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from esper_tui.engine.config import DurabilityMode
from esper_tui.engine.fsutil import fsync_dir, write_synced
from esper_tui.engine.fsutil import write_all as _write_all
from esper_tui.engine.wal.format import (
    FORMAT_VERSION,
    HEADER_SIZE,
    IDENTITY_NAME,
    MAX_PAYLOAD,
    MAX_TXID_BYTES,
    RecordType,
    WalError,
    WalFormatError,
    encode_checkpoint_payload,
    encode_identity,
    encode_record,
    new_wal_id,
    segment_name,
)
from esper_tui.engine.wal.recovery import RecoveryReport, paused_gc, recover, report
from esper_tui.engine.wal.recovery.analysis import LOCK_NAME, TMP_SUFFIX, Transaction, Tx, TxState, WalDamage
from esper_tui.engine.wal.recovery.inspection import InspectReport, inspect
from esper_tui.engine.wal.recovery.repair import unlink_oldest_first, write_file_atomically

__all__ = [
    "InspectReport",
    "RecoveryReport",
    "Transaction",
    "TxState",
    "WalDamage",
    "WalError",
    "WalFormatError",
    "WalFsyncError",
    "WalStats",
    "WriteAheadLog",
    "inspect",
]


class WalFsyncError(WalError):
    """A write or fsync failed: fatal. The log refuses further writes; nothing is retried."""


@dataclass(frozen=True)
class WalStats:
    path: str
    segments: int
    size_bytes: int
    open_txids: list[str]
    commits_total: int  # by this instance
    aborts_total: int  # by this instance
    last_checkpoint_ts: float | None
    durability_mode: str  # the mode in effect ("fsync" when O_DSYNC was asked for but is missing)
    fsyncs_total: int = 0


def _make_dirs(directory: Path) -> None:
    """mkdir -p that fsyncs the parent of each directory it creates.

    A new directory's name lives in its parent: until the parent is fsynced, a power cut can lose the
    WAL directory together with every record fsynced inside it (etcd's lesson).
    """
    missing: list[Path] = []
    path = directory
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:  # made meanwhile by another process: its name may not be durable yet
            if not path.is_dir():
                raise
        fsync_dir(path.parent)


# --------------------------------------------------------------------------- writer


@dataclass(slots=True)
class _Pending:
    seq: int
    new_segment: bool  # this record opens a new segment (rotation or first write)
    data: bytes


class WriteAheadLog:
    """An append-only transaction log in one directory; one writer per directory (flock on LOCK).

    Constructing it recovers the directory (the policy is in the recovery package's docstring) and opens it for
    appending, so no code path can append after an unrepaired tail; `open` also returns the
    RecoveryReport (kept as `self.recovery`). A new segment starts when the next record would push the
    current one past `segment_bytes` (a bigger record gets a segment of its own; a checkpoint segment
    holds every open transaction however large). `group_commit_window_s`: how long the async writer
    waits for more records to join a batch (0: flush at once; batches still form while a flush is in
    progress).
    The sync API may be called from several threads; the async API from one event loop.
    """

    def __init__(
        self,
        directory: Path,
        *,
        durability: DurabilityMode = DurabilityMode.O_DSYNC,
        segment_bytes: int = 4 * 1024 * 1024,
        group_commit_window_s: float = 0.002,
    ) -> None:
        self.directory = Path(directory)
        self.durability = DurabilityMode(durability)
        if segment_bytes <= 0:
            raise ValueError(f"segment_bytes must be positive, got {segment_bytes}")
        self.segment_bytes = segment_bytes
        self.group_commit_window_s = group_commit_window_s
        self._odsync = self.durability is DurabilityMode.O_DSYNC and hasattr(os, "O_DSYNC")
        self.fsyncs_total = 0  # durability barriers issued: fsync calls, and writes on an O_DSYNC file
        self.commits_total = 0
        self.aborts_total = 0
        self._io_lock = threading.RLock()  # held while writing; always taken before _lock
        self._lock = threading.RLock()  # guards the in-memory state below
        self._pending: list[_Pending] = []
        self._waiters: list[tuple[asyncio.Future[None], int]] = []
        self._writer_task: asyncio.Task[None] | None = None
        self._flushed_at = -math.inf  # the event loop's time when the async writer last flushed
        self._failed: BaseException | None = None
        self._closed = False
        self._fd = -1
        self._unsynced = False

        try:
            _make_dirs(self.directory)
            self._lock_fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise WalError(f"cannot open the WAL directory {self.directory}: {exc}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            raise WalError(f"{self.directory}: another writer holds the WAL lock") from exc
        try:
            with paused_gc():
                self.recovery = self._recover()
        except OSError as exc:
            os.close(self._lock_fd)
            raise WalError(f"recovery of {self.directory} failed: {exc}") from exc
        except BaseException:
            os.close(self._lock_fd)
            raise

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        durability: DurabilityMode = DurabilityMode.O_DSYNC,
        segment_bytes: int = 4 * 1024 * 1024,
        group_commit_window_s: float = 0.002,
    ) -> tuple[WriteAheadLog, RecoveryReport]:
        """Recover (repairing the directory), then open for appending."""
        wal = cls(
            directory,
            durability=durability,
            segment_bytes=segment_bytes,
            group_commit_window_s=group_commit_window_s,
        )
        return wal, wal.recovery

    def _recover(self) -> RecoveryReport:
        analysis, repaired = recover(self.directory)
        self._wal_id = analysis.wal_id or new_wal_id()
        if not analysis.identity_stored:  # a new log (or one from before WAL ids): its identity, once
            write_file_atomically(self.directory / IDENTITY_NAME, encode_identity(self._wal_id))
            self._sync_dir()
        live = analysis.live()
        self._segments = [s.path for s in live]
        self._sealed_bytes = sum(s.kept_size() for s in live[:-1])
        self._open: dict[str, Tx] = {t.txid.decode("utf-8", "replace"): t for t in analysis.replay.open.values()}
        self._next_seq = analysis.next_seq
        self.last_checkpoint_ts = analysis.last_checkpoint_ts
        if live:
            last = live[-1]
            # A version-1 segment is never appended to: salt 0 makes the next record start a new segment.
            self._salt = (last.scan.salt or 0) if last.scan.version == FORMAT_VERSION else 0
            self._size = self._logical_size = last.kept_size()
            self._fd = os.open(last.path, self._append_flags())
        else:
            self._salt = 0
            self._size = self._logical_size = 0
        return report(analysis, repaired)

    def _append_flags(self) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
        return flags | os.O_DSYNC if self._odsync else flags

    # ------------------------------------------------------------------ staging (in memory, no I/O)

    def _check_writable(self) -> None:
        if self._failed is not None:
            raise WalFsyncError(f"the WAL failed earlier ({self._failed}) and refuses writes; reopen it")
        if self._closed:
            raise WalError("the WAL is closed")

    def _stage(self, rtype: RecordType, txid: str, payload: bytes) -> None:
        """Validate the transition, update the transaction table and queue the encoded record.

        Staging order is log order; the record reaches the disk with the next flush.
        """
        raw = txid.encode("utf-8")
        if not raw or len(raw) > MAX_TXID_BYTES:
            raise WalError(f"txid must be 1..{MAX_TXID_BYTES} bytes of UTF-8, got {len(raw)}")
        if len(payload) > MAX_PAYLOAD:
            raise WalError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
        payload = bytes(payload)
        with self._lock:
            self._check_writable()
            tx = self._open.get(txid)
            if rtype == RecordType.BEGIN:
                if tx is not None:
                    raise WalError(f"BEGIN of transaction {txid!r} which is already open")
                self._open[txid] = Tx(raw, payload)
            elif tx is None:
                raise WalError(f"{rtype.name} of transaction {txid!r} which is not open")
            elif rtype == RecordType.DATA:
                tx.data.append(payload)
            else:
                del self._open[txid]
            self._queue(rtype, raw, payload)

    def _queue(self, rtype: RecordType, txid: bytes, payload: bytes) -> None:
        seq = self._next_seq
        self._next_seq += 1
        size = HEADER_SIZE + len(payload)
        new_segment = self._salt == 0 or (self._logical_size > 0 and self._logical_size + size > self.segment_bytes)
        if new_segment:
            self._salt = secrets.randbits(64) | 1  # never 0: 0 means "no segment yet"
            self._logical_size = 0
        self._logical_size += size
        record = encode_record(rtype, self._wal_id, self._salt, seq, txid, payload)
        self._pending.append(_Pending(seq, new_segment, record))

    # ------------------------------------------------------------------ flushing (I/O)

    def _flush(self, sync: bool) -> None:
        """Write every staged record (one write per segment touched), then fsync if `sync`."""
        with self._io_lock:
            with self._lock:
                batch, self._pending = self._pending, []
            if self._failed is not None:
                raise WalFsyncError(f"the WAL failed earlier ({self._failed}) and refuses writes; reopen it")
            try:
                chunk: list[bytes] = []
                for rec in batch:
                    if rec.new_segment:
                        self._write(b"".join(chunk))
                        chunk = []
                        self._start_segment(rec.seq)
                    chunk.append(rec.data)
                self._write(b"".join(chunk))
                if sync:
                    self._sync()
            except OSError as exc:
                self._failed = exc
                raise WalFsyncError(f"WAL write/fsync failed in {self.directory}: {exc}") from exc

    def _write(self, data: bytes) -> None:
        if not data:
            return
        calls = _write_all(self._fd, data)
        self._size += len(data)
        if self._odsync:
            self.fsyncs_total += calls
        else:
            self._unsynced = True

    def _sync(self) -> None:
        if self._unsynced and self._fd >= 0:
            self.fsyncs_total += 1
            os.fsync(self._fd)
            self._unsynced = False

    def _sync_dir(self) -> None:
        self.fsyncs_total += 1
        fsync_dir(self.directory)

    def _close_fd(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def _start_segment(self, seq: int) -> None:
        """Seal the active segment (durable), create the next one and make its name durable."""
        if self._fd >= 0:
            self._sync()
            self._sealed_bytes += self._size
        self._close_fd()
        path = self.directory / segment_name(seq)
        self._fd = os.open(path, self._append_flags() | os.O_CREAT | os.O_EXCL, 0o644)
        self._segments.append(path)
        self._size = 0
        self._sync_dir()

    # ------------------------------------------------------------------ synchronous API

    def _append(self, rtype: RecordType, txid: str, payload: bytes, sync: bool) -> None:
        with self._io_lock:  # stage and flush together so concurrent threads keep log order simple
            self._stage(rtype, txid, payload)
            self._flush(sync)
        self._count(rtype)

    def _count(self, rtype: RecordType) -> None:
        with self._lock:
            if rtype == RecordType.COMMIT:
                self.commits_total += 1
            elif rtype == RecordType.ABORT:
                self.aborts_total += 1

    def begin(self, txid: str, payload: bytes) -> None:
        """Start a transaction (BEGIN of an open txid is a WalError)."""
        self._append(RecordType.BEGIN, txid, payload, sync=False)

    def data(self, txid: str, payload: bytes) -> None:
        self._append(RecordType.DATA, txid, payload, sync=False)

    def commit(self, txid: str, payload: bytes = b"") -> None:
        """Durable when it returns; raises WalFsyncError (fatal) if the disk did not take it."""
        self._append(RecordType.COMMIT, txid, payload, sync=True)

    def abort(self, txid: str, payload: bytes = b"") -> None:
        """Durable when it returns, like commit."""
        self._append(RecordType.ABORT, txid, payload, sync=True)

    # ------------------------------------------------------------------ asyncio API (group commit)

    async def abegin(self, txid: str, payload: bytes) -> None:
        await self._submit(RecordType.BEGIN, txid, payload)

    async def adata(self, txid: str, payload: bytes) -> None:
        await self._submit(RecordType.DATA, txid, payload)

    async def acommit(self, txid: str, payload: bytes = b"") -> None:
        """Durable when it returns; concurrent callers share one write and one fsync."""
        await self._submit(RecordType.COMMIT, txid, payload)

    async def aabort(self, txid: str, payload: bytes = b"") -> None:
        await self._submit(RecordType.ABORT, txid, payload)

    async def _submit(self, rtype: RecordType, txid: str, payload: bytes) -> None:
        self._stage(rtype, txid, payload)  # errors in the caller's order, before any await
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiters.append((future, rtype))
        task = self._writer_task
        if task is None or task.done() or task.get_loop() is not loop:
            self._writer_task = loop.create_task(self._group_commit())
        await future

    async def _group_commit(self) -> None:
        """One writer: take every queued record, write + fsync once off the loop, resolve all waiters.

        Records that arrive within a window of the last flush are the load that gathered while the log was busy:
        they are flushed at once (after one yield, so that writers already woken can join). Only the first record
        after a quiet window waits `group_commit_window_s` for company. Commits and aborts are counted per batch.
        """
        batch: list[tuple[asyncio.Future[None], int]] = []
        loop = asyncio.get_running_loop()
        window = self.group_commit_window_s
        try:
            while self._waiters:
                quiet = loop.time() - self._flushed_at >= window
                await asyncio.sleep(window if window > 0 and quiet else 0)  # let more records join the batch
                batch, self._waiters = self._waiters, []
                commits = sum(rtype == RecordType.COMMIT for _, rtype in batch)
                aborts = sum(rtype == RecordType.ABORT for _, rtype in batch)
                await asyncio.to_thread(self._flush, commits + aborts > 0)
                self._flushed_at = loop.time()
                with self._lock:
                    self.commits_total += commits
                    self.aborts_total += aborts
                for future, _ in batch:
                    if not future.done():
                        future.set_result(None)
                batch = []
        except BaseException as exc:
            # Every awaiter in the failed batch (and any queued behind it) gets the error: none of them
            # may believe its record is durable.
            error = exc if isinstance(exc, WalError) else WalFsyncError(f"WAL writer stopped: {exc!r}")
            batch, self._waiters = batch + self._waiters, []
            for future, _ in batch:
                if not future.done():
                    failure = type(error)(str(error))
                    failure.__cause__ = error
                    future.set_exception(failure)
            if not isinstance(exc, Exception):
                raise

    # ------------------------------------------------------------------ checkpoint, status, close

    def checkpoint(self) -> None:
        """Rewrite the log as one new segment holding only the open transactions (BEGIN + DATA).

        Written to a temp file and fsynced, renamed into place, directory fsynced, then the older
        segments are deleted oldest first with a directory fsync after each (`unlink_oldest_first` says
        why). A crash before the rename leaves the old log (plus a .tmp that recovery deletes); after
        it, recovery starts at the new segment and deletes the older ones.
        A failure before the rename leaves the log unchanged and raises WalError; after it, it is fatal.
        """
        with self._io_lock, self._lock:
            self._check_writable()
            self._flush(sync=True)
            ts = time.time()
            seq = self._next_seq
            salt = secrets.randbits(64) | 1
            parts = [encode_record(RecordType.CHECKPOINT, self._wal_id, salt, seq, b"", encode_checkpoint_payload(ts))]
            for tx in self._open.values():
                for rtype, payload in [
                    (RecordType.BEGIN, tx.begin),
                    *((RecordType.DATA, d) for d in tx.data),
                ]:
                    parts.append(encode_record(rtype, self._wal_id, salt, seq + len(parts), tx.txid, payload))
            blob = b"".join(parts)
            path = self.directory / segment_name(seq)
            tmp = path.with_name(path.name + TMP_SUFFIX)
            try:
                write_synced(tmp, blob)
                self.fsyncs_total += 1
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise WalError(f"checkpoint failed, the log is unchanged: {exc}") from exc
            try:
                self._close_fd()
                os.replace(tmp, path)
                self._sync_dir()
                obsolete = [old for old in self._segments if old != path]  # oldest first
                self.fsyncs_total += unlink_oldest_first(obsolete, self.directory)
                self._fd = os.open(path, self._append_flags())
            except OSError as exc:
                self._failed = exc
                raise WalFsyncError(f"checkpoint failed after the new segment was installed: {exc}") from exc
            self._segments = [path]
            self._sealed_bytes = 0
            self._size = self._logical_size = len(blob)
            self._salt = salt
            self._next_seq = seq + len(parts)
            self.last_checkpoint_ts = ts

    def status(self) -> WalStats:
        with self._lock:
            return WalStats(
                path=str(self.directory),
                segments=len(self._segments),
                size_bytes=self._sealed_bytes + self._size,
                open_txids=list(self._open),
                commits_total=self.commits_total,
                aborts_total=self.aborts_total,
                last_checkpoint_ts=self.last_checkpoint_ts,
                durability_mode=(DurabilityMode.O_DSYNC if self._odsync else DurabilityMode.FSYNC).value,
                fsyncs_total=self.fsyncs_total,
            )

    def close(self) -> None:
        """Flush and fsync what is staged, then release the directory. Idempotent."""
        with self._io_lock, self._lock:
            if self._closed:
                return
            try:
                if self._failed is None:
                    self._flush(sync=True)
            finally:
                self._closed = True
                self._close_fd()
                os.close(self._lock_fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
