"""Where a run trains and its kernels are compiled: `training.device`, resolved once, at start.

`auto` is CUDA when torch sees a CUDA device, else the CPU; `cuda` is the current CUDA device; `cuda:N` is that
one. A CUDA device torch cannot see is refused in one line (DeviceError, a ConfigError: the user must fix it),
never a traceback at the first tensor. The answer is always concrete (`cpu` or `cuda:N`): the library keeps
kernels apart by it and the GPU breaker reads NVML for its index.
"""

from __future__ import annotations

import re

from esper_tui.engine.config import ConfigError
from esper_tui.engine.config.ranges import DEVICE_PATTERN


class DeviceError(ConfigError):
    """A device this machine does not have, or a name that is none."""


def resolve_device(spec: str) -> str:
    """`cpu` or `cuda:N` for `auto`, `cpu`, `cuda` or `cuda:N`; DeviceError (one line) for anything else."""
    name = spec.strip().lower()
    if not re.fullmatch(DEVICE_PATTERN, name):
        raise DeviceError(f"training.device: {spec!r} is not a device (auto, cpu, cuda or cuda:N)")
    if name == "cpu":
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        if name == "auto":
            return "cpu"
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise DeviceError(
            f"training.device: {name} asked, but torch {torch.__version__} ({build}) sees no CUDA device: "
            "use cpu or auto"
        )
    count = torch.cuda.device_count()
    index = int(name.split(":")[1]) if ":" in name else torch.cuda.current_device()
    if index >= count:
        raise DeviceError(f"training.device: {name} asked, but torch sees {count} CUDA device(s): cuda:0-{count - 1}")
    return f"cuda:{index}"


def device_index(device: str) -> int | None:
    """The CUDA index of a resolved device (`cuda:1` -> 1), None for the CPU."""
    return int(device.split(":")[1]) if device.startswith("cuda:") else None
