"""The forge's write-ahead log (Tezzeret WAL): transactions BEGIN -> DATA... -> COMMIT | ABORT.

The byte layout is documented once, in ``wal_format.py``. This module holds the recovery policy, the
writer (a synchronous API and an asyncio API with group commit), checkpoints and ``inspect``.

Durability
    ``o_dsync`` opens segments with ``os.O_DSYNC`` where the platform has it (every write is a
    barrier); otherwise, and in ``fsync`` mode, records are written with ``os.write`` and COMMIT/ABORT
    are followed by ``os.fsync``. BEGIN and DATA are always written before the call returns (so they
    survive the process dying) but in ``fsync`` mode reach the disk only with the next barrier.
    ``commit`` and ``abort`` are durable when they return. The directory is fsynced after every file
    creation, rename and deletion. A failed write or fsync is fatal (PostgreSQL's lesson: after a failed
    fsync the page cache may have dropped the data, so a retry could report success for lost bytes):
    the call raises ``WalFsyncError`` and the log refuses every later write until it is reopened.

Recovery policy (``WriteAheadLog.open``; ``inspect`` applies the same analysis without repairing)
    1. Start: the newest segment whose first record is a valid CHECKPOINT and whose seq continues the
       segment before it; older segments are obsolete (a checkpoint that crashed before deleting them)
       and repair deletes them. ``*.tmp`` files are unfinished checkpoints or copies and are deleted.
    2. Replay is the longest *gap-free* prefix of the record sequence. Within a segment, records are
       read until EOF or the first damage. The next segment is read only if its name and its first
       record's seq continue the sequence exactly; otherwise it and everything after it are not
       replayed.
    3. Damage, by kind:
       - torn tail: a short header, a payload running past EOF (including an absurd length), or zero
         bytes to EOF, with no valid record after it. What a writer that died mid-append leaves (LevelDB:
         "the writer died"; etcd: zeroed sectors are a torn write). At the end of the last segment it is
         silently truncated (counted in ``truncated_bytes``).
       - damaged tail: complete bytes that fail a check (CRC, magic, type, or a stale salt: bytes left
         over from an older file) with nothing valid after them. Reported in ``corrupt`` and truncated.
       - damage in the middle: bad bytes followed by valid records of the same segment. Reported in
         ``corrupt``; replay STOPS there, and the rest of that segment and all later segments are not
         replayed. Why not skip ahead like LevelDB: our transactions span records, so the hole may have
         held a DATA whose COMMIT follows it (replaying would commit incomplete data) or an ABORT or
         COMMIT (replaying would misstate the outcome). Sequence numbers cannot prove that nothing was
         lost in the hole, and two halves of different records are never joined.
       A seq that jumps inside a segment is damage too. A torn or damaged tail of a segment that is not
       the last is reported (the writer makes a segment durable before starting the next), and the
       next segment is still replayed if its seq continues: then nothing was lost.
    4. Repair makes the directory equal to the replayed prefix, so the log can be appended to and a
       second recovery gives the same transactions: damaged bytes are cut off, and segments that were
       not replayed are renamed aside. Anything removed that is not a plain torn tail is preserved
       first, whole, as ``<segment>.<crc32 of its bytes>.corrupt`` (never read again, listed by
       ``inspect``). Order: delete temp files, preserve copies, rename segments aside, fsync the
       directory, truncate, delete obsolete segments, fsync the directory. A crash at any point leaves
       a directory that recovers to the same transactions (idempotent).
    5. Valid records in an illegal order (DATA/COMMIT/ABORT of a transaction that is not open, BEGIN of
       an open one, a CHECKPOINT that is not a segment's first record) are reported in ``corrupt`` and
       ignored; they do not stop replay. A txid may be reused once its transaction has finished.
    6. A segment whose first record is of another format version or byte order (and holds nothing we
       can read) makes ``open`` raise ``WalFormatError``: never truncate a newer writer's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import gc
import os
import secrets
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

from .contracts import DurabilityMode
from .wal_format import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    MAX_TXID_BYTES,
    DamageKind,
    RawRecord,
    RecordType,
    SegmentScan,
    WalError,
    WalFormatError,
    decode_checkpoint_payload,
    encode_checkpoint_payload,
    encode_record,
    parse_segment_name,
    scan_segment,
    segment_name,
)

__all__ = [
    "RecoveryReport",
    "Transaction",
    "WalError",
    "WalFormatError",
    "WalFsyncError",
    "WalStats",
    "WriteAheadLog",
    "inspect",
]

TxState = Literal["open", "committed", "aborted"]
_LOCK_NAME = "LOCK"
_TMP_SUFFIX = ".tmp"
_CORRUPT_SUFFIX = ".corrupt"


class WalFsyncError(WalError):
    """A write or fsync failed: fatal. The log refuses further writes; nothing is retried."""


@dataclass(frozen=True)
class Transaction:
    txid: str
    begin: bytes
    data: list[bytes]
    state: TxState
    end: bytes = b""  # the COMMIT or ABORT payload (b"" while open)


@dataclass(frozen=True)
class RecoveryReport:
    committed: list[Transaction]  # in COMMIT order
    aborted: list[Transaction]  # in ABORT order
    open: list[Transaction]  # in BEGIN order: in-flight jobs to resume or requeue
    records: int  # records replayed
    segments: int  # segment files read
    truncated_bytes: int  # bytes cut off the end of segments (torn and damaged tails)
    corrupt: list[str]  # "file@offset: what" for damage, illegal sequences and segments not replayed
    repaired: bool  # whether recovery changed anything on disk


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


# --------------------------------------------------------------------------- recovery


class _Tx:
    """A transaction being replayed or written (mutable; the public Transaction is frozen)."""

    __slots__ = ("begin", "data", "end", "records", "state", "txid")

    def __init__(self, txid: bytes, begin: bytes) -> None:
        self.txid = txid
        self.begin = begin
        self.data: list[bytes] = []
        self.state: TxState = "open"
        self.end = b""
        self.records = 1

    def public(self) -> Transaction:
        # Open transactions keep growing in the writer, so their data list is copied.
        data = list(self.data) if self.state == "open" else self.data
        return Transaction(self.txid.decode("utf-8", "replace"), self.begin, data, self.state, self.end)


# Plain ints for the replay loop: comparing with enum members costs an attribute lookup per record.
_BEGIN, _DATA, _COMMIT, _ABORT = (
    int(t) for t in (RecordType.BEGIN, RecordType.DATA, RecordType.COMMIT, RecordType.ABORT)
)


class _Replay:
    """The transaction state machine applied to the replayed records, in order."""

    def __init__(self) -> None:
        self.open: dict[bytes, _Tx] = {}
        self.finished_as: dict[bytes, TxState] = {}
        self.all: list[_Tx] = []
        self.committed: list[_Tx] = []
        self.aborted: list[_Tx] = []
        self.illegal: list[str] = []
        self.records = 0
        self.last_seq: int | None = None

    def apply(self, where: str, records: list[RawRecord]) -> None:
        open_, finished, all_ = self.open, self.finished_as, self.all
        for off, rtype, _seq, txid, payload in records:
            tx = open_.get(txid)
            if tx is not None:
                if rtype == _DATA:
                    tx.data.append(payload)
                    tx.records += 1
                    continue
                if rtype in (_COMMIT, _ABORT):
                    del open_[txid]
                    tx.records += 1
                    tx.end = payload
                    if rtype == _COMMIT:
                        tx.state = "committed"
                        self.committed.append(tx)
                    else:
                        tx.state = "aborted"
                        self.aborted.append(tx)
                    finished[txid] = tx.state
                    continue
            elif rtype == _BEGIN:
                tx = open_[txid] = _Tx(txid, payload)
                all_.append(tx)
                continue
            self.illegal.append(f"{where}@{off}: {self._why(rtype, txid)}; ignored")
        self.records += len(records)
        if records:
            self.last_seq = records[-1][2]

    def _why(self, rtype: int, txid: bytes) -> str:
        name, tx = RecordType(rtype).name, repr(txid.decode("utf-8", "replace"))
        if rtype == RecordType.CHECKPOINT:
            return "CHECKPOINT record that is not the first record of the log"
        if rtype == RecordType.BEGIN:
            return f"BEGIN of transaction {tx} which is already open"
        last = self.finished_as.get(txid)
        if last is None:
            return f"{name} of transaction {tx} without BEGIN"
        return f"{name} of transaction {tx} after its {'COMMIT' if last == 'committed' else 'ABORT'}"


@dataclass(slots=True)
class _Segment:
    path: Path
    seq: int  # from the name
    data: bytes
    scan: SegmentScan
    role: Literal["live", "obsolete", "not replayed"] = "live"
    cut_to: int | None = None  # repair truncates to this size (0: delete)
    preserve: bool = False  # keep a .corrupt copy before cutting

    def kept_size(self) -> int:
        return len(self.data) if self.cut_to is None else self.cut_to


@dataclass(slots=True)
class _Analysis:
    directory: Path
    segments: list[_Segment]
    replay: _Replay
    corrupt: list[str]
    tmp_files: list[Path]
    other_files: list[str]
    truncated_bytes: int
    last_checkpoint_ts: float | None
    next_seq: int

    def live(self) -> list[_Segment]:
        """Segments that remain in the log after repair, oldest first."""
        return [s for s in self.segments if s.role == "live" and s.cut_to != 0]

    def needs_repair(self) -> bool:
        return bool(self.tmp_files) or any(s.role != "live" or s.cut_to is not None for s in self.segments)


def _chain_start(segments: list[_Segment]) -> int:
    """Index of the newest checkpoint segment that continues the sequence of the one before it.

    Requiring continuity means a stale checkpoint file (another incarnation's, or renamed) can never
    make recovery treat the real log as obsolete and delete it.
    """
    for i in range(len(segments) - 1, 0, -1):
        recs, before = segments[i].scan.records, segments[i - 1].scan.records
        if (
            recs
            and recs[0][1] == RecordType.CHECKPOINT
            and recs[0][2] == segments[i].seq
            and before
            and before[-1][2] + 1 == segments[i].seq
        ):
            return i
    return 0


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Pause the cyclic GC: in a process holding torch, gen-2 passes tripled 10k-transaction recovery."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _analyze(directory: Path) -> _Analysis:
    """Read every segment once and decide what is replayed and what repair would do. Touches nothing."""
    segments: list[_Segment] = []
    tmp_files: list[Path] = []
    other: list[str] = []
    names = sorted(os.listdir(directory)) if directory.is_dir() else []
    for name in names:
        seq = parse_segment_name(name)
        path = directory / name
        if seq is not None:
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # inspect racing a live writer's checkpoint
                continue
            segments.append(_Segment(path, seq, data, scan_segment(data)))
        elif name.endswith(_TMP_SUFFIX):
            tmp_files.append(path)
        elif name != _LOCK_NAME:
            other.append(name)
    segments.sort(key=lambda s: s.seq)

    start = _chain_start(segments)
    for seg in segments[:start]:
        seg.role = "obsolete"

    replay = _Replay()
    corrupt: list[str] = []
    truncated = 0
    checkpoint_ts: float | None = None
    stopped: str | None = None
    chain = segments[start:]
    for i, seg in enumerate(chain):
        name = seg.path.name
        recs = seg.scan.records
        if stopped is None and recs:
            first_seq = recs[0][2]
            if first_seq != seg.seq:
                stopped = f"its first record has seq {first_seq} but its name says {seg.seq}: a renamed file"
            elif replay.last_seq is not None and first_seq != replay.last_seq + 1:
                stopped = f"its first record has seq {first_seq}, the log continues at {replay.last_seq + 1}"
        if stopped is not None:
            seg.role = "not replayed"
            corrupt.append(f"{name}: not replayed ({stopped})")
            continue
        if i == 0 and recs and recs[0][1] == RecordType.CHECKPOINT:
            checkpoint_ts = decode_checkpoint_payload(recs[0][4])
            replay.records += 1
            replay.last_seq = recs[0][2]
            recs = recs[1:]
        replay.apply(name, recs)
        damage = seg.scan.damage
        if damage is None:
            if not seg.scan.records:
                seg.cut_to = 0  # an empty file: nothing to keep
            continue
        seg.cut_to = damage.offset
        truncated += seg.scan.size - damage.offset
        last = i == len(chain) - 1
        if damage.kind is DamageKind.TORN and last:
            continue  # a dead writer's unfinished append: the normal end of a log
        seg.preserve = True
        where = f"{name}@{damage.offset}"
        if damage.kind is DamageKind.MIDDLE:
            corrupt.append(f"{where}: {damage.reason}; replay stops here")
            stopped = f"it follows damage at {where}"
        else:
            what = "torn" if damage.kind is DamageKind.TORN else "damaged"
            corrupt.append(f"{where}: {damage.reason} ({what} tail of {'the last' if last else 'a'} segment)")
    corrupt.extend(replay.illegal)

    if replay.last_seq is not None:
        next_seq = replay.last_seq + 1
    else:
        next_seq = max((s.seq for s in chain if s.role == "live"), default=1)
    return _Analysis(
        directory, segments, replay, corrupt, tmp_files, other, truncated, checkpoint_ts, next_seq
    )


def _fsync_path(path: Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make creations, renames and deletions in `directory` durable (etcd's lesson)."""
    _fsync_path(directory, os.O_RDONLY | os.O_DIRECTORY)


def _write_all(fd: int, data: bytes) -> int:
    """Write everything (os.write may write less); returns the number of write calls."""
    view = memoryview(data)
    calls = 0
    while view:
        written = os.write(fd, view)
        calls += 1
        if written <= 0:
            raise OSError(errno.EIO, "write returned 0")
        view = view[written:]
    return calls


def _write_synced(path: Path, data: bytes) -> None:
    """Create or replace `path` with `data` and fsync it (not its directory)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file_atomically(path: Path, data: bytes) -> None:
    """temp file + fsync + rename; the caller fsyncs the directory."""
    tmp = path.with_name(path.name + _TMP_SUFFIX)
    _write_synced(tmp, data)
    os.replace(tmp, path)


def _quarantine_name(seg: _Segment) -> Path:
    return seg.path.with_name(f"{seg.path.name}.{zlib.crc32(seg.data):08x}{_CORRUPT_SUFFIX}")


def _repair(analysis: _Analysis) -> None:
    """Make the directory equal the replayed prefix. Order matters for crash safety (module docstring)."""
    directory = analysis.directory
    for tmp in analysis.tmp_files:  # first: a crashed preserve copy leaves a .tmp this run rewrites
        os.unlink(tmp)
    for seg in analysis.segments:
        if seg.preserve and seg.role == "live" and seg.cut_to is not None:
            _write_file_atomically(_quarantine_name(seg), seg.data)
    for seg in analysis.segments:
        if seg.role == "not replayed":
            os.replace(seg.path, _quarantine_name(seg))
    _fsync_dir(directory)
    for seg in analysis.segments:
        if seg.role != "live" or seg.cut_to is None:
            continue
        if seg.cut_to == 0:
            os.unlink(seg.path)
            continue
        os.truncate(seg.path, seg.cut_to)
        _fsync_path(seg.path, os.O_WRONLY)
    for seg in analysis.segments:  # oldest first, like checkpoint: see _chain_start
        if seg.role == "obsolete":
            os.unlink(seg.path)
    _fsync_dir(directory)


def _report(analysis: _Analysis, repaired: bool) -> RecoveryReport:
    replay = analysis.replay
    return RecoveryReport(
        committed=[t.public() for t in replay.committed],
        aborted=[t.public() for t in replay.aborted],
        open=[t.public() for t in replay.open.values()],
        records=replay.records,
        segments=len(analysis.segments),
        truncated_bytes=analysis.truncated_bytes,
        corrupt=list(analysis.corrupt),
        repaired=repaired,
    )


def inspect(directory: Path) -> dict[str, Any]:
    """What recovery would see, for `esper-tui wal inspect`. READ-ONLY: never repairs, never locks."""
    analysis = _analyze(Path(directory))
    segments = []
    for seg in analysis.segments:
        recs = seg.scan.records
        damage = seg.scan.damage
        segments.append(
            {
                "name": seg.path.name,
                "size": len(seg.data),
                "records": len(recs),
                "salt": None if seg.scan.salt is None else f"{seg.scan.salt:016x}",
                "first_seq": recs[0][2] if recs else None,
                "last_seq": recs[-1][2] if recs else None,
                "role": seg.role,
                "damage": None
                if damage is None
                else f"{damage.kind.value} at {damage.offset}: {damage.reason}",
            }
        )
    replay = analysis.replay
    return {
        "directory": str(analysis.directory),
        "segments": segments,
        "transactions": [
            {"txid": t.txid.decode("utf-8", "replace"), "state": t.state, "records": t.records}
            for t in replay.all
        ],
        "open_transactions": [t.decode("utf-8", "replace") for t in replay.open],
        "corrupt": list(analysis.corrupt),
        "records": replay.records,
        "truncatable_bytes": analysis.truncated_bytes,
        "last_checkpoint_ts": analysis.last_checkpoint_ts,
        "other_files": [p.name for p in analysis.tmp_files] + analysis.other_files,
    }


# --------------------------------------------------------------------------- writer


@dataclass(slots=True)
class _Pending:
    seq: int
    new_segment: bool  # this record opens a new segment (rotation or first write)
    data: bytes


class WriteAheadLog:
    """An append-only transaction log in one directory; one writer per directory (flock on LOCK).

    Constructing it recovers the directory (see the module docstring) and opens it for appending, so
    no code path can append after an unrepaired tail; `open` also returns the RecoveryReport (kept as
    `self.recovery`). A new segment starts when the next record would push the current one past
    `segment_bytes` (a bigger record gets a segment of its own; a checkpoint segment holds every open
    transaction however large). `group_commit_window_s`: how long the async writer waits for more
    records to join a batch (0: flush at once; batches still form while a flush is in progress).
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
        self._failed: BaseException | None = None
        self._closed = False
        self._fd = -1
        self._unsynced = False

        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            raise WalError(f"{self.directory}: another writer holds the WAL lock") from exc
        try:
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
        with _no_gc():  # a bulk load of ~3 objects per record and no cycles: collections would only cost
            analysis = _analyze(self.directory)
        repaired = analysis.needs_repair()
        if repaired:
            _repair(analysis)
        live = analysis.live()
        self._segments = [s.path for s in live]
        self._sealed_bytes = sum(s.kept_size() for s in live[:-1])
        self._open: dict[str, _Tx] = {
            t.txid.decode("utf-8", "replace"): t for t in analysis.replay.open.values()
        }
        self._next_seq = analysis.next_seq
        self.last_checkpoint_ts = analysis.last_checkpoint_ts
        if live:
            last = live[-1]
            self._salt = last.scan.salt or 0
            self._size = self._logical_size = last.kept_size()
            self._fd = os.open(last.path, self._append_flags())
        else:
            self._salt = 0
            self._size = self._logical_size = 0
        return _report(analysis, repaired)

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
                self._open[txid] = _Tx(raw, payload)
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
        new_segment = self._salt == 0 or (
            self._logical_size > 0 and self._logical_size + size > self.segment_bytes
        )
        if new_segment:
            self._salt = secrets.randbits(64) | 1  # never 0: 0 means "no segment yet"
            self._logical_size = 0
        self._logical_size += size
        self._pending.append(_Pending(seq, new_segment, encode_record(rtype, self._salt, seq, txid, payload)))

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
        _fsync_dir(self.directory)

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
        self._count(rtype)

    async def _group_commit(self) -> None:
        """One writer: take every queued record, write + fsync once off the loop, resolve all waiters."""
        batch: list[tuple[asyncio.Future[None], int]] = []
        try:
            while self._waiters:
                if self.group_commit_window_s > 0:
                    await asyncio.sleep(self.group_commit_window_s)  # let more records join the batch
                batch, self._waiters = self._waiters, []
                durable = any(rtype in (RecordType.COMMIT, RecordType.ABORT) for _, rtype in batch)
                await asyncio.to_thread(self._flush, durable)
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
        segments are deleted. A crash before the rename leaves the old log (plus a .tmp that recovery
        deletes); after it, recovery starts at the new segment and deletes the older ones.
        A failure before the rename leaves the log unchanged and raises WalError; after it, it is fatal.
        """
        with self._io_lock, self._lock:
            self._check_writable()
            self._flush(sync=True)
            ts = time.time()
            seq = self._next_seq
            salt = secrets.randbits(64) | 1
            parts = [encode_record(RecordType.CHECKPOINT, salt, seq, b"", encode_checkpoint_payload(ts))]
            for tx in self._open.values():
                for rtype, payload in [
                    (RecordType.BEGIN, tx.begin),
                    *((RecordType.DATA, d) for d in tx.data),
                ]:
                    parts.append(encode_record(rtype, salt, seq + len(parts), tx.txid, payload))
            blob = b"".join(parts)
            path = self.directory / segment_name(seq)
            tmp = path.with_name(path.name + _TMP_SUFFIX)
            try:
                _write_synced(tmp, blob)
                self.fsyncs_total += 1
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise WalError(f"checkpoint failed, the log is unchanged: {exc}") from exc
            try:
                self._close_fd()
                os.replace(tmp, path)
                self._sync_dir()
                for old in self._segments:  # oldest first: see _chain_start
                    if old != path:
                        os.unlink(old)
                self._sync_dir()
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
