"""Resource probes the memory and gpu breakers read, and the "sustained above threshold" rule.

Memory is read straight from /proc (Linux) rather than through psutil: the forge's compile workers
are child processes, so the budget must cover the whole tree, and walking /proc for one tree is a
few dozen lines. The GPU is read through NVML (`pynvml`, package nvidia-ml-py); on a machine
without a GPU or driver every reading says so plainly instead of raising.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esper_tui.engine.forge.breakers import Clock

PROC = Path("/proc")


# --------------------------------------------------------------------------- memory


@dataclass(frozen=True, slots=True)
class MemoryReading:
    rss_bytes: int  # resident size of the root process and all its descendants
    system_available_bytes: int  # /proc/meminfo MemAvailable
    system_total_bytes: int  # /proc/meminfo MemTotal
    processes: int = 1  # how many processes rss_bytes covers (engine + workers)


def read_memory(root_pid: int | None = None) -> MemoryReading:
    """RSS of `root_pid` (default: this process) plus every descendant, and the system totals.

    Processes may exit while we walk /proc; they are simply skipped. Linux only.
    """
    root = os.getpid() if root_pid is None else root_pid
    pids = _descendants(root)
    rss = sum(_rss_bytes(pid) for pid in pids)
    meminfo = _meminfo()
    return MemoryReading(
        rss_bytes=rss,
        system_available_bytes=meminfo.get("MemAvailable", 0),
        system_total_bytes=meminfo.get("MemTotal", 0),
        processes=len(pids),
    )


def _descendants(root: int) -> list[int]:
    """`root` and all processes below it, found through the ppid field of /proc/<pid>/stat."""
    children: defaultdict[int, list[int]] = defaultdict(list)
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'.
        fields = stat.rpartition(")")[2].split()
        if len(fields) >= 2:
            children[int(fields[1])].append(int(entry.name))
    found = [root]
    for pid in found:  # breadth-first; `found` grows while we iterate
        found.extend(children.get(pid, ()))
    return found


def _rss_bytes(pid: int) -> int:
    try:
        status = (PROC / str(pid) / "status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0  # zombies and kernel threads have no VmRSS


def _meminfo() -> dict[str, int]:
    values: dict[str, int] = {}
    for line in (PROC / "meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            values[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return values


# --------------------------------------------------------------------------- GPU


@dataclass(frozen=True, slots=True)
class GpuReading:
    available: bool
    utilisation_percent: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    name: str | None
    detail: str  # "no GPU: <NVML error>" when unavailable

    @classmethod
    def unavailable(cls, why: str) -> GpuReading:
        return cls(False, None, None, None, None, f"no GPU: {why}")


class GpuProbe:
    """Reads one GPU through NVML. Never raises: any failure becomes `available=False` with its text.

    nvmlInit runs once, on the first read; if it fails (no driver, no library) the failure is kept
    and returned on every later read rather than re-trying the library load every poll.
    """

    def __init__(self, index: int = 0) -> None:
        self.index = index
        self._nvml: Any = None  # the pynvml module once initialised
        self._init_error: str | None = None

    def read(self) -> GpuReading:
        nvml = self._init()
        if nvml is None:
            return GpuReading.unavailable(self._init_error or "NVML not initialised")
        try:
            count = nvml.nvmlDeviceGetCount()
            if self.index >= count:
                return GpuReading.unavailable(f"device {self.index} not present ({count} device(s))")
            handle = nvml.nvmlDeviceGetHandleByIndex(self.index)
            util = nvml.nvmlDeviceGetUtilizationRates(handle)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            name = nvml.nvmlDeviceGetName(handle)
        except Exception as exc:  # NVMLError mostly; "never raises" is the contract the breaker relies on
            return GpuReading.unavailable(_describe(exc))
        if isinstance(name, bytes):  # older pynvml returns bytes
            name = name.decode(errors="replace")
        return GpuReading(
            available=True,
            utilisation_percent=float(util.gpu),
            memory_used_bytes=int(mem.used),
            memory_total_bytes=int(mem.total),
            name=str(name),
            detail=f"{name}: {util.gpu}% busy, {mem.used / 2**30:.1f}/{mem.total / 2**30:.1f} GiB",
        )

    def close(self) -> None:
        """Shut NVML down if this probe started it; safe to call twice."""
        nvml, self._nvml = self._nvml, None
        if nvml is None:
            return
        with contextlib.suppress(Exception):  # shutting down a broken driver is not worth an error
            nvml.nvmlShutdown()

    def _init(self) -> Any:
        if self._nvml is not None or self._init_error is not None:
            return self._nvml
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as exc:  # ImportError or NVMLError (Driver Not Loaded, Library Not Found)
            self._init_error = _describe(exc)
            return None
        self._nvml = pynvml
        return pynvml


def _describe(exc: BaseException) -> str:
    """NVMLError's text is already the useful part ("Driver Not Loaded"); others get their type."""
    text = str(exc)
    if exc.__class__.__module__ == "pynvml":
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------- sustained threshold


class SustainedThreshold:
    """True once a value has stayed above `threshold` for `duration_s` without a break.

    Seed 000: the gpu breaker trips on utilisation above gpu_threshold_percent *sustained* for
    threshold_duration_minutes, so one busy sample (a neighbour's kernel) trips nothing. Any sample
    at or below the threshold restarts the wait.
    """

    def __init__(self, threshold: float, duration_s: float, clock: Clock = time.monotonic) -> None:
        self.threshold = threshold
        self.duration_s = duration_s
        self._clock = clock
        self._above_since: float | None = None

    @property
    def above_since(self) -> float | None:
        return self._above_since

    def update(self, value: float) -> bool:
        if value <= self.threshold:
            self._above_since = None
            return False
        now = self._clock()
        if self._above_since is None:
            self._above_since = now
        return now - self._above_since >= self.duration_s

    def reset(self) -> None:
        self._above_since = None
