"""The torch side of a kernel: compile a blueprint to portable files, and load those files back.

Recipe (torch 2.13 precompile API, as vLLM uses it): `torch.compile(type(m).forward, fullgraph=True)
.aot_compile(((m, x), {}))` once per grad mode, `save_compiled_function`, and the inductor `.so`
kernels it built. The module is an argument, so parameters are graph inputs: one kernel serves any
instance's weights and trains (gradients match eager). The batch dimension is marked dynamic.

Loading takes bytes the library has already verified (HMAC over every file), writes the kernels into
this process's private inductor cache and deserialises from memory: what runs is exactly what was
signed, and nothing is recompiled.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from esper_tui.engine.kernels.catalog import Blueprint
from esper_tui.engine.kernels.pipelines import CompileSettings
from esper_tui.engine.kernels.shapes import SlotShape

FN_FILES: dict[bool, str] = {True: "train.fn", False: "infer.fn"}
WEIGHTS_FILE = "weights.safetensors"
KERNEL_DIR = "kernels"
EXAMPLE_BATCH = 100
BATCH_RANGE = (2, 1 << 16)


def kernel_threads() -> int:
    """The intra-op thread count kernels are compiled for AND run with.

    Compiled functions guard on `torch.get_num_threads()`: a kernel built with one count fails its
    guard under another. The worker and the training loop both use this value (half the cores,
    clamped to 1..2: the forge and the trainer share the machine).
    """
    return max(1, min(2, (os.cpu_count() or 1) // 2))


class KernelError(RuntimeError):
    """A blueprint failed to compile, validate or load."""


def cpu_isa() -> str:
    """The vector ISA inductor picked for this CPU: kernels built for one may not run on another.

    The probe compiles test programs and caches the answer in the inductor cache dir and in-process;
    call it before pointing the cache at a fresh directory, or it probes again (~8 s on 2 cores).
    """
    try:
        from torch._inductor.cpu_vec_isa import pick_vec_isa

        return str(pick_vec_isa()) or "scalar"
    except Exception:  # no compiler on this machine: report what we can
        return platform.machine()


def compiler_id() -> str:
    """The C++ compiler inductor builds kernels with: a different one names (and builds) other .so files."""
    try:
        from torch._inductor.cpp_builder import get_compiler_version_info, get_cpp_compiler

        cxx = get_cpp_compiler()
        return f"{cxx} " + hashlib.sha256(get_compiler_version_info(cxx).encode()).hexdigest()[:16]
    except Exception:  # no compiler: only eager-traced kernels can be built here
        return "none"


@dataclass(frozen=True)
class CompiledKernel:
    """Files written by `compile_kernel`, relative to its output directory, and the measurements."""

    files: list[str]
    compile_s: float
    step_ms_compiled: float
    step_ms_eager: float
    cpu_isa: str
    max_abs_error: float


def _step_ms(step: Callable[[], None], device: torch.device, repeats: int = 15) -> float:
    """Median wall time of a step; on CUDA each is synchronised, or only the launch would be timed."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def _train_step(module: nn.Module, fn: Callable[[nn.Module, torch.Tensor], torch.Tensor], x: torch.Tensor) -> None:
    module.zero_grad(set_to_none=True)
    torch.autograd.backward(fn(module, x).square().mean())


def _grads(module: nn.Module, fn: Callable[..., torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    _train_step(module, fn, x)
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]


def _checked(blueprint: Blueprint, shape: SlotShape, what: str, y: torch.Tensor) -> torch.Tensor:
    """A forward's output, refused unless it has the slot's output shape and is finite."""
    if tuple(y.shape[1:]) != shape.out_shape:
        raise KernelError(f"{blueprint.blueprint_id}: {what} output {list(y.shape[1:])}, the slot needs {shape}")
    if not torch.isfinite(y).all():
        raise KernelError(f"{blueprint.blueprint_id}: {what} output is not finite for {shape}")
    return y


def compile_kernel(
    blueprint: Blueprint,
    shape: SlotShape,
    settings: CompileSettings,
    out_dir: Path,
    *,
    seed: int = 0,
) -> CompiledKernel:
    """Compile both grad modes for one slot shape on the settings' device, validate shape, finiteness and
    values against eager, measure both there, and write every file to out_dir."""
    from torch._inductor.utils import fresh_cache

    torch.manual_seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(settings.device)
    module = blueprint.build(shape).to(device)
    module.zero_grad(set_to_none=True)  # grads must not be graph inputs at trace time
    forward = type(module).forward
    compiled: dict[bool, Callable[..., torch.Tensor]] = {}
    scratch = out_dir / ".inductor"
    t0 = time.perf_counter()
    # A clean cache dir (and cleared in-memory caches) per job: every .so this kernel needs lands there.
    with fresh_cache(dir=str(out_dir), delete=False):
        cache_root = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
        for grad in (True, False):
            x = torch.randn(EXAMPLE_BATCH, *shape.in_shape, device=device)
            torch._dynamo.mark_dynamic(x, 0)
            with torch.set_grad_enabled(grad):
                # Any: torch.compile's declared return type does not include the precompile API
                fn: Any = torch.compile(forward, fullgraph=True, backend=settings.backend, mode=settings.mode)
                aot = fn.aot_compile(((module, x), {}))
            aot.save_compiled_function(str(out_dir / FN_FILES[grad]))
            compiled[grad] = aot
    compile_s = time.perf_counter() - t0
    files = [FN_FILES[True], FN_FILES[False]]
    # On the CPU a kernel is its .so files; on CUDA, Triton's kernels and their launch metadata sit beside them.
    kept = (lambda p: p.suffix == ".so") if device.type == "cpu" else (lambda p: not p.name.endswith(".lock"))
    for so in sorted(p for p in cache_root.rglob("*") if p.is_file() and kept(p)):
        rel = Path(KERNEL_DIR) / so.relative_to(cache_root)
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(so, out_dir / rel)
        files.append(str(rel))
    _rmtree(cache_root)
    _rmtree(scratch)

    x = torch.randn(64, *shape.in_shape, device=device)
    with torch.no_grad():
        eager = _checked(blueprint, shape, "eager", module(x))
        err = (_checked(blueprint, shape, "compiled", compiled[False](module, x)) - eager).abs().max().item()
    g_c = _grads(module, compiled[True], x)
    g_e = _grads(module, lambda m, t: m(t), x)
    err = max([err] + [(a - b).abs().max().item() for a, b in zip(g_c, g_e, strict=True)])
    if not err < 1e-3:
        raise KernelError(f"{blueprint.blueprint_id}: compiled kernel disagrees with eager (max error {err:.3g})")
    xb = torch.randn(EXAMPLE_BATCH, *shape.in_shape, device=device)
    step_c = _step_ms(lambda: _train_step(module, compiled[True], xb), device)
    step_e = _step_ms(lambda: _train_step(module, lambda m, t: m(t), xb), device)

    module.zero_grad(set_to_none=True)
    (out_dir / WEIGHTS_FILE).write_bytes(
        save_tensors({k: v.cpu().contiguous() for k, v in module.state_dict().items()})
    )
    files.append(WEIGHTS_FILE)
    return CompiledKernel(files, compile_s, step_c, step_e, cpu_isa(), err)


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


_private_cache: Path | None = None


def private_cache_dir() -> Path:
    """This process's own inductor cache (mode 0700, fresh per process), where verified kernels go.

    Kernels are loaded lazily on first call, so the directory stays this process's cache for good;
    a shared cache could hold a .so nobody verified.
    """
    global _private_cache
    if _private_cache is None:
        _private_cache = Path(tempfile.mkdtemp(prefix="esper-kernels-"))
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(_private_cache)
        atexit.register(release_private_cache)
    return _private_cache


def release_private_cache() -> None:
    """Remove this process's cache at exit (registered by private_cache_dir; a process that ends with os._exit,
    like the training process, calls it itself). Nothing in it outlives the process: it is rebuilt from the
    library's verified files."""
    if _private_cache is not None:
        _rmtree(_private_cache)


class LoadedKernel:
    """kernel(module, x): the compiled forward for the current grad mode. x must not require grad.

    Only the training variant is deserialised up front; the no-grad one (validation) on first use,
    which halves the cost of a germination.
    """

    def __init__(self, blueprint: Blueprint, files: dict[str, bytes], label: str) -> None:
        self.blueprint = blueprint
        self.label = label
        self._files = {g: files[name] for g, name in FN_FILES.items()}
        self._fns: dict[bool, Callable[..., torch.Tensor]] = {}
        self._load(True)

    def _load(self, grad: bool) -> Callable[..., torch.Tensor]:
        fn = self._fns.get(grad)
        if fn is None:
            scope = vars(sys.modules[self.blueprint.module_class().__module__])
            try:
                fn = torch.compiler.load_compiled_function(io.BytesIO(self._files[grad]), f_globals=scope)
            except Exception as exc:
                raise KernelError(f"{self.blueprint.blueprint_id}: cannot load {FN_FILES[grad]}: {exc}") from exc
            self._fns[grad] = fn
        return fn

    def __call__(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self._load(torch.is_grad_enabled())(module, x)


def load_kernel(blueprint: Blueprint, files: dict[str, bytes], label: str) -> LoadedKernel:
    """Deserialise bytes the caller has verified; their kernels go into this process's private cache."""
    cache_dir = private_cache_dir()
    for name, data in files.items():
        if name.startswith(KERNEL_DIR + "/"):
            target = cache_dir / name[len(KERNEL_DIR) + 1 :]
            try:
                if not target.exists() or target.read_bytes() != data:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    tmp = target.with_suffix(".tmp")
                    tmp.write_bytes(data)
                    os.replace(tmp, target)
            except OSError as exc:  # e.g. a full disk: the trainer goes on eager, it does not die
                raise KernelError(f"{blueprint.blueprint_id}: cannot place {name} in {cache_dir}: {exc}") from None
    return LoadedKernel(blueprint, files, label)


def initial_weights(files: dict[str, bytes]) -> dict[str, torch.Tensor]:
    """The weights a kernel was validated with, read by the safetensors package (never a pickle).

    Whatever the bytes hold, the only error is KernelError: safetensors refuses gapped, overlapping or
    out-of-range offsets, absurd headers and bad JSON, and a dtype it knows but torch lacks is refused too.
    """
    data = files.get(WEIGHTS_FILE)
    if data is None:
        raise KernelError(f"{WEIGHTS_FILE} is missing")
    try:
        return load_tensors(data)
    except (SafetensorError, KeyError, ValueError, RuntimeError) as exc:
        raise KernelError(f"{WEIGHTS_FILE}: not a usable safetensors file ({exc})") from None
