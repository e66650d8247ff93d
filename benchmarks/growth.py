"""Growth benchmark: is a network grown from compiled seeds as good as one designed up front? (MNIST-1D, digits)

    python -m benchmarks.growth [--task mnist1d|digits] [--quick] [--state-dir var] [--seeds 5] --json FILE

Every row trains the task's own host, data, batch size and optimizer (benchmarks/workload.py); below, "MLP" is
mnist1d's host and its width, which for digits are its CNN and channel width.

Compiled seeds come from the library in --state-dir (compiled first with `esper-tui --no-ui --forge-only`
when it holds none, as benchmarks/training.py does).

The protocol, the same for every row: the 4000 training samples are split (fixed seed) into a training
split and a validation split of `training.val_samples`; Adam at the configured learning rate, batches of
`training.batch_size`; at most `max_epochs` epochs, stopping early once validation accuracy has not
improved for `patience` epochs; the best validation epoch's weights are restored, and MNIST-1D's test split
is evaluated on them once. Tamiyo's decisions read validation only (`decisions_split`). Each row is
trained from `--seeds` training seeds (weights, shuffling, dropout); mean ± sample std over them.

Rows:
- logistic regression: one linear layer, a bare PyTorch loop;
- host MLP alone: the engine's host (same dropout), no seeds;
- static MLP, grown's params: an MLP of the host's shape whose width gives each grown run's final
  parameter count (its twin, seed by seed);
- static, grown's final architecture: each grown run's final network (host plus the seeds it ends with),
  built at epoch 0 and trained static with its twin's epoch budget;
- grown, compiled seeds: the engine's run, seeds from the library's compiled kernels (always compiled);
- grown, eager seeds: the same with the seeds run as plain PyTorch;
- the MNIST-1D paper's numbers, quoted for reference (4000 training samples, no validation split).

Beside the table: `compiled_over_eager_step` (a training step of each library kernel over the same module
run eagerly, measured here side by side; < 1 means compiled is faster) and `bare_loop_ratio` (the engine's
host-only training throughput over a bare PyTorch loop of the same MLP on the same data doing the same
per-epoch work, alternated in one run; >= 0.95 is the target).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import msgspec
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.report import write_json
from benchmarks.training import compile_library
from benchmarks.workload import TASKS, Workload
from esper_tui.engine.aggregator import Aggregator
from esper_tui.engine.config import TrainingConfig
from esper_tui.engine.contracts import AnyEvent, ControllerDecision, EpochCompleted
from esper_tui.engine.kernels import compiled as kernels
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.kernels.shapes import SlotShape, vector
from esper_tui.engine.library.signing import load_or_create_key
from esper_tui.engine.library.store import Library
from esper_tui.engine.training.kernel_source import EagerKernelSource, KernelOffer, KernelSource
from esper_tui.engine.training.library_source import LibraryKernelSource
from esper_tui.engine.training.loop import Trainer
from esper_tui.engine.vocabulary import Action

PAPER = (
    ("paper: logistic regression", 0.32),
    ("paper: MLP", 0.68),
    ("paper: CNN", 0.94),
    ("paper: GRU", 0.91),
)
GROWN_COMPILED = "grown, compiled seeds"
GROWN_EAGER = "grown, eager seeds"


class NoSeeds(EagerKernelSource):
    """Nothing is ever offered, so Tamiyo never grows; grafting by hand (static twins) still loads eagerly."""

    def offers(self, shape: SlotShape) -> list[KernelOffer]:
        return []


@dataclass(frozen=True)
class Protocol:
    max_epochs: int
    patience: int
    seeds: tuple[int, ...]


@dataclass
class RunResult:
    seed: int
    test_accuracy: float
    best_val_accuracy: float
    params: int
    epochs: int
    best_epoch: int
    wall_s: float
    architecture: list[tuple[str, str]] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)


@dataclass
class Row:
    name: str
    runs: list[RunResult]
    note: str = ""
    paper_accuracy: float | None = None

    def summary(self) -> dict[str, object]:
        """The JSON row: {name, test_accuracy_mean, test_accuracy_std, params, runs, ...}."""
        if self.paper_accuracy is not None:
            return {
                "name": self.name,
                "test_accuracy_mean": self.paper_accuracy,
                "test_accuracy_std": None,
                "params": None,
                "runs": 0,
                "note": self.note,
            }
        acc = [r.test_accuracy for r in self.runs]
        return {
            "name": self.name,
            "test_accuracy_mean": statistics.mean(acc),
            "test_accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "params": round(statistics.mean(r.params for r in self.runs)),
            "runs": len(self.runs),
            "epochs_mean": statistics.mean(r.epochs for r in self.runs),
            "best_epoch_mean": statistics.mean(r.best_epoch for r in self.runs),
            "wall_s_mean": statistics.mean(r.wall_s for r in self.runs),
            "note": self.note,
            "per_run": [asdict(r) for r in self.runs],
        }


# ------------------------------------------------------------------------------------------- engine rows


def engine_run(
    w: Workload,
    catalog: Catalog,
    source: KernelSource,
    seed: int,
    *,
    max_epochs: int,
    patience: int,
    grafts: Sequence[tuple[str, str]] = (),
    width: int | None = None,
) -> RunResult:
    """One run of the engine's training loop under the protocol; `grafts` builds a static twin, `width` a host of
    another size (the static twin of a grown network's parameter count)."""
    cfg = msgspec.structs.replace(w.base, seed=seed, epochs=max_epochs, early_stop_epochs=patience)
    decisions: list[str] = []
    epoch = [0]

    def emit(event: AnyEvent) -> None:
        if isinstance(event, EpochCompleted):
            epoch[0] = event.epoch
        elif isinstance(event, ControllerDecision) and event.action in (
            Action.GERMINATE,
            Action.FOSSILIZE,
            Action.PRUNE,
        ):
            decisions.append(f"ep{epoch[0]} {event.action} {event.slot} {event.blueprint_id}")

    t0 = time.perf_counter()
    trainer = Trainer(cfg, catalog, source, emit, task=w.task(seed, width), early_stop=True)
    for slot, blueprint_id in grafts:
        trainer.graft(slot, blueprint_id)
    finished = trainer.run()
    assert finished.test_metric is not None
    return RunResult(
        seed=seed,
        test_accuracy=finished.test_metric,
        best_val_accuracy=finished.best_val_metric,
        params=trainer.parameter_count(),
        epochs=finished.epochs,
        best_epoch=finished.best_epoch,
        wall_s=time.perf_counter() - t0,
        architecture=trainer.architecture(),
        decisions=decisions,
    )


def _progress(row: str, r: RunResult) -> None:
    arch = ", ".join(f"{s}={b}" for s, b in r.architecture) or "-"
    print(
        f"  {row:<36} seed {r.seed}: test {r.test_accuracy:.1%} (val {r.best_val_accuracy:.1%}) "
        f"{r.params} params, {r.epochs} epochs (best {r.best_epoch}), {r.wall_s:.0f} s, seeds: {arch}",
        flush=True,
    )


def row_engine(name: str, w: Workload, catalog: Catalog, source: KernelSource, p: Protocol, note: str) -> Row:
    runs = []
    for seed in p.seeds:
        runs.append(engine_run(w, catalog, source, seed, max_epochs=p.max_epochs, patience=p.patience))
        _progress(name, runs[-1])
    return Row(name, runs, note)


def row_static_architecture(w: Workload, catalog: Catalog, p: Protocol, grown: Row) -> Row:
    """Each grown run's final network, built at epoch 0 (seeds grafted as fossilized) and trained static."""
    name, runs = "static, grown's final architecture", []
    for twin in grown.runs:
        r = engine_run(
            w,
            catalog,
            NoSeeds(catalog),
            twin.seed,
            max_epochs=twin.epochs,
            patience=p.patience,
            grafts=twin.architecture,
        )
        runs.append(r)
        _progress(name, r)
    return Row(name, runs, "each grown run's final seeds grafted at epoch 0, same epoch budget as its twin")


def row_static_host(w: Workload, catalog: Catalog, p: Protocol, grown: Row) -> Row:
    """The host widened to each grown run's parameter count (mnist1d: its MLP's hidden width, one slot; digits:
    its CNN's channels), trained static under the same protocol."""
    name, runs = f"static {w.host_kind}, grown's params", []
    for twin in grown.runs:
        width = w.width_for(twin.params)
        r = engine_run(
            w, catalog, NoSeeds(catalog), twin.seed, max_epochs=p.max_epochs, patience=p.patience, width=width
        )
        runs.append(r)
        _progress(name, r)
    return Row(name, runs, f"host-shaped {w.host_kind}, width chosen to match each grown run's parameters")


# ------------------------------------------------------------------------------------------- bare loops


def _tensors(w: Workload) -> tuple[torch.Tensor, ...]:
    (xt, yt), (xv, yv), (xs, ys) = w.data()
    return xt, yt, xv, yv, xs, ys


@torch.no_grad()
def _evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int, *, loss: bool = False
) -> tuple[float, float]:
    """(summed loss or 0, accuracy) in batches of the training size, as the engine evaluates."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(y), bs):
        logits, yb = model(x[i : i + bs]), y[i : i + bs]
        if loss:
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    model.train()
    return loss_sum, correct / len(y)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int) -> float:
    return _evaluate(model, x, y, bs)[1]


def _bare_epoch(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, bs: int, g: torch.Generator
) -> float:
    """What any PyTorch user writes: shuffle, step through full batches, sum the loss."""
    n = len(y) // bs * bs
    order = torch.randperm(len(y), generator=g)[:n]
    loss_sum = 0.0
    for i in range(0, n, bs):
        idx = order[i : i + bs]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        torch.autograd.backward(loss)  # loss.backward(), typed
        opt.step()
        loss_sum += float(loss.detach())
    return loss_sum


def bare_fit(make: Callable[[], nn.Module], w: Workload, seed: int, p: Protocol) -> RunResult:
    """The protocol in a plain PyTorch loop (for models the engine does not host), with the task's batch size
    and optimizer."""
    torch.manual_seed(seed)
    model = make()
    xt, yt, xv, yv, xs, ys = _tensors(w)
    task = w.task(seed).task
    bs = task.batch_size
    opt = task.optimizer(list(model.parameters()))
    g = torch.Generator().manual_seed(seed)
    best, best_epoch, best_state, epoch = -1.0, 0, model.state_dict(), 0
    t0 = time.perf_counter()
    while epoch < p.max_epochs and epoch - best_epoch < p.patience:
        _bare_epoch(model, opt, xt, yt, bs, g)
        epoch += 1
        val = _accuracy(model, xv, yv, bs)
        if val > best:
            best, best_epoch = val, epoch
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return RunResult(
        seed=seed,
        test_accuracy=_accuracy(model, xs, ys, bs),
        best_val_accuracy=best,
        params=sum(q.numel() for q in model.parameters()),
        epochs=epoch,
        best_epoch=best_epoch,
        wall_s=time.perf_counter() - t0,
    )


def row_logistic(w: Workload, p: Protocol) -> Row:
    name, runs = "logistic regression", []
    features, classes = w.in_features(), int(w.data()[0][1].max()) + 1
    for seed in p.seeds:
        runs.append(bare_fit(lambda: nn.Sequential(nn.Flatten(), nn.Linear(features, classes)), w, seed, p))
        _progress(name, runs[-1])
    return Row(name, runs, "one linear layer, bare PyTorch loop, same protocol")


def _folder(aggregator: Aggregator) -> Callable[[AnyEvent], None]:
    """The engine's emit: every event folded into the snapshot."""

    def fold(event: AnyEvent) -> None:
        aggregator.apply(event)

    return fold


def bare_host_epochs(w: Workload, epochs: int, seed: int) -> float:
    """Milliseconds per epoch of the bare loop: the task's host in plain PyTorch (Workload.bare_host) doing the
    engine's per-epoch work (train, validation loss and accuracy, test accuracy), with the task's optimizer and
    batch size and the engine's thread count."""
    xt, yt, xv, yv, xs, ys = _tensors(w)
    task = w.task(seed).task
    bs = task.batch_size
    previous = torch.get_num_threads()
    torch.set_num_threads(kernels.kernel_threads())
    try:
        torch.manual_seed(seed)
        model = w.bare_host()
        opt = task.optimizer(list(model.parameters()))
        g = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        for _ in range(epochs):
            _bare_epoch(model, opt, xt, yt, bs, g)
            _evaluate(model, xv, yv, bs, loss=True)  # the engine reports validation loss too
            _accuracy(model, xs, ys, bs)
        return (time.perf_counter() - t0) * 1000 / epochs
    finally:
        torch.set_num_threads(previous)


def paired_ratio(pairs: Sequence[tuple[float, float]]) -> dict[str, float]:
    """The median of bare/engine over (engine, bare) ms-per-epoch pairs, its range and the median times: a burst
    of load from elsewhere skews one pair, not the figure."""
    ratios = sorted(bare / engine for engine, bare in pairs)
    return {
        "bare_loop_ratio": statistics.median(ratios),
        "ratio_min": ratios[0],
        "ratio_max": ratios[-1],
        "engine_epoch_ms": statistics.median(e for e, _ in pairs),
        "bare_epoch_ms": statistics.median(b for _, b in pairs),
        "pairs": len(pairs),
    }


def bare_loop_ratio(w: Workload, catalog: Catalog, epochs: int, repeats: int) -> dict[str, float]:
    """Host-only epochs, the engine's loop (its events folded by the engine's aggregator, as in the engine)
    against the bare loop (`bare_host_epochs`), headless. The two alternate `repeats` times in one process;
    each pair gives a ratio (`paired_ratio`). benchmarks.dashboard measures the same with the dashboard open."""
    cfg = msgspec.structs.replace(w.base, epochs=epochs)
    pairs: list[tuple[float, float]] = []  # (engine, bare) ms per epoch
    for r in range(repeats):
        task = w.task(cfg.seed)
        trainer = Trainer(cfg, catalog, NoSeeds(catalog), _folder(Aggregator()), task=task, early_stop=False)
        t0 = time.perf_counter()
        trainer.run()
        engine_ms = (time.perf_counter() - t0) * 1000 / epochs
        pairs.append((engine_ms, bare_host_epochs(w, epochs, seed=r)))
    return paired_ratio(pairs)


# ------------------------------------------------------------------------------------------- kernels


def _time_ms(fn: Callable[[], object], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) * 1000 / n


def compiled_over_eager(
    library: Library, catalog: Catalog, hidden: int, repeats: int, steps: int
) -> dict[str, dict[str, float]]:
    """Per library kernel: a training step (forward + backward, batch 100) and a no-grad forward, compiled
    against the same module eager, alternated; medians. Also the forge's own measurement from the meta."""
    previous = torch.get_num_threads()
    torch.set_num_threads(kernels.kernel_threads())  # compiled guards pin it
    out: dict[str, dict[str, float]] = {}
    try:
        for meta in library.ranked(vector(40, hidden)):
            kernel, _ = library.load(meta.blueprint_id, meta.slot_shape)
            torch.manual_seed(0)
            module = catalog.get(meta.blueprint_id).build(vector(40, hidden))
            x = torch.randn(100, 40)
            variants = {
                "train_compiled": _train_step(module, kernel, x),
                "train_eager": _train_step(module, _eager, x),
                "infer_compiled": _no_grad(module, kernel, x),
                "infer_eager": _no_grad(module, _eager, x),
            }
            for fn in variants.values():
                _time_ms(fn, 3)  # warm-up (the first compiled call places its kernels)
            timings: dict[str, list[float]] = {k: [] for k in variants}
            for _ in range(repeats):  # alternated, so load from elsewhere hits both alike
                for k, fn in variants.items():
                    timings[k].append(_time_ms(fn, steps))
            med = {k: statistics.median(v) for k, v in timings.items()}
            out[meta.blueprint_id] = {
                "train_step_ratio": med["train_compiled"] / med["train_eager"],
                "train_step_ms_compiled": med["train_compiled"],
                "train_step_ms_eager": med["train_eager"],
                "no_grad_ratio": med["infer_compiled"] / med["infer_eager"],
                "forge_step_ratio": meta.step_ms_compiled / meta.step_ms_eager,
            }
    finally:
        torch.set_num_threads(previous)
    return out


Kernel = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def _eager(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    y: torch.Tensor = module(x)
    return y


def _train_step(module: nn.Module, fn: Kernel, x: torch.Tensor) -> Callable[[], None]:
    """One training step as the forge times it: forward, a scalar loss, backward."""

    def step() -> None:
        module.zero_grad(set_to_none=True)
        torch.autograd.backward(fn(module, x).square().mean())

    return step


def _no_grad(module: nn.Module, fn: Kernel, x: torch.Tensor) -> Callable[[], None]:
    def forward() -> None:
        with torch.no_grad():
            fn(module, x)

    return forward


# ------------------------------------------------------------------------------------------- report


def verdict(grown: Row, other: Row) -> str:
    """'beats', 'matches' or 'trails', by whether the difference of means exceeds twice its standard error."""
    g = [r.test_accuracy for r in grown.runs]
    o = [r.test_accuracy for r in other.runs]
    diff = statistics.mean(g) - statistics.mean(o)
    se = (
        math.sqrt(statistics.variance(g) / len(g) + statistics.variance(o) / len(o)) if min(len(g), len(o)) > 1 else 0.0
    )
    word = "matches" if abs(diff) <= 2 * se else "beats" if diff > 0 else "trails"
    return f"{grown.name} {word} {other.name}: {diff * 100:+.1f} points (2 SE = {2 * se * 100:.1f})"


def table(rows: list[Row]) -> str:
    head = f"{'row':<36} {'test accuracy':>16} {'params':>8} {'epochs':>7} {'wall s':>7} {'runs':>5}"
    lines = [head, "-" * len(head)]
    for row in rows:
        s = row.summary()
        if row.paper_accuracy is not None:
            lines.append(f"{row.name:<36} {row.paper_accuracy:>10.1%}{'':>6} {'-':>8} {'-':>7} {'-':>7} {'-':>5}")
            continue
        acc = f"{s['test_accuracy_mean']:.1%} ± {float(s['test_accuracy_std']) * 100:.1f}"  # type: ignore[arg-type]
        lines.append(
            f"{row.name:<36} {acc:>16} {s['params']:>8} {float(s['epochs_mean']):>7.1f} "  # type: ignore[arg-type]
            f"{float(s['wall_s_mean']):>7.1f} {s['runs']:>5}"  # type: ignore[arg-type]
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter runs (60 epochs at most, patience 20)")
    ap.add_argument("--state-dir", type=Path, default=Path("var"))
    ap.add_argument("--seeds", type=int, default=5, help="training seeds per row (at least 5 for the table)")
    ap.add_argument("--task", choices=TASKS, default="mnist1d", help="the built-in task to grow (default mnist1d)")
    ap.add_argument("--json", type=Path, metavar="FILE")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    compile_library(args.state_dir, args.task)
    base = TrainingConfig()
    p = Protocol(
        max_epochs=60 if args.quick else 150,
        patience=20 if args.quick else base.early_stop_epochs,
        seeds=tuple(range(args.seeds)),
    )
    catalog = Catalog()
    kernels.private_cache_dir()
    library = Library(args.state_dir / "library", load_or_create_key(args.state_dir), catalog)
    w = Workload.named(args.task, base, args.state_dir / "data")
    print(
        f"{w.describe()}; at most {p.max_epochs} epochs, early stop after {p.patience} without a "
        f"validation gain, best epoch restored; seeds {list(p.seeds)}; {kernels.kernel_threads()} thread(s)",
        flush=True,
    )

    compiled = LibraryKernelSource(library, "inductor", "default", fastest=False)
    grown_c = row_engine(GROWN_COMPILED, w, catalog, compiled, p, "seeds from the library, compiled kernels")
    grown_e = row_engine(GROWN_EAGER, w, catalog, EagerKernelSource(catalog), p, "seeds as plain PyTorch")
    paper = PAPER if w.name == "mnist1d" else ()
    rows = [
        row_logistic(w, p),
        row_engine(f"host {w.host_kind} alone", w, catalog, NoSeeds(catalog), p, "the engine's host, no seeds"),
        row_static_host(w, catalog, p, grown_c),
        row_static_architecture(w, catalog, p, grown_c),
        grown_c,
        grown_e,
        *(Row(name, [], "quoted from the MNIST-1D paper", paper_accuracy=acc) for name, acc in paper),
    ]
    ratio = bare_loop_ratio(w, catalog, epochs=20, repeats=7 if args.quick else 11)
    steps = 10 if args.quick else 30
    # the library's kernels are MNIST-1D's 40-64 ones; another task's are timed by the forge itself (JobCompiled)
    kernel_ratios = compiled_over_eager(library, catalog, base.hidden, 5, steps) if w.name == "mnist1d" else {}

    print("\n" + table(rows))
    verdicts = [verdict(grown_c, row) for row in rows[:4]] + [verdict(grown_c, grown_e)]
    print("\n" + "\n".join(verdicts))
    print("\ncompiled over eager, per blueprint (< 1: compiled faster):")
    for bp, k in kernel_ratios.items():
        print(
            f"  {bp:<18} train step {k['train_step_ratio']:.2f} ({k['train_step_ms_compiled']:.2f} vs "
            f"{k['train_step_ms_eager']:.2f} ms)  no-grad {k['no_grad_ratio']:.2f}  forge {k['forge_step_ratio']:.2f}"
        )
    print(
        f"\nbare_loop_ratio {ratio['bare_loop_ratio']:.3f} (median of paired runs, range {ratio['ratio_min']:.3f}"
        f"-{ratio['ratio_max']:.3f}; engine {ratio['engine_epoch_ms']:.1f} ms/epoch, bare "
        f"{ratio['bare_epoch_ms']:.1f} ms/epoch, host only)"
    )
    wall = time.perf_counter() - started
    print(f"decisions on validation; torch {torch.__version__}; {wall / 60:.1f} min", flush=True)
    if args.json:
        report = {
            "rows": [r.summary() for r in rows],
            "decisions_split": "validation",
            "compiled_over_eager_step": {bp: k["train_step_ratio"] for bp, k in kernel_ratios.items()},
            "kernels": kernel_ratios,
            "bare_loop_ratio": ratio["bare_loop_ratio"],
            "bare_loop": ratio,
            "verdicts": verdicts,
            "protocol": {
                **asdict(p),
                "task": w.name,
                "data": w.describe(),
                "batch_size": w.task(0).task.batch_size,
                "quick": args.quick,
            },
            "wall_s": wall,
            "torch": str(torch.__version__),
        }
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
