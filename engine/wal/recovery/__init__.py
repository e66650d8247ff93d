"""Reading a write-ahead log back: recovery (analysis, then repair), its report, and the read-side API.

A package of its own because reading is separate from appending: the writer (``writer.py``) runs
``recover`` once when it opens a directory, and ``inspect`` runs the same analysis without the writer,
its lock or any repair. Its modules: ``analysis`` (scan and replay, touching nothing), ``repair`` and
``inspection``. The byte layout is in ``format.py``. The package re-exports the read side's public names,
and ``writer.py`` re-exports some of them, so the WAL is imported from one place.

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
import gc
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from esper_tui.engine.wal.recovery.analysis import Analysis, SegmentRole, Transaction, TxState, WalDamage, analyze
from esper_tui.engine.wal.recovery.inspection import InspectReport, SegmentInfo, TransactionInfo, inspect
from esper_tui.engine.wal.recovery.repair import repair, unlink_oldest_first

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
    "paused_gc",
    "unlink_oldest_first",
]


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


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic GC: in a process holding torch, gen-2 passes tripled 10k-transaction recovery. Nests (an
    inner pause leaves it paused). Hold it until the records are freed again (the writer holds it over the whole
    of its recovery): resumed with ~3 young objects per record still alive, the next allocation's collection
    scanned them all (10 ms of a 53 ms recovery of 10k transactions, benchmarks.wal)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def recover(directory: Path) -> tuple[Analysis, bool]:
    """Analyse the directory and repair it to the replayed prefix: (the analysis, whether anything changed)."""
    with paused_gc():  # a bulk load of ~3 objects per record and no cycles: collections would only cost
        analysis = analyze(directory)
    repaired = analysis.needs_repair()
    if repaired:
        repair(analysis)
    return analysis, repaired


def report(analysis: Analysis, repaired: bool) -> RecoveryReport:
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
