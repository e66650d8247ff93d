"""The shared forge and library measured for real: `python -m benchmarks.forge --workers 1,2 --json FILE`.

- Cold throughput: a fresh cluster (database, bucket, Redis prefix) per worker count; an engine with
  `--forge-workers 0` queues the whole catalog and N `esper-tui forge-worker` processes compile it. Timed
  from the engine's start to its exit (all kernels registered and read back), so worker start-up counts.
- Kernel loads from the shared library: the first load on a machine (an empty blob cache: download,
  verify, deserialise) and the cached load after it (blob cache hit; the in-memory kernel cache dropped),
  each followed by one forward/backward, as `benchmarks.forge` measures the file library.
- Chaos: two workers compile the catalog while a killer SIGKILLs a random worker every 6-15 s and
  starts a replacement. `exactly_once_violations` counts blueprints without exactly one live version,
  versions registered twice for one job, and jobs left pending; it must be 0.
"""

from __future__ import annotations

import dataclasses
import os
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.cluster import Cluster, Proc, cluster
from esper_tui.engine.config import LibraryConfig
from esper_tui.engine.kernels import compiled as kernels
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.kernels.shapes import vector
from esper_tui.engine.library.base import KernelLibrary
from esper_tui.engine.library.factory import open_library
from esper_tui.engine.library.shared import SharedLibrary
from esper_tui.engine.library.store import Library

DEADLINE_S = 1200.0


def _engine_run(c: Cluster, workers: list[Proc]) -> float:
    """Start the engine with workers already up; wall seconds until it exits (all kernels registered)."""
    t0 = time.monotonic()
    engine = c.engine("--forge-only")
    rc = engine.proc.wait(timeout=DEADLINE_S)
    wall = time.monotonic() - t0
    if rc != 0:
        raise SystemExit(f"engine failed ({rc}): {engine.stderr()[-2000:]}")
    for w in workers:
        w.stop()
    return wall


def _wait_started(workers: list[Proc]) -> None:
    deadline = time.monotonic() + 120
    while not all("taking jobs" in w.stderr() for w in workers):
        if time.monotonic() > deadline or not all(w.alive() for w in workers):
            raise SystemExit("forge workers did not start: " + " | ".join(w.stderr()[-500:] for w in workers))
        time.sleep(0.2)


def cold_throughput(root: Path, counts: list[int], redis_url: str, pg_url: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    n = len(Catalog().fitting(vector(40, 64)))
    for count in counts:
        work = root / f"cold-{count}"
        work.mkdir()
        with cluster(work, redis_url, pg_url) as c:
            workers = [c.worker(f"worker-{i}") for i in range(count)]
            _wait_started(workers)
            wall = _engine_run(c, workers)
            live = [r for r in c.rows() if not r[4]]
            out[str(count)] = {
                "kernels": len(live),
                "wall_s": round(wall, 1),
                "kernels_per_min_cold": round(len(live) / (wall / 60), 2),
                "complete": float(len(live) == n),
            }
    return out


def _timed_load(library: KernelLibrary, blueprint_id: str, x: torch.Tensor) -> float:
    module = library.catalog.get(blueprint_id).build(vector(40, 64))
    t0 = time.perf_counter()
    kernel, _ = library.load(blueprint_id, vector(40, 64))
    kernel(module, x).square().mean().backward()
    return (time.perf_counter() - t0) * 1000


def _mirror(shared: SharedLibrary, local: Library) -> None:
    """Copy every current kernel of the shared library into a file library, same files, same metadata."""
    for meta in shared.ranked():
        staged = local.new_staging_dir(meta.blueprint_id)
        row = shared.db.current(meta.blueprint_id, shared.identity().fingerprint(), meta.slot_shape.tag)
        assert row is not None
        for name, data in shared.files(row, meta).items():
            (staged / name).parent.mkdir(parents=True, exist_ok=True)
            (staged / name).write_bytes(data)
        local.commit(staged, blueprint_id=meta.blueprint_id, key=meta.artifact_id, build=meta.build())


def shared_loads(c: Cluster, cache_root: Path, repeats: int) -> dict[str, Any]:
    """First load (empty blob cache) and cached load (blob cache hit) per blueprint, in one warm process,
    with the file library's load of the same kernels interleaved as the reference (same process, same
    moment, so the machine's load hits both alike).

    Every blueprint is loaded once first, so the one-time per-process cost of deserialising each kernel
    kind is excluded from every figure, as in `benchmarks.forge`.
    """
    torch.set_num_threads(kernels.kernel_threads())
    kernels.private_cache_dir()
    config = LibraryConfig(catalog_url=c.catalog_url, artifacts_url=c.artifacts_url, artifacts_endpoint=c.endpoint)
    key = bytes.fromhex(c.key_hex)
    catalog = Catalog()
    x = torch.randn(100, 40)
    os.environ.update({k: v for k, v in c.env().items() if k.startswith("AWS_")})
    warm = open_library(config, cache_root / "warm", key, catalog)
    assert isinstance(warm, SharedLibrary)
    local = Library(cache_root / "file-library", key, catalog)
    _mirror(warm, local)
    for bp in catalog.fitting(vector(40, 64)):
        warm.load(bp.blueprint_id, vector(40, 64))
        local.load(bp.blueprint_id, vector(40, 64))
    warm.close()
    first: dict[str, float] = {}
    cached: dict[str, float] = {}
    file_lib: dict[str, float] = {}
    for i, bp in enumerate(catalog):
        library = open_library(config, cache_root / f"machine-{i}", key, catalog)  # another machine, empty cache
        first[bp.blueprint_id] = _timed_load(library, bp.blueprint_id, x)
        times, reference = [], []
        for _ in range(repeats):
            library.drop_cache()
            times.append(_timed_load(library, bp.blueprint_id, x))
            local.drop_cache()
            reference.append(_timed_load(local, bp.blueprint_id, x))
        cached[bp.blueprint_id] = statistics.median(times)
        file_lib[bp.blueprint_id] = statistics.median(reference)
        library.close()
    cached_median = statistics.median(cached.values())
    file_median = statistics.median(file_lib.values())
    return {
        "first_load_ms_by_blueprint": {k: round(v, 2) for k, v in first.items()},
        "cached_load_ms_by_blueprint": {k: round(v, 2) for k, v in cached.items()},
        "file_library_load_ms_by_blueprint": {k: round(v, 2) for k, v in file_lib.items()},
        "first_load_ms_median": round(statistics.median(first.values()), 2),
        "cached_load_ms_median": round(cached_median, 2),
        "file_library_load_ms_median": round(file_median, 2),
        "cached_over_file_library": round(cached_median / file_median, 3),
    }


@dataclasses.dataclass
class ChaosOutcome:
    rounds: int = 0
    kills: int = 0
    violations: int = 0
    details: list[str] = dataclasses.field(default_factory=list)


def _violations(c: Cluster) -> list[str]:
    rows = c.rows()
    found = []
    for bid in [b.blueprint_id for b in Catalog().fitting(vector(40, 64))]:
        live = [r for r in rows if r[0] == bid and not r[4]]
        if len(live) != 1:
            found.append(f"{bid}: {len(live)} live versions")
    jobs = [r[3] for r in rows]
    found += [f"job {j} registered {jobs.count(j)} times" for j in sorted(set(jobs)) if jobs.count(j) > 1]
    pending, backlog = c.queue()
    if pending or backlog:
        found.append(f"{pending} jobs pending, {backlog} left on the stream")
    return found


def _killer(
    c: Cluster, workers: list[Proc], name: str, rng: random.Random, done: threading.Event, outcome: ChaosOutcome
) -> None:
    """Every 6-15 s (long enough for some compiles to finish), SIGKILL a random live worker and start a
    replacement, until `done`."""
    while not done.wait(rng.uniform(6.0, 15.0)):
        live = [w for w in workers if w.alive()]
        if live:
            rng.choice(live).kill()
            outcome.kills += 1
        workers.append(c.worker(f"{name}{len(workers)}"))


def chaos(root: Path, rounds: int, redis_url: str, pg_url: str, seed: int = 1) -> ChaosOutcome:
    """Each round a fresh cluster; a killer SIGKILLs a random worker every 6-15 s and starts a replacement."""
    rng = random.Random(seed)
    outcome = ChaosOutcome(rounds=rounds)
    for r in range(rounds):
        work = root / f"chaos-{r}"
        work.mkdir()
        with cluster(work, redis_url, pg_url, claim_idle_s=3.0) as c:
            workers = [c.worker(f"w{r}-0"), c.worker(f"w{r}-1")]
            _wait_started(workers)
            engine = c.engine("--forge-only")
            done = threading.Event()
            thread = threading.Thread(target=_killer, args=(c, workers, f"w{r}-", rng, done, outcome), daemon=True)
            thread.start()
            rc = engine.proc.wait(timeout=DEADLINE_S)
            done.set()
            thread.join()
            if rc != 0:
                outcome.details.append(f"round {r}: engine exit {rc}: {engine.stderr()[-500:]}")
                outcome.violations += 1
            for w in workers:
                w.stop()
            found = _violations(c)
            outcome.violations += len(found)
            outcome.details += [f"round {r}: {v}" for v in found]
    return outcome


def run(counts: list[int], *, quick: bool, rounds: int | None) -> dict[str, Any]:
    redis_url = os.environ.get("ESPER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    pg_url = os.environ.get("ESPER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    results: dict[str, Any] = {"redis": redis_url, "postgresql": pg_url, "s3": "moto server (separate process)"}
    with tempfile.TemporaryDirectory(prefix="esper-cluster-bench-") as tmp:
        root = Path(tmp)
        print(f"cold compile of the catalog with {counts} forge workers ...", flush=True)
        results["cold"] = cold_throughput(root, counts, redis_url, pg_url)
        print("kernel loads from the shared library ...", flush=True)
        (root / "loads").mkdir()
        with cluster(root / "loads", redis_url, pg_url) as c:
            workers = [c.worker("loader-0"), c.worker("loader-1")]
            _wait_started(workers)
            _engine_run(c, workers)
            results.update(shared_loads(c, root / "loads", 7 if quick else 25))
        n = rounds if rounds is not None else (1 if quick else 3)
        print(f"chaos: {n} rounds of random worker kills ...", flush=True)
        (root / "chaos").mkdir()
        outcome = chaos(root / "chaos", n, redis_url, pg_url)
        results["chaos_rounds"] = outcome.rounds
        results["chaos_kills"] = outcome.kills
        results["exactly_once_violations"] = outcome.violations
        results["chaos_details"] = outcome.details
    return results


def print_table(results: dict[str, Any]) -> None:
    print()
    print(f"{'workers':>8} {'kernels':>8} {'wall s':>8} {'kernels/min':>12}")
    for count, row in results["cold"].items():
        print(f"{count:>8} {row['kernels']:>8} {row['wall_s']:>8} {row['kernels_per_min_cold']:>12}")
    print()
    print(f"{'figure':<28} {'value':>10}  target")
    for key, target in (
        ("first_load_ms_median", ""),
        ("cached_load_ms_median", "<= 20.0"),
        ("file_library_load_ms_median", ""),
        ("cached_over_file_library", ""),
        ("chaos_rounds", ""),
        ("chaos_kills", ""),
        ("exactly_once_violations", "== 0"),
    ):
        print(f"{key:<28} {results[key]!s:>10}  {target}")
