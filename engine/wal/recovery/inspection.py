"""``esper-tui wal inspect``: what recovery would see in a WAL directory, without changing it."""

from __future__ import annotations

from pathlib import Path

import msgspec

from esper_tui.engine.wal.recovery.analysis import SegmentRole, TxState, WalDamage, analyze


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


def inspect(directory: Path) -> InspectReport:
    """What recovery would see, for `esper-tui wal inspect`. READ-ONLY: never repairs, never locks."""
    analysis = analyze(Path(directory))
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
