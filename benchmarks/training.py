"""Training benchmark: MNIST-1D accuracy and epoch time without seeds, with compiled seeds, with eager seeds.

    python -m benchmarks.training --state-dir var --epochs 40 --json out.json

The compiled run grafts kernels from the library in --state-dir (compiled first with
`esper-tui --no-ui --forge-only` when it holds none); Tamiyo chooses which blueprint to germinate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import msgspec
import torch

from esper_tui.engine.config import TrainingConfig
from esper_tui.engine.contracts import AnyEvent, ControllerDecision, EpochCompleted
from esper_tui.engine.kernels import compiled as kernels
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.library.signing import load_or_create_key
from esper_tui.engine.library.store import Library
from esper_tui.engine.training.kernel_source import EagerKernelSource, KernelOffer, KernelSource
from esper_tui.engine.training.library_source import LibraryKernelSource
from esper_tui.engine.training.loop import Trainer


class NoSeeds(EagerKernelSource):
    """The host alone: nothing is ever offered for germination."""

    def offers(self) -> list[KernelOffer]:
        return []


@dataclass
class Run:
    seed: int
    final_accuracy: float
    best_accuracy: float
    epoch_ms_median: float
    wall_s: float
    decisions: list[str]


def run(kernel_source: KernelSource, epochs: int, seed: int, cache: Path) -> Run:
    accuracy: list[float] = []
    epoch_s: list[float] = []
    grafts: list[str] = []

    def emit(event: AnyEvent) -> None:
        if isinstance(event, EpochCompleted):
            accuracy.append(event.val_accuracy)
            epoch_s.append(event.epoch_s)
        elif isinstance(event, ControllerDecision) and event.action in ("germinate", "fossilize", "prune"):
            grafts.append(f"ep{len(accuracy)} {event.action} {event.blueprint_id}")

    config = msgspec.structs.replace(TrainingConfig(), epochs=epochs, seed=seed)
    t0 = time.monotonic()
    Trainer(config, Catalog(), kernel_source, emit, cache_dir=cache).run()
    return Run(
        seed,
        round(accuracy[-1], 4),
        round(max(accuracy), 4),
        round(statistics.median(epoch_s) * 1000, 1),
        round(time.monotonic() - t0, 1),
        grafts,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state-dir", type=Path, default=Path("var"))
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--json", type=Path, metavar="FILE")
    args = ap.parse_args(argv)
    if not list((args.state_dir / "library" / "artifacts").glob("*/v*")):
        print(f"compiling the catalog into {args.state_dir} ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "esper_tui", "--no-ui", "--forge-only", "--state-dir", str(args.state_dir)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    catalog = Catalog()
    kernels.private_cache_dir()
    library = Library(args.state_dir / "library", load_or_create_key(args.state_dir), catalog)
    sources: dict[str, KernelSource] = {
        "host only (no seeds)": NoSeeds(catalog),
        "compiled seeds (library)": LibraryKernelSource(library, "inductor", "default"),
        "eager seeds": EagerKernelSource(catalog),
    }
    results: dict[str, list[Run]] = {name: [] for name in sources}
    for seed in args.seeds:
        for name, source in sources.items():
            r = run(source, args.epochs, seed, args.state_dir / "data")
            results[name].append(r)
            print(
                f"{name:<26} seed {seed}: final {r.final_accuracy:.1%} best {r.best_accuracy:.1%} "
                f"{r.epoch_ms_median} ms/epoch  {'; '.join(r.decisions)}",
                flush=True,
            )
    print(f"\n{'run':<26} {'final acc (median)':>18} {'best acc (median)':>18} {'ms/epoch':>9}")
    summary = {}
    for name, runs in results.items():
        row = {
            "final_accuracy": statistics.median(r.final_accuracy for r in runs),
            "best_accuracy": statistics.median(r.best_accuracy for r in runs),
            "epoch_ms_median": statistics.median(r.epoch_ms_median for r in runs),
        }
        summary[name] = row
        print(f"{name:<26} {row['final_accuracy']:>18.1%} {row['best_accuracy']:>18.1%} {row['epoch_ms_median']:>9.1f}")
    print(f"{args.epochs} epochs, seeds {args.seeds}, torch {torch.__version__}, {kernels.kernel_threads()} thread(s)")
    if args.json:
        runs = {name: [asdict(r) for r in rs] for name, rs in results.items()}
        args.json.write_text(json.dumps({"epochs": args.epochs, "summary": summary, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
