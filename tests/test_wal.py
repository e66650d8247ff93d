"""The forge WAL, one test per corruption / failure case (the list in GUIDE section 5).

Layout facts used here are in engine/wal/format.py; the recovery policy is in engine/wal/recovery/__init__.py.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import zlib
from pathlib import Path

import msgspec
import pytest

from esper_tui.engine.config import DurabilityMode
from esper_tui.engine.wal import format as fmt
from esper_tui.engine.wal.recovery import TransactionInfo, TxState
from esper_tui.engine.wal.writer import (
    RecoveryReport,
    WalError,
    WalFormatError,
    WalFsyncError,
    WriteAheadLog,
    inspect,
)

FSYNC = DurabilityMode.FSYNC
O_DSYNC = DurabilityMode.O_DSYNC
RT = fmt.RecordType

# Offsets of each header field (see the layout in engine/wal/format.py's docstring).
FIELDS = {
    "magic": 0,
    "version": 8,
    "endianness": 10,
    "type": 12,
    "txid_length": 13,
    "flags": 14,
    "salt": 16,
    "seq": 24,
    "length": 32,
    "payload_crc": 36,
    "txid": 40,
    "wal_id": 104,
    "padding": 200,
    "header_crc": 252,
    "payload": 256,
}


TEST_ID = bytes(range(1, 17))  # the WAL id of the logs these tests build by hand


class SimulatedCrash(BaseException):
    """Raised from a patched syscall: the process 'dies' there (BaseException: nothing catches it)."""


# --------------------------------------------------------------------------- helpers


def recover(directory: Path, **kwargs) -> RecoveryReport:
    wal, report = WriteAheadLog.open(directory, **kwargs)
    wal.close()
    return report


def states(report: RecoveryReport) -> dict[str, str]:
    return {t.txid: t.state for t in [*report.committed, *report.aborted, *report.open]}


def outcome(report: RecoveryReport) -> tuple:
    """Everything recovery says about transactions, for comparing two recoveries."""
    return tuple(
        [(t.txid, t.begin, t.data, t.state, t.end) for t in group]
        for group in (report.committed, report.aborted, report.open)
    )


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("wal-*.log"))


def only_segment(directory: Path) -> Path:
    (segment,) = segments(directory)
    return segment


def record_offsets(path: Path) -> list[int]:
    return [rec[0] for rec in fmt.scan_segment(path.read_bytes()).records]


def two_transactions(directory: Path) -> Path:
    """A = BEGIN, DATA, COMMIT; then B = BEGIN, DATA, COMMIT(b"done1234"). Returns the one segment."""
    with WriteAheadLog(directory, durability=FSYNC) as wal:
        wal.begin("A", b"ctx-a")
        wal.data("A", b"a1")
        wal.commit("A", b"ok")
        wal.begin("B", b"ctx-b")
        wal.data("B", b"b1")
        wal.commit("B", b"done1234")
    return only_segment(directory)


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def set_length(path: Path, record_offset: int, length: int) -> None:
    data = bytearray(path.read_bytes())
    data[record_offset + 32 : record_offset + 36] = length.to_bytes(4, "little")
    path.write_bytes(bytes(data))


def raw_segment(directory: Path, records: list[tuple[RT, str, bytes]], *, salt: int = 0xABC) -> Path:
    """A segment with exactly these records (valid CRCs, seq from 1, WAL id TEST_ID): for illegal sequences."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / fmt.IDENTITY_NAME).write_bytes(fmt.encode_identity(TEST_ID))
    path = directory / fmt.segment_name(1)
    path.write_bytes(
        b"".join(
            fmt.encode_record(rtype, TEST_ID, salt, seq, txid.encode(), payload)
            for seq, (rtype, txid, payload) in enumerate(records, start=1)
        )
    )
    return path


def legacy_record(rtype: RT, salt: int, seq: int, txid: str, payload: bytes) -> bytes:
    """A record as format version 1 wrote it: no WAL id (zeros where version 2 keeps it)."""
    record = bytearray(fmt.encode_record(rtype, bytes(16), salt, seq, txid.encode(), payload))
    record[8:10] = fmt.LEGACY_VERSION.to_bytes(2, "little")
    record[252:256] = bytes(4)
    record[252:256] = zlib.crc32(bytes(record[: fmt.HEADER_SIZE]) + payload).to_bytes(4, "little")
    return bytes(record)


def wal_id_of(directory: Path) -> bytes:
    wal_id = fmt.decode_identity((directory / fmt.IDENTITY_NAME).read_bytes())
    assert wal_id is not None
    return wal_id


def multi_segment_log(directory: Path, transactions: int = 12) -> list[Path]:
    """Committed transactions t0..tN spread over several small segments."""
    with WriteAheadLog(directory, durability=FSYNC, segment_bytes=1024) as wal:
        for i in range(transactions):
            wal.begin(f"t{i}", b"ctx")
            wal.data(f"t{i}", bytes([i]) * 40)
            wal.commit(f"t{i}", b"ok")
    return segments(directory)


def crash_on(monkeypatch: pytest.MonkeyPatch, name: str, nth: int = 1) -> None:
    """Make the nth call of os.<name> 'kill the process'."""
    real = getattr(os, name)
    calls = 0

    def patched(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == nth:
            raise SimulatedCrash(f"crash at os.{name} call {nth}")
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, patched)


def failing(err: int):
    def fail(*args, **kwargs):
        raise OSError(err, os.strerror(err))

    return fail


# --------------------------------------------------------------------------- empty and short logs


def test_empty_directory(tmp_path: Path) -> None:
    report = recover(tmp_path / "wal")
    assert report == RecoveryReport([], [], [], 0, 0, 0, [], False)
    with WriteAheadLog(tmp_path / "wal") as wal:
        wal.begin("A", b"x")
        wal.commit("A")
    assert states(recover(tmp_path / "wal")) == {"A": "committed"}


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / fmt.segment_name(1)).write_bytes(b"")
    report = recover(tmp_path)
    assert (report.records, report.corrupt, report.segments) == (0, [], 1)
    with WriteAheadLog(tmp_path) as wal:
        wal.begin("A", b"x")
        wal.commit("A")
    assert states(recover(tmp_path)) == {"A": "committed"}


def test_header_only(tmp_path: Path) -> None:
    record = fmt.encode_record(RT.BEGIN, TEST_ID, 7, 1, b"A", b"payload")
    (tmp_path / fmt.segment_name(1)).write_bytes(record[: fmt.HEADER_SIZE])
    report = recover(tmp_path)
    assert (report.records, report.corrupt, report.truncated_bytes) == (0, [], fmt.HEADER_SIZE)
    assert report.repaired
    assert segments(tmp_path) == []  # nothing valid was left in it


def test_truncation_at_every_byte_of_the_last_record(tmp_path: Path) -> None:
    segment = two_transactions(tmp_path / "original")
    data = segment.read_bytes()
    last = record_offsets(segment)[-1]
    for cut in range(last, len(data)):
        directory = tmp_path / f"cut-{cut}"
        directory.mkdir()
        shutil.copy(tmp_path / "original" / fmt.IDENTITY_NAME, directory)
        (directory / segment.name).write_bytes(data[:cut])
        report = recover(directory)
        assert states(report) == {"A": "committed", "B": "open"}, cut
        assert report.open[0].data == [b"b1"]
        assert report.corrupt == [], cut  # a torn tail is the normal end of a crashed log
        assert report.truncated_bytes == cut - last
        assert (directory / segment.name).stat().st_size == last


@pytest.mark.parametrize("sector", [512, 4096])
def test_zeroed_tail_sectors(tmp_path: Path, sector: int) -> None:
    segment = two_transactions(tmp_path)
    with segment.open("ab") as f:
        f.write(bytes(sector))
    report = recover(tmp_path)
    assert states(report) == {"A": "committed", "B": "committed"}
    assert (report.corrupt, report.truncated_bytes) == ([], sector)


@pytest.mark.parametrize("sector", [512, 4096])
def test_zeroed_sectors_over_the_last_record(tmp_path: Path, sector: int) -> None:
    segment = two_transactions(tmp_path)
    last = record_offsets(segment)[-1]
    segment.write_bytes(segment.read_bytes()[:last] + bytes(sector))
    report = recover(tmp_path)
    assert states(report) == {"A": "committed", "B": "open"}
    assert (report.corrupt, report.truncated_bytes) == ([], sector)


# --------------------------------------------------------------------------- single-bit flips


@pytest.mark.parametrize("field", FIELDS)
def test_bit_flip_in_a_middle_record_stops_replay_there(tmp_path: Path, field: str) -> None:
    segment = two_transactions(tmp_path)
    original = segment.read_bytes()
    damaged_at = record_offsets(segment)[1]  # A's DATA record
    flip_bit(segment, damaged_at + FIELDS[field])
    report = recover(tmp_path)
    # Replay stops at the damage: A keeps only its BEGIN, B (after the damage) is not replayed.
    assert states(report) == {"A": "open"}
    assert report.open[0].data == []
    assert len(report.corrupt) == 1
    assert f"{segment.name}@{damaged_at}" in report.corrupt[0]
    assert "replay stops" in report.corrupt[0]
    assert segment.stat().st_size == damaged_at
    (preserved,) = tmp_path.glob("*.corrupt")
    assert preserved.read_bytes()[:damaged_at] == original[:damaged_at]


@pytest.mark.parametrize("field", FIELDS)
def test_bit_flip_in_the_last_record_drops_it_and_reports_it(tmp_path: Path, field: str) -> None:
    segment = two_transactions(tmp_path)
    last = record_offsets(segment)[-1]  # B's COMMIT, payload b"done1234" (length 8)
    # For the length use bit 3 (8 -> 0): a CRC mismatch. A longer length runs past EOF; that case has
    # its own test.
    flip_bit(segment, last + FIELDS[field], bit=3 if field == "length" else 0)
    report = recover(tmp_path)
    assert states(report) == {"A": "committed", "B": "open"}
    assert len(report.corrupt) == 1
    assert f"{segment.name}@{last}" in report.corrupt[0]
    assert "damaged tail" in report.corrupt[0]
    assert report.truncated_bytes == fmt.HEADER_SIZE + 8
    assert len(list(tmp_path.glob("*.corrupt"))) == 1


# --------------------------------------------------------------------------- lengths


def _damaged_length_is_reported_and_kept(directory: Path, segment: Path, last: int) -> None:
    """Recovery of `directory`, whose last record (B's COMMIT, 264 bytes) is whole but for its length."""
    original = segment.read_bytes()
    (before,) = inspect(directory).damage
    assert (before.kind, before.segment, before.offset, before.bytes) == ("tail", segment.name, last, 264)
    assert "damaged length" in before.reason
    report = recover(directory)
    assert states(report) == {"A": "committed", "B": "open"}
    assert len(report.corrupt) == 1 and f"{segment.name}@{last}" in report.corrupt[0]
    assert "damaged length" in report.corrupt[0]
    assert report.damage == [before]
    assert segment.stat().st_size == last
    assert (directory / before.kept).read_bytes() == original  # kept whole before the cut


@pytest.mark.parametrize("bit", [b for b in range(32) if b != 3])  # bit 3 (8 -> 0) is the test above
def test_bit_flip_in_the_last_records_length_is_reported_and_kept(tmp_path: Path, bit: int) -> None:
    """A longer length runs past EOF like an unfinished append, but the record verifies with its true length."""
    segment = two_transactions(tmp_path)
    last = record_offsets(segment)[-1]
    flip_bit(segment, last + FIELDS["length"] + bit // 8, bit % 8)
    _damaged_length_is_reported_and_kept(tmp_path, segment, last)


@pytest.mark.parametrize("length", [1000, 0xFFFF_FFFF])
def test_length_past_eof_of_a_whole_last_record_is_reported_and_kept(tmp_path: Path, length: int) -> None:
    segment = two_transactions(tmp_path)
    last = record_offsets(segment)[-1]
    set_length(segment, last, length)
    _damaged_length_is_reported_and_kept(tmp_path, segment, last)


@pytest.mark.parametrize("length", [1000, 0xFFFF_FFFF])
def test_length_past_eof_of_a_torn_last_record_is_cut_with_a_copy_kept(tmp_path: Path, length: int) -> None:
    """Bytes past the last good record that are neither zeros nor shorter than a header: a whole header
    whose payload is missing. That may be an unfinished append or a damaged length, so it is not warned
    about, but wal inspect lists it and recovery keeps the cut bytes before truncating."""
    segment = two_transactions(tmp_path)
    last = record_offsets(segment)[-1]
    set_length(segment, last, length)
    segment.write_bytes(segment.read_bytes()[: last + fmt.HEADER_SIZE + 3])  # 3 of 8 payload bytes
    cut = segment.read_bytes()[last:]
    (damage,) = inspect(tmp_path).damage
    assert (damage.kind, damage.segment, damage.offset, damage.bytes) == ("partial", segment.name, last, len(cut))
    assert "unfinished append or a damaged length" in damage.reason
    report = recover(tmp_path)
    assert states(report) == {"A": "committed", "B": "open"}
    assert (report.corrupt, report.damage) == ([], [damage])
    assert segment.stat().st_size == last
    assert damage.kept is not None and damage.kept.startswith(f"{segment.name}.cut-{last}-")
    assert (tmp_path / damage.kept).read_bytes() == cut
    assert not list(tmp_path.glob("*.corrupt"))
    again = recover(tmp_path)
    assert (again.damage, again.repaired) == ([], False)


def test_clean_torn_tails_leave_no_copy(tmp_path: Path) -> None:
    """Zeros, or fewer bytes than a header: what a dead writer leaves. Cut without a copy."""
    segment = two_transactions(tmp_path)
    with segment.open("ab") as f:
        f.write(b"\x01" * (fmt.HEADER_SIZE - 1))
    report = recover(tmp_path)
    assert report.corrupt == [] and [d.kind for d in report.damage] == ["torn"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["LOCK", fmt.IDENTITY_NAME, segment.name])


def test_length_past_eof_in_the_middle_is_corruption(tmp_path: Path) -> None:
    segment = two_transactions(tmp_path)
    middle = record_offsets(segment)[1]
    set_length(segment, middle, 100_000)
    report = recover(tmp_path)
    assert states(report) == {"A": "open"}
    assert len(report.corrupt) == 1 and "runs past end of file" in report.corrupt[0]


def test_absurd_length_in_the_middle_is_corruption(tmp_path: Path) -> None:
    segment = two_transactions(tmp_path)
    middle = record_offsets(segment)[1]
    set_length(segment, middle, fmt.MAX_PAYLOAD + 1)
    report = recover(tmp_path)
    assert states(report) == {"A": "open"}
    assert len(report.corrupt) == 1 and "absurd payload length" in report.corrupt[0]


# --------------------------------------------------------------------------- valid CRC, illegal order


def test_data_without_begin_is_reported_and_ignored(tmp_path: Path) -> None:
    raw_segment(tmp_path, [(RT.DATA, "X", b"d"), (RT.BEGIN, "A", b"a"), (RT.COMMIT, "A", b"")])
    report = recover(tmp_path)
    assert states(report) == {"A": "committed"}
    assert len(report.corrupt) == 1
    assert "DATA of transaction 'X' without BEGIN" in report.corrupt[0]


def test_double_commit_is_reported_and_ignored(tmp_path: Path) -> None:
    raw_segment(tmp_path, [(RT.BEGIN, "A", b"a"), (RT.COMMIT, "A", b"1"), (RT.COMMIT, "A", b"2")])
    report = recover(tmp_path)
    assert [(t.txid, t.end) for t in report.committed] == [("A", b"1")]
    assert len(report.corrupt) == 1 and "after its COMMIT" in report.corrupt[0]


def test_commit_after_abort_is_reported_and_ignored(tmp_path: Path) -> None:
    raw_segment(tmp_path, [(RT.BEGIN, "A", b"a"), (RT.ABORT, "A", b""), (RT.COMMIT, "A", b"")])
    report = recover(tmp_path)
    assert states(report) == {"A": "aborted"}
    assert len(report.corrupt) == 1 and "COMMIT of transaction 'A' after its ABORT" in report.corrupt[0]


def test_data_after_commit_is_reported_and_ignored(tmp_path: Path) -> None:
    raw_segment(tmp_path, [(RT.BEGIN, "A", b"a"), (RT.COMMIT, "A", b""), (RT.DATA, "A", b"late")])
    report = recover(tmp_path)
    assert states(report) == {"A": "committed"} and report.committed[0].data == []
    assert len(report.corrupt) == 1 and "DATA of transaction 'A' after its COMMIT" in report.corrupt[0]


def test_begin_of_an_open_transaction_is_reported_and_ignored(tmp_path: Path) -> None:
    raw_segment(tmp_path, [(RT.BEGIN, "A", b"first"), (RT.BEGIN, "A", b"second"), (RT.COMMIT, "A", b"")])
    report = recover(tmp_path)
    assert [(t.txid, t.begin) for t in report.committed] == [("A", b"first")]
    assert len(report.corrupt) == 1 and "already open" in report.corrupt[0]


def test_checkpoint_record_in_the_middle_is_reported_and_ignored(tmp_path: Path) -> None:
    ts = fmt.encode_checkpoint_payload(1.0)
    raw_segment(tmp_path, [(RT.BEGIN, "A", b"a"), (RT.CHECKPOINT, "", ts), (RT.COMMIT, "A", b"")])
    report = recover(tmp_path)
    assert states(report) == {"A": "committed"}
    assert len(report.corrupt) == 1 and "CHECKPOINT" in report.corrupt[0]


def test_interleaved_transactions_are_legal(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path, durability=FSYNC) as wal:
        wal.begin("A", b"ctx-a")
        wal.begin("B", b"ctx-b")
        wal.data("A", b"a1")
        wal.data("B", b"b1")
        wal.data("A", b"a2")
        wal.commit("B", b"b-done")
        wal.commit("A", b"a-done")
    report = recover(tmp_path)
    assert report.corrupt == []
    assert [(t.txid, t.begin, t.data, t.end) for t in report.committed] == [
        ("B", b"ctx-b", [b"b1"], b"b-done"),
        ("A", b"ctx-a", [b"a1", b"a2"], b"a-done"),
    ]


def test_transaction_ids_may_be_reused_after_they_finish(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path, durability=FSYNC) as wal:
        wal.begin("A", b"first")
        wal.commit("A")
        wal.begin("A", b"second")
        wal.abort("A")
    report = recover(tmp_path)
    assert [t.begin for t in report.committed] == [b"first"]
    assert [t.begin for t in report.aborted] == [b"second"]
    assert report.corrupt == []


def test_begin_without_commit_at_the_tail_is_open_and_can_be_resumed(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path, durability=FSYNC) as wal:
        wal.begin("A", b"ctx")
        wal.commit("A")
        wal.begin("B", b"job-b")
        wal.data("B", b"step-1")
    wal, report = WriteAheadLog.open(tmp_path, durability=FSYNC)
    assert [(t.txid, t.begin, t.data, t.state) for t in report.open] == [("B", b"job-b", [b"step-1"], "open")]
    assert wal.status().open_txids == ["B"]
    wal.data("B", b"step-2")
    wal.commit("B", b"done")
    wal.close()
    report = recover(tmp_path)
    assert [(t.txid, t.data) for t in report.committed] == [("A", []), ("B", [b"step-1", b"step-2"])]


# --------------------------------------------------------------------------- damage policy across segments


def test_damage_in_the_middle_followed_by_good_records(tmp_path: Path) -> None:
    """Policy: replay stops at the damage; later records and later segments are not replayed."""
    files = multi_segment_log(tmp_path)
    assert len(files) >= 4
    victim = files[1]
    damaged_at = record_offsets(victim)[1]
    flip_bit(victim, damaged_at + 100)
    report = recover(tmp_path)
    replayed_before = len(record_offsets(files[0])) + 1
    assert report.records == replayed_before
    assert f"{victim.name}@{damaged_at}" in report.corrupt[0]
    assert sum("not replayed" in line for line in report.corrupt) == len(files) - 2
    # Nothing after the damage was replayed: every committed transaction lies wholly before it.
    assert all(t.txid in {f"t{i}" for i in range(12)} for t in report.committed)
    assert [p.name for p in segments(tmp_path)] == [files[0].name, victim.name]
    assert len(list(tmp_path.glob("*.corrupt"))) == len(files) - 1  # later segments + the cut one
    # The repaired log is clean, recovers the same way, and takes appends.
    again = recover(tmp_path)
    assert outcome(again) == outcome(report) and again.corrupt == [] and not again.repaired
    with WriteAheadLog(tmp_path, durability=FSYNC, segment_bytes=1024) as wal:
        wal.begin("new", b"x")
        wal.commit("new")
    after = recover(tmp_path)
    assert after.committed[-1].txid == "new" and after.corrupt == []


def test_junk_after_a_sealed_segment_is_reported_but_loses_nothing(tmp_path: Path) -> None:
    files = multi_segment_log(tmp_path)
    size = files[1].stat().st_size
    with files[1].open("ab") as f:
        f.write(b"\x01junk")
    report = recover(tmp_path)
    assert len(report.committed) == 12  # the next segment continues the sequence: nothing was lost
    assert len(report.corrupt) == 1 and f"{files[1].name}@{size}" in report.corrupt[0]
    assert files[1].stat().st_size == size
    assert len(list(tmp_path.glob("*.corrupt"))) == 1


def test_gap_between_segments_stops_replay(tmp_path: Path) -> None:
    files = multi_segment_log(tmp_path)
    files[1].unlink()
    report = recover(tmp_path)
    assert report.records == len(record_offsets(files[0]))
    assert "not replayed" in report.corrupt[0] and "continues at" in report.corrupt[0]
    assert segments(tmp_path) == [files[0]]


def test_stale_bytes_from_a_reused_file_are_not_replayed(tmp_path: Path) -> None:
    # An older incarnation of the log: job committed, then a ghost transaction.
    with WriteAheadLog(tmp_path / "old", durability=FSYNC) as wal:
        wal.begin("job", b"ctx")
        wal.data("job", b"old-1")
        wal.commit("job")
        wal.begin("ghost", b"boo")
        wal.commit("ghost")
    old = only_segment(tmp_path / "old").read_bytes()
    # The new incarnation wrote two same-sized records (seq 1, 2) over the start of the same file name.
    with WriteAheadLog(tmp_path / "new", durability=FSYNC) as wal:
        wal.begin("job", b"ctx")
        wal.data("job", b"new-1")
    segment = only_segment(tmp_path / "new")
    new = segment.read_bytes()
    segment.write_bytes(new + old[len(new) :])  # the old COMMIT has seq 3 and a valid CRC: only its salt differs
    report = recover(tmp_path / "new")
    assert states(report) == {"job": "open"}
    assert report.open[0].data == [b"new-1"]
    assert len(report.corrupt) == 1 and "stale record" in report.corrupt[0]
    assert report.truncated_bytes == len(old) - len(new)


def test_an_old_segment_under_a_new_name_is_not_replayed(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path, durability=FSYNC) as wal:
        wal.begin("C", b"c")
    shutil.copy(only_segment(tmp_path), tmp_path / fmt.segment_name(2))  # this log's own bytes, renamed
    report = recover(tmp_path)
    assert states(report) == {"C": "open"}
    assert len(report.corrupt) == 1 and "renamed file" in report.corrupt[0]


def _other_log_segment(directory: Path, *, checkpointed: bool) -> Path:
    """Another log whose segment wal-...07 starts at seq 7, right where two_transactions' log ends."""
    with WriteAheadLog(directory, durability=FSYNC, segment_bytes=6 * fmt.HEADER_SIZE) as other:
        for i in range(3):  # seq 1..6, 256 bytes each: the segment is full
            other.begin(f"x{i}", b"")
            other.commit(f"x{i}")
        if checkpointed:
            other.checkpoint()  # seq 7: a CHECKPOINT
        other.begin("ghost", b"boo")
        other.commit("ghost")
    segment = directory / fmt.segment_name(7)
    assert fmt.scan_segment(segment.read_bytes()).records[0][2] == 7
    return segment


@pytest.mark.parametrize("checkpointed", [False, True], ids=["plain", "checkpoint"])
def test_a_segment_of_another_wal_is_refused_even_when_its_seq_continues(tmp_path: Path, checkpointed: bool) -> None:
    """Its name, salt and seqs all fit; only the WAL id tells. Unrefused, a foreign checkpoint would
    even make this log's own segment obsolete."""
    ours = two_transactions(tmp_path / "wal")  # seq 1..6
    foreign = _other_log_segment(tmp_path / "other", checkpointed=checkpointed)
    shutil.copy(foreign, tmp_path / "wal" / foreign.name)
    info = inspect(tmp_path / "wal")
    assert [(s.name, s.role) for s in info.segments] == [(ours.name, "live"), (foreign.name, "foreign")]
    (damage,) = info.damage
    assert (damage.kind, damage.segment, damage.offset, damage.bytes) == (
        "foreign",
        foreign.name,
        None,
        foreign.stat().st_size,
    )
    assert wal_id_of(tmp_path / "other").hex() in damage.reason and info.wal_id == wal_id_of(tmp_path / "wal").hex()

    report = recover(tmp_path / "wal")
    assert states(report) == {"A": "committed", "B": "committed"}
    assert len(report.corrupt) == 1 and "another WAL" in report.corrupt[0]
    assert segments(tmp_path / "wal") == [ours]
    assert damage.kept is not None and (tmp_path / "wal" / damage.kept).read_bytes() == foreign.read_bytes()
    # The name it held is free again: the log grows through seq 7 without colliding with it.
    with WriteAheadLog(tmp_path / "wal", durability=FSYNC, segment_bytes=1000) as wal:
        wal.begin("D", b"d")
        wal.commit("D")
    after = recover(tmp_path / "wal")
    assert states(after) == {"A": "committed", "B": "committed", "D": "committed"}
    assert after.corrupt == []


def test_every_record_carries_the_wal_id_of_its_log(tmp_path: Path) -> None:
    multi_segment_log(tmp_path, transactions=4)
    wal_id = wal_id_of(tmp_path)
    assert wal_id != bytes(16)
    for path in segments(tmp_path):
        data = path.read_bytes()
        assert fmt.scan_segment(data).wal_id == wal_id
        assert all(data[off + 104 : off + 120] == wal_id for off in record_offsets(path))
    with WriteAheadLog(tmp_path / "second", durability=FSYNC):
        pass
    assert wal_id_of(tmp_path / "second") != wal_id


def test_a_missing_identity_file_is_reported_and_the_logs_own_id_adopted(tmp_path: Path) -> None:
    two_transactions(tmp_path)
    wal_id = wal_id_of(tmp_path)
    (tmp_path / fmt.IDENTITY_NAME).unlink()
    report = recover(tmp_path)
    assert states(report) == {"A": "committed", "B": "committed"}
    assert [d.kind for d in report.damage] == ["identity"] and report.repaired
    assert "adopted" in report.corrupt[0]
    assert wal_id_of(tmp_path) == wal_id
    assert recover(tmp_path).corrupt == []


def test_a_version_1_log_recovers_and_continues_in_version_2(tmp_path: Path) -> None:
    """Written before WAL ids: read as is, never appended to; the next record starts a version-2 segment."""
    begin = json.dumps({"blueprint_id": "mlp_block", "strategy": "fast", "attempt": 1, "key": "k", "reason": "r"})
    rows = [(RT.BEGIN, "J", begin.encode()), (RT.DATA, "J", b"d"), (RT.BEGIN, "K", b"k"), (RT.COMMIT, "K", b"")]
    legacy = tmp_path / fmt.segment_name(1)
    legacy.write_bytes(b"".join(legacy_record(rtype, 0x51, seq, t, p) for seq, (rtype, t, p) in enumerate(rows, 1)))
    original = legacy.read_bytes()
    wal, report = WriteAheadLog.open(tmp_path, durability=FSYNC)
    assert (states(report), report.corrupt, report.repaired) == ({"J": "open", "K": "committed"}, [], False)
    assert report.open[0].data == [b"d"]
    wal.commit("J", b"done")
    wal.begin("L", b"l")
    wal.close()
    assert legacy.read_bytes() == original
    info = inspect(tmp_path)
    assert [(s.name, s.version, s.wal_id) for s in info.segments] == [
        (legacy.name, 1, None),
        (fmt.segment_name(5), 2, wal_id_of(tmp_path).hex()),
    ]
    report = recover(tmp_path)
    assert (states(report), report.corrupt) == ({"J": "committed", "K": "committed", "L": "open"}, [])


def test_a_version_1_segment_after_version_2_ones_is_refused(tmp_path: Path) -> None:
    ours = two_transactions(tmp_path)  # seq 1..6
    stray = tmp_path / fmt.segment_name(7)
    stray.write_bytes(legacy_record(RT.BEGIN, 0x52, 7, "ghost", b"") + legacy_record(RT.COMMIT, 0x52, 8, "ghost", b""))
    report = recover(tmp_path)
    assert states(report) == {"A": "committed", "B": "committed"}
    assert [d.kind for d in report.damage] == ["foreign"] and "version-1" in report.corrupt[0]
    assert segments(tmp_path) == [ours]


def test_unknown_format_version_is_refused_and_left_untouched(tmp_path: Path) -> None:
    segment = two_transactions(tmp_path)
    data = bytearray(segment.read_bytes())
    for offset in record_offsets(segment):
        data[offset + 8 : offset + 10] = (fmt.FORMAT_VERSION + 1).to_bytes(2, "little")
    segment.write_bytes(bytes(data))
    with pytest.raises(WalFormatError):
        WriteAheadLog.open(tmp_path)
    assert segment.read_bytes() == bytes(data)


# --------------------------------------------------------------------------- crash during recovery, repair


def _messy_log(directory: Path) -> None:
    """Several segments, damage in the middle of the second, and a leftover temp file."""
    files = multi_segment_log(directory)
    flip_bit(files[1], record_offsets(files[1])[1] + 100)
    (directory / (fmt.segment_name(999) + ".tmp")).write_bytes(b"half a checkpoint")


@pytest.mark.parametrize(
    ("syscall", "nth"),
    [("replace", 1), ("replace", 2), ("truncate", 1), ("unlink", 1), ("fsync", 2)],
)
def test_crash_during_recovery_then_recovery_again_gives_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syscall: str, nth: int
) -> None:
    _messy_log(tmp_path / "clean")
    shutil.copytree(tmp_path / "clean", tmp_path / "crashed")
    reference = recover(tmp_path / "clean")
    assert reference.corrupt and reference.repaired

    crash_on(monkeypatch, syscall, nth)
    with pytest.raises(SimulatedCrash):
        recover(tmp_path / "crashed")
    monkeypatch.undo()

    assert outcome(recover(tmp_path / "crashed")) == outcome(reference)
    third = recover(tmp_path / "crashed")
    assert outcome(third) == outcome(reference)
    assert (third.corrupt, third.repaired) == ([], False)


def test_recovery_twice_gives_the_same_result(tmp_path: Path) -> None:
    segment = two_transactions(tmp_path)
    with segment.open("ab") as f:
        f.write(b"\x01partial record")
    first = recover(tmp_path)
    second = recover(tmp_path)
    assert outcome(first) == outcome(second)
    assert (first.repaired, second.repaired, second.truncated_bytes) == (True, False, 0)


def test_appending_after_repair(tmp_path: Path) -> None:
    segment = two_transactions(tmp_path)
    last = record_offsets(segment)[-1]
    segment.write_bytes(segment.read_bytes()[: last + 100])  # B's COMMIT torn
    wal, report = WriteAheadLog.open(tmp_path, durability=FSYNC)
    assert states(report) == {"A": "committed", "B": "open"}
    wal.commit("B", b"again")
    wal.begin("C", b"c")
    wal.commit("C")
    wal.close()
    report = recover(tmp_path)
    assert states(report) == {"A": "committed", "B": "committed", "C": "committed"}
    assert report.corrupt == []


# --------------------------------------------------------------------------- write and fsync errors


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
def test_write_error_is_fatal_and_nothing_reports_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    wal = WriteAheadLog(tmp_path, durability=FSYNC)
    wal.begin("A", b"x")
    monkeypatch.setattr(os, "write", failing(err))
    with pytest.raises(WalFsyncError):
        wal.commit("A")
    monkeypatch.undo()
    with pytest.raises(WalFsyncError):  # refuses later writes, even though the disk works again
        wal.begin("B", b"y")
    with pytest.raises(WalFsyncError):
        wal.commit("A")
    assert wal.status().commits_total == 0
    wal.close()
    assert states(recover(tmp_path)) == {"A": "open"}


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
def test_fsync_error_is_fatal_and_never_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    wal = WriteAheadLog(tmp_path, durability=FSYNC)
    wal.begin("A", b"x")
    calls = []

    def fsync(fd: int) -> None:
        calls.append(fd)
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(WalFsyncError):
        wal.commit("A")
    with pytest.raises(WalFsyncError):
        wal.begin("B", b"y")
    wal.close()  # must not fsync (retry) either
    assert len(calls) == 1
    assert wal.status().commits_total == 0


def test_o_dsync_write_error_is_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wal = WriteAheadLog(tmp_path, durability=O_DSYNC)
    wal.begin("A", b"x")
    monkeypatch.setattr(os, "write", failing(errno.EIO))
    with pytest.raises(WalFsyncError):
        wal.commit("A")
    monkeypatch.undo()
    with pytest.raises(WalFsyncError):
        wal.abort("A")
    wal.close()


def test_error_creating_a_new_segment_is_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wal = WriteAheadLog(tmp_path, durability=FSYNC, segment_bytes=300)
    wal.begin("A", b"x")
    real_open = os.open

    def no_space_for_new_files(path, flags, *args):
        if flags & os.O_CREAT:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_space_for_new_files)
    with pytest.raises(WalFsyncError):
        wal.commit("A")  # does not fit in the first segment: rotation needs a new file
    monkeypatch.undo()
    with pytest.raises(WalFsyncError):
        wal.begin("B", b"")
    wal.close()


async def test_fsync_error_fails_every_async_awaiter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wal = WriteAheadLog(tmp_path, durability=FSYNC)
    for i in range(20):
        wal.begin(f"t{i}", b"x")
    monkeypatch.setattr(os, "fsync", failing(errno.EIO))
    results = await asyncio.gather(*(wal.acommit(f"t{i}") for i in range(20)), return_exceptions=True)
    assert all(isinstance(r, WalFsyncError) for r in results), results
    with pytest.raises(WalFsyncError):
        await wal.abegin("late", b"")
    assert wal.status().commits_total == 0
    wal.close()


# --------------------------------------------------------------------------- checkpoints


def _three_transactions(wal: WriteAheadLog) -> None:
    for txid in ("A", "B", "C"):
        wal.begin(txid, f"ctx-{txid}".encode())
        wal.data(txid, f"{txid}1".encode())
    wal.commit("A")
    wal.abort("B")
    wal.data("C", b"C2")


def test_checkpoint_drops_finished_transactions_and_keeps_open_ones(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, durability=FSYNC, segment_bytes=600)
    _three_transactions(wal)
    assert wal.status().segments > 1
    wal.checkpoint()
    stats = wal.status()
    assert (stats.segments, stats.open_txids) == (1, ["C"])
    assert stats.last_checkpoint_ts is not None
    wal.close()
    wal, report = WriteAheadLog.open(tmp_path, durability=FSYNC)
    assert (report.committed, report.aborted, report.corrupt) == ([], [], [])
    assert [(t.txid, t.begin, t.data) for t in report.open] == [("C", b"ctx-C", [b"C1", b"C2"])]
    assert wal.status().last_checkpoint_ts == stats.last_checkpoint_ts
    wal.commit("C", b"done")
    wal.close()
    assert [(t.txid, t.data, t.end) for t in recover(tmp_path).committed] == [("C", [b"C1", b"C2"], b"done")]


@pytest.mark.parametrize("deleted_before_crash", [0, 1])
def test_crash_between_checkpoint_rename_and_deleting_old_segments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deleted_before_crash: int
) -> None:
    wal = WriteAheadLog(tmp_path / "wal", durability=FSYNC, segment_bytes=600)
    _three_transactions(wal)
    old = segments(tmp_path / "wal")
    assert len(old) > 2
    crash_on(monkeypatch, "unlink", nth=deleted_before_crash + 1)
    with pytest.raises(SimulatedCrash):
        wal.checkpoint()
    monkeypatch.undo()
    wal.close()
    assert sum(p.exists() for p in old) == len(old) - deleted_before_crash
    report = recover(tmp_path / "wal")
    assert (states(report), report.corrupt) == ({"C": "open"}, [])
    assert report.open[0].data == [b"C1", b"C2"]
    assert len(segments(tmp_path / "wal")) == 1  # recovery finished the checkpoint's deletions


class PowerCut:
    """A file system that may lose any unlink no directory fsync has made durable yet.

    Wraps os.unlink (keeping each deleted segment's bytes) and os.fsync (a directory fsync makes the
    unlinks before it durable). The `crash_at`-th of those events raises SimulatedCrash before it
    happens; `survivors()` then gives every combination of the not-yet-durable unlinks that a power
    cut could have undone: POSIX leaves the order in which they reach the disk to the file system.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, crash_at: int) -> None:
        self.crash_at = crash_at
        self.events = 0
        self.pending: list[tuple[Path, bytes]] = []
        real_unlink, real_fsync = os.unlink, os.fsync

        def unlink(path, *args, **kwargs):
            self._event()
            path = Path(path)
            data = path.read_bytes() if fmt.parse_segment_name(path.name) is not None else None
            real_unlink(path, *args, **kwargs)
            if data is not None:
                self.pending.append((path, data))

        def fsync(fd: int) -> None:
            is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
            if is_dir:
                self._event()
            real_fsync(fd)
            if is_dir:
                self.pending.clear()

        monkeypatch.setattr(os, "unlink", unlink)
        monkeypatch.setattr(os, "fsync", fsync)

    def _event(self) -> None:
        self.events += 1
        if self.events == self.crash_at:
            raise SimulatedCrash(f"power cut at event {self.crash_at}")

    def survivors(self) -> list[list[tuple[Path, bytes]]]:
        return [
            [self.pending[i] for i in range(len(self.pending)) if mask >> i & 1]
            for mask in range(1 << len(self.pending))
        ]


@pytest.mark.parametrize("deleter", ["checkpoint", "recovery"])
def test_a_power_cut_while_obsolete_segments_are_deleted_never_replays_stale_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deleter: str
) -> None:
    """Cut the power at every unlink and directory fsync of the deletions, undo every combination of
    unlinks not yet made durable, and recover: always exactly the checkpoint's state (only C open)."""
    crash_at = 0
    while True:
        crash_at += 1
        directory = tmp_path / f"crash-{crash_at}"
        wal = WriteAheadLog(directory, durability=FSYNC, segment_bytes=600)
        _three_transactions(wal)
        obsolete = len(segments(directory))
        if deleter == "recovery":  # a checkpoint died before its first unlink; recovery deletes them
            crash_on(monkeypatch, "unlink")
            with pytest.raises(SimulatedCrash):
                wal.checkpoint()
            monkeypatch.undo()
            wal.close()
        cut = PowerCut(monkeypatch, crash_at)
        try:
            wal.checkpoint() if deleter == "checkpoint" else recover(directory)
            crashed = False
        except SimulatedCrash:
            crashed = True
        monkeypatch.undo()
        wal.close()
        if not crashed:
            assert cut.events >= obsolete  # every unlink was a crash point in an earlier round
            break
        for n, survivors in enumerate(cut.survivors()):
            copy = tmp_path / f"crash-{crash_at}-undo-{n}"
            shutil.copytree(directory, copy)
            for path, data in survivors:
                (copy / path.name).write_bytes(data)
            report = recover(copy)
            assert (states(report), report.corrupt) == ({"C": "open"}, []), (crash_at, [p.name for p, _ in survivors])
            assert report.open[0].data == [b"C1", b"C2"]
    assert crash_at > obsolete


def test_creating_the_wal_directory_fsyncs_its_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each new directory's name is durable only once its parent is fsynced (etcd's lesson)."""
    synced: list[Path] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    WriteAheadLog(tmp_path / "state" / "wal", durability=FSYNC).close()
    assert tmp_path in synced and tmp_path / "state" in synced
    assert synced.index(tmp_path) < synced.index(tmp_path / "state")  # made top-down
    assert tmp_path / "state" / "wal" in synced  # and the identity file written inside it


@pytest.mark.parametrize("where", ["file/wal", "file"])
def test_a_wal_directory_that_cannot_be_made_is_a_wal_error(tmp_path: Path, where: str) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(WalError, match="cannot open the WAL directory"):
        WriteAheadLog(tmp_path / where)


def test_a_stale_checkpoint_segment_never_makes_the_real_log_obsolete(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path / "other", durability=FSYNC) as wal:
        for i in range(10):
            wal.begin(f"x{i}", b"")
            wal.commit(f"x{i}")
        wal.begin("ghost", b"")
        wal.checkpoint()
    stale = only_segment(tmp_path / "other")  # a checkpoint segment named for seq 21
    two_transactions(tmp_path / "wal")  # seq 1..6
    shutil.copy(stale, tmp_path / "wal" / stale.name)
    report = recover(tmp_path / "wal")
    assert states(report) == {"A": "committed", "B": "committed"}
    assert len(report.corrupt) == 1 and "not replayed" in report.corrupt[0]
    assert [p.name for p in segments(tmp_path / "wal")] == [fmt.segment_name(1)]


def test_crash_before_checkpoint_rename_keeps_the_old_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wal = WriteAheadLog(tmp_path, durability=FSYNC)
    _three_transactions(wal)
    crash_on(monkeypatch, "replace")
    with pytest.raises(SimulatedCrash):
        wal.checkpoint()
    monkeypatch.undo()
    wal.close()
    assert list(tmp_path.glob("*.tmp"))
    report = recover(tmp_path)
    assert states(report) == {"A": "committed", "B": "aborted", "C": "open"}
    assert report.corrupt == [] and not list(tmp_path.glob("*.tmp"))


def test_failed_checkpoint_write_leaves_the_log_usable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wal = WriteAheadLog(tmp_path, durability=FSYNC)
    _three_transactions(wal)
    monkeypatch.setattr(os, "write", failing(errno.ENOSPC))
    with pytest.raises(WalError) as caught:
        wal.checkpoint()
    assert not isinstance(caught.value, WalFsyncError)
    monkeypatch.undo()
    wal.commit("C")
    wal.close()
    assert states(recover(tmp_path)) == {"A": "committed", "B": "aborted", "C": "committed"}


# --------------------------------------------------------------------------- rotation, group commit


def test_segment_rotation(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path, durability=FSYNC, segment_bytes=1024) as wal:
        for i in range(20):
            wal.begin(f"t{i}", b"ctx")
            wal.data(f"t{i}", b"x" * 100)
            wal.commit(f"t{i}")
        stats = wal.status()
    files = segments(tmp_path)
    assert len(files) == stats.segments > 5
    assert stats.size_bytes == sum(p.stat().st_size for p in files)
    for path in files:
        assert path.stat().st_size <= 1024
        first_seq = fmt.scan_segment(path.read_bytes()).records[0][2]
        assert path.name == fmt.segment_name(first_seq)
    report = recover(tmp_path)
    assert (len(report.committed), report.records, report.segments, report.corrupt) == (
        20,
        60,
        len(files),
        [],
    )


@pytest.mark.parametrize("durability", [FSYNC, O_DSYNC])
async def test_async_group_commit_shares_fsyncs(tmp_path: Path, durability: DurabilityMode) -> None:
    wal = WriteAheadLog(tmp_path, durability=durability)
    await asyncio.gather(*(wal.abegin(f"t{i}", b"ctx") for i in range(1000)))
    before = wal.fsyncs_total
    await asyncio.gather(*(wal.acommit(f"t{i}", b"ok") for i in range(1000)))
    barriers = wal.fsyncs_total - before
    assert 1 <= barriers <= 10, barriers  # 1000 commits, a handful of fsyncs
    assert wal.status().commits_total == 1000
    wal.close()
    assert len(recover(tmp_path).committed) == 1000


async def test_a_busy_log_flushes_what_gathered_at_once_and_a_quiet_one_waits_the_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The group-commit window gathers company for a record that arrives after a quiet spell; records that arrive
    right after a flush (the load) go out at once: waiting a window per batch only lowered the commit rate."""
    from esper_tui.engine.wal import writer as writer_mod

    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        waits.append(delay)
        await real_sleep(delay)

    monkeypatch.setattr(writer_mod.asyncio, "sleep", sleep)
    wal = WriteAheadLog(tmp_path, durability=FSYNC, group_commit_window_s=1.0)
    for i in range(4):  # one writer, back to back: each record arrives just after the previous flush
        await wal.abegin(f"t{i}", b"ctx")
        await wal.acommit(f"t{i}")
    assert waits == [1.0] + [0] * 7
    await real_sleep(1.1)  # quiet for longer than the window
    await wal.abegin("late", b"ctx")
    assert waits[-1] == 1.0
    assert wal.status().commits_total == 4
    wal.close()


async def test_async_transactions_from_many_tasks(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, durability=FSYNC, group_commit_window_s=0)

    async def job(i: int) -> None:
        await wal.abegin(f"j{i}", b"ctx")
        await wal.adata(f"j{i}", bytes([i % 256]) * 10)
        if i % 5:
            await wal.acommit(f"j{i}")
        else:
            await wal.aabort(f"j{i}")

    await asyncio.gather(*(job(i) for i in range(200)))
    assert wal.fsyncs_total < 200
    with pytest.raises(WalError):
        await wal.adata("j1", b"after commit")
    wal.close()
    report = recover(tmp_path)
    assert (len(report.committed), len(report.aborted), report.open, report.corrupt) == (160, 40, [], [])
    assert all(t.data == [bytes([int(t.txid[1:]) % 256]) * 10] for t in report.committed)


# --------------------------------------------------------------------------- API misuse, locking, inspect


def test_write_side_misuse_raises_wal_error(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path, durability=FSYNC) as wal:
        wal.begin("A", b"")
        with pytest.raises(WalError, match="already open"):
            wal.begin("A", b"")
        for call in (wal.data, wal.commit, wal.abort):
            with pytest.raises(WalError, match="not open"):
                call("unknown", b"")
        with pytest.raises(WalError):
            wal.begin("", b"")
        with pytest.raises(WalError):
            wal.begin("x" * 65, b"")
        wal.commit("A")
        with pytest.raises(WalError):
            wal.data("A", b"late")
        wal.begin("B", b"")  # misuse does not poison the log
        wal.commit("B")
    with pytest.raises(WalError, match="closed"):
        wal.begin("C", b"")
    report = recover(tmp_path)
    assert (states(report), report.corrupt) == ({"A": "committed", "B": "committed"}, [])


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path), pytest.raises(WalError, match="another writer"):
        WriteAheadLog(tmp_path)
    WriteAheadLog(tmp_path).close()  # released on close


def test_status_reports_the_log(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path, durability=FSYNC) as wal:
        wal.begin("A", b"")
        wal.begin("B", b"")
        wal.commit("A")
        wal.abort("B")
        wal.begin("C", b"")
        stats = wal.status()
    assert (stats.path, stats.segments, stats.open_txids) == (str(tmp_path), 1, ["C"])
    assert (stats.commits_total, stats.aborts_total, stats.durability_mode) == (1, 1, "fsync")
    assert stats.size_bytes == only_segment(tmp_path).stat().st_size
    assert stats.last_checkpoint_ts is None


def test_inspect_is_read_only_and_json_serialisable(tmp_path: Path) -> None:
    segment = two_transactions(tmp_path)
    with segment.open("ab") as f:
        f.write(b"torn")
    damaged_at = record_offsets(segment)[4]
    flip_bit(segment, damaged_at + 50)  # B's DATA: damage with a record after it
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    info = inspect(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    as_json = json.loads(msgspec.json.encode(info))
    assert as_json["open_transactions"] == ["B"]
    assert as_json["damage"][0]["kind"] == "middle" and as_json["segments"][0]["role"] == "live"
    (seg,) = info.segments
    assert (seg.name, seg.records, seg.role, seg.version) == (segment.name, 4, "live", fmt.FORMAT_VERSION)
    assert seg.salt == f"{fmt.scan_segment(segment.read_bytes()).salt:016x}"
    assert seg.wal_id == info.wal_id == wal_id_of(tmp_path).hex()
    assert info.transactions == [
        TransactionInfo(txid="A", state=TxState.COMMITTED, records=3),
        TransactionInfo(txid="B", state=TxState.OPEN, records=1),
    ]
    assert info.open_transactions == ["B"]
    (damage,) = info.damage
    assert (damage.kind, damage.segment, damage.offset) == ("middle", segment.name, damaged_at)
    assert damage.bytes == len(before[segment.name]) - damaged_at
    assert "replay stops here" in damage.reason


def test_wal_inspect_tool_prints_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from esper_tui.commands.tools import wal_inspect
    from esper_tui.engine.config import EsperConfig, wal_directory

    config = EsperConfig()
    directory = wal_directory(config, tmp_path)
    segment = two_transactions(directory)
    last = record_offsets(segment)[-1]
    set_length(segment, last, 1000)
    assert wal_inspect(tmp_path, config, as_json=True) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["open_transactions"] == ["B"]
    assert [(d["kind"], d["segment"], d["offset"], d["bytes"]) for d in report["damage"]] == [
        ("tail", segment.name, last, fmt.HEADER_SIZE + 8)
    ]
    assert wal_inspect(tmp_path, config, as_json=False) == 0
    text = capsys.readouterr().out
    assert f"{segment.name}@{last}" in text and "damaged length" in text and "open: B" in text


def test_wal_inspect_never_names_a_copy_that_does_not_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Read-only inspect reported damage as "kept in wal-….corrupt", a file only recovery writes."""
    from esper_tui.commands.tools import wal_inspect
    from esper_tui.engine.config import EsperConfig, wal_directory

    config = EsperConfig()
    directory = wal_directory(config, tmp_path)
    segment = two_transactions(directory)
    flip_bit(segment, record_offsets(segment)[4] + 50)  # damage with a record after it: set aside as .corrupt
    assert wal_inspect(tmp_path, config, as_json=False) == 0
    text = capsys.readouterr().out
    assert "kept in" not in text
    (kept,) = [d.kept for d in inspect(directory).damage]
    assert kept is not None and kept.endswith(".corrupt") and not (directory / kept).exists()
    assert f"not kept yet: the engine's next start keeps a copy in {kept}; inspect changes nothing" in text


# --------------------------------------------------------------------------- SIGKILL loop

CHILD = r"""
import random, sys
from pathlib import Path
from esper_tui.engine.config import DurabilityMode
from esper_tui.engine.wal.writer import WriteAheadLog

directory, tag, seed, mode = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
rng = random.Random(seed)
wal, report = WriteAheadLog.open(directory, durability=DurabilityMode(mode), segment_bytes=8192)
for tx in report.open:  # requeue in-flight work, as the forge does
    wal.abort(tx.txid, b"requeued")
    print("aborted", tx.txid, flush=True)
print("ready", flush=True)
i = 0
while True:
    txid = f"{tag}-{i}"
    wal.begin(txid, b"ctx")
    for _ in range(rng.randrange(3)):
        wal.data(txid, rng.randbytes(rng.randrange(300)))
    if rng.random() < 0.2:
        wal.abort(txid)
        print("aborted", txid, flush=True)
    else:
        wal.commit(txid, b"ok")
        print("committed", txid, flush=True)
    i += 1
"""


def test_sigkill_loop(tmp_path: Path) -> None:
    rng = random.Random(20240611)
    acknowledged: dict[str, str] = {}
    for round_ in range(6):
        mode = (FSYNC, O_DSYNC)[round_ % 2].value
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path), f"r{round_}", str(rng.randrange(10**9)), mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        lines: list[str] = []
        budget = rng.randrange(1, 80)
        while budget:
            line = child.stdout.readline()
            assert line, f"child died: {child.stderr.read() if child.stderr else ''}"
            lines.append(line)
            budget -= line.startswith(("committed", "aborted"))
        child.send_signal(signal.SIGKILL)  # lands at a random point of a begin/data/commit
        out, _ = child.communicate()
        assert child.returncode == -signal.SIGKILL
        # Only whole lines: the kill can cut the child's last line short ("aborted" without its id).
        complete = [x for x in [*lines, *out.splitlines(keepends=True)] if x.endswith("\n")]
        for line in complete:
            word, _, txid = line.strip().partition(" ")
            if word in ("committed", "aborted"):
                acknowledged[txid] = word
        report = recover(tmp_path)
        assert report.corrupt == []  # torn tails only, never an illegal state
        recovered = {t.txid: t.state for t in [*report.committed, *report.aborted]}
        for txid, state in acknowledged.items():
            assert recovered.get(txid) == state, (txid, state)
        assert not {t.txid for t in report.open} & set(recovered)
    assert len(acknowledged) > 6


def test_crc_helpers_agree_with_zlib(tmp_path: Path) -> None:
    """The header CRC is CRC-32 over the header with its CRC field zeroed, then the payload."""
    record = fmt.encode_record(RT.DATA, TEST_ID, 1, 2, b"tx", b"payload")
    header = bytearray(record[: fmt.HEADER_SIZE])
    stored = int.from_bytes(header[252:256], "little")
    header[252:256] = bytes(4)
    assert stored == zlib.crc32(bytes(header) + b"payload")
    assert int.from_bytes(record[36:40], "little") == zlib.crc32(b"payload")
    assert record[10:12] == b"\x02\x01"  # 0x0102 little-endian
    assert record[104:120] == TEST_ID


# --------------------------------------------------------------------------- the forge's payloads


def test_journal_payloads_round_trip_per_record_type() -> None:
    from esper_tui.engine.forge import journal
    from esper_tui.engine.vocabulary import Strategy

    entries = {
        RT.BEGIN: journal.JobBegin(blueprint_id="mlp_block", strategy=Strategy.FAST, attempt=2, key="k", reason="r"),
        RT.DATA: journal.JobStaged(staged="mlp_block-1", worker_pid=42, wall_s=1.5),
        RT.COMMIT: journal.JobCommitted(artifact_id="k", version=3, reused=True),
        RT.ABORT: journal.JobAborted(error="boom"),
    }
    for rtype, entry in entries.items():
        assert journal.decode(rtype, journal.encode(entry)) == entry
    assert journal.encode(journal.JobAborted(recovered=True)) == b'{"recovered":true}'


def test_journal_decodes_the_json_an_older_forge_wrote() -> None:
    """Before the Structs the forge wrote json.dumps of dicts with the same field names: a WAL it left
    behind must still recover."""
    from esper_tui.engine.forge import journal
    from esper_tui.engine.vocabulary import Strategy

    old = {
        RT.BEGIN: {"blueprint_id": "mlp_block", "strategy": "standard", "attempt": 1, "key": "k", "reason": "scan"},
        RT.DATA: {"staged": "mlp_block-abc", "worker_pid": 7, "wall_s": 0.25},
        RT.COMMIT: {"artifact_id": "k", "version": 1},
        RT.ABORT: {"error": "CompileTimeout: 900 s"},
    }
    decoded = {rtype: journal.decode(rtype, json.dumps(fields).encode()) for rtype, fields in old.items()}
    assert decoded[RT.BEGIN] == journal.JobBegin(
        blueprint_id="mlp_block", strategy=Strategy.STANDARD, attempt=1, key="k", reason="scan"
    )
    assert decoded[RT.DATA] == journal.JobStaged(staged="mlp_block-abc", worker_pid=7, wall_s=0.25)
    assert decoded[RT.COMMIT] == journal.JobCommitted(artifact_id="k", version=1)
    assert decoded[RT.ABORT] == journal.JobAborted(error="CompileTimeout: 900 s")


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xff\xfe", b"[1, 2]", b'{"blueprint_id": 5}', b'{"blueprint_id": "x"}', b'{"strategy": "warp"}'],
)
def test_a_bad_journal_payload_is_a_journal_error(payload: bytes) -> None:
    from esper_tui.engine.forge import journal

    with pytest.raises(journal.JournalError) as caught:
        journal.decode_begin(payload)
    assert caught.value.record is RT.BEGIN and caught.value.reason
    assert str(caught.value).startswith("unreadable BEGIN payload: ")


def test_forge_recovery_reports_an_unreadable_begin_and_still_aborts_it(tmp_path: Path) -> None:
    """A damaged BEGIN payload used to raise out of Forge.recover and stop the engine from starting."""
    from esper_tui.engine.config import TezzeretConfig
    from esper_tui.engine.contracts import JobQueued, LogLine
    from esper_tui.engine.forge import journal
    from esper_tui.engine.forge.forge import Forge
    from esper_tui.engine.kernels.catalog import Catalog
    from esper_tui.engine.library.store import Identity, Library
    from esper_tui.engine.vocabulary import Level, Strategy

    good = journal.JobBegin(blueprint_id="mlp_block", strategy=Strategy.FAST, attempt=1, key="k", reason="r")
    with WriteAheadLog(tmp_path / "wal", durability=FSYNC) as wal:
        wal.begin("bad", b"\xff not json")
        wal.begin("good", journal.encode(good))
    wal, report = WriteAheadLog.open(tmp_path / "wal", durability=FSYNC)
    events: list[object] = []
    catalog = Catalog().subset(["mlp_block"])
    forge = Forge(
        config=TezzeretConfig(),
        catalog=catalog,
        library=Library(tmp_path / "library", bytes(range(32)), catalog),
        wal=wal,
        emit=events.append,
        state_dir=tmp_path,
        identity=Identity("torch", "3.11", "cpu", "isa", 1, "cc"),
    )
    forge.recover(report)
    wal.close()
    warnings = [e.message for e in events if isinstance(e, LogLine) and e.level is Level.WARNING]
    assert len(warnings) == 1 and "transaction bad: unreadable BEGIN payload" in warnings[0]
    # a BEGIN written before shapes names none: requeued for the 40-64 shape it was compiling
    assert [(e.blueprint_id, e.shape) for e in events if isinstance(e, JobQueued)] == [("mlp_block", "40-64")]
    after = recover(tmp_path / "wal")
    assert [(t.txid, journal.decode(RT.ABORT, t.end)) for t in after.aborted] == [
        ("bad", journal.JobAborted(recovered=True)),
        ("good", journal.JobAborted(recovered=True)),
    ]
