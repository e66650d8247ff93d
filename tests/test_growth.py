"""The growth benchmark's parts, run tiny (2 epochs, one seed): rows, twins, the table and its ratios.

The benchmark itself (`python -m benchmarks.growth`) is too slow for the test run; these check that each
row trains what it claims, under the shared protocol, and that the report has the promised shape.
"""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch

from benchmarks import growth
from esper_tui.engine.config import TrainingConfig
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.kernels.compiled import compiler_id, cpu_isa, kernel_threads
from esper_tui.engine.library.store import Identity, Library
from esper_tui.engine.training.data import Splits, carve, load_mnist1d
from esper_tui.engine.training.kernel_source import EagerKernelSource

CATALOG = Catalog()
BASE = TrainingConfig(plateau_epochs=1, plateau_delta=1.0, train_epochs=1, blend_epochs=1, holding_epochs=1)
TINY = growth.Protocol(max_epochs=5, patience=5, seeds=(0, 1))


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> Splits:
    return carve(load_mnist1d(42, tmp_path_factory.mktemp("mnist1d")), BASE.val_samples)


@pytest.fixture(scope="module")
def grown(splits: Splits) -> growth.Row:
    return growth.row_engine("grown", BASE, CATALOG, EagerKernelSource(CATALOG), splits, TINY, "test")


def test_a_grown_row_grows_and_reports_test_accuracy_of_the_restored_epoch(grown: growth.Row) -> None:
    assert [r.seed for r in grown.runs] == [0, 1]
    for r in grown.runs:
        assert r.architecture, r.decisions  # the fast lifecycle grafted something within 5 epochs
        assert any("germinate" in d for d in r.decisions)
        assert 0.1 < r.test_accuracy <= 1 and 1 <= r.best_epoch <= r.epochs <= 5
    summary = grown.summary()
    assert set(summary) >= {"name", "test_accuracy_mean", "test_accuracy_std", "params", "runs"}
    assert summary["runs"] == 2 and summary["test_accuracy_std"] >= 0


def test_static_twins_match_the_grown_runs(grown: growth.Row, splits: Splits) -> None:
    arch = growth.row_static_architecture(BASE, CATALOG, splits, TINY, grown)
    for twin, static in zip(grown.runs, arch.runs, strict=True):
        assert static.architecture == twin.architecture and static.params == twin.params  # same network
        assert static.epochs <= twin.epochs and not static.decisions  # never grew: built at epoch 0
    mlp = growth.row_static_mlp(BASE, CATALOG, splits, TINY, grown)
    for twin, static in zip(grown.runs, mlp.runs, strict=True):
        assert not static.architecture and abs(static.params - twin.params) / twin.params < 0.02


def test_mlp_width_for_a_parameter_count() -> None:
    host = 40 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10
    assert growth.mlp_hidden_for(host) == 64
    assert growth.mlp_hidden_for(host + 150) == 65  # nearest, not floor


def test_logistic_regression_and_the_host_rows(splits: Splits) -> None:
    logistic = growth.row_logistic(BASE, splits, TINY)
    assert all(r.params == 410 and 0.1 < r.test_accuracy < 0.6 for r in logistic.runs)
    host = growth.row_engine("host", BASE, CATALOG, growth.NoSeeds(CATALOG), splits, TINY, "test")
    assert all(not r.architecture and r.params == growth.mlp_params(64) for r in host.runs)


def test_table_verdict_and_paper_rows(grown: growth.Row, splits: Splits) -> None:
    logistic = growth.row_logistic(BASE, splits, TINY)
    paper = growth.Row("paper: CNN", [], "quoted", paper_accuracy=0.94)
    text = growth.table([logistic, grown, paper])
    assert "logistic regression" in text and "94.0%" in text and "±" in text
    assert paper.summary() == {
        "name": "paper: CNN",
        "test_accuracy_mean": 0.94,
        "test_accuracy_std": None,
        "params": None,
        "runs": 0,
        "note": "quoted",
    }
    line = growth.verdict(grown, logistic)
    assert line.startswith("grown beats logistic regression: +") or " matches " in line


def test_bare_loop_ratio_measures_both_loops(splits: Splits) -> None:
    r = growth.bare_loop_ratio(BASE, CATALOG, splits, epochs=1, repeats=1)
    assert r["engine_epoch_ms"] > 0 and r["bare_epoch_ms"] > 0
    assert r["bare_loop_ratio"] == pytest.approx(r["bare_epoch_ms"] / r["engine_epoch_ms"])  # one pair
    assert r["ratio_min"] == r["bare_loop_ratio"] == r["ratio_max"]


def test_compiled_over_eager_per_library_kernel(tmp_path: Path, commit_artifact) -> None:
    identity = Identity(
        str(torch.__version__), platform.python_version(), "cpu", cpu_isa(), kernel_threads(), compiler_id()
    )
    lib = Library(tmp_path / "library", bytes(range(32)), CATALOG, identity=identity)
    commit_artifact(lib, "mlp_block", "a" * 64, step_ms_compiled=2.0, step_ms_eager=1.0)
    ratios = growth.compiled_over_eager(lib, CATALOG, 64, repeats=1, steps=2)
    [(bp, k)] = ratios.items()
    assert bp == "mlp_block" and k["forge_step_ratio"] == 2.0
    assert k["train_step_ratio"] == pytest.approx(k["train_step_ms_compiled"] / k["train_step_ms_eager"])
    assert k["no_grad_ratio"] > 0
