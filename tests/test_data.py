"""MNIST-1D generation: offline, deterministic, cached as plain arrays."""

from __future__ import annotations

import random
import socket

import mnist1d.data
import numpy as np
import pytest

from esper_tui.engine.training import data as data
from esper_tui.engine.training.data import Dataset, cache_path, load_mnist1d


@pytest.fixture(scope="module")
def generated() -> Dataset:
    return load_mnist1d(42, None)


def test_shapes_and_dtypes(generated: Dataset) -> None:
    assert generated.x_train.shape == (4000, 40) and generated.x_train.dtype == np.float32
    assert generated.y_train.shape == (4000,) and generated.y_train.dtype == np.int64
    assert generated.x_test.shape == (1000, 40) and generated.x_test.dtype == np.float32
    assert generated.y_test.shape == (1000,) and generated.y_test.dtype == np.int64
    assert set(np.unique(generated.y_train)) == set(range(10))
    assert generated.in_features == 40


def test_generation_is_offline_deterministic_and_leaves_global_rngs_alone(generated, monkeypatch) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("MNIST-1D generation tried to reach the network")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(mnist1d.data.requests, "get", no_network)
    np.random.seed(7)
    random.seed(7)
    np_before, py_before = np.random.get_state()[1].copy(), random.getstate()
    again = load_mnist1d(42, None)
    assert np.array_equal(np.random.get_state()[1], np_before) and random.getstate() == py_before
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(again, name), getattr(generated, name))


def test_other_seed_gives_other_data(generated: Dataset) -> None:
    assert not np.array_equal(load_mnist1d(1, None).x_train, generated.x_train)


def test_cache_round_trip_without_pickle(tmp_path, generated, monkeypatch) -> None:
    first = load_mnist1d(42, tmp_path)
    path = cache_path(42, tmp_path)
    assert path.exists() and path.suffix == ".npz"
    with np.load(path, allow_pickle=False) as f:  # plain arrays only
        assert sorted(f.files) == ["x_test", "x_train", "y_test", "y_train"]

    def must_not_generate(*args, **kwargs):
        raise AssertionError("regenerated although a valid cache exists")

    monkeypatch.setattr(data, "_generate", must_not_generate)
    cached = load_mnist1d(42, tmp_path)
    assert np.array_equal(cached.x_train, first.x_train) and np.array_equal(cached.y_test, generated.y_test)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left behind


def test_damaged_cache_is_regenerated(tmp_path, generated, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(data, "_generate", lambda args: calls.append(args) or generated)
    path = cache_path(42, tmp_path)
    path.write_bytes(b"not a zip file")
    assert np.array_equal(load_mnist1d(42, tmp_path).x_train, generated.x_train)
    np.savez(path, x_train=np.zeros((3, 3)), y_train=np.zeros(3), x_test=np.zeros(1), y_test=np.zeros(1))
    assert np.array_equal(load_mnist1d(42, tmp_path).y_train, generated.y_train)
    assert len(calls) == 2
    assert np.array_equal(load_mnist1d(42, tmp_path).x_test, generated.x_test)  # the repaired file is used
    assert len(calls) == 2


def test_validation_is_carved_from_training_samples_with_a_fixed_seed(generated: Dataset) -> None:
    sp = data.carve(generated, 500)
    assert (len(sp.y_train), len(sp.y_val), len(sp.y_test)) == (3500, 500, 1000)
    assert sp.describe() == "3500 train / 500 val / 1000 test"
    rows = lambda x: {r.tobytes() for r in x}  # noqa: E731
    assert rows(sp.x_train) | rows(sp.x_val) == rows(generated.x_train)  # every training sample, once
    assert not rows(sp.x_train) & rows(sp.x_val) and not rows(sp.x_val) & rows(generated.x_test)
    assert np.array_equal(sp.x_test, generated.x_test) and np.array_equal(sp.y_test, generated.y_test)
    again = data.carve(generated, 500)
    assert np.array_equal(again.x_val, sp.x_val) and np.array_equal(again.y_train, sp.y_train)  # fixed seed
    other = data.carve(generated, 500, seed=data.VAL_SPLIT_SEED + 1)
    assert not np.array_equal(other.x_val, sp.x_val)
    assert set(np.unique(sp.y_val)) == set(range(10))


@pytest.mark.parametrize("size", [0, 4000])
def test_carving_needs_samples_on_both_sides(generated: Dataset, size: int) -> None:
    with pytest.raises(ValueError, match="val_samples must lie in"):
        data.carve(generated, size)
