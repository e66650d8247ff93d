"""Tezzeret's write-ahead log: where it is, how big, what is in flight, how durable, how fresh.

Open transactions are the jobs a crash would resume or requeue, so they are listed by id; the
checkpoint age is measured against the snapshot's own clock so a replayed snapshot reads the same.
"""

from __future__ import annotations

from typing import NamedTuple

from textual.content import Content
from textual.widgets import Static

from esper_tui.engine.snapshot import Snapshot, WalView
from esper_tui.widgets import format as fmt
from esper_tui.widgets.panel import SnapshotPanel

MAX_TXN_IDS = 3
"""Open transaction ids listed by name; more are summarised as "+N"."""


class WalSlice(NamedTuple):
    wal: WalView
    checkpoint_age_s: int | None


def open_transactions(ids: list[str]) -> Content:
    """ "open 1 (7f3a9c)": highlighted while anything is in flight."""
    if not ids:
        return fmt.styled("open 0", fmt.MUTED)
    shown = ", ".join(ids[:MAX_TXN_IDS])
    more = f", +{len(ids) - MAX_TXN_IDS}" if len(ids) > MAX_TXN_IDS else ""
    return fmt.styled(f"open {len(ids)} ({shown}{more})", "$warning")


class WalPanel(SnapshotPanel[WalSlice], Static):
    """Path, segments, size, open transactions, commits, durability and checkpoint age."""

    PANEL_TITLE = "WAL"

    DEFAULT_CSS = """
    WalPanel {
        height: 1fr;
        min-height: 6;
    }
    """

    def select(self, snapshot: Snapshot) -> WalSlice:
        wal = snapshot.forge.wal
        return WalSlice(wal, fmt.round_age(wal.last_checkpoint_ts, snapshot.ts))

    def draw(self, part: WalSlice) -> None:
        wal = part.wal
        checkpoint = f"checkpoint {fmt.age(part.checkpoint_age_s)}"
        segments = f"{wal.segments} segment{'' if wal.segments == 1 else 's'}"
        self.update(
            Content("\n").join(
                [
                    fmt.styled(wal.path or "(no WAL yet)", "bold"),
                    fmt.join([segments, fmt.size(wal.size_bytes), f"{wal.commits} commits"]),
                    fmt.join([open_transactions(wal.open_transactions), checkpoint]),
                    fmt.styled(f"durability {wal.durability_mode or fmt.DASH}", fmt.MUTED),
                ]
            ),
            layout=False,
        )
