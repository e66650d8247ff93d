"""GPU figures (issue 15, item 5): per blueprint and strategy on CUDA, what compiling and serving a kernel costs.

For each blueprint that fits the MNIST-1D slots (40-64) and each strategy (Fast, Standard, Aggressive), on the
CUDA device: the compile time, the compiled and the eager training step (compile_kernel's own timings,
synchronised), and the kernel load (deserialise + first forward/backward, on a fresh module). Then a 20-epoch
growth run of the whole engine on that device (`esper-tui --no-ui --json --device cuda:N`). All the while a
sampler reads NVML for the device and feeds the forge's breaker board, so the table ends with the GPU's
utilisation and memory and the gpu breaker's states over the run.

    python -m benchmarks.gpu [--device cuda|cuda:N] [--quick] [--epochs 20] [--json FILE]

Where torch sees no CUDA device it says so in one line and exits 2: no figure here is ever a CPU one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.report import write_json

ESPER = (sys.executable, "-m", "esper_tui")
STRATEGIES = ("fast", "standard", "aggressive")
QUICK_BLUEPRINTS = ("mlp_block", "conv1d_block", "attention_block")


@dataclass
class Sampler:
    """NVML readings of one device every `every_s`, fed to the forge's breaker board as the engine's monitor does."""

    index: int
    every_s: float = 0.5
    readings: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        from esper_tui.engine.config import TezzeretConfig
        from esper_tui.engine.forge.board import BreakerBoard
        from esper_tui.engine.forge.resources import GpuProbe, read_memory

        probe = GpuProbe(self.index)
        board = BreakerBoard.from_config(TezzeretConfig())
        t0 = time.monotonic()
        try:
            while not self._stop.wait(self.every_s):
                gpu = probe.read()
                board.poll(read_memory(os.getpid()), gpu)
                self.readings.append(
                    {
                        "t_s": round(time.monotonic() - t0, 2),
                        "available": gpu.available,
                        "util_percent": gpu.utilisation_percent,
                        "memory_used_mib": None if gpu.memory_used_bytes is None else gpu.memory_used_bytes / 2**20,
                        "breaker": str(board.gpu.state),
                        "detail": gpu.detail,
                    }
                )
        finally:
            probe.close()

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def summary(self) -> dict[str, Any]:
        live = [r for r in self.readings if r["available"]]
        if not live:
            return {"samples": len(self.readings), "nvml": self.readings[-1]["detail"] if self.readings else "none"}
        return {
            "samples": len(live),
            "util_percent_median": statistics.median(r["util_percent"] for r in live),
            "util_percent_max": max(r["util_percent"] for r in live),
            "memory_used_mib_max": round(max(r["memory_used_mib"] for r in live), 1),
            "breaker_states": sorted({r["breaker"] for r in live}),
        }


def kernel_row(blueprint_id: str, strategy: str, device: str, work: Path) -> dict[str, Any]:
    """Compile one kernel on the device, then load it from its files and time the first step."""
    import torch

    from esper_tui.engine.kernels.catalog import Catalog
    from esper_tui.engine.kernels.compiled import compile_kernel, load_kernel
    from esper_tui.engine.kernels.pipelines import settings_for
    from esper_tui.engine.kernels.shapes import vector
    from esper_tui.engine.vocabulary import Strategy

    shape = vector(40, 64)
    bp = Catalog().get(blueprint_id)
    settings = settings_for(Strategy(strategy), device)
    row: dict[str, Any] = {"blueprint": blueprint_id, "strategy": strategy, "backend": settings.label}
    out = work / f"{blueprint_id}-{strategy}"
    try:
        built = compile_kernel(bp, shape, settings, out)
    except Exception as exc:  # a compile that fails on this GPU is a finding, not a crash of the table
        return {**row, "error": f"compile: {type(exc).__name__}: {exc}"[:300]}
    row.update(
        compile_s=round(built.compile_s, 2),
        step_ms_compiled=round(built.step_ms_compiled, 3),
        step_ms_eager=round(built.step_ms_eager, 3),
        max_abs_error=built.max_abs_error,
    )
    files = {name: (out / name).read_bytes() for name in built.files}
    module = bp.build(shape).to(device)
    x = torch.randn(100, 40, device=device)
    try:
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        kernel = load_kernel(bp, files, settings.label)
        kernel(module, x).square().mean().backward()
        torch.cuda.synchronize(device)
        row["load_ms"] = round((time.perf_counter() - t0) * 1000, 2)
    except Exception as exc:
        row["error"] = f"load: {type(exc).__name__}: {exc}"[:300]
    return row


def growth_run(device: str, epochs: int, state: Path) -> dict[str, Any]:
    """The engine on the device for `epochs` epochs: wall time, final validation metric, seeds grown."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [*ESPER, "--no-ui", "--json", "--epochs", str(epochs), "--device", device, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    wall = time.perf_counter() - t0
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}", "wall_s": round(wall, 1)}
    training = lines[-1]["training"]
    return {
        "epochs": training.get("epoch"),
        "wall_s": round(wall, 1),
        "device": training.get("device"),
        "final": {k: v for k, v in training.items() if k.startswith(("val_", "best_val", "test_"))},
        "seeds": {s["slot"]: (s["stage"], s.get("blueprint_id")) for s in training.get("seeds", [])},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N (default: the current CUDA device)")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_BLUEPRINTS)}")
    parser.add_argument("--epochs", type=int, default=20, help="the growth run's epochs (default 20)")
    parser.add_argument("--json", type=Path, metavar="FILE")
    args = parser.parse_args(argv)

    from esper_tui.engine.kernels.device import DeviceError, device_index, resolve_device

    try:
        device = resolve_device(args.device)
    except DeviceError as exc:
        print(f"benchmarks.gpu: {exc}", file=sys.stderr)
        return 2
    index = device_index(device)
    if index is None:
        print(f"benchmarks.gpu: --device {args.device} is not a CUDA device", file=sys.stderr)
        return 2
    import torch

    from esper_tui.engine.kernels.catalog import Catalog
    from esper_tui.engine.kernels.shapes import vector

    ids = list(QUICK_BLUEPRINTS) if args.quick else [b.blueprint_id for b in Catalog().fitting(vector(40, 64))]
    result: dict[str, Any] = {
        "device": device,
        "gpu": torch.cuda.get_device_name(index),
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "kernels": [],
    }
    print(f"{result['gpu']} ({device}), torch {result['torch']}, CUDA {result['cuda']}", flush=True)
    with Sampler(index) as sampler, tempfile.TemporaryDirectory(prefix="esper-gpu-") as tmp:
        for bid in ids:
            for strategy in STRATEGIES:
                row = kernel_row(bid, strategy, device, Path(tmp))
                result["kernels"].append(row)
                print("  " + "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        print(f"growth run: {args.epochs} epochs on {device} ...", flush=True)
        result["growth"] = growth_run(device, args.epochs, Path(tmp) / "state")
        print(f"  {result['growth']}", flush=True)
    result["nvml"] = sampler.summary()
    print(f"NVML while the breaker watched: {result['nvml']}")
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
