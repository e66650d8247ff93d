"""Resource probes the memory and gpu breakers read, and the "sustained above threshold" rule.

Memory comes from psutil: the forge's compile workers are child processes, so the budget covers the
engine and every descendant. The GPU is read through NVML (`pynvml`, package nvidia-ml-py); on a
machine without a GPU or driver every reading says so plainly instead of raising.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any

import psutil

from esper_tui.engine.forge.breakers import Clock

# --------------------------------------------------------------------------- memory


@dataclass(frozen=True, slots=True)
class MemoryReading:
    rss_bytes: int  # resident size of the root process and all its descendants
    system_available_bytes: int  # MemAvailable: what can be allocated without swapping
    system_total_bytes: int
    processes: int = 1  # how many processes rss_bytes covers (engine + workers)


def read_memory(root_pid: int | None = None) -> MemoryReading:
    """RSS of `root_pid` (default: this process) plus every descendant, and the system totals.

    A process that exits while the tree is walked adds no memory; a root that is gone reads as an
    empty tree, not an error.
    """
    try:
        root = psutil.Process(os.getpid() if root_pid is None else root_pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    system = psutil.virtual_memory()
    return MemoryReading(
        rss_bytes=sum(_rss_bytes(p) for p in tree),
        system_available_bytes=system.available,
        system_total_bytes=system.total,
        processes=len(tree),
    )


def _rss_bytes(process: psutil.Process) -> int:
    try:
        return int(process.memory_info().rss)
    except psutil.Error:  # exited meanwhile, a zombie, or not ours to read
        return 0


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
