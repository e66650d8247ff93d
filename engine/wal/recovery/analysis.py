"""Reading a write-ahead log back: the analysis that decides what is replayed and what repair would do.

One pass over the directory reads every segment once, checks identity, continuity and damage, and replays
the transaction state machine; it touches nothing on disk. Recovery (the package, whose docstring holds the
policy) runs it and then ``repair``; ``inspect`` (``inspection``) runs it alone, without the
writer, its lock or any repair. The byte layout is in ``format.py``.
"""

from __future__ import annotations

import enum
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import msgspec

from esper_tui.engine.wal.format import (
    FORMAT_VERSION,
    HEADER_SIZE,
    IDENTITY_NAME,
    LEGACY_VERSION,
    DamageKind,
    RawRecord,
    RecordType,
    SegmentScan,
    decode_checkpoint_payload,
    decode_identity,
    parse_segment_name,
    scan_segment,
)

LOCK_NAME = "LOCK"
TMP_SUFFIX = ".tmp"
CORRUPT_SUFFIX = ".corrupt"
FOREIGN_SUFFIX = ".foreign"
_END_OF_LOG = (DamageKind.TORN, DamageKind.PARTIAL)  # the normal end of a crashed log: not warned about


class TxState(enum.StrEnum):
    OPEN = "open"
    COMMITTED = "committed"
    ABORTED = "aborted"


class SegmentRole(enum.StrEnum):
    """What recovery does with a segment file."""

    LIVE = "live"  # replayed (perhaps cut short), kept
    OBSOLETE = "obsolete"  # older than the checkpoint the log starts at: deleted
    NOT_REPLAYED = "not replayed"  # after a gap or damage: moved aside as .corrupt
    FOREIGN = "foreign"  # another log's: moved aside as .foreign


class Transaction(msgspec.Struct, frozen=True):
    """A replayed transaction. A Struct, not a frozen dataclass: recovery builds one per transaction, and 10,000
    frozen dataclasses cost about as much as replaying their 30,000 records (benchmarks.wal)."""

    txid: str
    begin: bytes
    data: list[bytes]
    state: TxState
    end: bytes = b""  # the COMMIT or ABORT payload (b"" while open)


class WalDamage(msgspec.Struct, frozen=True, kw_only=True):
    """One thing recovery cuts, moves aside or ignores; `wal inspect --json` lists them under `damage`."""

    kind: DamageKind
    segment: str  # the file it is in (a segment, or IDENTITY)
    offset: int | None  # where in it; None: the whole file
    bytes: int  # how many bytes are cut, moved aside or ignored
    reason: str
    kept: str | None = None  # the copy recovery keeps of them (a file beside the segment)

    def describe(self) -> str:
        where = self.segment if self.offset is None else f"{self.segment}@{self.offset}"
        return f"{where}: {self.reason}"


class Tx:
    """A transaction being replayed or written (mutable; the public Transaction is frozen)."""

    __slots__ = ("begin", "data", "end", "state", "txid")

    def __init__(self, txid: bytes, begin: bytes) -> None:
        self.txid = txid
        self.begin = begin
        self.data: list[bytes] = []
        self.state = TxState.OPEN
        self.end = b""

    @property
    def records(self) -> int:
        """BEGIN, its DATA, and COMMIT or ABORT once it has one (counted, not kept up per record: replay's loop)."""
        return 1 + len(self.data) + (self.state is not TxState.OPEN)

    def public(self) -> Transaction:
        # Open transactions keep growing in the writer, so their data list is copied.
        data = list(self.data) if self.state is TxState.OPEN else self.data
        return Transaction(self.txid.decode("utf-8", "replace"), self.begin, data, self.state, self.end)


# Plain ints for the replay loop: comparing with enum members costs an attribute lookup per record.
_BEGIN, _DATA, _COMMIT, _ABORT = (
    int(t) for t in (RecordType.BEGIN, RecordType.DATA, RecordType.COMMIT, RecordType.ABORT)
)


class _Replay:
    """The transaction state machine applied to the replayed records, in order."""

    def __init__(self) -> None:
        self.open: dict[bytes, Tx] = {}
        self.finished_as: dict[bytes, TxState] = {}
        self.all: list[Tx] = []
        self.committed: list[Tx] = []
        self.aborted: list[Tx] = []
        self.illegal: list[WalDamage] = []
        self.records = 0
        self.last_seq: int | None = None

    def apply(self, where: str, records: list[RawRecord]) -> None:
        open_, finished, all_ = self.open, self.finished_as, self.all
        for off, rtype, _seq, txid, payload in records:
            tx = open_.get(txid)
            if tx is not None:
                if rtype == _DATA:
                    tx.data.append(payload)
                    continue
                if rtype in (_COMMIT, _ABORT):
                    del open_[txid]
                    tx.end = payload
                    if rtype == _COMMIT:
                        tx.state = TxState.COMMITTED
                        self.committed.append(tx)
                    else:
                        tx.state = TxState.ABORTED
                        self.aborted.append(tx)
                    finished[txid] = tx.state
                    continue
            elif rtype == _BEGIN:
                tx = open_[txid] = Tx(txid, payload)
                all_.append(tx)
                continue
            self.illegal.append(
                WalDamage(
                    kind=DamageKind.ILLEGAL,
                    segment=where,
                    offset=off,
                    bytes=HEADER_SIZE + len(payload),
                    reason=f"{self._why(rtype, txid)}; ignored",
                )
            )
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
        return f"{name} of transaction {tx} after its {'COMMIT' if last is TxState.COMMITTED else 'ABORT'}"


@dataclass(slots=True)
class _Segment:
    path: Path
    seq: int  # from the name
    data: bytes
    scan: SegmentScan
    role: SegmentRole = SegmentRole.LIVE
    cut_to: int | None = None  # repair truncates to this size (0: delete)
    preserve: bool = False  # keep a whole .corrupt copy before cutting
    keep_cut: bool = False  # keep a copy of the bytes cut off (a partial tail) before cutting

    def kept_size(self) -> int:
        return len(self.data) if self.cut_to is None else self.cut_to

    def aside(self, suffix: str) -> Path:
        """Where a whole copy goes: named by the CRC of the bytes, so a second recovery rewrites it, never another."""
        return self.path.with_name(f"{self.path.name}.{zlib.crc32(self.data):08x}{suffix}")

    def cut_copy(self) -> Path:
        assert self.cut_to is not None
        cut = self.data[self.cut_to :]
        return self.path.with_name(f"{self.path.name}.cut-{self.cut_to}-{zlib.crc32(cut):08x}")


@dataclass(slots=True)
class Analysis:
    directory: Path
    wal_id: bytes | None  # None: a new or version-1 log, the writer draws one
    identity_stored: bool  # IDENTITY holds wal_id (else the writer writes it)
    segments: list[_Segment]
    replay: _Replay
    damage: list[WalDamage]
    tmp_files: list[Path]
    other_files: list[str]
    truncated_bytes: int
    last_checkpoint_ts: float | None
    next_seq: int

    def live(self) -> list[_Segment]:
        """Segments that remain in the log after repair, oldest first."""
        return [s for s in self.segments if s.role is SegmentRole.LIVE and s.cut_to != 0]

    def needs_repair(self) -> bool:
        return (
            bool(self.tmp_files)
            or any(s.role is not SegmentRole.LIVE or s.cut_to is not None for s in self.segments)
            or any(d.kind is DamageKind.IDENTITY for d in self.damage)
        )

    def corrupt(self) -> list[str]:
        return [d.describe() for d in self.damage if d.kind not in _END_OF_LOG]


def _chain_start(segments: list[_Segment]) -> int:
    """Index of the newest checkpoint segment that continues the sequence of the one before it.

    Requiring continuity means a stale checkpoint file (renamed, or a copy) can never make recovery
    treat the real log as obsolete and delete it. It is also why obsolete segments must disappear
    oldest first, durably one by one (`unlink_oldest_first`): the one just before the checkpoint has to
    outlive every older one.
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


def _read_identity(directory: Path) -> tuple[bytes | None, int | None]:
    """(the WAL id IDENTITY holds or None, the file's size or None when there is no such file)."""
    try:
        data = (directory / IDENTITY_NAME).read_bytes()
    except FileNotFoundError:
        return None, None
    return decode_identity(data), len(data)


def _identity_damage(segments: list[_Segment], size: int | None) -> tuple[bytes | None, list[WalDamage]]:
    """The WAL id when IDENTITY does not give one: the oldest version-2 segment's, reported."""
    what = "is missing" if size is None else "does not hold a WAL id"
    first = next((s for s in segments if s.scan.wal_id is not None), None)
    if first is None and size is None:
        return None, []  # a new log, or one written before WAL ids: the writer draws an id
    outcome = "a new id is drawn" if first is None else f"adopted the WAL id of {first.path.name}"
    damage = WalDamage(
        kind=DamageKind.IDENTITY, segment=IDENTITY_NAME, offset=None, bytes=size or 0, reason=f"{what}; {outcome}"
    )
    return (None if first is None else first.scan.wal_id), [damage]


def _foreign_reason(seg: _Segment, wal_id: bytes | None, after_current: bool) -> str | None:
    """Why a segment is not this log's, or None if it is."""
    scan = seg.scan
    if scan.version == LEGACY_VERSION:
        return "a version-1 segment after this log's version-2 ones: another log's" if after_current else None
    if scan.wal_id is not None and scan.wal_id != wal_id:
        ours = wal_id.hex() if wal_id is not None else "unknown"
        return f"it belongs to another WAL: id {scan.wal_id.hex()}, this log's is {ours}"
    return None


def analyze(directory: Path) -> Analysis:
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
        elif name.endswith(TMP_SUFFIX):
            tmp_files.append(path)
        elif name not in (LOCK_NAME, IDENTITY_NAME):
            other.append(name)
    segments.sort(key=lambda s: s.seq)

    wal_id, identity_size = _read_identity(directory) if directory.is_dir() else (None, None)
    identity_stored = wal_id is not None
    damage: list[WalDamage] = []
    if wal_id is None:
        wal_id, damage = _identity_damage(segments, identity_size)

    own: list[_Segment] = []
    after_current = False
    for seg in segments:
        why = _foreign_reason(seg, wal_id, after_current)
        if why is None:
            after_current = after_current or seg.scan.version == FORMAT_VERSION
            own.append(seg)
            continue
        seg.role = SegmentRole.FOREIGN
        damage.append(
            WalDamage(
                kind=DamageKind.FOREIGN,
                segment=seg.path.name,
                offset=None,
                bytes=len(seg.data),
                reason=f"not replayed ({why})",
                kept=seg.aside(FOREIGN_SUFFIX).name,
            )
        )

    start = _chain_start(own)
    for seg in own[:start]:
        seg.role = SegmentRole.OBSOLETE

    replay = _Replay()
    truncated = 0
    checkpoint_ts: float | None = None
    stopped: str | None = None
    chain = own[start:]
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
            seg.role = SegmentRole.NOT_REPLAYED
            damage.append(
                WalDamage(
                    kind=DamageKind.NOT_REPLAYED,
                    segment=name,
                    offset=None,
                    bytes=len(seg.data),
                    reason=f"not replayed ({stopped})",
                    kept=seg.aside(CORRUPT_SUFFIX).name,
                )
            )
            continue
        if i == 0 and recs and recs[0][1] == RecordType.CHECKPOINT:
            checkpoint_ts = decode_checkpoint_payload(recs[0][4])
            replay.records += 1
            replay.last_seq = recs[0][2]
            recs = recs[1:]
        replay.apply(name, recs)
        found = seg.scan.damage
        if found is None:
            if not seg.scan.records:
                seg.cut_to = 0  # an empty file: nothing to keep
            continue
        seg.cut_to = found.offset
        cut = seg.scan.size - found.offset
        truncated += cut
        last = i == len(chain) - 1
        if last and found.kind in _END_OF_LOG:  # a dead writer's unfinished append: the normal end of a log
            seg.keep_cut = found.kind is DamageKind.PARTIAL
            kept = seg.cut_copy().name if seg.keep_cut else None
            damage.append(
                WalDamage(kind=found.kind, segment=name, offset=found.offset, bytes=cut, reason=found.reason, kept=kept)
            )
            continue
        seg.preserve = True
        if found.kind is DamageKind.MIDDLE:
            kind, reason = DamageKind.MIDDLE, f"{found.reason}; replay stops here"
            stopped = f"it follows damage at {name}@{found.offset}"
        else:
            what = "damaged" if found.kind is DamageKind.TAIL else "torn"
            kind, reason = DamageKind.TAIL, f"{found.reason} ({what} tail of {'the last' if last else 'a'} segment)"
        damage.append(
            WalDamage(
                kind=kind,
                segment=name,
                offset=found.offset,
                bytes=cut,
                reason=reason,
                kept=seg.aside(CORRUPT_SUFFIX).name,
            )
        )
    damage.extend(replay.illegal)

    if replay.last_seq is not None:
        next_seq = replay.last_seq + 1
    else:
        next_seq = max((s.seq for s in chain if s.role is SegmentRole.LIVE), default=1)
    return Analysis(
        directory,
        wal_id,
        identity_stored,
        segments,
        replay,
        damage,
        tmp_files,
        other,
        truncated,
        checkpoint_ts,
        next_seq,
    )
