"""Kernels: a real inductor compile writes portable files, and a fresh process runs them without compiling.

The compile is the session's one inductor compile (conftest `compiled_kernel`). Loading happens in a
brand new interpreter that gets nothing but the artifact's bytes; "no recompile" is checked on the
directory listing of that process's private cache (and the processes it started), never on time.
Weights go through the safetensors package; hostile weight files get one error type, KernelError.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap

import pytest
import safetensors.torch
import torch

from esper_tui.engine.kernels.compiled import FN_FILES, KERNEL_DIR, WEIGHTS_FILE, KernelError, initial_weights
from esper_tui.engine.kernels.shapes import vector

# Tests that use the session compile are marked `compile` by conftest; the others here compile nothing.

_LOAD_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, os, sys
    from pathlib import Path

    artifact = Path(sys.argv[1])
    names = json.loads(sys.argv[2])
    blobs = {n: (artifact / n).read_bytes() for n in names}   # only the artifact's bytes

    import subprocess
    spawned = []  # every process started from here on: a compiler or a compile pool would show up
    _popen_init = subprocess.Popen.__init__
    def _spy(self, args, *a, **k):
        spawned.append(args if isinstance(args, str) else " ".join(map(str, args)))
        return _popen_init(self, args, *a, **k)
    subprocess.Popen.__init__ = _spy

    import torch
    from esper_tui.engine.kernels.catalog import Catalog
    from esper_tui.engine.kernels.compiled import initial_weights, kernel_threads, load_kernel, private_cache_dir
    from esper_tui.engine.kernels.shapes import vector

    torch.set_num_threads(kernel_threads())  # what the trainer runs with, and the kernel was built for
    cache = private_cache_dir()
    before = sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())
    bp = Catalog().get(sys.argv[3])
    kernel = load_kernel(bp, blobs, "inductor:default")
    written = sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())

    module = bp.build(vector(40, 64))
    module.load_state_dict(initial_weights(blobs))
    torch.manual_seed(1)
    out = {"before": before, "written": written, "cache": str(cache), "batches": {}}
    for batch in (3, 100):
        x = torch.randn(batch, 40)
        module.zero_grad(set_to_none=True)
        y_c = kernel(module, x)
        y_c.square().mean().backward()
        g_c = [p.grad.clone() for p in module.parameters()]
        module.zero_grad(set_to_none=True)
        y_e = module(x)
        y_e.square().mean().backward()
        g_e = [p.grad.clone() for p in module.parameters()]
        with torch.no_grad():
            y_ng = kernel(module, x)
            y_ng_e = module(x)
        out["batches"][batch] = {
            "shape": list(y_c.shape),
            "forward_err": (y_c - y_e).abs().max().item(),
            "grad_err": max((a - b).abs().max().item() for a, b in zip(g_c, g_e)),
            "grads": len(g_c),
            "requires_grad": y_c.requires_grad,
            "no_grad_err": (y_ng - y_ng_e).abs().max().item(),
            "no_grad_requires_grad": y_ng.requires_grad,
        }
    out["spawned"] = spawned
    out["after"] = sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())
    out["so_sha256"] = {str(p.relative_to(cache)): hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in cache.rglob("*.so")}
    print("RESULT " + json.dumps(out))
    """
)


def test_compile_writes_train_infer_weights_and_kernels(compiled_kernel):
    d = compiled_kernel.directory
    files = compiled_kernel.files
    assert FN_FILES[True] in files and FN_FILES[False] in files and WEIGHTS_FILE in files
    kernels = [f for f in files if f.startswith(KERNEL_DIR + "/")]
    assert kernels and all(f.endswith(".so") for f in kernels), files
    for name in files:
        assert (d / name).is_file() and (d / name).stat().st_size > 0, name
    # Nothing but the listed files is left behind (no cache dir, no scratch).
    on_disk = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())
    assert on_disk == sorted(files)
    assert compiled_kernel.max_abs_error < 1e-3
    assert compiled_kernel.step_ms_compiled > 0 and compiled_kernel.step_ms_eager > 0
    assert compiled_kernel.cpu_isa


def test_fresh_process_loads_from_bytes_matches_eager_without_recompiling(compiled_kernel, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _LOAD_SCRIPT,
            str(compiled_kernel.directory),
            json.dumps(compiled_kernel.files),
            compiled_kernel.blueprint_id,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = json.loads(lines[-1][len("RESULT ") :])

    for batch in ("3", "100"):
        b = out["batches"][batch]
        assert b["shape"] == [int(batch), 64]
        assert b["requires_grad"] is True
        assert b["grads"] == 4  # fc1.weight, fc1.bias, fc2.weight, fc2.bias
        assert b["forward_err"] < 1e-5
        assert b["grad_err"] < 1e-5
        assert b["no_grad_err"] < 1e-5
        assert b["no_grad_requires_grad"] is False

    prefix = KERNEL_DIR + "/"
    expected = {
        f[len(prefix) :]: hashlib.sha256((compiled_kernel.directory / f).read_bytes()).hexdigest()
        for f in compiled_kernel.files
        if f.startswith(prefix)
    }
    assert out["before"] == []
    # The private cache holds exactly the artifact's kernels, byte for byte: nothing was rebuilt.
    assert out["so_sha256"] == expected, f"private cache: {out['after']}"
    # Inductor writes each kernel's C++ source beside it on load (that is its cache key), but a .cpp
    # without an artifact .so beside it would be a kernel compiled here.
    stems = {name.removesuffix(".so") for name in expected}
    for f in out["after"]:
        if f.endswith(".cpp"):
            assert f.removesuffix(".cpp") in stems, f"new C++ source in the private cache: {f}"
        assert not f.endswith((".o", ".so.tmp")), f
    # And no compiler ran on any kernel source (version probes and the shared precompiled header aside).
    compiles = [c for c in out["spawned"] if ".cpp" in c or "compile_worker" in c]
    assert compiles == [], f"loading compiled something: {compiles}"


def test_load_kernel_rejects_garbage_function_file(compiled_kernel):
    from esper_tui.engine.kernels.catalog import Catalog
    from esper_tui.engine.kernels.compiled import KernelError, load_kernel

    blobs = compiled_kernel.read_files()
    blobs[FN_FILES[True]] = b"not a compiled function"
    with pytest.raises(KernelError, match=r"cannot load train\.fn"):
        load_kernel(Catalog().get(compiled_kernel.blueprint_id), blobs, "inductor:default")


def test_initial_weights_match_the_blueprint(compiled_kernel):
    from esper_tui.engine.kernels.catalog import Catalog
    from esper_tui.engine.kernels.compiled import initial_weights

    weights = initial_weights(compiled_kernel.read_files())
    module = Catalog().get(compiled_kernel.blueprint_id).build(vector(40, 64))
    assert set(weights) == set(module.state_dict())
    module.load_state_dict(weights)  # shapes and dtypes fit


@pytest.mark.compile
def test_compile_kernel_emergency_in_process_writes_no_kernels(tmp_path):
    """Eager (Emergency) is the cheap, always-works path: function files and weights, no .so."""
    from esper_tui.engine.kernels.catalog import Catalog
    from esper_tui.engine.kernels.compiled import compile_kernel
    from esper_tui.engine.kernels.pipelines import settings_for
    from esper_tui.engine.vocabulary import Strategy

    out = compile_kernel(
        Catalog().get("lowrank_adapter"), vector(40, 64), settings_for(Strategy.EMERGENCY), tmp_path / "k"
    )
    assert sorted(out.files) == sorted([FN_FILES[True], FN_FILES[False], WEIGHTS_FILE])
    assert out.max_abs_error < 1e-3
    on_disk = sorted(str(p.relative_to(tmp_path / "k")) for p in (tmp_path / "k").rglob("*") if p.is_file())
    assert on_disk == sorted(out.files)


# ----------------------------------------------------------------------------- weights: the safetensors package


@pytest.fixture
def no_pickle(monkeypatch):
    """Reading a weights file must never unpickle anything."""

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)


def _weights(data: bytes) -> dict[str, torch.Tensor]:
    return initial_weights({WEIGHTS_FILE: data})


def test_session_weights_are_plain_safetensors(compiled_kernel, no_pickle):
    data = compiled_kernel.read_files()[WEIGHTS_FILE]
    by_package = safetensors.torch.load(data)
    ours = _weights(data)
    assert set(ours) == set(by_package) and all(torch.equal(ours[k], by_package[k]) for k in ours)


def test_weights_written_by_the_old_tensorfile_still_load(no_pickle):
    """Artifacts stored before the switch: tensorfile wrote this exact layout (sorted names, header padded to 8)."""
    header = (
        b'{"a":{"dtype":"I32","shape":[3],"data_offsets":[0,12]},"s":{"dtype":"F32","shape":[],"data_offsets":[12,16]}}'
    )
    header += b" " * (-len(header) % 8)
    data = struct.pack("<Q", len(header)) + header + struct.pack("<3if", 0, 1, 2, 3.5)
    back = _weights(data)
    assert torch.equal(back["a"], torch.arange(3, dtype=torch.int32))
    assert back["s"].shape == () and back["s"].item() == 3.5


def test_zero_dim_and_empty_tensors_round_trip(no_pickle):
    """e.g. BatchNorm's num_batches_tracked; loaded tensors are writable and share nothing with the bytes."""
    tensors = {
        "scalar": torch.tensor(3.5),
        "count": torch.tensor(7, dtype=torch.int64),
        "empty": torch.empty(0, 3),
        "w": torch.randn(4, 6),
    }
    data = safetensors.torch.save(tensors)
    back = _weights(data)
    assert all(torch.equal(back[k], v) and back[k].shape == v.shape for k, v in tensors.items())
    back["w"] += 1
    assert torch.equal(_weights(data)["w"], tensors["w"])


def _file(header: object, body: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def _entry(dtype: str, shape: list[int], start: int, end: int) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


GOOD = safetensors.torch.save({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)})


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(GOOD[:7], id="truncated-length-field"),
        pytest.param(GOOD[:20], id="truncated-header"),
        pytest.param(struct.pack("<Q", 1 << 60) + b"{}", id="absurd-header-length"),
        pytest.param(struct.pack("<Q", 100) + b"{}", id="header-length-past-eof"),
        pytest.param(_file(b"not json at all"), id="header-not-json"),
        pytest.param(_file(b"\xff\xfe\xfd"), id="header-not-utf8"),
        pytest.param(pickle.dumps({"w": [1, 2, 3]}), id="a-pickle"),
        pytest.param(_file([1, 2, 3]), id="header-is-a-list"),
        pytest.param(_file({"w": 5}), id="entry-not-an-object"),
        pytest.param(_file({"w": {}}), id="entry-missing-fields"),
        pytest.param(_file({"w": _entry("Q99", [1], 0, 4)}, bytes(4)), id="unknown-dtype"),
        pytest.param(_file({"w": _entry("F8_E8M0", [2], 0, 2)}, bytes(2)), id="dtype-torch-lacks"),
        pytest.param(_file({"w": _entry("F32", [2, 3], 0, 24)}, bytes(8)), id="data-truncated"),
        pytest.param(_file({"w": _entry("F32", [1], 4, 0)}, bytes(4)), id="offsets-reversed"),
        pytest.param(_file({"w": _entry("F32", [100], 0, 4)}, bytes(4)), id="shape-does-not-match-bytes"),
        pytest.param(_file({"w": _entry("F32", [1], 0, 3)}, bytes(4)), id="bytes-not-a-multiple-of-itemsize"),
        pytest.param(_file({"w": _entry("F32", [-1], 0, 4)}, bytes(4)), id="negative-shape"),
        pytest.param(_file({"w": _entry("F32", [1 << 40, 1 << 40], 0, 4)}, bytes(4)), id="shape-overflows"),
        pytest.param(_file({"w": _entry("F32", [], 0, 0)}), id="zero-dim-without-data"),
        # What the hand-written reader accepted and safetensors does not:
        pytest.param(_file({"a": _entry("F32", [1], 0, 4), "b": _entry("F32", [1], 8, 12)}, bytes(12)), id="gapped"),
        pytest.param(_file({"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [2], 4, 12)}, bytes(12)), id="overlap"),
        pytest.param(_file({"a": _entry("F32", [1], 0, 4)}, bytes(8)), id="trailing-bytes"),
    ],
)
def test_hostile_weights_are_refused_with_kernel_error(data, no_pickle):
    with pytest.raises(KernelError, match=WEIGHTS_FILE):
        _weights(data)


def test_every_truncation_of_a_valid_weights_file_is_refused(no_pickle):
    for cut in range(len(GOOD)):
        with pytest.raises(KernelError):
            _weights(GOOD[:cut])


def test_missing_weights_file_is_a_kernel_error():
    with pytest.raises(KernelError, match="is missing"):
        initial_weights({})


def test_a_process_private_kernel_cache_is_removed_when_the_process_ends(tmp_path):
    """Both ways a process ends here: a normal exit (atexit), and os._exit after release_private_cache (the
    training process's way)."""
    for ending in ("", "compiled.release_private_cache(); os._exit(0)"):
        code = (
            "import os\nfrom esper_tui.engine.kernels import compiled\n"
            f"d = compiled.private_cache_dir(); (d / 'k.so').write_bytes(b'x'); print(d, flush=True)\n{ending}"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        cache = out.stdout.strip()
        assert cache and not os.path.exists(cache), ending
