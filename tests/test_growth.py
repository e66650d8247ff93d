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
from benchmarks.workload import Workload, params
from esper_tui.engine.config import TrainingConfig
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.kernels.compiled import compiler_id, cpu_isa, kernel_threads
from esper_tui.engine.library.store import Identity, Library
from esper_tui.engine.training.kernel_source import EagerKernelSource

CATALOG = Catalog()
BASE = TrainingConfig(plateau_epochs=1, plateau_delta=1.0, train_epochs=1, blend_epochs=1, holding_epochs=1)
TINY = growth.Protocol(max_epochs=5, patience=5, seeds=(0, 1))


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Workload:
    return Workload.named("mnist1d", BASE, tmp_path_factory.mktemp("mnist1d"))


@pytest.fixture(scope="module")
def grown(w: Workload) -> growth.Row:
    return growth.row_engine("grown", w, CATALOG, EagerKernelSource(CATALOG), TINY, "test")


def test_a_grown_row_grows_and_reports_test_accuracy_of_the_restored_epoch(grown: growth.Row) -> None:
    assert [r.seed for r in grown.runs] == [0, 1]
    for r in grown.runs:
        assert r.architecture, r.decisions  # the fast lifecycle grafted something within 5 epochs
        assert any("germinate" in d for d in r.decisions)
        assert 0.1 < r.test_accuracy <= 1 and 1 <= r.best_epoch <= r.epochs <= 5
    summary = grown.summary()
    assert set(summary) >= {"name", "test_accuracy_mean", "test_accuracy_std", "params", "runs"}
    assert summary["runs"] == 2 and summary["test_accuracy_std"] >= 0


def test_static_twins_match_the_grown_runs(grown: growth.Row, w: Workload) -> None:
    arch = growth.row_static_architecture(w, CATALOG, TINY, grown)
    for twin, static in zip(grown.runs, arch.runs, strict=True):
        assert static.architecture == twin.architecture and static.params == twin.params  # same network
        assert static.epochs <= twin.epochs and not static.decisions  # never grew: built at epoch 0
    mlp = growth.row_static_host(w, CATALOG, TINY, grown)
    for twin, static in zip(grown.runs, mlp.runs, strict=True):
        assert not static.architecture and abs(static.params - twin.params) / twin.params < 0.02


def test_host_width_for_a_parameter_count(w: Workload, tmp_path: Path) -> None:
    host = 40 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10
    assert w.width_for(host) == 64
    assert w.width_for(host + 150) == 65  # nearest, not floor
    cnn = Workload.named("digits", BASE, tmp_path)
    assert cnn.width_for(params(cnn.bare_host(12))) == 12 and cnn.host_kind == "CNN"


def test_logistic_regression_and_the_host_rows(w: Workload) -> None:
    logistic = growth.row_logistic(w, TINY)
    assert all(r.params == 410 and 0.1 < r.test_accuracy < 0.6 for r in logistic.runs)
    host = growth.row_engine("host", w, CATALOG, growth.NoSeeds(CATALOG), TINY, "test")
    assert all(not r.architecture and r.params == params(w.bare_host()) == 7434 for r in host.runs)


def test_the_digits_rows_train_its_conv_host(tmp_path: Path) -> None:
    """--task digits: the same rows on the digits task, its static twin a wider CNN of the grown network's size."""
    d = Workload.named("digits", BASE, tmp_path)
    one = growth.Protocol(max_epochs=4, patience=4, seeds=(0,))
    grown = growth.row_engine("grown", d, CATALOG, EagerKernelSource(CATALOG), one, "test")
    [run] = grown.runs
    assert any("germinate s" in d for d in run.decisions) and 0.1 < run.test_accuracy <= 1, run.decisions
    static = growth.row_static_host(d, CATALOG, one, grown)
    assert static.name == "static CNN, grown's params" and abs(static.runs[0].params - run.params) / run.params < 0.1
    logistic = growth.row_logistic(d, one)
    assert logistic.runs[0].params == 64 * 10 + 10


def test_table_verdict_and_paper_rows(grown: growth.Row, w: Workload) -> None:
    logistic = growth.row_logistic(w, TINY)
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


def test_bare_loop_ratio_measures_both_loops(w: Workload) -> None:
    r = growth.bare_loop_ratio(w, CATALOG, epochs=1, repeats=1)
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
