"""Memory and GPU probes, and the sustained-threshold rule."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pynvml
import pytest

from esper_tui.engine.forge.resources import GpuProbe, SustainedThreshold, read_memory

MB = 1024 * 1024

# Fills 200 MB (b"x" * n touches every page, unlike a calloc'd bytearray), says so, then waits on stdin.
HOG = 'import sys; x = b"x" * 200_000_000; print("ready", flush=True); sys.stdin.read()'


def test_read_memory_of_this_process_is_plausible():
    reading = read_memory()
    assert 0 < reading.rss_bytes <= reading.system_total_bytes
    assert 0 < reading.system_available_bytes <= reading.system_total_bytes
    assert reading.processes >= 1


def test_read_memory_counts_children():
    before = read_memory()
    child = subprocess.Popen([sys.executable, "-c", HOG], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        during = read_memory()
        assert during.processes == before.processes + 1
        assert during.rss_bytes - before.rss_bytes > 150 * MB
        assert read_memory(child.pid).rss_bytes > 150 * MB  # any root pid works
    finally:
        child.kill()
        child.wait()


def test_read_memory_of_a_vanished_process_is_empty_not_an_error():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the pid no longer exists
    reading = read_memory(child.pid)
    assert reading.rss_bytes == 0 and reading.system_total_bytes > 0


# --------------------------------------------------------------------------- GPU


def nvml_absent() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return True
    pynvml.nvmlShutdown()
    return False


@pytest.mark.skipif(not nvml_absent(), reason="this machine has a working NVML")
def test_gpu_probe_without_gpu_says_so_and_never_raises():
    probe = GpuProbe()
    first, second = probe.read(), probe.read()
    assert first == second
    assert not first.available and first.utilisation_percent is None and first.name is None
    assert first.detail.startswith("no GPU: ") and len(first.detail) > len("no GPU: ")
    probe.close()


class FakeNvml:
    """Just enough of pynvml for one 90 %-busy GPU; counts nvmlInit calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, percent: float = 90) -> None:
        self.percent = percent
        self.inits = 0
        self.shutdowns = 0
        self.fail_with: int | None = None
        for name in (
            "nvmlInit",
            "nvmlShutdown",
            "nvmlDeviceGetCount",
            "nvmlDeviceGetHandleByIndex",
            "nvmlDeviceGetUtilizationRates",
            "nvmlDeviceGetMemoryInfo",
            "nvmlDeviceGetName",
        ):
            monkeypatch.setattr(pynvml, name, getattr(self, name))

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> object:
        return object()

    def nvmlDeviceGetUtilizationRates(self, handle: object) -> SimpleNamespace:
        if self.fail_with is not None:
            raise pynvml.NVMLError(self.fail_with)
        return SimpleNamespace(gpu=self.percent, memory=10)

    def nvmlDeviceGetMemoryInfo(self, handle: object) -> SimpleNamespace:
        return SimpleNamespace(used=4 * 2**30, total=80 * 2**30, free=76 * 2**30)

    def nvmlDeviceGetName(self, handle: object) -> bytes:
        return b"NVIDIA H100"  # old pynvml style: bytes


def test_gpu_probe_reads_a_simulated_gpu(monkeypatch):
    fake = FakeNvml(monkeypatch)
    probe = GpuProbe()
    reading = probe.read()
    assert reading.available and reading.utilisation_percent == 90.0
    assert reading.name == "NVIDIA H100"
    assert reading.memory_used_bytes == 4 * 2**30 and reading.memory_total_bytes == 80 * 2**30
    probe.read()
    assert fake.inits == 1  # initialised once, lazily
    probe.close()
    probe.close()
    assert fake.shutdowns == 1


def test_gpu_probe_turns_nvml_errors_into_unavailable(monkeypatch):
    fake = FakeNvml(monkeypatch)
    fake.fail_with = pynvml.NVML_ERROR_GPU_IS_LOST
    reading = GpuProbe().read()
    assert not reading.available and reading.detail == "no GPU: GPU is lost"


def test_gpu_probe_init_failure_is_kept(monkeypatch):
    calls = []

    def no_driver() -> None:
        calls.append(1)
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    probe = GpuProbe()
    assert probe.read().detail == "no GPU: Driver Not Loaded"
    assert probe.read().detail == "no GPU: Driver Not Loaded"
    assert len(calls) == 1
    probe.close()  # nothing was initialised: nothing to shut down


def test_gpu_probe_missing_device_index(monkeypatch):
    FakeNvml(monkeypatch)
    reading = GpuProbe(index=3).read()
    assert not reading.available and "device 3 not present" in reading.detail


def test_board_trips_gpu_from_simulated_nvml_after_sustained_duration(monkeypatch):
    from esper_tui.engine.config import TezzeretConfig
    from esper_tui.engine.forge.board import BreakerBoard
    from esper_tui.engine.vocabulary import BreakerState

    FakeNvml(monkeypatch, percent=90)
    now = [0.0]
    board = BreakerBoard.from_config(TezzeretConfig(), clock=lambda: now[0])  # 25 % for 5 min
    probe = GpuProbe()
    memory = read_memory()
    for _ in range(10):  # 10 polls 30 s apart: 270 s above the threshold
        board.poll(memory, probe.read())
        now[0] += 30
    assert board.gpu.state is BreakerState.CLOSED
    board.poll(memory, probe.read())  # 300 s
    assert board.gpu.state is BreakerState.OPEN


# --------------------------------------------------------------------------- sustained threshold


def test_sustained_threshold():
    now = [0.0]
    rule = SustainedThreshold(25.0, 60.0, clock=lambda: now[0])
    assert not rule.update(90) and rule.above_since == 0.0
    now[0] = 59.9
    assert not rule.update(90)
    now[0] = 60.0
    assert rule.update(90)
    assert not rule.update(25.0)  # at the threshold is not above it: the wait restarts
    assert rule.above_since is None
    now[0] = 100.0
    assert not rule.update(26)
    rule.reset()
    assert rule.above_since is None


def test_sustained_threshold_with_zero_duration_is_immediate():
    assert SustainedThreshold(25.0, 0.0, clock=lambda: 0.0).update(25.1)
