"""Weights on disk in the safetensors layout, written and read without pickle.

Layout: u64 little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, then the
raw little-endian tensor bytes. Files written here load with the `safetensors` package too.
"""

from __future__ import annotations

import json
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
        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
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
    body = memoryview(data)[8 + n :]
    out: dict[str, torch.Tensor] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        start, end = spec["data_offsets"]
        dtype = _BY_NAME.get(spec["dtype"])
        if dtype is None or not 0 <= start <= end <= len(body):
            raise TensorFileError(f"{name}: bad dtype or offsets")
        flat = torch.frombuffer(bytearray(body[start:end]), dtype=dtype) if end > start else torch.empty(0, dtype=dtype)
        out[name] = flat.reshape(spec["shape"])
    return out
