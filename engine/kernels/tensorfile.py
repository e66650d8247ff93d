"""Weights on disk in the safetensors layout, written and read without pickle.

Layout: u64 little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, then the
raw little-endian tensor bytes. Files written here load with the `safetensors` package too.
"""

from __future__ import annotations

import json
import math
import struct

import torch

_DTYPES: dict[torch.dtype, str] = {
    torch.float32: "F32",
    torch.float64: "F64",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
}
_BY_NAME = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 16 * 1024 * 1024


class TensorFileError(ValueError):
    pass


def dumps(tensors: dict[str, torch.Tensor]) -> bytes:
    header: dict[str, object] = {}
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        if t.dtype not in _DTYPES:
            raise TensorFileError(f"{name}: unsupported dtype {t.dtype}")
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""  # 0-dim too
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)


def loads(data: bytes) -> dict[str, torch.Tensor]:
    if len(data) < 8:
        raise TensorFileError("file shorter than its header length field")
    (n,) = struct.unpack_from("<Q", data)
    if n > _MAX_HEADER or 8 + n > len(data):
        raise TensorFileError(f"header length {n} is impossible for a {len(data)}-byte file")
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError as exc:
        raise TensorFileError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise TensorFileError("header is not a JSON object")
    body = memoryview(data)[8 + n :]
    return {name: _tensor(name, spec, body) for name, spec in header.items() if name != "__metadata__"}


def _tensor(name: str, spec: object, body: memoryview) -> torch.Tensor:
    """One entry, checked field by field: whatever the file says, the only error is TensorFileError."""
    if not isinstance(spec, dict):
        raise TensorFileError(f"{name}: entry is not an object")
    dtype = _BY_NAME.get(spec.get("dtype")) if isinstance(spec.get("dtype"), str) else None
    shape, offsets = spec.get("shape"), spec.get("data_offsets")
    if dtype is None:
        raise TensorFileError(f"{name}: unknown dtype {spec.get('dtype')!r}")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise TensorFileError(f"{name}: shape must be a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise TensorFileError(f"{name}: data_offsets must be two integers")
    start, end = offsets
    count = math.prod(shape)
    if not 0 <= start <= end <= len(body) or end - start != count * dtype.itemsize:
        raise TensorFileError(f"{name}: offsets {offsets} do not hold a {shape} {spec['dtype']} tensor")
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(body[start:end]), dtype=dtype).reshape(shape)
