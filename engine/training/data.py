"""MNIST-1D, the training plane's reference task, generated offline and cached as plain arrays.

`mnist1d.data.get_dataset` downloads a pickle from GitHub; we never call it. `make_dataset` builds the
same 4000/1000 split locally from the package's templates in about a second, and the result is cached
as an `.npz` (loaded with `allow_pickle=False`, so a cache file can never execute code).

Split discipline (`carve`): Tamiyo decides on a validation split carved from the 4000 training samples
with a fixed seed, and the 1000-sample test split is only ever reported. Deciding on the reported split
would tune the run to the very number it quotes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The seed of the published dataset (mnist1d's default): the paper's accuracy table refers to it.
DEFAULT_DATA_SEED = 42
TRAIN_SIZE, TEST_SIZE, SEQ_LEN, CLASSES = 4000, 1000, 40, 10
# The validation split's own seed, fixed for good: every run (and every benchmark row) holds out the same
# samples, so validation numbers compare across runs and no run can pick a lucky split.
VAL_SPLIT_SEED = 20_250_607


@dataclass(frozen=True)
class Dataset:
    """The four arrays of a split; float32 inputs and int64 labels, ready for torch.from_numpy."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def in_features(self) -> int:
        return int(self.x_train.shape[1])

    def validate(self) -> None:
        """Reject a cache file of the wrong shape or dtype instead of training on it."""
        expected = {
            "x_train": ((TRAIN_SIZE, SEQ_LEN), np.float32),
            "y_train": ((TRAIN_SIZE,), np.int64),
            "x_test": ((TEST_SIZE, SEQ_LEN), np.float32),
            "y_test": ((TEST_SIZE,), np.int64),
        }
        for name, (shape, dtype) in expected.items():
            arr = getattr(self, name)
            if arr.shape != shape or arr.dtype != dtype:
                want = f"{np.dtype(dtype)}{list(shape)}"
                raise ValueError(f"{name}: {arr.dtype}{list(arr.shape)}, expected {want}")
        if not (np.isfinite(self.x_train).all() and np.isfinite(self.x_test).all()):
            raise ValueError("non-finite inputs")


def _dataset_args(seed: int) -> dict[str, object]:
    from mnist1d.data import get_dataset_args

    args: dict[str, object] = get_dataset_args(as_dict=True)
    args["seed"] = seed
    args.pop("url", None)  # only get_dataset downloads; keep the address out of the cache key
    return args


def _generate(args: dict[str, object]) -> Dataset:
    """Run mnist1d's local generator, restoring the global RNGs it reseeds (it calls np.random.seed)."""
    from mnist1d.data import ObjectView, make_dataset

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        raw = make_dataset(ObjectView(dict(args)))
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return Dataset(
        x_train=np.ascontiguousarray(raw["x"], dtype=np.float32),
        y_train=np.ascontiguousarray(raw["y"], dtype=np.int64),
        x_test=np.ascontiguousarray(raw["x_test"], dtype=np.float32),
        y_test=np.ascontiguousarray(raw["y_test"], dtype=np.int64),
    )


def cache_path(seed: int, cache_dir: Path) -> Path:
    """The file is keyed by every generation argument, so changed mnist1d defaults never reuse it."""
    key = hashlib.sha256(json.dumps(_dataset_args(seed), sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir / f"mnist1d-seed{seed}-{key}.npz"


def _read(path: Path) -> Dataset:
    with np.load(path, allow_pickle=False) as f:
        ds = Dataset(x_train=f["x_train"], y_train=f["y_train"], x_test=f["x_test"], y_test=f["y_test"])
    ds.validate()
    return ds


def _write(ds: Dataset, path: Path) -> None:
    """Atomic: a reader sees the old file or the whole new one, never a torn write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_mnist1d(seed: int = DEFAULT_DATA_SEED, cache_dir: Path | None = None) -> Dataset:
    """The MNIST-1D split for `seed`: from the cache when present and valid, else generated (and cached)."""
    path = cache_path(seed, cache_dir) if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            return _read(path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # damaged or foreign file: regenerate and overwrite it
    ds = _generate(_dataset_args(seed))
    ds.validate()
    if path is not None:
        _write(ds, path)
    return ds


@dataclass(frozen=True)
class Splits:
    """Train (what the weights see), validation (what decisions see) and test (only ever reported)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def describe(self) -> str:
        return f"{len(self.y_train)} train / {len(self.y_val)} val / {len(self.y_test)} test"


def carve(ds: Dataset, val_samples: int, seed: int = VAL_SPLIT_SEED) -> Splits:
    """Hold out `val_samples` of the training samples as the validation split (a fixed-seed permutation)."""
    if not 0 < val_samples < len(ds.y_train):
        raise ValueError(f"val_samples must lie in (0, {len(ds.y_train)}), got {val_samples}")
    order = np.random.Generator(np.random.PCG64(seed)).permutation(len(ds.y_train))
    val, train = np.sort(order[:val_samples]), np.sort(order[val_samples:])
    return Splits(
        x_train=ds.x_train[train],
        y_train=ds.y_train[train],
        x_val=ds.x_train[val],
        y_val=ds.y_train[val],
        x_test=ds.x_test,
        y_test=ds.y_test,
    )
