"""training.device: resolving it, refusing what this machine lacks in one line, and the CUDA pipelines it selects.

No GPU is on these machines: the CUDA branches are checked for what they refuse and select, never timed here
(benchmarks/gpu.py measures them where a GPU is lent, and exits 2 here)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from esper_tui.engine.config import ConfigError, parse_config
from esper_tui.engine.kernels.device import DeviceError, device_index, resolve_device
from esper_tui.engine.kernels.pipelines import settings_for
from esper_tui.engine.vocabulary import Strategy

CUDA = torch.cuda.is_available()


def test_cpu_and_auto_resolve_to_a_concrete_device() -> None:
    assert resolve_device("cpu") == "cpu" and resolve_device(" CPU ") == "cpu"
    assert resolve_device("auto") == ("cuda:" + str(torch.cuda.current_device()) if CUDA else "cpu")
    assert device_index("cpu") is None and device_index("cuda:3") == 3


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "cuda:0:1", "", "tpu"])
def test_a_name_that_is_no_device_is_refused_in_one_line(spec: str) -> None:
    with pytest.raises(DeviceError, match="is not a device") as err:
        resolve_device(spec)
    assert isinstance(err.value, ConfigError) and "\n" not in str(err.value)


@pytest.mark.skipif(CUDA, reason="this machine has CUDA: the refusal of a missing device is checked below")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:7"])
def test_cuda_without_cuda_is_refused_in_one_line(spec: str) -> None:
    with pytest.raises(DeviceError, match=f"{spec} asked, but torch .* sees no CUDA device: use cpu or auto") as err:
        resolve_device(spec)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(not CUDA, reason="no CUDA device here")
def test_a_cuda_index_beyond_the_devices_is_refused() -> None:
    with pytest.raises(DeviceError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_the_config_key_has_a_declared_range() -> None:
    assert parse_config({}).training.device == "auto"
    assert parse_config({"training": {"device": "cuda:1"}}).training.device == "cuda:1"
    with pytest.raises(ConfigError, match=r"training\.device"):
        parse_config({"training": {"device": "gpu"}})


def test_cuda_selects_the_cuda_pipelines_for_that_very_device() -> None:
    for strategy in Strategy:
        cpu, gpu = settings_for(strategy, "cpu"), settings_for(strategy, "cuda:1")
        assert cpu.device == "cpu" and gpu.device == "cuda:1"
        assert cpu == settings_for(strategy)
    assert settings_for(Strategy.STANDARD, "cuda:0").backend == "inductor"
    assert settings_for(Strategy.FAST, "cuda:0").backend == "inductor"  # aot_eager buys nothing on a GPU
    assert settings_for(Strategy.AGGRESSIVE, "cuda:0").mode == "max-autotune"  # CUDA graphs where they pay


@pytest.mark.parametrize(
    ("flag", "line"),
    [("gpu", "--device (training.device): expected str matching"), ("cuda:0", "sees no CUDA device")],
)
def test_the_engine_refuses_a_device_it_cannot_use_with_exit_2(flag: str, line: str, tmp_path) -> None:
    if CUDA and flag.startswith("cuda"):
        flag = f"cuda:{torch.cuda.device_count()}"
        line = "CUDA device"
    proc = subprocess.run(
        [sys.executable, "-m", "esper_tui", "--no-ui", "--epochs", "1", "--device", flag, "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert line in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_benchmarks_gpu_exits_2_in_one_line_without_cuda() -> None:
    if CUDA:
        pytest.skip("this machine has CUDA: run the benchmark itself")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--quick"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("benchmarks.gpu: training.device: cuda asked") and len(proc.stderr.splitlines()) == 1


def test_the_gpu_breaker_reads_nvml_for_the_device_kernels_are_built_for(tmp_path) -> None:
    from esper_tui.engine.config import DurabilityMode, TezzeretConfig
    from esper_tui.engine.forge.forge import Forge
    from esper_tui.engine.kernels.catalog import Catalog
    from esper_tui.engine.library.store import Identity, Library
    from esper_tui.engine.wal.writer import WriteAheadLog

    for device, index in (("cuda:1", 1), ("cpu", 0)):
        wal, _ = WriteAheadLog.open(tmp_path / device / "wal", durability=DurabilityMode.FSYNC)
        forge = Forge(
            config=TezzeretConfig(),
            catalog=Catalog(),
            library=Library(tmp_path / device / "library", bytes(range(32)), Catalog()),
            wal=wal,
            emit=lambda _e: None,
            state_dir=tmp_path / device,
            identity=Identity("torch", "3.11", device, "isa", 1, "cc"),
        )
        assert forge.gpu.index == index
        wal.close()
