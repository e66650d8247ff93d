"""Checkpoints: round trip (synthetic state and a real Trainer), tamper and torn-write rejection, retention."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import msgspec
import pytest
import torch

from esper_tui.engine.config import TrainingConfig
from esper_tui.engine.contracts import EpochCompleted, LogLine, TrainingFinished
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.training import checkpoint as ckpt
from esper_tui.engine.training.controller import ControllerState
from esper_tui.engine.training.kernel_source import EagerKernelSource
from esper_tui.engine.training.loop import Trainer
from esper_tui.engine.training.reports import PendingDecision, read, reports_path
from esper_tui.engine.training.seeds import SlotState
from esper_tui.engine.training.state import HOST_GROUP, TrainingState
from esper_tui.engine.vocabulary import Action, Level, SeedStage

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def synthetic_state(epoch: int = 7) -> TrainingState:
    """A TrainingState built straight from the dataclasses: one slot with a seed, one dormant, Adam moments."""
    g = torch.Generator().manual_seed(epoch)
    host = {"fc1.weight": torch.randn(4, 3, generator=g), "fc1.bias": torch.randn(4, generator=g)}
    seed = {"lin.weight": torch.randn(4, 3, generator=g)}
    slots = (
        SlotState("s1", SeedStage.BLENDING, "mlp_block", 2, 1.5, 0.61, "inductor:default", "", seed),
        SlotState("s2", SeedStage.EMBARGOED, "conv1d_block", 1, 0.0, None, "-", "", None),
    )
    optimizer = {
        "state": {
            0: {"step": torch.tensor(12.0), "exp_avg": torch.randn(4, 3, generator=g), "exp_avg_sq": torch.rand(4, 3)},
            2: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, 3, generator=g), "exp_avg_sq": torch.rand(4, 3)},
        },
        "param_groups": [
            {"lr": 0.003, "betas": (0.9, 0.999), "eps": 1e-8, "foreach": None, "params": [0, 1]},
            {"lr": 0.003, "betas": (0.9, 0.999), "eps": 1e-8, "foreach": None, "params": [2]},
        ],
    }
    controller = ControllerState(
        window_best=0.62, flat_epochs=2, uses={"mlp_block": 1}, pruned={"conv1d_block": 1}, gave_up=False
    )
    return TrainingState(
        epoch=epoch,
        host=host,
        slots=slots,
        groups=(HOST_GROUP, "s1"),
        optimizer=optimizer,
        controller=controller,
        shuffle_rng=torch.Generator().manual_seed(3).get_state(),
        torch_rng=torch.get_rng_state(),
        germinations=2,
        best_val_metric=0.64,
        best_epoch=5,
        pending_reports=(
            PendingDecision(
                epoch=epoch - 1,
                action=Action.GERMINATE,
                slot="s1",
                blueprint_id="mlp_block",
                reason="accuracy flat",
                val_metric=0.61,
            ),
            PendingDecision(
                epoch=epoch, action=Action.ROLLBACK, slot=None, blueprint_id=None, reason="nan", val_metric=0.6
            ),
        ),
    )


def assert_same_state(a: TrainingState, b: TrainingState) -> None:
    assert (a.epoch, a.groups, a.germinations, a.best_val_metric, a.best_epoch) == (
        b.epoch,
        b.groups,
        b.germinations,
        b.best_val_metric,
        b.best_epoch,
    )
    assert a.controller == b.controller
    assert a.pending_reports == b.pending_reports
    assert a.host.keys() == b.host.keys() and all(torch.equal(a.host[k], b.host[k]) for k in a.host)
    for sa, sb in zip(a.slots, b.slots, strict=True):
        fields = ("name", "stage", "blueprint_id", "epochs_in_stage", "blend_progress", "metric_at_germination")
        assert [getattr(sa, f) for f in fields] == [getattr(sb, f) for f in fields]
        assert (sa.kernel_label, sa.kernel_note) == (sb.kernel_label, sb.kernel_note)
        assert (sa.weights is None) == (sb.weights is None)
        if sa.weights is not None and sb.weights is not None:
            assert sa.weights.keys() == sb.weights.keys()
            assert all(torch.equal(sa.weights[k], sb.weights[k]) for k in sa.weights)
    assert torch.equal(a.shuffle_rng, b.shuffle_rng) and torch.equal(a.torch_rng, b.torch_rng)
    assert a.optimizer["param_groups"] == b.optimizer["param_groups"]
    sa_opt, sb_opt = a.optimizer["state"], b.optimizer["state"]
    assert sa_opt.keys() == sb_opt.keys()
    for i in sa_opt:
        assert sa_opt[i].keys() == sb_opt[i].keys()
        for k, v in sa_opt[i].items():
            assert torch.equal(v, sb_opt[i][k]) if isinstance(v, torch.Tensor) else v == sb_opt[i][k]


def test_round_trip_of_a_synthetic_state(tmp_path: Path) -> None:
    state = synthetic_state()
    written = ckpt.write(tmp_path, state, KEY, val_metric=0.63)
    assert written.path == tmp_path / "epoch-000007"
    assert sorted(p.name for p in written.path.iterdir()) == sorted(
        [ckpt.TENSORS, ckpt.STATE, ckpt.MANIFEST, ckpt.SIGNATURE]
    )
    assert not list(tmp_path.glob(".staging-*"))
    assert_same_state(ckpt.load(written.path, KEY), state)
    found, skipped = ckpt.latest_valid(tmp_path, KEY)
    assert found is not None and skipped == []
    assert (found[0].epoch, found[0].val_metric) == (7, 0.63)
    assert_same_state(found[1], state)


def test_a_checkpoint_written_before_pending_reports_still_loads(tmp_path: Path) -> None:
    """Checkpoints from before the field existed have no `pending_reports`: they load with none pending."""
    state = synthetic_state()
    path = ckpt.write(tmp_path, state, KEY, 0.5).path
    doc = msgspec.msgpack.decode((path / ckpt.STATE).read_bytes())
    assert len(doc.pop("pending_reports")) == 2
    old = ckpt.decode((path / ckpt.TENSORS).read_bytes(), msgspec.msgpack.encode(doc))
    assert old.pending_reports == ()
    assert_same_state(old, dataclasses.replace(state, pending_reports=()))


def test_no_pickle_anywhere(tmp_path: Path) -> None:
    """The non-tensor state is msgpack of plain values: decoding it needs no class from the checkpoint."""
    path = ckpt.write(tmp_path, synthetic_state(), KEY, 0.5).path
    doc = msgspec.msgpack.decode((path / ckpt.STATE).read_bytes())
    assert isinstance(doc, dict) and doc["epoch"] == 7
    assert b"torch" not in (path / ckpt.STATE).read_bytes()
    raw = (path / ckpt.TENSORS).read_bytes()
    assert b"\x80\x04" not in raw[:16] and not raw.startswith(b"PK")  # neither a pickle nor torch.save's zip


FILES = [ckpt.TENSORS, ckpt.STATE, ckpt.MANIFEST, ckpt.SIGNATURE]


@pytest.mark.parametrize("name", FILES)
def test_a_flipped_byte_in_any_file_is_skipped_with_a_reason(tmp_path: Path, name: str) -> None:
    ckpt.write(tmp_path, synthetic_state(3), KEY, 0.5)
    newest = ckpt.write(tmp_path, synthetic_state(6), KEY, 0.6).path
    target = newest / name
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    found, skipped = ckpt.latest_valid(tmp_path, KEY)
    assert found is not None and found[0].epoch == 3
    assert [s.path for s in skipped] == [newest]
    want = "signature mismatch" if name in (ckpt.MANIFEST, ckpt.SIGNATURE) else f"{name} does not match"
    assert want in skipped[0].reason and "epoch-000006" in skipped[0].reason


@pytest.mark.parametrize("name", FILES)
def test_a_deleted_file_is_skipped(tmp_path: Path, name: str) -> None:
    ckpt.write(tmp_path, synthetic_state(3), KEY, 0.5)
    newest = ckpt.write(tmp_path, synthetic_state(6), KEY, 0.6).path
    (newest / name).unlink()
    found, skipped = ckpt.latest_valid(tmp_path, KEY)
    assert found is not None and found[0].epoch == 3
    assert len(skipped) == 1 and f"{name} is missing" in skipped[0].reason


def test_another_key_a_torn_dir_and_a_renamed_dir_are_skipped(tmp_path: Path) -> None:
    good = ckpt.write(tmp_path, synthetic_state(2), KEY, 0.5)
    forged = ckpt.write(tmp_path, synthetic_state(4), OTHER_KEY, 0.9).path  # signed with another key
    torn = tmp_path / ckpt.dir_name(9)  # a directory that never got its manifest
    torn.mkdir()
    (torn / ckpt.TENSORS).write_bytes(b"partial")
    shutil.copytree(good.path, tmp_path / ckpt.dir_name(8))  # a valid checkpoint copied under another epoch
    (tmp_path / ".staging-epoch-000010.123").mkdir()  # a crashed write's stage is no candidate
    found, skipped = ckpt.latest_valid(tmp_path, KEY)
    assert found is not None and found[0].epoch == 2
    reasons = {s.path.name: s.reason for s in skipped}
    assert list(reasons) == ["epoch-000009", "epoch-000008", "epoch-000004"]
    assert "manifest.json is missing" in reasons["epoch-000009"]
    assert "signed as epoch-000002" in reasons["epoch-000008"]
    assert "signature mismatch" in reasons[forged.name]
    ckpt.write(tmp_path, synthetic_state(11), KEY, 0.5)
    assert not (tmp_path / ".staging-epoch-000010.123").exists()


def test_nothing_to_resume_from(tmp_path: Path) -> None:
    assert ckpt.latest_valid(tmp_path / "absent", KEY) == (None, [])


def test_retention_keeps_the_newest_k_and_the_best(tmp_path: Path) -> None:
    accuracies = {1: 0.5, 2: 0.9, 3: 0.6, 4: 0.7, 5: 0.65, 6: 0.7}
    for epoch, acc in accuracies.items():
        ckpt.write(tmp_path, synthetic_state(epoch), KEY, acc)
    removed = ckpt.prune(tmp_path, KEY, keep=2)
    assert sorted(p.name for p in removed) == ["epoch-000001", "epoch-000003", "epoch-000004"]
    assert [p.name for p in ckpt.candidates(tmp_path)] == ["epoch-000006", "epoch-000005", "epoch-000002"]


def test_a_rewritten_epoch_replaces_the_old_checkpoint(tmp_path: Path) -> None:
    """A rollback replays epochs: writing the same epoch again replaces it whole."""
    ckpt.write(tmp_path, synthetic_state(5), KEY, 0.5)
    second = dataclasses.replace(synthetic_state(9), epoch=5)
    ckpt.write(tmp_path, second, KEY, 0.7)
    found, _ = ckpt.latest_valid(tmp_path, KEY)
    assert found is not None and found[0].val_metric == 0.7
    assert_same_state(found[1], second)


FAST_LIFECYCLE = {"plateau_epochs": 1, "plateau_delta": 1.0, "train_epochs": 1, "blend_epochs": 1, "holding_epochs": 1}


def test_the_writer_thread_writes_prunes_and_flushes(tmp_path: Path) -> None:
    errors: list[tuple[int, Exception]] = []
    writer = ckpt.Writer(tmp_path, KEY, keep=2, on_error=lambda epoch, exc: errors.append((epoch, exc)))
    for epoch in (1, 2, 3):
        writer.submit(synthetic_state(epoch), val_metric=0.5 + epoch / 100)
        writer.flush()
    assert [p.name for p in ckpt.candidates(tmp_path)] == ["epoch-000003", "epoch-000002"]
    writer.submit(synthetic_state(4), val_metric=0.9)
    writer.close()  # writes what was handed over before it ends
    assert ckpt.candidates(tmp_path)[0].name == "epoch-000004" and errors == []
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(synthetic_state(5), val_metric=0.5)


def test_a_failed_write_is_reported_and_the_writer_goes_on(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    errors: list[tuple[int, Exception]] = []
    writer = ckpt.Writer(not_a_dir, KEY, keep=2, on_error=lambda epoch, exc: errors.append((epoch, exc)))
    writer.submit(synthetic_state(3), val_metric=0.5)
    writer.flush()
    writer.submit(synthetic_state(4), val_metric=0.5)
    writer.close()
    assert [(epoch, type(exc)) for epoch, exc in errors] == [(3, FileExistsError), (4, FileExistsError)]


def test_a_real_trainer_resumes_exactly_from_disk(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """capture -> write -> read -> restore into a fresh Trainer: the next epoch is bit for bit the same."""
    catalog = Catalog()
    cache = tmp_path_factory.mktemp("mnist1d")
    cfg = msgspec.structs.replace(TrainingConfig(seed=0), epochs=None, **FAST_LIFECYCLE)

    def fresh() -> tuple[Trainer, list[object]]:
        events: list[object] = []
        return Trainer(cfg, catalog, EagerKernelSource(catalog), events.append, cache_dir=cache, threads=1), events

    t, events = fresh()
    while not any(s.stage is SeedStage.TRAINING for s in t.host.seed_slots()):
        t._epoch()
    state = t.capture()
    assert any(s.weights is not None for s in state.slots) and len(state.groups) > 1
    t._epoch()
    first = [e for e in events if isinstance(e, EpochCompleted)][-1]

    ckpt.write(tmp_path, state, KEY, val_metric=t.val_metric)
    loaded = ckpt.load(tmp_path / ckpt.dir_name(state.epoch), KEY)
    assert_same_state(loaded, state)
    t2, events2 = fresh()
    t2.restore(loaded)
    t2._epoch()
    again = [e for e in events2 if isinstance(e, EpochCompleted)][-1]
    assert (again.epoch, again.train_loss, again.val_metric, again.val_loss) == (
        first.epoch,
        first.train_loss,
        first.val_metric,
        first.val_loss,
    )


def test_a_resumed_run_reports_each_decision_exactly_once(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A run killed after its epoch-4 checkpoint (its reports written up to epoch 6) and resumed writes the same
    field reports as an uninterrupted run: the decisions pending at the checkpoint are reported after it, and the
    lines of the replayed epochs are not doubled."""
    catalog = Catalog()
    cache = tmp_path_factory.mktemp("mnist1d")
    base = msgspec.structs.replace(
        TrainingConfig(seed=0), report_after_epochs=3, checkpoint_every_epochs=4, **FAST_LIFECYCLE
    )

    def run(state: Path, epochs: int) -> Trainer:
        cfg = msgspec.structs.replace(base, epochs=epochs)
        kernels = EagerKernelSource(catalog)
        t = Trainer(cfg, catalog, kernels, lambda e: None, cache_dir=cache, threads=1, state_dir=state, signing_key=KEY)
        t.run()
        return t

    run(tmp_path / "straight", 9)
    straight = read(reports_path(tmp_path / "straight"))
    killed = tmp_path / "killed"
    run(killed, 6)
    shutil.rmtree(ckpt.checkpoints_dir(killed) / ckpt.dir_name(6))  # kill -9 after epoch 6: no clean-stop checkpoint
    before = read(reports_path(killed))
    assert max(r.outcome_epoch for r in before) == 6  # reports of epochs 5 and 6 were written before the "kill"
    resumed = run(killed, 9)
    assert resumed.resumed_from_epoch == 4
    reports = read(reports_path(killed))
    assert reports == straight
    keys = [(r.epoch, r.action, r.slot) for r in reports]
    assert len(keys) == len(set(keys))
    assert any(r.epoch <= 4 < r.outcome_epoch for r in reports)  # pending at the checkpoint, due after it


@pytest.mark.parametrize(("interval_s", "written"), [(0.0, [4, 3, 2, 1]), (3600.0, [4, 1])])
def test_periodic_checkpoints_wait_for_their_minimum_interval(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, interval_s: float, written: list[int]
) -> None:
    """Every epoch is due (checkpoint_every_epochs = 1); with an hour's interval only the first periodic one and the
    end of the run's are written, without one every epoch is."""
    catalog = Catalog()
    cfg = msgspec.structs.replace(
        TrainingConfig(seed=0),
        epochs=4,
        checkpoint_every_epochs=1,
        checkpoint_min_interval_s=interval_s,
        keep_checkpoints=10,
    )
    cache = tmp_path_factory.mktemp("mnist1d")
    state = tmp_path / "s"
    Trainer(
        cfg, catalog, EagerKernelSource(catalog), lambda e: None, cache_dir=cache, state_dir=state, signing_key=KEY
    ).run()
    assert [ckpt.verify(p, KEY).epoch for p in ckpt.candidates(ckpt.checkpoints_dir(state))] == written


@pytest.mark.parametrize(
    ("changed", "why"),
    [
        ({"slots": 3}, "epoch-000002 was written with training.slots = 2; this run has 3"),
        ({"hidden": 32}, "epoch-000002 was written with training.hidden = 64; this run has 32"),
    ],
)
def test_a_checkpoint_that_does_not_fit_the_config_is_skipped_with_the_key_that_changed(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, changed: dict[str, int], why: str
) -> None:
    """Epoch-2 checkpoints of a 2-slot, 64-wide run; restarted with another shape, the run starts afresh and says
    which key made the checkpoint unusable, instead of dying on it at every restart."""
    catalog = Catalog()
    cache = tmp_path_factory.mktemp("mnist1d")
    base = msgspec.structs.replace(TrainingConfig(seed=0), checkpoint_every_epochs=1, checkpoint_min_interval_s=0.0)

    def run(epochs: int, **config: int) -> list[object]:
        cfg = msgspec.structs.replace(base, epochs=epochs, **config)
        events: list[object] = []
        kernels = EagerKernelSource(catalog)
        Trainer(
            cfg, catalog, kernels, events.append, cache_dir=cache, threads=1, state_dir=tmp_path, signing_key=KEY
        ).run()
        return events

    run(2)
    assert ckpt.candidates(ckpt.checkpoints_dir(tmp_path))[0].name == "epoch-000002"
    events = run(1, **changed)
    warnings = [e.message for e in events if isinstance(e, LogLine) and e.level is Level.WARNING]
    assert any(why in w for w in warnings), warnings
    finished = [e for e in events if isinstance(e, TrainingFinished)]
    assert finished and [e.epoch for e in events if isinstance(e, EpochCompleted)] == [1]
