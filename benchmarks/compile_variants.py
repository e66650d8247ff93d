"""The search for a compiled seed faster than eager: every variant the strategies allow, per blueprint, timed.

    python -m benchmarks.compile_variants [--blueprints conv1d_block,depthwise_conv,attention_block]
                                          [--repeats 7] [--steps 50] [--json FILE]

Each blueprint's module (40 -> 64, as the trainer builds seeds) is timed for a training step as the forge times it
(forward, a scalar loss, backward; batch 100; `kernel_threads()` intra-op threads unless the variant says
otherwise) and for a no-grad forward (validation's), eagerly and under each compile variant: the Fast, Standard
and Aggressive pipelines' settings, and the knobs issue 7 names (a static batch instead of a dynamic one,
inductor's C++ wrapper, 1x1 convolutions as matmuls, freezing for the no-grad forward, more threads). Every
(blueprint, variant) runs in a fresh interpreter, because inductor's settings are process-wide and dynamo caches
compiled code per function. The table gives the median ms per call over `--repeats` runs of `--steps` calls,
and each variant over eager at the same thread count (below 1: faster).

Freezing folds the weights into the kernel as constants, so its kernel is only timed without grad: a seed that
trains changes its weights every step, and the forge's kernels take the module as an argument for that reason.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.report import write_json

DEFAULT_BLUEPRINTS = "conv1d_block,depthwise_conv,attention_block"
MODES = ("train", "no_grad")
VARIANTS: dict[str, dict[str, Any]] = {
    "eager": {},
    "fast: aot_eager": {"backend": "aot_eager"},
    "standard: inductor (dynamic batch)": {"backend": "inductor"},
    "inductor, static batch": {"backend": "inductor", "static": True},
    "inductor, static, C++ wrapper": {"backend": "inductor", "static": True, "inductor": {"cpp_wrapper": True}},
    "inductor, 1x1 conv as matmul": {"backend": "inductor", "inductor": {"conv_1x1_as_mm": True}},
    "aggressive: max-autotune-no-cudagraphs": {"backend": "inductor", "mode": "max-autotune-no-cudagraphs"},
    "inductor, frozen weights": {"backend": "inductor", "frozen": True, "inductor": {"freezing": True}},
    "eager, 2 threads": {"threads": 2},
    "standard, 2 threads": {"backend": "inductor", "threads": 2},
}


def time_one(blueprint_id: str, variant: str, repeats: int, steps: int) -> dict[str, float]:
    """Median ms of one variant per mode: a training step, and a no-grad forward (validation's), in this process
    (called in a fresh interpreter)."""
    import torch
    import torch._inductor.config as inductor_config

    from esper_tui.engine.kernels.catalog import Catalog
    from esper_tui.engine.kernels.compiled import EXAMPLE_BATCH, kernel_threads
    from esper_tui.engine.kernels.shapes import vector

    spec = VARIANTS[variant]
    torch.set_num_threads(spec.get("threads", kernel_threads()))
    for key, value in spec.get("inductor", {}).items():
        setattr(inductor_config, key, value)
    torch.manual_seed(0)
    module = Catalog().get(blueprint_id).build(vector(40, 64))
    x = torch.randn(EXAMPLE_BATCH, 40)
    if "backend" in spec and not spec.get("static"):
        torch._dynamo.mark_dynamic(x, 0)
    forward: Any
    if spec.get("frozen"):  # the module itself, so its weights are attributes to fold, not graph inputs
        frozen = torch.compile(module, backend=spec["backend"])

        def forward(_module: Any, t: Any) -> Any:
            return frozen(t)

    elif "backend" in spec:
        forward = torch.compile(type(module).forward, fullgraph=True, backend=spec["backend"], mode=spec.get("mode"))
    else:
        forward = type(module).forward

    def train() -> None:
        module.zero_grad(set_to_none=True)
        torch.autograd.backward(forward(module, x).square().mean())

    @torch.no_grad()
    def no_grad() -> None:
        forward(module, x)

    out = {}
    for mode, fn in (("train", train), ("no_grad", no_grad)):
        if mode == "train" and spec.get("frozen"):
            continue
        for _ in range(20):  # warm-up: compiles, and places the kernels
            fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            times.append((time.perf_counter() - t0) * 1000 / steps)
        out[mode] = statistics.median(times)
    return out


def run(blueprints: list[str], repeats: int, steps: int) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for bid in blueprints:
        out[bid] = {}
        for variant in VARIANTS:
            cmd = [sys.executable, "-m", "benchmarks.compile_variants", "--one", bid, variant]
            cmd += ["--repeats", str(repeats), "--steps", str(steps)]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                print(f"  {bid} / {variant}: failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            out[bid][variant] = json.loads(proc.stdout.strip().splitlines()[-1])
            shown = "  ".join(f"{m} {ms:.3f} ms" for m, ms in out[bid][variant].items())
            print(f"  {bid:16s} {variant:40s} {shown}", flush=True)
    return out


def ratios(timings: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Each variant over eager at the same thread count, per mode."""
    out: dict[str, dict[str, float]] = {}
    for variant, modes in timings.items():
        base = timings.get("eager, 2 threads" if VARIANTS[variant].get("threads") == 2 else "eager", {})
        out[variant] = {m: ms / base[m] for m, ms in modes.items() if base.get(m)}
    return out


def _cell(value: float | None, fmt: str) -> str:
    return format(value, fmt) if value is not None else "-".rjust(len(format(0.0, fmt)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blueprints", default=DEFAULT_BLUEPRINTS, help="comma-separated blueprint ids")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--json", type=Path, metavar="FILE")
    ap.add_argument("--one", nargs=2, metavar=("BLUEPRINT", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(time_one(args.one[0], args.one[1], args.repeats, args.steps)))
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
    print(f"\n{'blueprint':16s} {'variant':40s} {'train ms':>8s} {'/eager':>7s} {'no-grad ms':>10s} {'/eager':>7s}")
    result: dict[str, Any] = {"blueprints": {}}
    for bid, times in timings.items():
        rel = ratios(times)
        compiled = [v for v in times if "backend" in VARIANTS[v]]
        best = {m: min((v for v in compiled if m in rel[v]), key=lambda v: rel[v][m], default=None) for m in MODES}
        result["blueprints"][bid] = {"ms": times, "over_eager": rel, "best_compiled": best}
        for variant, modes in times.items():
            t, n = modes.get("train"), modes.get("no_grad")
            rt, rn = rel[variant].get("train"), rel[variant].get("no_grad")
            row = f"{_cell(t, '8.3f')} {_cell(rt, '7.2f')} {_cell(n, '10.3f')} {_cell(rn, '7.2f')}"
            print(f"{bid:16s} {variant:40s} {row}")
        for mode, variant in best.items():
            if variant is not None:
                r = rel[variant][mode]
                print(f"{bid:16s} best compiled, {mode}: {variant} ({r:.2f}x eager, {'faster' if r < 1 else 'slower'})")
        print()
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
