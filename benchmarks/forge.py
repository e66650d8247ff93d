"""Forge benchmark: kernel load vs recompile, cold throughput, WAL vs raw fsync, recovery, chaos.

    python -m benchmarks.forge --quick --json out.json     (a few minutes)
    python -m benchmarks.forge --json out.json             (full: 50 chaos rounds, more repeats)
    python -m benchmarks.forge --workers 1,2 --json out.json   the shared library and forge workers
                                                           (benchmarks/forge_cluster.py; PostgreSQL, moto, Redis)

Every figure is measured in this run on this machine; ratios are only meaningful within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import operator
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.chaos import run_chaos
from benchmarks.report import write_json
from benchmarks.wal import measure as wal_figures
from esper_tui.engine.forge.protocol import CompileRequest
from esper_tui.engine.forge.sandbox import WorkerPool
from esper_tui.engine.kernels import compiled as kernels
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.kernels.pipelines import settings_for
from esper_tui.engine.kernels.shapes import vector
from esper_tui.engine.library.signing import load_or_create_key
from esper_tui.engine.library.store import Library, version_dir_name
from esper_tui.engine.vocabulary import Strategy

_COMPARE = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, "==": operator.eq}
TARGETS = {
    "kernel_load_ms_median": ("<=", 10.0),
    "wal_recovery_10k_ms": ("<", 30.0),
    "kernels_per_min_cold": (">=", 10.0),
    "wal_vs_fsync_ratio": (">=", 10.0),
    "chaos_failures": ("==", 0),
}


def cold_compile(state: Path) -> tuple[float, int]:
    """A fresh state directory, the whole catalog compiled by the real engine: wall seconds, kernels."""
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "esper_tui", "--no-ui", "--forge-only", "--json", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"cold compile failed: {proc.stderr[-2000:]}")
    last = json.loads(proc.stdout.splitlines()[-1])
    return wall, sum(j["status"] == "compiled" for j in last["forge"]["jobs"])


def _first_step(kernel: kernels.LoadedKernel, module: torch.nn.Module, x: torch.Tensor) -> None:
    kernel(module, x).square().mean().backward()


def kernel_loads(state: Path, repeats: int) -> dict[str, dict[str, float]]:
    """Per blueprint, medians in a warm process (its one-time warm-up excluded), each with the first forward/backward.

    - `cached`: `Library.load` once its TTL entry is gone (ttl 0): the signature and every file's hash are checked
      again, and the kernel this process deserialised from the same verified bytes is reused; `cached_load` is
      its load alone, and `eager_step` the same first forward/backward of a fresh module run eagerly;
    - `first`: `drop_cache()` before each load, so the kernel is deserialised again;
    - a first load's phases: `verify` (read, signature, sha256 of every file), `deserialise`
      (torch.compiler.load_compiled_function, kernels placed in the private cache), `first_step`.
    """
    torch.set_num_threads(kernels.kernel_threads())
    catalog = Catalog()
    library = Library(state / "library", load_or_create_key(state), catalog, cache_ttl_s=0.0)
    kernels.private_cache_dir()
    x = torch.randn(100, 40)
    out = {}
    for bp in [catalog.get(m.blueprint_id) for m in library.all_current()]:
        library.load(bp.blueprint_id, vector(40, 64))  # the one-time per-process warm-up, excluded
        phases = ("cached", "cached_load", "eager_step", "first", "verify", "deserialise", "first_step")
        times: dict[str, list[float]] = {k: [] for k in phases}
        for _ in range(repeats):
            module = bp.build(vector(40, 64))
            t0 = time.perf_counter()
            kernel, _ = library.load(bp.blueprint_id, vector(40, 64))
            t1 = time.perf_counter()
            _first_step(kernel, module, x)
            times["cached"].append(time.perf_counter() - t0)
            times["cached_load"].append(t1 - t0)

            module = bp.build(vector(40, 64))
            t0 = time.perf_counter()
            module(x).square().mean().backward()
            times["eager_step"].append(time.perf_counter() - t0)

            library.drop_cache()
            module = bp.build(vector(40, 64))
            t0 = time.perf_counter()
            kernel, meta = library.load(bp.blueprint_id, vector(40, 64))
            _first_step(kernel, module, x)
            times["first"].append(time.perf_counter() - t0)

            module = bp.build(vector(40, 64))
            path = library.root / "artifacts" / bp.blueprint_id / version_dir_name(meta)
            t0 = time.perf_counter()
            _, blobs = library.read_verified(path)
            t1 = time.perf_counter()
            kernel = kernels.load_kernel(bp, blobs, kernel.label)
            t2 = time.perf_counter()
            _first_step(kernel, module, x)
            t3 = time.perf_counter()
            times["verify"].append(t1 - t0)
            times["deserialise"].append(t2 - t1)
            times["first_step"].append(t3 - t2)
        out[bp.blueprint_id] = {k: statistics.median(v) * 1000 for k, v in times.items()}
    return out


def recompiles(blueprints: list[str]) -> dict[str, float]:
    """The same kernels compiled from scratch (fresh inductor cache), Standard strategy, in-process."""
    catalog = Catalog()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for bid in blueprints:
            res = kernels.compile_kernel(
                catalog.get(bid), vector(40, 64), settings_for(Strategy.STANDARD), Path(tmp) / bid
            )
            out[bid] = res.compile_s
    return out


WORKER_IDLE_S = 2.0  # short, so the benchmark need not wait the default minute for the worker to leave


def first_compile_after_idle(root: Path, blueprint_id: str = "mlp_block") -> dict[str, float]:
    """Seconds from a job to its files on a warm worker, and after that worker left for idleness (a fresh worker
    starts first: torch, the ISA probe), in one pool with worker_idle_s = WORKER_IDLE_S; a Standard compile each."""
    s = settings_for(Strategy.STANDARD)

    def request(name: str) -> CompileRequest:
        return CompileRequest(
            job_id=name,
            blueprint_id=blueprint_id,
            in_features=40,
            out_features=64,
            strategy=Strategy.STANDARD,
            backend=s.backend,
            mode=s.mode,
            device=s.device,
            out_dir=str(root / name),
        )

    async def timed(pool: WorkerPool, name: str) -> float:
        t0 = time.perf_counter()
        response, _ = await pool.compile(request(name), 900.0)
        if not response.ok:
            raise SystemExit(f"worker compile failed: {response.error}")
        return time.perf_counter() - t0

    async def run() -> dict[str, float]:
        pool = WorkerPool(root / "logs", memory_limit_mb=4096, jobs_per_worker=16, idle_s=WORKER_IDLE_S)
        try:
            await timed(pool, "start")  # the worker's own start and first compile, excluded
            warm = await timed(pool, "warm")
            while pool.pids():  # it leaves WORKER_IDLE_S after its job
                await asyncio.sleep(0.1)
            after_idle = await timed(pool, "after-idle")
        finally:
            await pool.close()
        return {"warm_s": warm, "after_idle_s": after_idle}

    return asyncio.run(run())


def _counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected worker counts like 1,2, got {text!r}") from None
    if not counts or any(not 1 <= n <= 16 for n in counts):
        raise argparse.ArgumentTypeError(f"worker counts must be 1-16, got {text!r}")
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and 3 chaos rounds (a few minutes)")
    ap.add_argument("--json", type=Path, metavar="FILE", help="write the figures as JSON")
    ap.add_argument("--chaos-rounds", type=int, help="override the chaos round count (quick 3, full 50)")
    ap.add_argument(
        "--workers",
        type=_counts,
        metavar="N,M",
        help="measure the shared library and forge workers instead: cold throughput with each worker count, "
        "first and cached loads, and exactly-once under worker kills (quick 1 chaos round, full 3)",
    )
    ap.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="time loads of the kernels an earlier run compiled into DIR's library instead of compiling the "
        "catalog first (no cold-compile figures then)",
    )
    args = ap.parse_args(argv)
    if args.workers is not None:
        from benchmarks.forge_cluster import print_table, run

        shared = run(args.workers, quick=args.quick, rounds=args.chaos_rounds)
        print_table(shared)
        write_json(args.json, shared)
        return 1 if shared["exactly_once_violations"] else 0
    quick = args.quick
    rounds = args.chaos_rounds if args.chaos_rounds is not None else (3 if quick else 50)
    results: dict[str, object] = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}",
        "quick": quick,
    }
    with tempfile.TemporaryDirectory(prefix="esper-bench-") as tmp:
        root = Path(tmp)
        state = args.state_dir or root / "cold"
        if args.state_dir is None:
            print("cold compile of the whole catalog ...", flush=True)
            wall, n = cold_compile(state)
            results["kernels_per_min_cold"] = round(n / (wall / 60), 2)
            results["cold_compile_wall_s"] = round(wall, 1)
        print("kernel loads ...", flush=True)
        loads = kernel_loads(state, 7 if quick else 25)
        results["kernel_load_ms_by_blueprint"] = {k: {p: round(v, 2) for p, v in m.items()} for k, m in loads.items()}
        results["kernel_load_ms_median"] = round(statistics.median(m["cached"] for m in loads.values()), 2)
        for phase in ("cached_load", "eager_step", "first", "verify", "deserialise", "first_step"):
            results[f"kernel_{phase}_ms_median"] = round(statistics.median(m[phase] for m in loads.values()), 2)
        print("recompiles from scratch ...", flush=True)
        ids = (
            ["mlp_block", "conv1d_block", "attention_block"]
            if quick
            else [b.blueprint_id for b in Catalog().fitting(vector(40, 64))]
        )
        rec = recompiles(ids)
        results["recompile_s_by_blueprint"] = {k: round(v, 2) for k, v in rec.items()}
        results["recompile_s_median"] = round(statistics.median(rec.values()), 2)
        results["load_vs_recompile_speedup"] = round(
            results["recompile_s_median"]
            * 1000  # type: ignore[operator]
            / results["kernel_first_ms_median"],
            1,
        )  # type: ignore[operator]
        print("first compile after the worker left ...", flush=True)
        back = first_compile_after_idle(root / "idle")
        results["worker_compile_warm_s"] = round(back["warm_s"], 2)
        results["worker_compile_after_idle_s"] = round(back["after_idle_s"], 2)
        results["after_idle_over_warm"] = round(back["after_idle_s"] / back["warm_s"], 2)
        print("WAL and fsync ...", flush=True)
        results.update(wal_figures(root / "wal-bench", quick=quick))
        print(f"chaos: {rounds} SIGKILL rounds ...", flush=True)
        chaos = run_chaos(root / "chaos", rounds, seed=1, max_kill_s=10.0 if quick else 25.0)
        results["chaos_rounds"] = rounds
        results["chaos_kills"] = chaos.kills
        results["chaos_failures"] = len(chaos.failures)
        results["chaos_failure_details"] = chaos.failures
    print()
    print(f"{'figure':<28} {'value':>12}  target")
    for key, value in results.items():
        if isinstance(value, dict | list) or key in ("machine", "quick"):
            continue
        op, goal = TARGETS.get(key, ("", ""))
        ok = "" if not op else ("ok" if _COMPARE[op](value, goal) else "MISSED")
        print(f"{key:<28} {value!s:>12}  {op} {goal} {ok}")
    print(f"machine: {results['machine']}")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
