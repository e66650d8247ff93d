"""The value ranges config keys are declared with (msgspec `Meta`), declared once and reused.

msgspec's bounds reject NaN; every float also has an upper bound `le`, which rejects infinity. Every int has an
upper bound too: TOML integers are unbounded, and a huge one would otherwise reach setrlimit,
torch.manual_seed or a deque as an OverflowError instead of a config error.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

DAY_S = 86_400
TIB_MB = 1_048_576  # 1 TiB in MB: bytes = MB * 2**20 stays far inside RLIMIT_AS's 64 bits
TRAIN_SAMPLES = 4000  # MNIST-1D's training split (training/data.py TRAIN_SIZE): a bigger batch never fills

Seconds = Annotated[float, Meta(gt=0, le=DAY_S)]  # a duration that must pass: 0 would time out or spin at once
SecondsOrZero = Annotated[float, Meta(ge=0, le=DAY_S)]  # a wait where 0 means "no wait"
Minutes = Annotated[float, Meta(ge=0, le=1440)]  # up to a day; 0 means "off" or "at once" (see the key)
Percent = Annotated[float, Meta(gt=0, le=100)]
Fraction = Annotated[float, Meta(ge=0, le=1)]  # a share: of a metric's range or magnitude, of a split, ...
Parallel = Annotated[int, Meta(ge=1, le=64)]  # things at once; each compile holds a worker of up to a few GB
Tries = Annotated[int, Meta(ge=1, le=100)]  # attempts or failures: 0 would give up (or trip) before any try
Epochs = Annotated[int, Meta(ge=0, le=10_000)]  # a seed lifecycle stage; 0 skips the stage
Entries = Annotated[int, Meta(ge=1, le=10_000_000)]  # stream entries, held in memory or in Redis
Name = Annotated[str, Meta(min_length=1)]
HexKey = Annotated[str, Meta(pattern=r"^([0-9a-fA-F]{32,})?$")]  # empty, or at least 16 bytes of hex
DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]{1,2})?)$"  # kernels/device.py resolves it; CUDA indexes 0-99
TASK_SPEC_PATTERN = r"^([a-z][a-z0-9_]*|[^:\s]+\.py:[A-Za-z_]\w*|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$"
"""A task: a built-in name, `path/to/file.py:factory` or `package.module:factory` (training/task_loader.py)."""
TaskSpec = Annotated[str, Meta(pattern=TASK_SPEC_PATTERN)]
POLICY_PATTERN = r"^(heuristic|learned|\S.*\.policy)$"
"""Tamiyo's policy: the heuristic, the library's published learned one, or a policy file (training/follow.py)."""
