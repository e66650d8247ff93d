"""Urza: signed, versioned artifacts; verification before loading; quarantine; TTL cache; signing keys.

Artifacts are copies of the session's one real inductor compile (conftest `commit_artifact`).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import msgspec
import pytest
import torch

from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.library import signing as signing
from esper_tui.engine.library import store as library_mod
from esper_tui.engine.library.meta import ArtifactMeta
from esper_tui.engine.library.signing import SigningKeyError, load_or_create_key
from esper_tui.engine.library.store import ArtifactInvalid, Library

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
def lib(state_dir, fake_clock, quarantined) -> Library:
    return Library(
        state_dir / "library",
        KEY,
        Catalog(),
        cache_ttl_s=60.0,
        clock=fake_clock,
        on_quarantine=lambda *args: quarantined.append(args),
    )


def _dir(lib: Library, meta: ArtifactMeta) -> Path:
    return lib.root / "artifacts" / meta.blueprint_id / f"v{meta.version:04d}-{meta.artifact_id[:12]}"


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
    assert lib.current("mlp_block").version == 2
    assert lib.current("mlp_block", key=K1).version == 1  # an older version by its key
    assert lib.current("mlp_block", key=K3) is None
    assert lib.current("gated_block") is None
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
    assert lib.current("mlp_block") == m1
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
    assert lib.current("mlp_block") == m1
    assert len(quarantined) == 1


def test_all_versions_bad_gives_none(lib, commit_artifact, quarantined):
    m1 = commit_artifact(lib, key=K1)
    _remove_function(_dir(lib, m1))
    assert lib.current("mlp_block") is None
    assert [q[1] for q in quarantined] == [_dir(lib, m1).name]
    assert lib.version_dirs() == []


def test_commit_after_an_undecodable_newest_version(lib, commit_artifact):
    commit_artifact(lib, key=K1)
    m2 = commit_artifact(lib, key=K2)
    (_dir(lib, m2) / "meta.json").write_bytes(b"\x00garbage")
    assert lib.current("mlp_block").version == 1
    m3 = commit_artifact(lib, key=K2)  # the forge recompiling the same key: OSError ENOTEMPTY today
    assert m3.version == 3
    assert lib.current("mlp_block") == m3


def test_quarantine_twice_in_the_same_second(lib, commit_artifact, monkeypatch):
    monkeypatch.setattr(library_mod.time, "time", lambda: 1_700_000_000.0)
    for _ in range(2):
        m = commit_artifact(lib, key=K1)  # version numbers come back after a quarantine: same name again
        _alter_weights(_dir(lib, m))
        assert lib.current("mlp_block") is None
    assert len(list((lib.root / "quarantine").iterdir())) == 2


# ---------------------------------------------------------------------------------- listing


def test_ranked_orders_by_compiled_step_time_and_by_tag_filters(lib, commit_artifact):
    commit_artifact(lib, "mlp_block", K1, step_ms_compiled=3.0)
    commit_artifact(lib, "lowrank_adapter", K2, step_ms_compiled=1.0)
    commit_artifact(lib, "depthwise_conv", K3, step_ms_compiled=2.0)
    commit_artifact(lib, "mlp_block", K2, step_ms_compiled=0.5)  # newest mlp_block is now the fastest
    assert [(m.blueprint_id, m.step_ms_compiled) for m in lib.ranked()] == [
        ("mlp_block", 0.5),
        ("lowrank_adapter", 1.0),
        ("depthwise_conv", 2.0),
    ]
    assert [m.blueprint_id for m in lib.by_tag("cheap")] == ["lowrank_adapter", "depthwise_conv"]
    assert [m.blueprint_id for m in lib.ranked("conv")] == ["depthwise_conv"]
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
    assert _dir(lib, m).is_dir() and lib.current("mlp_block") == m  # committed versions untouched
    assert lib.clean_staging() == []


# ---------------------------------------------------------------------------------- loading (TTL cache)


def test_load_goes_through_the_ttl_cache(lib, commit_artifact, fake_clock, kernel_threads):
    m = commit_artifact(lib, key=K1)
    kernel, meta = lib.load("mlp_block")
    assert meta == m and kernel.label == "inductor:default"
    assert (lib.stats.cache_hits, lib.stats.cache_misses) == (0, 1)

    module = Catalog().get("mlp_block").build(40, 64)
    x = torch.randn(5, 40)
    assert torch.allclose(kernel(module, x), module(x), atol=1e-5)

    again, _ = lib.load("mlp_block")
    assert again is kernel
    assert (lib.stats.cache_hits, lib.stats.cache_misses) == (1, 1)
    assert lib.stats.hit_rate == 0.5

    fake_clock.advance(59)
    assert lib.load("mlp_block")[0] is kernel
    assert lib.expire() == 0
    fake_clock.advance(2)  # past the 60 s TTL
    assert lib.expire() == 1
    third, _ = lib.load("mlp_block")
    assert (lib.stats.cache_hits, lib.stats.cache_misses) == (2, 2)
    assert lib.stats.hit_rate == 0.5
    fake_clock.advance(61)
    lib.load("mlp_block")  # expired entries miss even without expire()
    assert lib.stats.cache_misses == 3
    assert lib.drop_cache() == 1
    assert third is not None


def test_load_of_a_new_version_misses_the_cache(lib, commit_artifact, kernel_threads):
    commit_artifact(lib, key=K1)
    lib.load("mlp_block")
    commit_artifact(lib, key=K2)
    _, meta = lib.load("mlp_block")
    assert meta.version == 2
    assert lib.stats.cache_misses == 2 and lib.stats.cache_hits == 0


def test_load_refuses_and_quarantines_a_tampered_kernel(lib, commit_artifact):
    m = commit_artifact(lib, key=K1)
    _alter_kernel(_dir(lib, m))
    with pytest.raises(ArtifactInvalid, match="does not match"):
        lib.load("mlp_block")
    assert not _dir(lib, m).exists() and lib.stats.quarantined == 1
    with pytest.raises(ArtifactInvalid, match="no compiled kernel"):
        lib.load("mlp_block")


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
