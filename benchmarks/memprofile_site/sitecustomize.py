"""tracemalloc in every Python process started with this folder on PYTHONPATH (see benchmarks.memprofile).

Python imports `sitecustomize` at start-up, before any of the program's own code, in the engine and in the
training process it starts (which inherits the environment). With ESPER_MEMPROFILE_DIR set, a daemon thread
starts tracemalloc after ESPER_MEMPROFILE_WARMUP_S seconds (tracing imports and start-up would slow them several
times over, and what is allocated before the warm-up is not growth anyway), then every ESPER_MEMPROFILE_EVERY_S
seconds writes `<dir>/<pid>.json`: the process's command line, traced and resident memory, and the allocation
sites holding the most memory allocated since tracing began and still alive: what grows, plus the churn of the
moment (which a longer run tells apart: growth keeps climbing). Statistics are computed in the traced
process itself and written as JSON, so no snapshot is ever pickled across processes. Without the variable this
module does nothing.
"""

from __future__ import annotations

import json
import os
import threading
import time
import tracemalloc
from pathlib import Path

TOP = 25


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _sites(snapshot: tracemalloc.Snapshot, baseline: tracemalloc.Snapshot) -> list[dict[str, object]]:
    stats = snapshot.compare_to(baseline, "traceback")
    return [
        {
            "size_diff_kb": round(s.size_diff / 1024, 1),
            "count_diff": s.count_diff,
            "size_kb": round(s.size / 1024, 1),
            "frames": [f"{frame.filename}:{frame.lineno}" for frame in s.traceback],
        }
        for s in stats[:TOP]
    ]


def _profile(out: Path, warmup_s: float, every_s: float, frames: int) -> None:
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)]
    cmdline = Path("/proc/self/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    started = time.monotonic()
    time.sleep(warmup_s)
    tracemalloc.start(frames)
    baseline = tracemalloc.take_snapshot().filter_traces(ignore)
    base_traced, base_rss, base_t = tracemalloc.get_traced_memory()[0], _rss_mb(), time.monotonic() - started
    while True:
        time.sleep(every_s)
        snapshot = tracemalloc.take_snapshot().filter_traces(ignore)
        report = {
            "pid": os.getpid(),
            "cmdline": cmdline,
            "baseline_min": round(base_t / 60, 2),
            "minutes": round((time.monotonic() - started) / 60, 2),
            "traced_baseline_mb": round(base_traced / 2**20, 2),
            "traced_mb": round(tracemalloc.get_traced_memory()[0] / 2**20, 2),
            "rss_baseline_mb": round(base_rss, 1),
            "rss_mb": round(_rss_mb(), 1),
            "growth": _sites(snapshot, baseline),
        }
        del snapshot
        tmp = out / f".{os.getpid()}.json"
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(out / f"{os.getpid()}.json")


def _install() -> None:
    where = os.environ.get("ESPER_MEMPROFILE_DIR")
    if not where:
        return
    frames = int(os.environ.get("ESPER_MEMPROFILE_FRAMES", "8"))
    warmup_s = float(os.environ.get("ESPER_MEMPROFILE_WARMUP_S", "180"))
    every_s = float(os.environ.get("ESPER_MEMPROFILE_EVERY_S", "60"))
    threading.Thread(
        target=_profile, args=(Path(where), warmup_s, every_s, frames), name="esper-memprofile", daemon=True
    ).start()


_install()
