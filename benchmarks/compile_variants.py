"""The search for a compiled seed faster than eager: every variant the strategies allow, per blueprint, timed.

    python -m benchmarks.compile_variants [--blueprints conv1d_block,depthwise_conv,attention_block]
                                          [--repeats 7] [--steps 50] [--json FILE]

Each blueprint's module (40 -> 64, as the trainer builds seeds) is timed for a training step as the forge times it
(forward, a scalar loss, backward; batch 100; `kernel_threads()` intra-op threads unless the variant says
otherwise) eagerly and under each compile variant: the Fast, Standard and Aggressive pipelines' settings, and the
knobs issue 7 names (a static batch instead of a dynamic one, inductor's C++ wrapper, 1x1 convolutions as
matmuls, more threads). Every (blueprint, variant) runs in a fresh interpreter, because inductor's settings are
process-wide and dynamo caches compiled code per function. The table gives the median ms per step over
`--repeats` runs of `--steps` steps, and each variant over eager at the same thread count (below 1: faster).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.report import write_json

DEFAULT_BLUEPRINTS = "conv1d_block,depthwise_conv,attention_block"
VARIANTS: dict[str, dict[str, Any]] = {
    "eager": {},
    "fast: aot_eager": {"backend": "aot_eager"},
    "standard: inductor (dynamic batch)": {"backend": "inductor"},
    "inductor, static batch": {"backend": "inductor", "static": True},
    "inductor, static, C++ wrapper": {"backend": "inductor", "static": True, "inductor": {"cpp_wrapper": True}},
    "inductor, 1x1 conv as matmul": {"backend": "inductor", "inductor": {"conv_1x1_as_mm": True}},
    "aggressive: max-autotune-no-cudagraphs": {"backend": "inductor", "mode": "max-autotune-no-cudagraphs"},
    "eager, 2 threads": {"threads": 2},
    "standard, 2 threads": {"backend": "inductor", "threads": 2},
}


def time_one(blueprint_id: str, variant: str, repeats: int, steps: int) -> float:
    """Median ms per training step of one variant, in this process (called in a fresh interpreter)."""
    import torch
    import torch._inductor.config as inductor_config

    from esper_tui.engine.kernels.catalog import Catalog
    from esper_tui.engine.kernels.compiled import EXAMPLE_BATCH, kernel_threads

    spec = VARIANTS[variant]
    torch.set_num_threads(spec.get("threads", kernel_threads()))
    for key, value in spec.get("inductor", {}).items():
        setattr(inductor_config, key, value)
    torch.manual_seed(0)
    module = Catalog().get(blueprint_id).build(40, 64)
    x = torch.randn(EXAMPLE_BATCH, 40)
    if "backend" in spec:
        if not spec.get("static"):
            torch._dynamo.mark_dynamic(x, 0)
        forward = torch.compile(
            type(module).forward, fullgraph=True, backend=spec["backend"], mode=spec.get("mode"), dynamic=None
        )
    else:
        forward = type(module).forward

    def step() -> None:
        module.zero_grad(set_to_none=True)
        torch.autograd.backward(forward(module, x).square().mean())

    for _ in range(20):  # warm-up: compiles, and places the kernels
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - t0) * 1000 / steps)
    return statistics.median(times)


def run(blueprints: list[str], repeats: int, steps: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for bid in blueprints:
        out[bid] = {}
        for variant in VARIANTS:
            cmd = [sys.executable, "-m", "benchmarks.compile_variants", "--one", bid, variant]
            cmd += ["--repeats", str(repeats), "--steps", str(steps)]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                print(f"  {bid} / {variant}: failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            out[bid][variant] = float(proc.stdout.strip().splitlines()[-1])
            print(f"  {bid:16s} {variant:40s} {out[bid][variant]:7.3f} ms/step", flush=True)
    return out


def ratios(timings: dict[str, float]) -> dict[str, float]:
    """Each variant over eager at the same thread count."""
    out = {}
    for variant, ms in timings.items():
        base = timings.get("eager, 2 threads" if VARIANTS[variant].get("threads") == 2 else "eager")
        if base:
            out[variant] = ms / base
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blueprints", default=DEFAULT_BLUEPRINTS, help="comma-separated blueprint ids")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--json", type=Path, metavar="FILE")
    ap.add_argument("--one", nargs=2, metavar=("BLUEPRINT", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(time_one(args.one[0], args.one[1], args.repeats, args.steps))
        return 0
    from esper_tui.engine.kernels.catalog import Catalog

    blueprints = [b for b in args.blueprints.split(",") if b]
    unknown = [b for b in blueprints if b not in Catalog()]
    problem = (
        f"no blueprint {', '.join(unknown)} in the catalog (known: {', '.join(b.blueprint_id for b in Catalog())})"
        if unknown
        else "--repeats and --steps must be at least 1"
        if min(args.repeats, args.steps) < 1
        else ""
    )
    if problem:
        print(f"benchmarks.compile_variants: {problem}", file=sys.stderr)
        return 2
    timings = run(blueprints, args.repeats, args.steps)
    print(f"\n{'blueprint':16s} {'variant':40s} {'ms/step':>8s} {'/eager':>7s}")
    result: dict[str, Any] = {"blueprints": {}}
    for bid, times in timings.items():
        rel = ratios(times)
        best = min((v for v in rel if v not in ("eager", "eager, 2 threads")), key=rel.__getitem__, default=None)
        result["blueprints"][bid] = {"ms_per_step": times, "over_eager": rel, "best_compiled": best}
        for variant, ms in times.items():
            print(f"{bid:16s} {variant:40s} {ms:8.3f} {rel.get(variant, float('nan')):7.2f}")
        if best is not None:
            verdict = "faster" if rel[best] < 1 else "slower"
            print(f"{bid:16s} best compiled: {best} ({rel[best]:.2f}x eager, {verdict})\n")
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
