"""Weights files: the safetensors layout, written and read without pickle, garbage refused cleanly."""

from __future__ import annotations

import json
import pickle
import struct

import pytest
import torch

from esper_tui.engine.kernels import tensorfile as tensorfile
from esper_tui.engine.kernels.tensorfile import TensorFileError

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32]


@pytest.fixture(autouse=True)
def no_pickle(monkeypatch):
    """Reading a weights file must never unpickle anything."""

    def refuse(*_a, **_k):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)


def _sample(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if dtype.is_floating_point:
        return torch.randn(shape).to(dtype)
    return torch.randint(-1000, 1000, shape, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4), (0,), (0, 3), (1,)])
def test_round_trip(dtype, shape):
    t = _sample(dtype, shape)
    back = tensorfile.loads(tensorfile.dumps({"t": t}))
    assert set(back) == {"t"}
    assert back["t"].dtype == dtype and back["t"].shape == t.shape
    assert torch.equal(back["t"], t)


def test_round_trip_of_many_tensors_and_a_state_dict():
    torch.manual_seed(0)
    tensors = {f"x{i}": _sample(d, (i + 1, 2)) for i, d in enumerate(DTYPES)}
    tensors["empty"] = torch.empty(0, dtype=torch.float32)
    tensors["noncontig"] = torch.randn(4, 6).t()
    back = tensorfile.loads(tensorfile.dumps(tensors))
    assert set(back) == set(tensors)
    for name, t in tensors.items():
        assert torch.equal(back[name], t), name
    sd = torch.nn.Linear(40, 64).state_dict()
    again = tensorfile.loads(tensorfile.dumps(dict(sd)))
    assert all(torch.equal(again[k], v) for k, v in sd.items())


def test_empty_dict_round_trips():
    assert tensorfile.loads(tensorfile.dumps({})) == {}


def test_loaded_tensors_are_writable_copies():
    data = tensorfile.dumps({"a": torch.ones(3)})
    t = tensorfile.loads(data)["a"]
    t += 1  # must not touch (or fail on) the source bytes
    assert torch.equal(tensorfile.loads(data)["a"], torch.ones(3))


def test_layout_is_safetensors():
    data = tensorfile.dumps({"a": torch.arange(3, dtype=torch.int32)})
    (n,) = struct.unpack_from("<Q", data)
    assert n % 8 == 0
    header = json.loads(data[8 : 8 + n])
    assert header == {"a": {"dtype": "I32", "shape": [3], "data_offsets": [0, 12]}}
    assert data[8 + n :] == struct.pack("<3i", 0, 1, 2)
    assert not data.startswith(b"\x80")  # not a pickle stream


def test_unsupported_dtype_is_refused():
    with pytest.raises(TensorFileError, match="unsupported dtype"):
        tensorfile.dumps({"b": torch.zeros(2, dtype=torch.bool)})


def test_zero_dim_tensor_round_trips():
    # e.g. BatchNorm's num_batches_tracked in a state dict
    tensors = {"scalar": torch.tensor(3.5), "count": torch.tensor(7, dtype=torch.int64)}
    back = tensorfile.loads(tensorfile.dumps(tensors))
    assert all(torch.equal(back[k], v) and back[k].shape == () for k, v in tensors.items())


def _file(header: object, body: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


GOOD = tensorfile.dumps({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)})


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x05\x00\x00", id="shorter-than-length-field"),
        pytest.param(GOOD[:7], id="truncated-length-field"),
        pytest.param(GOOD[:20], id="truncated-header"),
        pytest.param(struct.pack("<Q", 1 << 60) + b"{}", id="absurd-header-length"),
        pytest.param(struct.pack("<Q", 100) + b"{}", id="header-length-past-eof"),
        pytest.param(_file(b"not json at all"), id="header-not-json"),
        pytest.param(_file(b"\xff\xfe\xfd"), id="header-not-utf8"),
        pytest.param(pickle.dumps({"w": [1, 2, 3]}), id="a-pickle"),
        pytest.param(
            _file({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}, b"\0" * 8), id="data-truncated"
        ),
        pytest.param(
            _file({"w": {"dtype": "Q99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), id="unknown-dtype"
        ),
        pytest.param(
            _file({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4), id="offsets-reversed"
        ),
        pytest.param(_file([1, 2, 3]), id="header-is-a-list"),
        pytest.param(_file(b"7"), id="header-is-a-number"),
        pytest.param(_file({"w": 5}), id="entry-not-an-object"),
        pytest.param(_file({"w": {}}), id="entry-missing-fields"),
        pytest.param(
            _file({"w": {"dtype": "F32", "shape": [100], "data_offsets": [0, 4]}}, b"\0" * 4),
            id="shape-does-not-match-bytes",
        ),
        pytest.param(
            _file({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 3]}}, b"\0" * 4),
            id="bytes-not-a-multiple-of-itemsize",
        ),
        pytest.param(
            _file({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4), id="negative-shape"
        ),
        pytest.param(
            _file({"w": {"dtype": "F32", "shape": [1], "data_offsets": "ab"}}, b"\0" * 4), id="offsets-not-numbers"
        ),
    ],
)
def test_garbage_is_refused_with_tensorfile_error(data):
    with pytest.raises(TensorFileError):
        tensorfile.loads(data)


def test_every_truncation_of_a_valid_file_is_refused():
    (n,) = struct.unpack_from("<Q", GOOD)
    for cut in range(len(GOOD)):
        if cut >= 8 + n:
            break  # past the header the data offsets decide; covered by data-truncated
        with pytest.raises(TensorFileError):
            tensorfile.loads(GOOD[:cut])


def test_metadata_entry_is_ignored():
    t = torch.arange(4, dtype=torch.int64)
    raw = t.numpy().tobytes()
    data = _file({"__metadata__": {"format": "pt"}, "t": {"dtype": "I64", "shape": [4], "data_offsets": [0, 32]}}, raw)
    assert torch.equal(tensorfile.loads(data)["t"], t)
