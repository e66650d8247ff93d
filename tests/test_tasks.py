"""Tasks: the Task API, loading a task by name or factory, refusing bad ones in one line, slot shapes found by a
forward pass, and Kasmina's isolation on every built-in task's host (through the trainer's real step)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import msgspec
import pytest
import torch
from torch import nn

from esper_tui.engine.config import TrainingConfig
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.kernels.shapes import SlotShape, vector
from esper_tui.engine.training.kernel_source import EagerKernelSource, eager_kernel
from esper_tui.engine.training.loop import Trainer
from esper_tui.engine.training.seeds import SeedSlot
from esper_tui.engine.training.task import Data, Slot, Task, TaskContext, TaskError, accuracy, adam, cross_entropy
from esper_tui.engine.training.task_loader import LoadedTask, load_task
from esper_tui.engine.training.task_spec import spec_problem
from esper_tui.engine.vocabulary import SeedStage

CATALOG = Catalog()
CFG = TrainingConfig(seed=3)
EXAMPLE = f"{Path(__file__).resolve().parents[1] / 'examples' / 'waveforms.py'}:factory"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("task-data")


def load(spec: str, data_dir: Path | None = None, cfg: TrainingConfig = CFG) -> LoadedTask:
    return load_task(spec, TaskContext(seed=cfg.seed, data_dir=data_dir), cfg)


# ---------------------------------------------------------------- built-in tasks and their slot shapes


def test_mnist1d_keeps_its_host_split_and_the_40_64_kernel_shape(data_dir: Path) -> None:
    loaded = load("mnist1d", data_dir)
    assert loaded.shapes == {"s0": vector(40, 64), "s1": vector(40, 64)}
    assert (len(loaded.train[1]), len(loaded.val[1]), len(loaded.test[1])) == (3500, 500, 1000)
    assert loaded.task.metric is accuracy and loaded.task.batch_size == CFG.batch_size


def test_digits_slots_sit_on_its_conv_feature_maps() -> None:
    loaded = load("digits")
    assert loaded.shapes == {"s0": SlotShape((1, 8, 8), (8, 8, 8)), "s1": SlotShape((8, 8, 8), (16, 8, 8))}
    assert {s.kind for s in loaded.shapes.values()} == {"image"}
    n = len(loaded.train[1]) + len(loaded.val[1]) + len(loaded.test[1])
    assert n == 1797 and len(loaded.test[1]) == 359
    again = load("digits")  # the carves are fixed: every run decides and reports on the same images
    assert torch.equal(again.val[0], loaded.val[0]) and torch.equal(again.test[1], loaded.test[1])


def test_the_factory_is_seeded_from_the_run_and_leaves_the_callers_rng_alone() -> None:
    state = torch.get_rng_state()
    a, b = load("digits"), load("digits", cfg=TrainingConfig(seed=4))
    assert torch.equal(torch.get_rng_state(), state)
    a2 = load("digits")
    wa, wb, wa2 = (t.task.host.conv1.weight for t in (a, b, a2))
    assert torch.equal(wa, wa2) and not torch.equal(wa, wb)


def test_a_validation_split_is_carved_with_a_fixed_seed_and_disjoint() -> None:
    x = torch.arange(100, dtype=torch.float32).unsqueeze(1)
    data = Data(train=(x, torch.arange(100)), test=(x[:5], torch.arange(5)), val_fraction=0.2)
    (_, yt), (_, yv), _ = data.splits()
    assert len(yv) == 20 and len(yt) == 80 and set(yv.tolist()).isdisjoint(yt.tolist())
    assert torch.equal(data.splits()[1][1], yv)
    assert not torch.equal(Data(data.train, data.test, val_fraction=0.2, carve_seed=1).splits()[1][1], yv)


# ---------------------------------------------------------------- isolation on every task's host


def _seed_module(shape: SlotShape) -> nn.Module:
    """A seed of the slot's shape, with BatchNorm of its own for an image (whose statistics must keep moving)."""
    if shape.kind == "vector":
        return nn.Sequential(nn.Linear(shape.in_shape[0], 32), nn.GELU(), nn.Linear(32, shape.out_shape[0]))
    if shape.kind == "sequence":
        c_in, c_out = shape.in_shape[0], shape.out_shape[0]
        return nn.Sequential(nn.Conv1d(c_in, c_out, 3, padding=1), nn.BatchNorm1d(c_out))
    return nn.Sequential(
        nn.Conv2d(shape.in_shape[0], shape.out_shape[0], 3, padding=1), nn.BatchNorm2d(shape.out_shape[0])
    )


def _graft(t: Trainer, slot: SeedSlot, module: nn.Module, stage: SeedStage) -> None:
    slot.germinate("test_seed", module, eager_kernel, "eager", 0.0)
    t.optimizer.add_param_group({"params": list(module.parameters())})
    while slot.stage is not stage:
        slot.advance()
    if stage is SeedStage.BLENDING:
        slot.step(2.0)


def _host_state(t: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in t.host.net.state_dict().items()}


@pytest.mark.parametrize("spec", ["mnist1d", "digits", EXAMPLE])
@pytest.mark.parametrize("training", [0, 1])
def test_a_training_seed_leaves_the_host_bit_for_bit_as_without_it(spec: str, training: int, data_dir: Path) -> None:
    """Kasmina's key property on each task's host: with a seed TRAINING in one slot (and a blended seed in the
    other), the host's gradients, weights, buffers (BatchNorm's statistics) and the global RNG (dropout's) stay
    exactly those of the same run without the training seed, step after step of the trainer's own _step."""
    cfg = msgspec.structs.replace(CFG, seed=5)
    ours, theirs = (
        Trainer(cfg, CATALOG, EagerKernelSource(CATALOG), lambda e: None, task=load(spec, data_dir, cfg))
        for _ in range(2)
    )
    blended = 1 - training
    neighbour = _seed_module(ours.host.seed_slots()[blended].shape)
    twin = _seed_module(ours.host.seed_slots()[blended].shape)
    twin.load_state_dict(neighbour.state_dict())
    _graft(ours, ours.host.seed_slots()[blended], neighbour, SeedStage.BLENDING)
    _graft(theirs, theirs.host.seed_slots()[blended], twin, SeedStage.BLENDING)
    seed_slot = ours.host.seed_slots()[training]
    seed = _seed_module(seed_slot.shape)
    seed_buffers = [b.clone() for b in seed.buffers()]
    _graft(ours, seed_slot, seed, SeedStage.TRAINING)

    bs = ours.batch_size
    for step in range(3):
        xb, yb = ours.x_train[step * bs : (step + 1) * bs], ours.y_train[step * bs : (step + 1) * bs]
        for t in (ours, theirs):
            torch.manual_seed(100 + step)
            t._step(xb, yb, 10, [s for s in t.host.seed_slots() if s.block is not None])
            t.rng_after = torch.get_rng_state()
        assert torch.equal(ours.rng_after, theirs.rng_after)
        mine, other = dict(ours.host.net.named_parameters()), dict(theirs.host.net.named_parameters())
        for name, p in other.items():
            assert p.grad is not None and torch.equal(mine[name].grad, p.grad), name
        a, b = _host_state(ours), _host_state(theirs)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), step
        pairs = zip(neighbour.state_dict().values(), twin.state_dict().values(), strict=True)
        assert all(torch.equal(x, y) for x, y in pairs)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in seed.parameters())  # it did learn
    if seed_buffers:  # its own statistics moved: only the others' are put back after a shadow pass
        assert any(not torch.equal(x, y) for x, y in zip(seed_buffers, seed.buffers(), strict=True))


# ---------------------------------------------------------------- specs and bad tasks


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("mnist1d", None),
        ("digits", None),
        ("tests.task_files:factory", None),
        ("cifar", "no such built-in task"),
        ("no/such/file.py:factory", "no file no/such/file.py"),
        ("file.py", "expected a built-in name"),
        ("a b:c", "expected a built-in name"),
    ],
)
def test_spec_problem_checks_the_form_only(spec: str, problem: str | None) -> None:
    found = spec_problem(spec)
    assert (found is None) if problem is None else (found is not None and problem in found and "\n" not in found)


GOOD = """
import torch
from torch import nn
from esper_tui.task import Data, Slot, Task, accuracy, adam, cross_entropy

def data():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)
    return Data(train=(x, y), test=(x[:8], y[:8]))

def host():
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))

def make(ctx, **changes):
    fields = dict(name="tiny", host=host(), data=data(), loss=cross_entropy, metric=accuracy, batch_size=16,
                  optimizer=adam(1e-2), slots=[Slot("s0", "0")])
    fields.update(changes)
    return Task(**fields)
"""

BAD = {
    "raises": ("def factory(ctx):\n    raise RuntimeError('no data here')", "the factory raised RuntimeError: no data"),
    "wrong_type": ("def factory(ctx):\n    return 42", "the factory returned int, not a Task"),
    "no_slots": ("def factory(ctx):\n    return make(ctx, slots=[])", "has no slots"),
    "missing_module": ("def factory(ctx):\n    return make(ctx, slots=[Slot('s0', 'l9')])", "no module 'l9'"),
    "nan_outputs": (
        "class Bad(nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.l = nn.Linear(6, 3)\n"
        "    def forward(self, x):\n        return self.l(x) * float('nan')\n"
        "def factory(ctx):\n    return make(ctx, host=Bad(), slots=[Slot('s0', 'l')])",
        "non-finite outputs",
    ),
    "batch_size": ("def factory(ctx):\n    return make(ctx, batch_size=0)", "batch_size must lie in [1, 65536]"),
    "val_fraction": (
        "def factory(ctx):\n    return make(ctx, data=Data(data().train, data().test, val_fraction=0.9))",
        "val_fraction must lie in (0, 0.5]",
    ),
    "forward_raises": (
        "def factory(ctx):\n    return make(ctx, host=nn.Linear(5, 3), slots=[Slot('s0', '')])",
        "the host's forward pass raised RuntimeError",
    ),
    "import_error": ("import no_such_package_here\ndef factory(ctx):\n    pass", "raised ModuleNotFoundError"),
    "no_factory": ("def other(ctx):\n    pass", "has no function factory"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_task_is_refused_in_one_line(case: str, tmp_path: Path) -> None:
    body, expected = BAD[case]
    path = tmp_path / f"bad_{case}.py"
    path.write_text(GOOD + "\n" + textwrap.dedent(body) + "\n")
    with pytest.raises(TaskError) as err:
        load(f"{path}:factory")
    message = str(err.value)
    assert expected in message and "\n" not in message and message.startswith(f"task {path}:factory: ")


def test_a_good_task_file_loads_with_its_slot_shape(tmp_path: Path) -> None:
    path = tmp_path / "good.py"
    path.write_text(GOOD + "\ndef factory(ctx):\n    return make(ctx)\n")
    loaded = load(f"{path}:factory")
    assert loaded.task.name == "tiny" and loaded.shapes == {"s0": vector(6, 8)}
    assert len(loaded.val[1]) == 8 and len(loaded.train[1]) == 56  # 0.125 of 64 carved


def test_a_task_from_a_module_path() -> None:
    assert load("tests.task_files:factory").task.name == "from-module"


def test_task_fields_have_ranges() -> None:
    net = nn.Linear(2, 2)
    data = Data(train=(torch.zeros(4, 2), torch.zeros(4)), test=(torch.zeros(1, 2), torch.zeros(1)))

    def task(**changes: object) -> Task:
        fields: dict[str, object] = dict(
            name="t", host=net, data=data, loss=cross_entropy, metric=accuracy, batch_size=2,
            optimizer=adam(), slots=[Slot("s0", "")],
        )  # fmt: skip
        fields.update(changes)
        return Task(**fields)  # type: ignore[arg-type]

    assert task().problem() is None
    assert "name" in (task(name="has space").problem() or "")
    assert "batch_size" in (task(batch_size=70_000).problem() or "")
    assert "unique" in (task(slots=[Slot("a", ""), Slot("a", "")]).problem() or "")
    assert "at most 16" in (task(slots=[Slot(f"s{i}", "") for i in range(17)]).problem() or "")
    assert "carve_seed" in (task(data=Data(data.train, data.test, carve_seed=-1)).problem() or "")
    with pytest.raises(TaskError, match="lr must lie"):
        adam(0.0)
