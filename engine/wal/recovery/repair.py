"""Repairing a write-ahead log: making the directory equal to the replayed prefix, crash-safely.

The order of the steps is the recovery policy's point 4 (the recovery package's docstring): a crash at
any point leaves a directory that recovers to the same transactions.
"""

from __future__ import annotations

import os
from pathlib import Path

from esper_tui.engine.fsutil import fsync_dir, fsync_path, write_synced
from esper_tui.engine.wal.recovery.analysis import CORRUPT_SUFFIX, FOREIGN_SUFFIX, TMP_SUFFIX, Analysis, SegmentRole


def unlink_oldest_first(paths: list[Path], directory: Path) -> int:
    """Delete obsolete segments oldest first with a directory fsync after each; returns the fsyncs.

    Recovery trusts a checkpoint segment only while the segment just before it survives
    (`analysis._chain_start`), so that one must go last. Oldest first alone is not enough: a file system
    may persist unlinks that no fsync has ordered in any order, so a power cut after several unlinks can
    keep the newest obsolete segment's unlink and undo older ones. Recovery would then see a gap before the
    checkpoint, start at the oldest surviving segment and replay its stale transactions instead of the
    checkpoint. With an fsync after each unlink, whatever a crash leaves is the newest obsolete segments in
    a row, which the next recovery deletes. (Newest first would break the continuity check at its first
    unlink.) Checkpoints are rare and delete a few segments, so the extra fsyncs cost nothing that shows.
    """
    for path in paths:
        os.unlink(path)
        fsync_dir(directory)
    return len(paths)


def write_file_atomically(path: Path, data: bytes) -> None:
    """temp file + fsync + rename; the caller fsyncs the directory."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    write_synced(tmp, data)
    os.replace(tmp, path)


def repair(analysis: Analysis) -> None:
    """Make the directory equal the replayed prefix. Order matters for crash safety (the policy's point 4)."""
    directory = analysis.directory
    for tmp in analysis.tmp_files:  # first: a crashed preserve copy leaves a .tmp this run rewrites
        os.unlink(tmp)
    for seg in analysis.segments:
        if seg.role is SegmentRole.LIVE and seg.cut_to is not None:
            if seg.preserve:
                write_file_atomically(seg.aside(CORRUPT_SUFFIX), seg.data)
            elif seg.keep_cut:
                write_file_atomically(seg.cut_copy(), seg.data[seg.cut_to :])
    for seg in analysis.segments:
        if seg.role is SegmentRole.NOT_REPLAYED:
            os.replace(seg.path, seg.aside(CORRUPT_SUFFIX))
        elif seg.role is SegmentRole.FOREIGN:
            os.replace(seg.path, seg.aside(FOREIGN_SUFFIX))
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
