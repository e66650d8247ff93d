"""Stateful test: the WAL against a model of its transactions, across checkpoints and reopens."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from esper_tui.engine.config import DurabilityMode
from esper_tui.engine.wal.writer import RecoveryReport, WalError, WriteAheadLog, inspect

TXIDS = st.sampled_from(["a", "b", "c", "d", "blueprint-é"])
PAYLOADS = st.binary(max_size=300)


def _rows(transactions: list) -> list[tuple]:
    return [(t.txid, t.begin, t.data, t.end) for t in transactions]


class WalMachine(RuleBasedStateMachine):
    """Model: open transactions in BEGIN order, and what was committed / aborted since the last checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="wal-hypothesis-"))
        self.wal = self._open()[0]
        self.wal_id = inspect(self.directory).wal_id
        self.open: dict[str, tuple[bytes, list[bytes]]] = {}
        self.committed: list[tuple] = []
        self.aborted: list[tuple] = []

    def _open(self) -> tuple[WriteAheadLog, RecoveryReport]:
        # Small segments so rotation happens; fsync mode so BEGIN/DATA cost no fsync.
        return WriteAheadLog.open(self.directory, durability=DurabilityMode.FSYNC, segment_bytes=1500)

    @rule(txid=TXIDS, payload=PAYLOADS)
    def begin(self, txid: str, payload: bytes) -> None:
        if txid in self.open:
            with pytest.raises(WalError):
                self.wal.begin(txid, payload)
            return
        self.wal.begin(txid, payload)
        self.open[txid] = (payload, [])

    @rule(txid=TXIDS, payload=PAYLOADS)
    def data(self, txid: str, payload: bytes) -> None:
        if txid not in self.open:
            with pytest.raises(WalError):
                self.wal.data(txid, payload)
            return
        self.wal.data(txid, payload)
        self.open[txid][1].append(payload)

    def _finish(self, txid: str, payload: bytes, into: list[tuple]) -> bool:
        if txid not in self.open:
            return False
        begin, data = self.open.pop(txid)
        into.append((txid, begin, data, payload))
        return True

    @rule(txid=TXIDS, payload=PAYLOADS)
    def commit(self, txid: str, payload: bytes) -> None:
        if not self._finish(txid, payload, self.committed):
            with pytest.raises(WalError):
                self.wal.commit(txid, payload)
            return
        self.wal.commit(txid, payload)

    @rule(txid=TXIDS, payload=PAYLOADS)
    def abort(self, txid: str, payload: bytes) -> None:
        if not self._finish(txid, payload, self.aborted):
            with pytest.raises(WalError):
                self.wal.abort(txid, payload)
            return
        self.wal.abort(txid, payload)

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def acommit_all(self, data: st.DataObject) -> None:
        """Commit several open transactions concurrently through the group-commit path."""
        txids = data.draw(st.lists(st.sampled_from(sorted(self.open)), min_size=1, unique=True))

        async def commit_all() -> None:
            await asyncio.gather(*(self.wal.acommit(txid, b"async") for txid in txids))

        asyncio.run(commit_all())
        for txid in txids:
            self._finish(txid, b"async", self.committed)

    @rule()
    def checkpoint(self) -> None:
        self.wal.checkpoint()
        self.committed.clear()
        self.aborted.clear()

    @rule()
    def reopen(self) -> None:
        self.wal.close()
        self.wal, report = self._open()
        assert (report.corrupt, report.truncated_bytes) == ([], 0)
        assert _rows(report.committed) == self.committed
        assert _rows(report.aborted) == self.aborted
        assert [(t.txid, t.begin, t.data) for t in report.open] == [
            (txid, begin, data) for txid, (begin, data) in self.open.items()
        ]
        # What inspect reads agrees, and the log keeps its identity across rotations and checkpoints.
        info = inspect(self.directory)
        assert (info.damage, info.open_transactions, info.wal_id) == ([], list(self.open), self.wal_id)
        assert {s.wal_id for s in info.segments} <= {self.wal_id}

    @invariant()
    def open_transactions_match(self) -> None:
        assert self.wal.status().open_txids == list(self.open)

    def teardown(self) -> None:
        self.wal.close()
        shutil.rmtree(self.directory, ignore_errors=True)


WalMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_wal_matches_model = WalMachine.TestCase
