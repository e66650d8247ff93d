"""Training benchmark: MNIST-1D accuracy and epoch time without seeds, with compiled seeds, with eager seeds.

    python -m benchmarks.training --state-dir var --epochs 40 --json out.json

The compiled run grafts kernels from the library in --state-dir (compiled first with
`esper-tui --no-ui --forge-only` when it holds none); Tamiyo chooses which blueprint to germinate, on the
validation split. Accuracies: the last epoch's and the best epoch's on validation, and the test split's at
the end (reported only). The fair comparison with static networks is benchmarks/growth.py.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import msgspec
import torch

from benchmarks.report import write_json
from esper_tui.engine.config import TrainingConfig
from esper_tui.engine.contracts import AnyEvent, ControllerDecision, EpochCompleted, TrainingFinished
from esper_tui.engine.kernels import compiled as kernels
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.kernels.shapes import SlotShape, vector
from esper_tui.engine.library.signing import load_or_create_key
from esper_tui.engine.library.store import Library
from esper_tui.engine.training.kernel_source import EagerKernelSource, KernelOffer, KernelSource
from esper_tui.engine.training.library_source import LibraryKernelSource
from esper_tui.engine.training.loop import Trainer


class NoSeeds(EagerKernelSource):
    """The host alone: nothing is ever offered for germination."""

    def offers(self, shape: SlotShape) -> list[KernelOffer]:
        return []


@dataclass
class Run:
    seed: int
    final_val_accuracy: float
    best_val_accuracy: float
    test_accuracy: float
    epoch_ms_median: float
    wall_s: float
    decisions: list[str]


def run(kernel_source: KernelSource, epochs: int, seed: int, cache: Path) -> Run:
    accuracy: list[float] = []
    epoch_s: list[float] = []
    grafts: list[str] = []
    finished: list[TrainingFinished] = []

    def emit(event: AnyEvent) -> None:
        if isinstance(event, EpochCompleted):
            accuracy.append(event.val_metric)
            epoch_s.append(event.epoch_s)
        elif isinstance(event, TrainingFinished):
            finished.append(event)
        elif isinstance(event, ControllerDecision) and event.action in ("germinate", "fossilize", "prune"):
            grafts.append(f"ep{len(accuracy)} {event.action} {event.blueprint_id}")

    config = msgspec.structs.replace(TrainingConfig(), epochs=epochs, seed=seed)
    t0 = time.monotonic()
    Trainer(config, Catalog(), kernel_source, emit, cache_dir=cache).run()
    return Run(
        seed,
        round(accuracy[-1], 4),
        round(max(accuracy), 4),
        round(finished[-1].test_metric or 0.0, 4),
        round(statistics.median(epoch_s) * 1000, 1),
        round(time.monotonic() - t0, 1),
        grafts,
    )


def compile_library(state_dir: Path, task: str = "mnist1d") -> None:
    """Compile the catalog into the state dir's library with the real engine, unless every blueprint has a
    kernel built from its current source (a stale one would be quarantined at the first germination, and
    the "compiled" run would grow nothing). Another task than mnist1d: one epoch of the engine on that task, whose
    forge compiles for the slot shapes the task's training process reports."""
    catalog = Catalog()
    current = {
        m.blueprint_id
        for m in Library(state_dir / "library", load_or_create_key(state_dir), catalog).all_current()
        if m.ir_hash == catalog.get(m.blueprint_id).ir_hash()
    }
    if task == "mnist1d" and current == {b.blueprint_id for b in catalog.fitting(vector(40, TrainingConfig().hidden))}:
        return
    print(f"compiling the catalog into {state_dir} ...", flush=True)
    how = ["--forge-only"] if task == "mnist1d" else ["--task", task, "--epochs", "1"]
    subprocess.run(
        [sys.executable, "-m", "esper_tui", "--no-ui", *how, "--state-dir", str(state_dir)],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state-dir", type=Path, default=Path("var"))
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--json", type=Path, metavar="FILE")
    args = ap.parse_args(argv)
    compile_library(args.state_dir)
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
                f"{name:<26} seed {seed}: val {r.final_val_accuracy:.1%} best val {r.best_val_accuracy:.1%} "
                f"test {r.test_accuracy:.1%} "
                f"{r.epoch_ms_median} ms/epoch  {'; '.join(r.decisions)}",
                flush=True,
            )
    print(f"\n{'run (medians)':<26} {'val acc':>9} {'best val':>9} {'test acc':>9} {'ms/epoch':>9}")
    summary = {}
    for name, runs in results.items():
        row = {
            "final_val_accuracy": statistics.median(r.final_val_accuracy for r in runs),
            "best_val_accuracy": statistics.median(r.best_val_accuracy for r in runs),
            "test_accuracy": statistics.median(r.test_accuracy for r in runs),
            "epoch_ms_median": statistics.median(r.epoch_ms_median for r in runs),
        }
        summary[name] = row
        print(
            f"{name:<26} {row['final_val_accuracy']:>9.1%} {row['best_val_accuracy']:>9.1%} "
            f"{row['test_accuracy']:>9.1%} {row['epoch_ms_median']:>9.1f}"
        )
    print(f"{args.epochs} epochs, seeds {args.seeds}, torch {torch.__version__}, {kernels.kernel_threads()} thread(s)")
    if args.json:
        per_run = {name: [asdict(r) for r in rs] for name, rs in results.items()}
        write_json(args.json, {"epochs": args.epochs, "summary": summary, "runs": per_run})
    return 0


if __name__ == "__main__":
    sys.exit(main())
