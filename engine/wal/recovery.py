"""Reading a write-ahead log back: scan analysis, replay, repair, the recovery report and ``inspect``.

A module of its own because reading is a separate concern from appending: the writer (``wal.py``)
runs this once when it opens a directory, and ``inspect`` runs the same analysis without the writer,
its lock or any repair. The byte layout is in ``wal_format.py``; ``wal.py`` re-exports the public names.

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

import contextlib
import gc
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from esper_tui.engine.fsutil import fsync_dir, fsync_path, write_synced
from esper_tui.engine.wal.format import (
    DamageKind,
    RawRecord,
    RecordType,
    SegmentScan,
    decode_checkpoint_payload,
    parse_segment_name,
    scan_segment,
)

__all__ = ["RecoveryReport", "Transaction", "TxState", "inspect"]

TxState = Literal["open", "committed", "aborted"]
_LOCK_NAME = "LOCK"
_TMP_SUFFIX = ".tmp"
_CORRUPT_SUFFIX = ".corrupt"


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
    return _Analysis(directory, segments, replay, corrupt, tmp_files, other, truncated, checkpoint_ts, next_seq)


def _write_file_atomically(path: Path, data: bytes) -> None:
    """temp file + fsync + rename; the caller fsyncs the directory."""
    tmp = path.with_name(path.name + _TMP_SUFFIX)
    write_synced(tmp, data)
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
    fsync_dir(directory)
    for seg in analysis.segments:
        if seg.role != "live" or seg.cut_to is None:
            continue
        if seg.cut_to == 0:
            os.unlink(seg.path)
            continue
        os.truncate(seg.path, seg.cut_to)
        fsync_path(seg.path, os.O_WRONLY)
    for seg in analysis.segments:  # oldest first, like checkpoint: see _chain_start
        if seg.role == "obsolete":
            os.unlink(seg.path)
    fsync_dir(directory)


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
                "damage": None if damage is None else f"{damage.kind.value} at {damage.offset}: {damage.reason}",
            }
        )
    replay = analysis.replay
    return {
        "directory": str(analysis.directory),
        "segments": segments,
        "transactions": [
            {"txid": t.txid.decode("utf-8", "replace"), "state": t.state, "records": t.records} for t in replay.all
        ],
        "open_transactions": [t.decode("utf-8", "replace") for t in replay.open],
        "corrupt": list(analysis.corrupt),
        "records": replay.records,
        "truncatable_bytes": analysis.truncated_bytes,
        "last_checkpoint_ts": analysis.last_checkpoint_ts,
        "other_files": [p.name for p in analysis.tmp_files] + analysis.other_files,
    }
