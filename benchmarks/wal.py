"""WAL benchmark: group commit against raw fsync, and recovery of 10k transactions with where its time goes.

    python -m benchmarks.wal --json wal.json            (about a minute)
    python -m benchmarks.wal --quick --json wal.json    (fewer commits and repeats)

`benchmarks.forge` measures the same figures as part of its run. Every figure is measured in this run on this
machine; the ratio is only meaningful within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import operator
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.report import write_json
from esper_tui.engine.config import DurabilityMode
from esper_tui.engine.wal.format import scan_segment
from esper_tui.engine.wal.recovery import paused_gc, report
from esper_tui.engine.wal.recovery.analysis import analyze
from esper_tui.engine.wal.writer import WriteAheadLog

WAL_WRITERS = 1024  # concurrent transactions: group commit amortises one fsync over the batch they form
RECOVERY_TRANSACTIONS = 10_000
_COMPARE: dict[str, Callable[[float, float], bool]] = {"<": operator.lt, ">=": operator.ge}
TARGETS = {
    "wal_recovery_10k_ms": ("<", 30.0),
    "wal_recovery_10k_cpu_ms": ("<", 30.0),
    "wal_vs_fsync_ratio": (">=", 10.0),
}


def raw_fsync_rate(directory: Path, n: int) -> float:
    """256-byte appends, each followed by fsync: what one durable record costs without batching."""
    path = directory / "raw.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    block = b"x" * 256
    t0 = time.perf_counter()
    for _ in range(n):
        os.write(fd, block)
        os.fsync(fd)
    elapsed = time.perf_counter() - t0
    os.close(fd)
    return n / elapsed


async def _commits(wal: WriteAheadLog, n: int, concurrency: int) -> float:
    """`concurrency` writers, each running BEGIN + COMMIT transactions back to back (like forge jobs)."""
    per_writer = n // concurrency

    async def writer(w: int) -> None:
        for i in range(per_writer):
            await wal.abegin(f"w{w}-{i}", b"{}")
            await wal.acommit(f"w{w}-{i}", b"{}")

    t0 = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(concurrency)))
    return per_writer * concurrency / (time.perf_counter() - t0)


def wal_commit_rate(directory: Path, n: int, concurrency: int) -> tuple[float, int]:
    wal, _ = WriteAheadLog.open(directory, durability=DurabilityMode.O_DSYNC)
    try:
        rate = asyncio.run(_commits(wal, n, concurrency))
        return rate, wal.fsyncs_total
    finally:
        wal.close()


def write_transactions(directory: Path, transactions: int) -> None:
    """BEGIN, DATA and COMMIT per transaction, as the forge writes a job."""
    wal, _ = WriteAheadLog.open(directory, durability=DurabilityMode.FSYNC)
    payload = json.dumps({"blueprint_id": "mlp_block", "strategy": "standard", "attempt": 1}).encode()
    for i in range(transactions):
        tx = f"tx{i}"
        wal.begin(tx, payload)
        wal.data(tx, payload)
        wal.commit(tx, payload)
    wal.close()


def wal_recovery_ms(directory: Path, transactions: int, repeats: int) -> tuple[float, float]:
    """Medians of `WriteAheadLog.open` on a log of `transactions` committed transactions: wall time, and this
    process's CPU time (what a machine shared with other work does not inflate), in ms."""
    write_transactions(directory, transactions)
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        w, rep = WriteAheadLog.open(directory)
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
        assert len(rep.committed) == transactions, len(rep.committed)
        w.close()
    return statistics.median(wall), statistics.median(cpu)


def recovery_profile(directory: Path, repeats: int) -> dict[str, float]:
    """Medians (ms) of a recovery's parts on an existing log, measured separately with the GC paused as the writer
    pauses it: reading the segments, scanning them (every record's header and CRC checks, in Python), the whole
    analysis (scan plus replaying the transaction state machine), and building the report."""
    times: dict[str, list[float]] = {k: [] for k in ("read", "scan", "analyze", "report")}
    segments = sorted(directory.glob("wal-*.log"))
    for _ in range(repeats):
        with paused_gc():
            t0 = time.perf_counter()
            data = [p.read_bytes() for p in segments]
            t1 = time.perf_counter()
            for buf in data:
                scan_segment(buf)
            t2 = time.perf_counter()
            analysis = analyze(directory)
            t3 = time.perf_counter()
            report(analysis, False)
            t4 = time.perf_counter()
            del data, analysis
        for key, (a, b) in zip(times, ((t0, t1), (t1, t2), (t2, t3), (t3, t4)), strict=True):
            times[key].append((b - a) * 1000)
    out = {k: statistics.median(v) for k, v in times.items()}
    out["replay_and_rest"] = out["analyze"] - out["read"] - out["scan"]
    return out


def measure(root: Path, *, quick: bool) -> dict[str, object]:
    """Every WAL figure of one run, in a process holding torch (as the engine is) with its objects frozen."""
    gc.freeze()  # as Engine.start() does once torch is loaded: the WAL runs in that process
    results: dict[str, object] = {}
    (root / "fsync").mkdir(parents=True)
    results["raw_fsync_per_s"] = round(raw_fsync_rate(root / "fsync", 300 if quick else 2000), 1)
    rate, fsyncs = wal_commit_rate(root / "wal", 20000 if quick else 100_000, WAL_WRITERS)
    results["wal_commits_per_s"] = round(rate, 1)
    results["wal_fsyncs_for_commits"] = fsyncs
    results["wal_concurrent_writers"] = WAL_WRITERS
    results["wal_vs_fsync_ratio"] = round(rate / results["raw_fsync_per_s"], 1)  # type: ignore[operator]
    recovery_dir = root / "wal10k"
    wall, cpu = wal_recovery_ms(recovery_dir, RECOVERY_TRANSACTIONS, 5 if quick else 15)
    results["wal_recovery_10k_ms"] = round(wall, 1)
    results["wal_recovery_10k_cpu_ms"] = round(cpu, 1)
    profile = recovery_profile(recovery_dir, 5 if quick else 15)
    results["wal_recovery_profile_ms"] = {k: round(v, 1) for k, v in profile.items()}
    results["load_average_1min"] = round(os.getloadavg()[0], 1)
    return results


def print_table(results: dict[str, object]) -> None:
    print(f"{'figure':<28} {'value':>12}  target")
    for key, value in results.items():
        if isinstance(value, dict | list) or key in ("machine", "quick"):
            continue
        op, goal = TARGETS.get(key, ("", 0.0))
        ok = "" if not op else ("ok" if _COMPARE[op](float(value), goal) else "MISSED")  # type: ignore[arg-type]
        print(f"{key:<28} {value!s:>12}  {op} {goal if op else ''} {ok}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20,000 commits and 5 recoveries instead of 100,000 and 15")
    ap.add_argument("--json", type=Path, metavar="FILE", help="write the figures as JSON")
    args = ap.parse_args(argv)
    results: dict[str, object] = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}",
        "quick": args.quick,
    }
    with tempfile.TemporaryDirectory(prefix="esper-wal-bench-") as tmp:
        results.update(measure(Path(tmp), quick=args.quick))
    print_table(results)
    print("recovery profile (ms):", results["wal_recovery_profile_ms"])
    print(f"machine: {results['machine']}")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
