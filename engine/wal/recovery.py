"""Reading a write-ahead log back: scan analysis, replay, repair, the recovery report and ``inspect``.

A module of its own because reading is a separate concern from appending: the writer (``writer.py``)
runs this once when it opens a directory, and ``inspect`` runs the same analysis without the writer,
its lock or any repair. The byte layout is in ``format.py``; ``writer.py`` re-exports the public names.

Recovery policy (``WriteAheadLog.open``; ``inspect`` applies the same analysis without repairing)
    0. Identity: the log's WAL id is in its ``IDENTITY`` file. A segment whose records carry another id
       belongs to another log: it is never replayed, even when its sequence numbers continue this log's,
       and repair moves it aside as ``<segment>.<crc32>.foreign``. Version-1 segments (written before
       WAL ids) are read only before the log's first version-2 segment. A missing or unreadable
       ``IDENTITY`` while segments exist is reported, and the id of the oldest segment is adopted.
    1. Start: the newest segment whose first record is a valid CHECKPOINT and whose seq continues the
       segment before it; older segments are obsolete (a checkpoint that crashed before deleting them)
       and repair deletes them. ``*.tmp`` files are unfinished checkpoints or copies and are deleted.
    2. Replay is the longest *gap-free* prefix of the record sequence. Within a segment, records are
       read until EOF or the first damage. The next segment is read only if its name and its first
       record's seq continue the sequence exactly; otherwise it and everything after it are not
       replayed.
    3. Damage, by kind:
       - torn tail: a short header or zero bytes to EOF, with no valid record after it. What a writer
         that died mid-append leaves (LevelDB: "the writer died"; etcd: zeroed sectors are a torn
         write). At the end of the last segment it is silently truncated (counted in
         ``truncated_bytes``, listed in ``damage`` only).
       - partial tail: a whole header whose payload runs past EOF (or whose length is absurd) and that
         no shorter length makes verify: an unfinished append, or a damaged length that cannot be told
         from one. At the end of the last segment it is truncated after a copy of the cut bytes is kept
         as ``<segment>.cut-<offset>-<crc32>``; listed in ``damage``, not warned about in ``corrupt``.
       - damaged tail: complete bytes that fail a check (CRC, magic, type, a stale salt: bytes left
         over from an older file, or a length field that is wrong although the record verifies with
         the length it really has) with nothing valid after them. Reported in ``corrupt`` and truncated.
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
       not replayed are renamed aside. Anything removed that is not a torn or partial tail is
       preserved first, whole, as ``<segment>.<crc32 of its bytes>.corrupt`` (never read again, listed by
       ``inspect``). Order: delete temp files, preserve copies, rename segments aside, fsync the
       directory, truncate, delete obsolete segments (oldest first, an fsync of the directory after
       each: see ``unlink_oldest_first``), fsync the directory. A crash at any point leaves a directory
       that recovers to the same transactions (idempotent).
    5. Valid records in an illegal order (DATA/COMMIT/ABORT of a transaction that is not open, BEGIN of
       an open one, a CHECKPOINT that is not a segment's first record) are reported in ``corrupt`` and
       ignored; they do not stop replay. A txid may be reused once its transaction has finished.
    6. A segment whose first record is of another format version or byte order (and holds nothing we
       can read) makes ``open`` raise ``WalFormatError``: never truncate a newer writer's log.
"""

from __future__ import annotations

import contextlib
import enum
import gc
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from esper_tui.engine.fsutil import fsync_dir, fsync_path, write_synced
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

__all__ = [
    "InspectReport",
    "RecoveryReport",
    "SegmentInfo",
    "SegmentRole",
    "Transaction",
    "TransactionInfo",
    "TxState",
    "WalDamage",
    "inspect",
    "unlink_oldest_first",
]

_LOCK_NAME = "LOCK"
_TMP_SUFFIX = ".tmp"
_CORRUPT_SUFFIX = ".corrupt"
_FOREIGN_SUFFIX = ".foreign"
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


@dataclass(frozen=True)
class Transaction:
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


@dataclass(frozen=True)
class RecoveryReport:
    committed: list[Transaction]  # in COMMIT order
    aborted: list[Transaction]  # in ABORT order
    open: list[Transaction]  # in BEGIN order: in-flight jobs to resume or requeue
    records: int  # records replayed
    segments: int  # segment files read
    truncated_bytes: int  # bytes cut off the end of segments (torn and damaged tails)
    corrupt: list[str]  # one line per entry of `damage` worth a warning (all but a torn or partial end)
    repaired: bool  # whether recovery changed anything on disk
    damage: list[WalDamage] = field(default_factory=list)  # everything cut, moved aside or ignored


class SegmentInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    size: int
    records: int
    version: int | None  # None: no valid record
    wal_id: str | None  # hex; None: no valid record, or version 1
    salt: str | None  # hex
    first_seq: int | None
    last_seq: int | None
    role: SegmentRole


class TransactionInfo(msgspec.Struct, frozen=True, kw_only=True):
    txid: str
    state: TxState
    records: int


class InspectReport(msgspec.Struct, frozen=True, kw_only=True):
    """What recovery would see in a WAL directory, without changing it: `esper-tui wal inspect`."""

    directory: str
    wal_id: str | None  # hex; None: no IDENTITY file and no segment to take it from
    segments: list[SegmentInfo]
    transactions: list[TransactionInfo]
    open_transactions: list[str]
    damage: list[WalDamage]
    records: int
    truncatable_bytes: int
    last_checkpoint_ts: float | None
    other_files: list[str]


class _Tx:
    """A transaction being replayed or written (mutable; the public Transaction is frozen)."""

    __slots__ = ("begin", "data", "end", "records", "state", "txid")

    def __init__(self, txid: bytes, begin: bytes) -> None:
        self.txid = txid
        self.begin = begin
        self.data: list[bytes] = []
        self.state = TxState.OPEN
        self.end = b""
        self.records = 1

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
        self.open: dict[bytes, _Tx] = {}
        self.finished_as: dict[bytes, TxState] = {}
        self.all: list[_Tx] = []
        self.committed: list[_Tx] = []
        self.aborted: list[_Tx] = []
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
                    tx.records += 1
                    continue
                if rtype in (_COMMIT, _ABORT):
                    del open_[txid]
                    tx.records += 1
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
                tx = open_[txid] = _Tx(txid, payload)
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
class _Analysis:
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


def unlink_oldest_first(paths: list[Path], directory: Path) -> int:
    """Delete obsolete segments oldest first with a directory fsync after each; returns the fsyncs.

    Recovery trusts a checkpoint segment only while the segment just before it survives (`_chain_start`),
    so that one must go last. Oldest first alone is not enough: a file system may persist unlinks that
    no fsync has ordered in any order, so a power cut after several unlinks can keep the newest obsolete
    segment's unlink and undo older ones. Recovery would then see a gap before the checkpoint, start at
    the oldest surviving segment and replay its stale transactions instead of the checkpoint. With an
    fsync after each unlink, whatever a crash leaves is the newest obsolete segments in a row, which
    the next recovery deletes. (Newest first would break the continuity check at its first unlink.)
    Checkpoints are rare and delete a few segments, so the extra fsyncs cost nothing that shows.
    """
    for path in paths:
        os.unlink(path)
        fsync_dir(directory)
    return len(paths)


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
        elif name not in (_LOCK_NAME, IDENTITY_NAME):
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
                kept=seg.aside(_FOREIGN_SUFFIX).name,
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
                    kept=seg.aside(_CORRUPT_SUFFIX).name,
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
                kept=seg.aside(_CORRUPT_SUFFIX).name,
            )
        )
    damage.extend(replay.illegal)

    if replay.last_seq is not None:
        next_seq = replay.last_seq + 1
    else:
        next_seq = max((s.seq for s in chain if s.role is SegmentRole.LIVE), default=1)
    return _Analysis(
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


def write_file_atomically(path: Path, data: bytes) -> None:
    """temp file + fsync + rename; the caller fsyncs the directory."""
    tmp = path.with_name(path.name + _TMP_SUFFIX)
    write_synced(tmp, data)
    os.replace(tmp, path)


def _repair(analysis: _Analysis) -> None:
    """Make the directory equal the replayed prefix. Order matters for crash safety (module docstring)."""
    directory = analysis.directory
    for tmp in analysis.tmp_files:  # first: a crashed preserve copy leaves a .tmp this run rewrites
        os.unlink(tmp)
    for seg in analysis.segments:
        if seg.role is SegmentRole.LIVE and seg.cut_to is not None:
            if seg.preserve:
                write_file_atomically(seg.aside(_CORRUPT_SUFFIX), seg.data)
            elif seg.keep_cut:
                write_file_atomically(seg.cut_copy(), seg.data[seg.cut_to :])
    for seg in analysis.segments:
        if seg.role is SegmentRole.NOT_REPLAYED:
            os.replace(seg.path, seg.aside(_CORRUPT_SUFFIX))
        elif seg.role is SegmentRole.FOREIGN:
            os.replace(seg.path, seg.aside(_FOREIGN_SUFFIX))
    fsync_dir(directory)
    for seg in analysis.segments:
        if seg.role is not SegmentRole.LIVE or seg.cut_to is None:
            continue
        if seg.cut_to == 0:
            os.unlink(seg.path)
            continue
        os.truncate(seg.path, seg.cut_to)
        fsync_path(seg.path, os.O_WRONLY)
    unlink_oldest_first([s.path for s in analysis.segments if s.role is SegmentRole.OBSOLETE], directory)
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
        corrupt=analysis.corrupt(),
        repaired=repaired,
        damage=list(analysis.damage),
    )


def inspect(directory: Path) -> InspectReport:
    """What recovery would see, for `esper-tui wal inspect`. READ-ONLY: never repairs, never locks."""
    analysis = _analyze(Path(directory))
    segments = []
    for seg in analysis.segments:
        recs, scan = seg.scan.records, seg.scan
        segments.append(
            SegmentInfo(
                name=seg.path.name,
                size=len(seg.data),
                records=len(recs),
                version=scan.version,
                wal_id=None if scan.wal_id is None else scan.wal_id.hex(),
                salt=None if scan.salt is None else f"{scan.salt:016x}",
                first_seq=recs[0][2] if recs else None,
                last_seq=recs[-1][2] if recs else None,
                role=seg.role,
            )
        )
    replay = analysis.replay
    return InspectReport(
        directory=str(analysis.directory),
        wal_id=None if analysis.wal_id is None else analysis.wal_id.hex(),
        segments=segments,
        transactions=[
            TransactionInfo(txid=t.txid.decode("utf-8", "replace"), state=t.state, records=t.records)
            for t in replay.all
        ],
        open_transactions=[t.decode("utf-8", "replace") for t in replay.open],
        damage=list(analysis.damage),
        records=replay.records,
        truncatable_bytes=analysis.truncated_bytes,
        last_checkpoint_ts=analysis.last_checkpoint_ts,
        other_files=[p.name for p in analysis.tmp_files] + analysis.other_files,
    )
