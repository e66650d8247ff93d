"""On-disk format of the forge's write-ahead log (Tezzeret WAL), written down once.

A log is a directory of *segments* named ``wal-{seq:016x}.log``, where ``seq`` is the sequence number
of the segment's first record, plus an ``IDENTITY`` file holding the log's WAL id (32 hex digits and a
newline), written once when the log is created. A segment is a plain concatenation of records; a record
is a fixed 256-byte header followed by ``length`` payload bytes. There is no block framing: a record
never spans two segments. All integers are little-endian.

Header layout (offsets in bytes)::

    0    8  magic           b"ESPRWAL1"
    8    2  version         u16, FORMAT_VERSION (2); version 1 (no WAL id) is still read
    10   2  endianness      u16 0x0102 written little-endian (bytes 02 01): a reader that sees 0x0201
                            is looking at a big-endian writer's file
    12   1  type            u8: BEGIN=1 DATA=2 COMMIT=3 ABORT=4 CHECKPOINT=5
    13   1  txid length     u8, 0..64 (bytes of UTF-8)
    14   2  flags           u16, reserved, written 0
    16   8  salt            u64, random per segment; every record of a segment repeats it, so bytes
                            left over from an older file (a reused or renamed file) never replay
    24   8  seq             u64, +1 per record, continuing across segments
    32   4  length          u32, payload bytes (at most MAX_PAYLOAD, 64 MiB)
    36   4  payload crc     u32, CRC-32 (zlib) of the payload
    40  64  txid            UTF-8, zero padded
    104 16  WAL id          16 random bytes drawn when the log is created, repeated in every record of
                            every segment: a segment copied in from another log is refused even when
                            its sequence numbers continue this one's (version 1: zeros)
    120 132 padding         zeros
    252  4  header crc      u32, CRC-32 of header bytes 0..255 with this field zeroed, then the payload

    256  length  payload

Record types: a transaction is ``BEGIN`` (payload: the job's context), any number of ``DATA``, then
``COMMIT`` or ``ABORT`` (each may carry a small payload). ``CHECKPOINT`` (txid empty, payload: the
creation time as an f64 Unix timestamp) is only ever the first record of a segment written by a
checkpoint; it means "everything older is summarised by the records that follow".

Version 1 is version 2 with the WAL id field left as padding, so reading it costs one more comparison;
recovery accepts version-1 segments only before the log's first version-2 segment (see recovery/).

This module is pure: encoding, decoding and classifying the bytes of one segment. The recovery policy
lives in ``recovery/__init__.py``, the writer and its file handling in ``writer.py``.
"""

from __future__ import annotations

import enum
import re
import secrets
import struct
import zlib
from dataclasses import dataclass

MAGIC = b"ESPRWAL1"
FORMAT_VERSION = 2
LEGACY_VERSION = 1  # before WAL ids: read, never written
ENDIAN_MARK = 0x0102
HEADER_SIZE = 256
MAX_TXID_BYTES = 64
MAX_PAYLOAD = 64 * 1024 * 1024
WAL_ID_BYTES = 16
IDENTITY_NAME = "IDENTITY"

_BODY = struct.Struct("<8sHHBBHQQII64s16s132x")  # header bytes 0..251, everything but the header crc
_HEADER = struct.Struct("<8sHHBBHQQII64s16s132xI")  # the whole 256-byte header
# The scan's fast path reads magic + version + endianness as one 12-byte string and compares once.
_FAST = struct.Struct("<12sBB2xQQI4x64x16s132xI")  # skips flags, payload crc and txid (sliced on demand)
_TXID_OFFSET = 40
_LENGTH_OFFSET = 32
_PCRC_OFFSET = 36
_PREFIX = MAGIC + struct.pack("<HH", FORMAT_VERSION, ENDIAN_MARK)
_LEGACY_PREFIX = MAGIC + struct.pack("<HH", LEGACY_VERSION, ENDIAN_MARK)
_READABLE_VERSIONS = (LEGACY_VERSION, FORMAT_VERSION)
_READABLE_PREFIXES = (_PREFIX, _LEGACY_PREFIX)
_CRC_OFFSET = _BODY.size
_ZERO_CRC = bytes(4)
_NO_ID = bytes(WAL_ID_BYTES)
_MAX_TYPE = 5  # RecordType.CHECKPOINT
_MAX_LENGTH_PROBES = 16  # later magics tried as the true end of a record whose length runs past EOF
_U32 = struct.Struct("<I")
_F64 = struct.Struct("<d")
assert _HEADER.size == _FAST.size == HEADER_SIZE

_SEGMENT_RE = re.compile(r"^wal-([0-9a-f]{16})\.log$")
_IDENTITY_RE = re.compile(rb"^([0-9a-f]{32})\n?$")


class RecordType(enum.IntEnum):
    BEGIN = 1
    DATA = 2
    COMMIT = 3
    ABORT = 4
    CHECKPOINT = 5


class DamageKind(enum.StrEnum):
    """How a log's bytes stop making sense; recovery treats each kind differently.

    The first four come from scanning one segment; the others from reading the directory as a log.
    """

    TORN = "torn"  # the log's clean end after a crash: a short header, or zeros to EOF; cut silently
    PARTIAL = "partial"  # a whole header whose payload runs past EOF and does not verify: an unfinished
    # append, or a damaged length field that cannot be told from one; cut, and a copy of the bytes kept
    TAIL = "tail"  # complete but bad bytes at the end, nothing valid after them
    MIDDLE = "middle"  # bad bytes followed by valid records of this segment
    FOREIGN = "foreign"  # a segment of another log (another WAL id): never replayed, moved aside
    NOT_REPLAYED = "not replayed"  # a segment after a gap or after damage: never replayed, moved aside
    ILLEGAL = "illegal"  # a valid record in an illegal order (DATA without BEGIN...): ignored
    IDENTITY = "identity"  # the IDENTITY file is missing or unreadable while the log has segments


class WalError(Exception):
    """Base of every WAL error; raised as is for misuse (unknown txid, BEGIN of an open txid, closed log)."""


class WalFormatError(WalError):
    """A segment written in a format this code does not read (another version or byte order)."""


@dataclass(frozen=True, slots=True)
class Damage:
    offset: int
    kind: DamageKind
    reason: str


# (offset, type, seq, txid bytes, payload bytes): tuples, not objects, so scanning stays cheap.
RawRecord = tuple[int, int, int, bytes, bytes]


@dataclass(frozen=True, slots=True)
class SegmentScan:
    """The valid prefix of one segment and why it ends where it ends."""

    records: list[RawRecord]
    salt: int | None
    valid_end: int
    size: int
    damage: Damage | None
    version: int | None = None  # of its records (None: no valid record)
    wal_id: bytes | None = None  # of its records (None: no valid record, or version 1)


def segment_name(seq: int) -> str:
    return f"wal-{seq:016x}.log"


def parse_segment_name(name: str) -> int | None:
    """The first sequence number a segment file name claims, or None if it is not a segment."""
    match = _SEGMENT_RE.match(name)
    return int(match.group(1), 16) if match else None


def new_wal_id() -> bytes:
    """A fresh WAL id; never all zeros, which is what a version-1 record holds in that field."""
    while (wal_id := secrets.token_bytes(WAL_ID_BYTES)) == _NO_ID:
        pass
    return wal_id


def encode_identity(wal_id: bytes) -> bytes:
    return wal_id.hex().encode() + b"\n"


def decode_identity(data: bytes) -> bytes | None:
    """The WAL id an IDENTITY file holds, or None if the bytes are not one."""
    match = _IDENTITY_RE.match(data)
    wal_id = bytes.fromhex(match.group(1).decode()) if match else None
    return None if wal_id == _NO_ID else wal_id


def _header_crc(body: bytes | bytearray | memoryview, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(_ZERO_CRC, zlib.crc32(body)))


def encode_record(rtype: RecordType, wal_id: bytes, salt: int, seq: int, txid: bytes, payload: bytes) -> bytes:
    """One record, ready to append."""
    if len(wal_id) != WAL_ID_BYTES:
        raise ValueError(f"a WAL id is {WAL_ID_BYTES} bytes, got {len(wal_id)}")
    body = _BODY.pack(
        MAGIC, FORMAT_VERSION, ENDIAN_MARK, rtype, len(txid), 0, salt, seq, len(payload),
        zlib.crc32(payload), txid, wal_id,
    )  # fmt: skip
    return body + _U32.pack(_header_crc(body, payload)) + payload


def encode_checkpoint_payload(ts: float) -> bytes:
    return _F64.pack(ts)


def decode_checkpoint_payload(payload: bytes) -> float | None:
    return _F64.unpack(payload)[0] if len(payload) == _F64.size else None


class _Bad:
    """Why the bytes at an offset are not a record; `incomplete` means they may be an unfinished append."""

    __slots__ = ("incomplete", "reason", "wrong_format")

    def __init__(self, reason: str, *, incomplete: bool = False, wrong_format: bool = False) -> None:
        self.reason = reason
        self.incomplete = incomplete
        self.wrong_format = wrong_format


def _decode(buf: bytes, mv: memoryview, off: int) -> tuple[int, int, int, bytes, int] | _Bad:
    """Check the record at `off`; on success (type, salt, seq, txid, end offset)."""
    size = len(buf)
    if size - off < HEADER_SIZE:
        return _Bad(f"short header ({size - off} of {HEADER_SIZE} bytes)", incomplete=True)
    magic, version, endian, rtype, txlen, _flags, salt, seq, length, pcrc, txid, _id, hcrc = _HEADER.unpack_from(
        buf, off
    )
    if magic != MAGIC:
        return _Bad("bad magic")
    if version not in _READABLE_VERSIONS:
        return _Bad(f"unsupported format version {version}", wrong_format=True)
    if endian != ENDIAN_MARK:
        return _Bad(f"endianness marker {endian:#06x}, expected {ENDIAN_MARK:#06x}", wrong_format=True)
    if length > MAX_PAYLOAD:
        return _Bad(f"absurd payload length {length}", incomplete=True)
    start = off + HEADER_SIZE
    end = start + length
    if end > size:
        return _Bad(f"payload length {length} runs past end of file", incomplete=True)
    payload = mv[start:end]
    if _header_crc(mv[off : off + _CRC_OFFSET], payload) != hcrc:
        if zlib.crc32(payload) != pcrc:
            return _Bad("payload CRC mismatch")
        return _Bad("header CRC mismatch")
    # The header crc covers the payload too, so a payload-crc mismatch here can only be a writer bug.
    if not RecordType.BEGIN <= rtype <= RecordType.CHECKPOINT:
        return _Bad(f"unknown record type {rtype}")
    if txlen > MAX_TXID_BYTES:
        return _Bad(f"txid length {txlen} > {MAX_TXID_BYTES}")
    return rtype, salt, seq, txid[:txlen], end


def _find_valid_record(buf: bytes, mv: memoryview, start: int, salt: int | None) -> int | None:
    """Offset of the first valid record at or after `start` (of this salt, if known): resync probe."""
    pos = buf.find(MAGIC, start)
    while pos != -1:
        found = _decode(buf, mv, pos)
        if not isinstance(found, _Bad) and (salt is None or found[1] == salt):
            return pos
        pos = buf.find(MAGIC, pos + 1)
    return None


def _true_length(buf: bytes, mv: memoryview, off: int) -> int | None:
    """The payload length under which the record at `off` verifies although its length field runs past EOF.

    An unfinished append is a prefix of a valid record, so no shorter length makes its CRCs match; a
    complete record whose length field was damaged verifies with the length it really has, which ends
    at EOF or where a later record's magic starts. A match (a 1-in-2^32 accident otherwise) tells the
    damaged length of a durable record, which must be reported, from a torn write, which need not be.
    """
    start = off + HEADER_SIZE
    (pcrc,) = _U32.unpack_from(buf, off + _PCRC_OFFSET)
    (hcrc,) = _U32.unpack_from(buf, off + _CRC_OFFSET)
    body = bytearray(mv[off : off + _CRC_OFFSET])
    ends: list[int] = []
    pos = buf.find(MAGIC, start)
    while pos != -1 and len(ends) < _MAX_LENGTH_PROBES:
        ends.append(pos)
        pos = buf.find(MAGIC, pos + 1)
    ends.append(len(buf))
    for end in ends:
        payload = mv[start:end]
        if end - start > MAX_PAYLOAD or zlib.crc32(payload) != pcrc:
            continue
        _U32.pack_into(body, _LENGTH_OFFSET, end - start)
        if _header_crc(body, payload) == hcrc:
            return end - start
    return None


def _classify(buf: bytes, mv: memoryview, off: int, bad: _Bad, salt: int | None) -> Damage:
    later = _find_valid_record(buf, mv, off + 1, salt)
    if later is not None:
        return Damage(off, DamageKind.MIDDLE, f"{bad.reason}; valid records follow at offset {later}")
    if bad.wrong_format and off == 0:
        raise WalFormatError(f"{bad.reason}: written by a different WAL format; refusing to touch it")
    tail = len(buf) - off
    if buf.count(0, off) == tail:
        return Damage(off, DamageKind.TORN, f"zeroed tail ({tail} bytes)")
    if not bad.incomplete:
        return Damage(off, DamageKind.TAIL, bad.reason)
    if tail < HEADER_SIZE:
        return Damage(off, DamageKind.TORN, bad.reason)
    true_length = _true_length(buf, mv, off)
    if true_length is not None:
        return Damage(
            off, DamageKind.TAIL, f"{bad.reason}, but the record is complete with length {true_length}: damaged length"
        )
    return Damage(off, DamageKind.PARTIAL, f"{bad.reason}: an unfinished append or a damaged length")


def scan_segment(buf: bytes) -> SegmentScan:
    """Read records from the start of `buf` until EOF or the first damage; never reads past damage.

    One pass over one buffer with struct.unpack_from and no per-record syscalls: the loop inlines the
    checks of `_decode` for speed and falls back to it only to explain damage. Every record of a
    segment must repeat the first one's salt, version and WAL id.
    """
    mv = memoryview(buf)
    size = len(buf)
    records: list[RawRecord] = []
    append = records.append
    unpack_from, crc32 = _FAST.unpack_from, zlib.crc32  # attribute lookups hoisted out of the loop
    # and the constants too: a global lookup per use per record was a fifth of the loop's time
    header, body, txid_offset, zero_crc = HEADER_SIZE, _CRC_OFFSET, _TXID_OFFSET, _ZERO_CRC
    readable, max_payload, max_type, max_txid = _READABLE_PREFIXES, MAX_PAYLOAD, _MAX_TYPE, MAX_TXID_BYTES
    salt: int | None = None
    seg_prefix = seg_id = b""
    expected_seq = 0
    off = 0
    damage: Damage | None = None
    while off < size:
        start = off + header
        if start <= size:
            prefix, rtype, txlen, rsalt, seq, length, rid, hcrc = unpack_from(buf, off)
            end = start + length
            if (
                prefix in readable
                and end <= size
                and length <= max_payload
                and 0 < rtype <= max_type
                and txlen <= max_txid
                and crc32(payload := buf[start:end], crc32(zero_crc, crc32(buf[off : off + body]))) == hcrc
            ):
                if salt is None:
                    salt, seg_prefix, seg_id, expected_seq = rsalt, prefix, rid, seq
                elif rsalt != salt or rid != seg_id or prefix != seg_prefix:
                    why = (
                        f"salt {rsalt:016x}, segment salt {salt:016x}"
                        if rsalt != salt
                        else "WAL id or version differs from the segment's"
                    )
                    damage = _classify(buf, mv, off, _Bad(f"stale record ({why})"), salt)
                    break
                if seq != expected_seq:
                    bad = _Bad(f"sequence jumps to {seq}, expected {expected_seq}")
                    damage = _classify(buf, mv, off, bad, salt)
                    break
                txid_at = off + txid_offset
                append((off, rtype, seq, buf[txid_at : txid_at + txlen], payload))
                expected_seq = seq + 1
                off = end
                continue
        found = _decode(buf, mv, off)
        assert isinstance(found, _Bad), "the fast path rejected a record that _decode accepts"
        damage = _classify(buf, mv, off, found, salt)
        break
    if salt is None:
        return SegmentScan(records, None, off, size, damage)
    legacy = seg_prefix == _LEGACY_PREFIX
    version = LEGACY_VERSION if legacy else FORMAT_VERSION
    return SegmentScan(records, salt, off, size, damage, version, None if legacy else seg_id)
