"""Urza: signed, versioned artifacts; verification before loading; quarantine; TTL cache; signing keys.

Artifacts are copies of the session's one real inductor compile (conftest `commit_artifact`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
import torch

from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.kernels.compiled import KernelError
from esper_tui.engine.kernels.shapes import vector
from esper_tui.engine.library import signing as signing
from esper_tui.engine.library import store as library_mod
from esper_tui.engine.library.meta import LEGACY_SHAPE, ArtifactMeta, KernelBuild
from esper_tui.engine.library.signing import SigningKeyError, SigningKeyMissing, load_key, load_or_create_key
from esper_tui.engine.library.store import ArtifactInvalid, Library, version_dir_name
from esper_tui.engine.training.kernel_source import KernelUnavailable
from esper_tui.engine.training.library_source import LibraryKernelSource
from tests.conftest import KERNEL_BLUEPRINT

MNIST1D = vector(40, 64)  # the shape the session kernel was compiled for

KEY = bytes(range(32))
K1 = hashlib.sha256(b"one").hexdigest()
K2 = hashlib.sha256(b"two").hexdigest()
K3 = hashlib.sha256(b"three").hexdigest()


@pytest.fixture(autouse=True)
def no_env_key(monkeypatch):
    monkeypatch.delenv(signing.ENV_VAR, raising=False)


@pytest.fixture
def quarantined() -> list[tuple[str, str, str]]:
    return []


@pytest.fixture
def lib(state_dir, fake_clock, quarantined, identity) -> Library:
    return Library(
        state_dir / "library",
        KEY,
        Catalog(),
        identity=identity,
        cache_ttl_s=60.0,
        clock=fake_clock,
        on_quarantine=lambda *args: quarantined.append(args),
    )


def _dir(lib: Library, meta: ArtifactMeta) -> Path:
    return lib.root / "artifacts" / meta.blueprint_id / version_dir_name(meta)


def _flip_byte(path: Path, at: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------- commit / current


def test_layout_on_creation(lib):
    for sub in ("artifacts", "staging", "quarantine"):
        assert (lib.root / sub).is_dir()


def test_commit_makes_version_1_then_2_and_current_serves_newest(lib, commit_artifact, compiled_kernel):
    m1 = commit_artifact(lib, key=K1)
    assert m1.version == 1
    d1 = _dir(lib, m1)
    assert d1.is_dir() and (d1 / "meta.json").is_file() and (d1 / "meta.sig").is_file()
    assert m1.ir_hash == Catalog().get("mlp_block").ir_hash()
    assert sorted(f.name for f in m1.files) == sorted(compiled_kernel.files)
    for f in m1.files:
        data = (d1 / f.name).read_bytes()
        assert f.sha256 == hashlib.sha256(data).hexdigest() and f.size == len(data)
    assert list((lib.root / "staging").iterdir()) == []  # the staged directory was renamed into place

    m2 = commit_artifact(lib, key=K2)
    assert m2.version == 2
    assert lib.current("mlp_block", MNIST1D).version == 2
    assert lib.current("mlp_block", MNIST1D, key=K1).version == 1  # an older version by its key
    assert lib.current("mlp_block", MNIST1D, key=K3) is None
    assert lib.current("gated_block", MNIST1D) is None
    assert [p.name for p in lib.version_dirs()] == [_dir(lib, m1).name, _dir(lib, m2).name]
    for meta in (m1, m2):
        read, blobs = lib.read_verified(_dir(lib, meta))
        assert read == meta
        assert set(blobs) == set(compiled_kernel.files)
        assert lib.verify(_dir(lib, meta)) is None


def test_meta_json_is_signed_with_hmac(lib, commit_artifact):
    d = _dir(lib, commit_artifact(lib, key=K1))
    raw = (d / "meta.json").read_bytes()
    assert signing.verify(KEY, raw, (d / "meta.sig").read_text())
    assert msgspec.json.decode(raw, type=ArtifactMeta).artifact_id == K1


def _alter_meta(d: Path) -> None:
    raw = (d / "meta.json").read_text()
    assert '"step_ms_compiled"' in raw
    meta = msgspec.json.decode(raw.encode(), type=ArtifactMeta)
    forged = msgspec.structs.replace(meta, step_ms_compiled=0.001)  # still valid, still parses: just not signed
    (d / "meta.json").write_bytes(msgspec.json.format(msgspec.json.encode(forged)))


def _alter_weights(d: Path) -> None:
    _flip_byte(d / "weights.safetensors")


def _alter_kernel(d: Path) -> None:
    _flip_byte(next(d.glob("kernels/*/*.so")), 100)


def _remove_function(d: Path) -> None:
    (d / "infer.fn").unlink()


def _remove_signature(d: Path) -> None:
    (d / "meta.sig").unlink()


def _alter_signature(d: Path) -> None:
    sig = (d / "meta.sig").read_text()
    (d / "meta.sig").write_text(("0" if sig[0] != "0" else "1") + sig[1:])


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (_alter_meta, "signature mismatch"),
        (_alter_weights, "weights.safetensors does not match"),
        (_alter_kernel, ".so does not match"),
        (_remove_function, "infer.fn is missing"),
        (_remove_signature, "missing metadata or signature"),
        (_alter_signature, "signature mismatch"),
    ],
)
def test_read_verified_rejects_tampering(lib, commit_artifact, tamper, message):
    d = _dir(lib, commit_artifact(lib, key=K1))
    tamper(d)
    with pytest.raises(ArtifactInvalid, match=message):
        lib.read_verified(d)
    assert message.split()[0] in lib.verify(d)


def test_read_verified_rejects_a_wrong_key(lib, commit_artifact, state_dir):
    d = _dir(lib, commit_artifact(lib, key=K1))
    other = Library(state_dir / "library", bytes(32), Catalog())
    with pytest.raises(ArtifactInvalid, match="signature mismatch"):
        other.read_verified(d)
    lib.read_verified(d)  # the right key still verifies


def test_read_verified_rejects_files_escaping_the_directory(lib, commit_artifact):
    """Even a correctly signed meta.json may not point outside its artifact directory."""
    d = _dir(lib, commit_artifact(lib, key=K1))
    (d.parent / "outside").write_bytes(b"x")
    meta = msgspec.json.decode((d / "meta.json").read_bytes(), type=ArtifactMeta)
    evil = msgspec.structs.replace(
        meta,
        files=[
            *meta.files,
            msgspec.structs.replace(meta.files[0], name="../outside", sha256=hashlib.sha256(b"x").hexdigest(), size=1),
        ],
    )
    raw = msgspec.json.encode(evil)
    (d / "meta.json").write_bytes(raw)
    (d / "meta.sig").write_text(signing.sign(KEY, raw))
    with pytest.raises(ArtifactInvalid, match="escapes"):
        lib.read_verified(d)


def test_tampered_newest_is_quarantined_and_current_falls_back(lib, commit_artifact, quarantined):
    m1 = commit_artifact(lib, key=K1)
    m2 = commit_artifact(lib, key=K2)
    _alter_weights(_dir(lib, m2))
    assert lib.current("mlp_block", MNIST1D) == m1
    assert not _dir(lib, m2).exists()
    moved = list((lib.root / "quarantine").iterdir())
    assert len(moved) == 1
    q = moved[0]
    assert q.name.startswith(f"mlp_block-{_dir(lib, m2).name}-")
    assert "weights.safetensors" in (q / "QUARANTINED").read_text()
    assert (q / "meta.json").is_file()  # kept whole for inspection
    assert lib.stats.quarantined == 1
    assert len(quarantined) == 1
    assert quarantined[0][:2] == ("mlp_block", _dir(lib, m2).name) and "weights" in quarantined[0][2]
    # Asked again: the good version, and nothing more is quarantined.
    assert lib.current("mlp_block", MNIST1D) == m1
    assert len(quarantined) == 1


def test_all_versions_bad_gives_none(lib, commit_artifact, quarantined):
    m1 = commit_artifact(lib, key=K1)
    _remove_function(_dir(lib, m1))
    assert lib.current("mlp_block", MNIST1D) is None
    assert [q[1] for q in quarantined] == [_dir(lib, m1).name]
    assert lib.version_dirs() == []


def test_commit_after_an_undecodable_newest_version(lib, commit_artifact):
    commit_artifact(lib, key=K1)
    m2 = commit_artifact(lib, key=K2)
    (_dir(lib, m2) / "meta.json").write_bytes(b"\x00garbage")
    assert lib.current("mlp_block", MNIST1D).version == 1
    m3 = commit_artifact(lib, key=K2)  # the forge recompiling the same key: OSError ENOTEMPTY today
    assert m3.version == 3
    assert lib.current("mlp_block", MNIST1D) == m3


def test_quarantine_twice_in_the_same_second(lib, commit_artifact, monkeypatch):
    monkeypatch.setattr(library_mod.time, "time", lambda: 1_700_000_000.0)
    for _ in range(2):
        m = commit_artifact(lib, key=K1)  # version numbers come back after a quarantine: same name again
        _alter_weights(_dir(lib, m))
        assert lib.current("mlp_block", MNIST1D) is None
    assert len(list((lib.root / "quarantine").iterdir())) == 2


# ---------------------------------------------------------------------------------- listing


def test_ranked_orders_by_served_step_time_and_by_tag_filters(lib, commit_artifact):
    commit_artifact(lib, "mlp_block", K1, step_ms_compiled=3.0, step_ms_eager=9.0)
    commit_artifact(lib, "lowrank_adapter", K2, step_ms_compiled=1.0, step_ms_eager=9.0)
    # compiled is slow here, but eager (served instead) is the second fastest step
    commit_artifact(lib, "depthwise_conv", K3, step_ms_compiled=8.0, step_ms_eager=0.7)
    commit_artifact(lib, "mlp_block", K2, step_ms_compiled=0.5, step_ms_eager=9.0)  # newest: now the fastest
    assert [(m.blueprint_id, m.step_ms_compiled) for m in lib.ranked()] == [
        ("mlp_block", 0.5),
        ("depthwise_conv", 8.0),
        ("lowrank_adapter", 1.0),
    ]
    assert [m.blueprint_id for m in lib.by_tag("cheap")] == ["depthwise_conv", "lowrank_adapter"]
    assert [m.blueprint_id for m in lib.ranked(tag="conv")] == ["depthwise_conv"]
    assert lib.by_tag("attention") == []
    assert {m.blueprint_id: m.version for m in lib.all_current()} == {
        "mlp_block": 2,
        "lowrank_adapter": 1,
        "depthwise_conv": 1,
    }


def test_clean_staging_removes_leftovers(lib, commit_artifact):
    m = commit_artifact(lib, key=K1)
    left = lib.new_staging_dir("mlp_block")
    (left / "train.fn").write_bytes(b"half written")
    tmp = lib.root / "artifacts" / "mlp_block" / ".v0002-abc.tmp"
    tmp.mkdir()
    (tmp / "x").write_bytes(b"x")
    removed = lib.clean_staging()
    assert left.name in removed and str(tmp) in removed
    assert list((lib.root / "staging").iterdir()) == []
    assert not tmp.exists()
    assert _dir(lib, m).is_dir() and lib.current("mlp_block", MNIST1D) == m  # committed versions untouched
    assert lib.clean_staging() == []


# ---------------------------------------------------------------------------------- loading (TTL cache)


def test_load_goes_through_the_ttl_cache(lib, commit_artifact, fake_clock, kernel_threads):
    m = commit_artifact(lib, key=K1)
    kernel, meta = lib.load("mlp_block", MNIST1D)
    assert meta == m and kernel.label == "inductor:default"
    assert (lib.stats.cache_hits, lib.stats.cache_misses) == (0, 1)

    module = Catalog().get("mlp_block").build(vector(40, 64))
    x = torch.randn(5, 40)
    assert torch.allclose(kernel(module, x), module(x), atol=1e-5)

    again, _ = lib.load("mlp_block", MNIST1D)
    assert again is kernel
    assert (lib.stats.cache_hits, lib.stats.cache_misses) == (1, 1)
    assert lib.stats.hit_rate == 0.5

    fake_clock.advance(59)
    assert lib.load("mlp_block", MNIST1D)[0] is kernel
    assert lib.expire() == 0
    fake_clock.advance(2)  # past the 60 s TTL
    assert lib.expire() == 1
    third, _ = lib.load("mlp_block", MNIST1D)
    assert (lib.stats.cache_hits, lib.stats.cache_misses) == (2, 2)
    assert lib.stats.hit_rate == 0.5
    fake_clock.advance(61)
    lib.load("mlp_block", MNIST1D)  # expired entries miss even without expire()
    assert lib.stats.cache_misses == 3
    assert lib.drop_cache() == 1
    assert third is not None


def test_load_of_a_new_version_misses_the_cache(lib, commit_artifact, kernel_threads):
    commit_artifact(lib, key=K1)
    lib.load("mlp_block", MNIST1D)
    commit_artifact(lib, key=K2)
    _, meta = lib.load("mlp_block", MNIST1D)
    assert meta.version == 2
    assert lib.stats.cache_misses == 2 and lib.stats.cache_hits == 0


def test_load_refuses_and_quarantines_a_tampered_kernel(lib, commit_artifact):
    m = commit_artifact(lib, key=K1)
    _alter_kernel(_dir(lib, m))
    with pytest.raises(ArtifactInvalid, match="does not match"):
        lib.load("mlp_block", MNIST1D)
    assert not _dir(lib, m).exists() and lib.stats.quarantined == 1
    with pytest.raises(ArtifactInvalid, match="no compiled kernel"):
        lib.load("mlp_block", MNIST1D)


def test_a_load_past_the_ttl_verifies_again_and_reuses_the_deserialised_kernel(
    lib, commit_artifact, fake_clock, quarantined, kernel_threads
):
    m = commit_artifact(lib, key=K1)
    kernel, _ = lib.load("mlp_block", MNIST1D)
    fake_clock.advance(61)  # past the TTL: the next load reads and checks every file again
    again, meta = lib.load("mlp_block", MNIST1D)
    assert again is kernel and meta == m
    assert (lib.stats.cache_misses, lib.stats.reused) == (2, 1)
    module = Catalog().get("mlp_block").build(vector(40, 64))
    x = torch.randn(5, 40)
    assert torch.allclose(again(module, x), module(x), atol=1e-5)

    lib.drop_cache()  # the memory breaker's cleanup: deserialised kernels go too
    assert lib.load("mlp_block", MNIST1D)[0] is not kernel


@pytest.mark.parametrize(
    ("tamper", "message"), [(_alter_kernel, ".so does not match"), (_alter_signature, "signature")]
)
def test_a_kernel_deserialised_before_is_still_refused_when_its_bytes_change(
    lib, commit_artifact, fake_clock, quarantined, kernel_threads, tamper, message
):
    m = commit_artifact(lib, key=K1)
    lib.load("mlp_block", MNIST1D)
    tamper(_dir(lib, m))
    fake_clock.advance(61)
    with pytest.raises(ArtifactInvalid, match=message):
        lib.load("mlp_block", MNIST1D)
    assert [q[1] for q in quarantined] == [_dir(lib, m).name] and lib.stats.reused == 0


def test_hit_rate_is_zero_without_lookups(lib):
    assert lib.stats.hit_rate == 0.0


# ---------------------------------------------------------------------------------- signing key


def test_key_file_is_created_0600_and_reused(state_dir):
    key = load_or_create_key(state_dir)
    path = state_dir / "keys" / "signing.key"
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    assert bytes.fromhex(path.read_text()) == key
    assert load_or_create_key(state_dir) == key
    assert not list(path.parent.glob("*.tmp"))


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_key_file_readable_by_others_is_refused(state_dir, mode):
    load_or_create_key(state_dir)
    path = state_dir / "keys" / "signing.key"
    os.chmod(path, mode)
    with pytest.raises(SigningKeyError, match="chmod 600"):
        load_or_create_key(state_dir)


def test_env_key_wins_over_config_and_file(state_dir, monkeypatch):
    file_key = load_or_create_key(state_dir)
    os.chmod(state_dir / "keys" / "signing.key", 0o644)  # not even read when the env var is set
    env_key = "ab" * 32
    monkeypatch.setenv(signing.ENV_VAR, env_key)
    assert load_or_create_key(state_dir, configured="cd" * 32) == bytes.fromhex(env_key)
    assert bytes.fromhex(env_key) != file_key


def test_configured_key_wins_over_the_file(state_dir):
    assert load_or_create_key(state_dir, configured="cd" * 16) == bytes.fromhex("cd" * 16)
    assert not (state_dir / "keys" / "signing.key").exists()


@pytest.mark.parametrize("bad", ["zz" * 32, "ab" * 8])
def test_bad_keys_are_refused(state_dir, monkeypatch, bad):
    with pytest.raises(SigningKeyError):
        load_or_create_key(state_dir, configured=bad)
    monkeypatch.setenv(signing.ENV_VAR, bad)
    with pytest.raises(SigningKeyError, match=signing.ENV_VAR):
        load_or_create_key(state_dir)


def test_sign_and_verify():
    sig = signing.sign(KEY, b"data")
    assert signing.verify(KEY, b"data", sig + "\n")
    assert not signing.verify(KEY, b"datA", sig)
    assert not signing.verify(bytes(32), b"data", sig)


# ---------------------------------------------------------------------------------- verified identity == location


def test_two_shapes_and_another_device_of_one_blueprint_are_kept_apart(lib, commit_artifact, quarantined):
    small = vector(12, 8)
    m1 = commit_artifact(lib, key=K1)
    m2 = commit_artifact(lib, key=K2, shape=small.tag)
    gpu = commit_artifact(lib, key=K3, device="cuda")  # a GPU engine's kernel in the same state directory
    assert [_dir(lib, m).name for m in (m1, m2, gpu)] == [
        f"v0001-40-64-cpu-{K1[:12]}",
        f"v0002-12-8-cpu-{K2[:12]}",
        f"v0003-40-64-cuda-{K3[:12]}",
    ]
    assert lib.current("mlp_block", MNIST1D) == m1  # not the newer kernel of another shape or device
    assert lib.current("mlp_block", small) == m2
    assert lib.current("mlp_block", small, key=K1) is None
    assert lib.current("mlp_block", vector(12, 9)) is None
    assert sorted(m.artifact_id for m in lib.ranked()) == sorted([K1, K2])
    assert lib.ranked(small) == [m2] and lib.ranked(MNIST1D) == [m1]
    assert lib.load("mlp_block", small)[1] == m2 and lib.load("mlp_block", MNIST1D)[1] == m1
    assert quarantined == [] and all(reason is None for _, reason in lib.verify_all())
    assert [label.split("/")[1].split("-")[1:-1] for label, _ in lib.verify_all()] == [
        ["40", "64", "cpu"],
        ["12", "8", "cpu"],
        ["40", "64", "cuda"],
    ]
    # the name is signed: a kernel renamed to claim another shape is refused, never served for it
    renamed = _dir(lib, m2).with_name(f"v0002-12-9-cpu-{K2[:12]}")
    _dir(lib, m2).rename(renamed)
    assert lib.current("mlp_block", vector(12, 9)) is None
    assert quarantined and "signed as mlp_block/v0002-12-8-cpu-" in quarantined[-1][2]
    # and a kernel re-signed as another device's is refused where it claims to be this device's
    _resign(_dir(lib, m1), device="cuda")
    with pytest.raises(ArtifactInvalid, match=f"signed as mlp_block/v0001-40-64-cuda-{K1[:12]}"):
        lib.load("mlp_block", MNIST1D)


def test_a_kernel_stored_before_shapes_is_the_40_64_kernel_of_a_cpu(lib, commit_artifact, quarantined):
    """A version directory named vNNNN-<key12> whose signed metadata has no shape: read as LEGACY_SHAPE."""
    m = commit_artifact(lib, key=K1)
    legacy = _dir(lib, m).with_name(f"v0001-{K1[:12]}")
    _dir(lib, m).rename(legacy)
    raw = json.loads((legacy / "meta.json").read_bytes())
    del raw["shape"]  # what a library written before shapes holds
    data = json.dumps(raw, indent=2).encode()
    (legacy / "meta.json").write_bytes(data)
    (legacy / "meta.sig").write_text(signing.sign(KEY, data))
    old = lib.current("mlp_block", LEGACY_SHAPE)
    assert old is not None and old.shape == "" and old.slot_shape == LEGACY_SHAPE == vector(40, 64)
    assert lib.current("mlp_block", vector(12, 8)) is None
    assert lib.ranked() == [old] and lib.load("mlp_block", MNIST1D)[1] == old
    assert lib.verify_all() == [(f"mlp_block/v0001-{K1[:12]}", None)] and quarantined == []
    assert old.build().shape == "40-64"  # copied into another library, it is stored under its shape


def _resign(d: Path, **changes: object) -> None:
    """Rewrite a version's meta.json with `changes` and sign it with the test key: valid, just not what it was."""
    meta = msgspec.json.decode((d / "meta.json").read_bytes(), type=ArtifactMeta)
    raw = msgspec.json.format(msgspec.json.encode(msgspec.structs.replace(meta, **changes)))
    (d / "meta.json").write_bytes(raw)
    (d / "meta.sig").write_text(signing.sign(KEY, raw))


def _quarantine_notes(lib: Library) -> list[str]:
    return [(q / "QUARANTINED").read_text() for q in (lib.root / "quarantine").iterdir()]


def test_a_signed_artifact_copied_under_another_blueprint_is_quarantined_not_loaded(lib, commit_artifact, quarantined):
    """A valid attention_block artifact placed under artifacts/mlp_block/ must not load as mlp_block."""
    attention = _dir(lib, commit_artifact(lib, "attention_block", K1))
    copy = lib.root / "artifacts" / "mlp_block" / attention.name
    copy.parent.mkdir()
    shutil.copytree(attention, copy)
    assert [m.blueprint_id for m in lib.all_current()] == ["attention_block"]  # listing ignores the copy too
    with pytest.raises(ArtifactInvalid, match="signed as attention_block/"):
        lib.load("mlp_block", MNIST1D)
    assert not copy.exists() and attention.is_dir()
    assert [q[:2] for q in quarantined] == [("mlp_block", attention.name)]
    assert "copied or renamed" in _quarantine_notes(lib)[0]
    assert lib.current("attention_block", MNIST1D).artifact_id == K1  # the original is untouched
    assert lib.verify(attention) is None


@pytest.mark.parametrize("signed", [True, False], ids=["re-signed", "unsigned"])
def test_a_meta_whose_version_disagrees_with_its_directory_is_quarantined(lib, commit_artifact, quarantined, signed):
    """Once raised FileNotFoundError out of quarantine (and so out of the trainer), on every load."""
    m1 = commit_artifact(lib, key=K1)
    d2 = _dir(lib, commit_artifact(lib, key=K2))
    if signed:
        _resign(d2, version=7)
    else:
        meta = msgspec.json.decode((d2 / "meta.json").read_bytes(), type=ArtifactMeta)
        (d2 / "meta.json").write_bytes(msgspec.json.encode(msgspec.structs.replace(meta, version=7)))
    source = LibraryKernelSource(lib, "inductor", "default")
    with pytest.raises(KernelUnavailable, match="signed as mlp_block/v0007" if signed else "signature mismatch"):
        source.load("mlp_block", vector(40, 64))
    assert not d2.exists() and [q[1] for q in quarantined] == [d2.name]
    assert lib.current("mlp_block", MNIST1D) == m1  # the older version serves from here on
    assert lib.verify(_dir(lib, m1)) is None


def test_a_renamed_version_directory_is_refused(lib, commit_artifact):
    d = _dir(lib, commit_artifact(lib, key=K1))
    renamed = d.with_name("v0005-" + d.name.split("-", 1)[1])
    d.rename(renamed)
    assert "signed as mlp_block/v0001-" in lib.verify(renamed)


def test_quarantine_of_a_vanished_version_is_a_no_op(lib, quarantined):
    """Two threads may quarantine the same version; the second finds nothing to move and must not raise."""
    assert lib.quarantine(lib.root / "artifacts" / "mlp_block" / "v0001-gone", "test") is None
    assert lib.stats.quarantined == 0 and quarantined == []


def test_load_of_an_unknown_blueprint_raises_artifact_invalid(lib):
    with pytest.raises(ArtifactInvalid, match="no such blueprint"):
        lib.load("no_such_block", MNIST1D)


def test_a_signed_meta_of_another_schema_is_invalid_not_a_crash(lib, commit_artifact):
    d = _dir(lib, commit_artifact(lib, key=K1))
    raw = b'{"artifact_id": 5}'
    (d / "meta.json").write_bytes(raw)
    (d / "meta.sig").write_text(signing.sign(KEY, raw))
    assert "signed metadata does not decode" in lib.verify(d)


def test_a_garbage_signature_file_is_a_mismatch_not_a_crash(lib, commit_artifact):
    d = _dir(lib, commit_artifact(lib, key=K1))
    (d / "meta.sig").write_bytes("é\udc80".encode(errors="surrogatepass") + b"\xff")
    assert "signature mismatch" in lib.verify(d)
    (d / "meta.sig").write_text("é" * 64)
    assert "signature mismatch" in lib.verify(d)


# ---------------------------------------------------------------------------------- built for this process


def _other_options(**changes: object) -> Callable[[ArtifactMeta], dict[str, object]]:
    return lambda meta: {"options": {**meta.options, **changes}}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        pytest.param(lambda _m: {"cpu_isa": "VecAVX512"}, "CPU ISA 'VecAVX512'", id="cpu-isa"),
        pytest.param(lambda _m: {"torch_version": "2.0.0"}, "torch '2.0.0'", id="torch"),
        pytest.param(lambda _m: {"python_version": "3.9.0"}, "Python '3.9.0'", id="python"),
        pytest.param(_other_options(compiler="clang++ 0123456789abcdef"), "compiler 'clang++", id="compiler"),
        pytest.param(_other_options(num_threads=97), "threads 97", id="threads"),
        pytest.param(lambda _m: {"options": {}}, "threads None", id="no-threads-recorded"),
        pytest.param(lambda _m: {"ir_hash": "0" * 64}, "another version of the blueprint's source", id="blueprint"),
    ],
)
def test_load_quarantines_a_kernel_built_for_another_identity(lib, commit_artifact, quarantined, changes, reason):
    """Validly signed, but not runnable here: quarantined with the reason (so the forge recompiles), never served."""
    d = _dir(lib, commit_artifact(lib, key=K1))
    meta = msgspec.json.decode((d / "meta.json").read_bytes(), type=ArtifactMeta)
    _resign(d, **changes(meta))
    assert lib.verify(d) is None  # the signature and files are fine: it is the identity that is wrong
    with pytest.raises(ArtifactInvalid, match=f"built for .*{reason}" if "source" not in reason else reason):
        lib.load("mlp_block", MNIST1D)
    assert not d.exists()
    assert len(quarantined) == 1 and quarantined[0][:2] == ("mlp_block", d.name) and reason in quarantined[0][2]
    assert reason in _quarantine_notes(lib)[0]
    with pytest.raises(ArtifactInvalid, match="no compiled kernel"):
        lib.load("mlp_block", MNIST1D)


def test_commit_signs_what_the_typed_build_says(lib, commit_artifact, compiled_kernel):
    meta = commit_artifact(lib, key=K1, threads=3, compiler="c++ feedface")
    assert meta.options == {"fullgraph": True, "dynamic_batch": True, "num_threads": 3, "compiler": "c++ feedface"}
    read, _ = lib.read_verified(_dir(lib, meta))
    assert read == meta
    with pytest.raises(TypeError, match="num_threads"):
        KernelBuild(num_threads=2)  # type: ignore[call-arg]  # the dict era's spelling is no field


# ---------------------------------------------------------------------------------- staging takes regular files only

COMMIT_TIMEOUT_S = 60.0


def _build_of(meta: ArtifactMeta) -> KernelBuild:
    """The build a stored version was committed with (to commit the same files again)."""
    extra = {"threads": meta.options["num_threads"], "compiler": meta.options["compiler"]}
    return msgspec.convert({**msgspec.structs.asdict(meta), **extra}, KernelBuild)


def _commit_in_thread(lib: Library, staged: Path, build: KernelBuild) -> BaseException | ArtifactMeta:
    """Commit with a deadline: a commit that blocks (the old FIFO hang) fails the test instead of hanging it."""
    result: list[BaseException | ArtifactMeta] = []

    def run() -> None:
        try:
            result.append(lib.commit(staged, blueprint_id="mlp_block", key=K2, build=build))
        except BaseException as exc:
            result.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(COMMIT_TIMEOUT_S)
    if worker.is_alive():
        for fifo in (p for p in staged.rglob("*") if stat.S_ISFIFO(p.lstat().st_mode)):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # free the blocked reader
        pytest.fail(f"commit blocked for {COMMIT_TIMEOUT_S:.0f} s on a staged special file")
    return result[0]


def _fifo(staged: Path) -> str:
    target = next(staged.glob("kernels/*/*.so"))
    os.mkfifo(target.with_name("evil.so"))
    return "FIFO"


def _link_to_file(staged: Path) -> str:
    (staged / "kernels" / "outside.so").symlink_to("/etc/hostname")
    return "symlink"


def _link_to_dir(staged: Path) -> str:
    (staged / "linked").symlink_to(staged / "kernels")
    return "symlink, not a directory"


def _reserved(staged: Path) -> str:
    (staged / "meta.json").write_bytes(b"{}")
    return "reserved"


@pytest.mark.parametrize("plant", [_fifo, _link_to_file, _link_to_dir, _reserved])
def test_commit_refuses_special_files_in_staging_without_holding_the_lock(lib, commit_artifact, compiled_kernel, plant):
    """A FIFO named like a kernel once blocked fsync_tree with the lock held: every later commit, load and
    quarantine hung. Now staging is refused (and removed) before the lock, and the library goes on."""
    m1 = commit_artifact(lib, key=K1)
    staged = compiled_kernel.copy_to(lib.new_staging_dir("mlp_block"))
    what = plant(staged)
    outcome = _commit_in_thread(lib, staged, _build_of(m1))
    assert isinstance(outcome, ArtifactInvalid), outcome
    assert str(outcome).startswith("staged ") and what in str(outcome)
    assert not staged.exists()
    assert lib.current("mlp_block", MNIST1D) == m1  # nothing was committed, and the lock is free
    assert commit_artifact(lib, key=K3).version == 2


def test_load_does_not_block_on_a_fifo_in_a_stored_version(lib, commit_artifact, quarantined):
    d = _dir(lib, commit_artifact(lib, key=K1))
    (d / "infer.fn").unlink()
    os.mkfifo(d / "infer.fn")
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            lib.load("mlp_block", MNIST1D)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(COMMIT_TIMEOUT_S)
    if worker.is_alive():
        os.close(os.open(d / "infer.fn", os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("load blocked on a FIFO in a stored version")
    assert isinstance(outcome[0], ArtifactInvalid) and "infer.fn is a FIFO" in str(outcome[0])
    assert [q[1] for q in quarantined] == [d.name]


# ---------------------------------------------------------------------------------- read-only key loading


def test_load_key_never_creates_a_key(state_dir):
    with pytest.raises(SigningKeyMissing, match=r"no signing key at .*signing\.key; verify needs the key"):
        load_key(state_dir)
    assert not (state_dir / "keys").exists()
    created = load_or_create_key(state_dir)
    assert load_key(state_dir) == created
    assert load_key(state_dir, configured="cd" * 16) == bytes.fromhex("cd" * 16)


def test_an_unreadable_key_file_is_one_clear_error(state_dir):
    (state_dir / "keys" / "signing.key").mkdir(parents=True, mode=0o700)  # not a file: reading it fails
    with pytest.raises(SigningKeyError, match="cannot read the key file"):
        load_key(state_dir)


def test_library_verify_cli_without_a_key_creates_none(state_dir, tmp_path, commit_artifact, compiled_kernel):
    """Once it created keys/signing.key, after which every artifact failed: a read-only tool makes no key."""
    commit_artifact(Library(state_dir / "library", KEY, Catalog()), key=K1)
    cli = Path(sys.executable).with_name("esper-tui")
    env = {k: v for k, v in os.environ.items() if k != signing.ENV_VAR}

    def verify(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(cli), "library", "verify", "--state-dir", str(state_dir)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**env, **extra},
            cwd=tmp_path,
        )

    proc = verify()
    assert proc.returncode == 1, proc
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "no signing key at" in proc.stderr and "verify needs the key that signed the library" in proc.stderr
    assert proc.stdout == ""
    assert not (state_dir / "keys").exists()
    ok = verify(**{signing.ENV_VAR: KEY.hex()})
    assert ok.returncode == 0 and "1 of 1 artifacts verify" in ok.stdout, ok
    assert not (state_dir / "keys").exists()


# ---------------------------------------------------------------------------------- whose library (finding 1)

OTHER_KEY = bytes(range(100, 132))


def test_a_library_opened_with_another_key_is_refused_and_quarantines_nothing(state_dir, commit_artifact):
    """The state directory's library gets the shared one's rule: its key's fingerprint is recorded, and a
    process with another key (a lost keys/signing.key replaced by a fresh one) is refused in one line
    naming both fingerprints, instead of quarantining every version it cannot verify."""
    from esper_tui.engine.config import LibraryConfig
    from esper_tui.engine.keys import fingerprint
    from esper_tui.engine.library.factory import LibraryUnavailable, open_library

    own = open_library(LibraryConfig(), state_dir, KEY, Catalog())
    meta = commit_artifact(own, key=K1)
    with pytest.raises(LibraryUnavailable) as exc:
        open_library(LibraryConfig(), state_dir, OTHER_KEY, Catalog())
    text = str(exc.value)
    assert "\n" not in text and fingerprint(KEY) in text and fingerprint(OTHER_KEY) in text
    assert KEY.hex() not in text and OTHER_KEY.hex() not in text
    assert list((state_dir / "library" / "quarantine").iterdir()) == []
    stranger = Library(state_dir / "library", OTHER_KEY, Catalog())  # past the start check: still no quarantine
    with pytest.raises(KernelError, match="not the library's"):
        stranger.current(KERNEL_BLUEPRINT, MNIST1D)
    assert list((state_dir / "library" / "quarantine").iterdir()) == []
    assert open_library(LibraryConfig(), state_dir, KEY, Catalog()).current(KERNEL_BLUEPRINT, MNIST1D) == meta


def test_a_library_from_before_the_record_is_adopted_only_by_its_own_key(state_dir, commit_artifact):
    from esper_tui.engine.config import LibraryConfig
    from esper_tui.engine.keys import fingerprint
    from esper_tui.engine.library.factory import LibraryUnavailable, open_library

    commit_artifact(Library(state_dir / "library", KEY, Catalog()), key=K1)  # no record: an older library
    with pytest.raises(
        LibraryUnavailable, match=f"none of its 1 versions verifies with signing key {fingerprint(OTHER_KEY)}"
    ):
        open_library(LibraryConfig(), state_dir, OTHER_KEY, Catalog())
    open_library(LibraryConfig(), state_dir, KEY, Catalog())
    with pytest.raises(LibraryUnavailable, match=fingerprint(KEY)):
        open_library(LibraryConfig(), state_dir, OTHER_KEY, Catalog())
