"""Signed control: command HMACs with skew, start and replay checks; Ed25519 frames; keys per purpose."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from esper_tui.engine.bus.auth import (
    CommandRejected,
    CommandVerifier,
    FrameSigner,
    FrameVerifier,
    frame_public_key,
    sign_command,
)
from esper_tui.engine.contracts import PauseTraining, Recompile, Shutdown
from esper_tui.engine.freshness import REPLAY_CACHE_LIMIT
from esper_tui.engine.keys import FRAME_KEY, OPERATOR_KEY, SIGNING_KEY, BadKey, KeyMissing, load_key, load_or_create_key

KEY = bytes(range(32))
START = 1_000_000.0


class Clock:
    def __init__(self, t: float = START + 5) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def verifier(clock: Clock, skew: float = 30.0) -> CommandVerifier:
    return CommandVerifier(KEY, skew_s=skew, not_before=START, clock=clock)


def test_a_signed_command_passes_once() -> None:
    clock = Clock()
    cmd = sign_command(KEY, Shutdown(ts=clock.t, issued_by="alice@host"))
    v = verifier(clock)
    v.check(cmd)
    with pytest.raises(CommandRejected, match="replayed"):
        v.check(cmd)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda c: msgspec.structs.replace(c, signature=""), "unsigned"),
        (lambda c: msgspec.structs.replace(c, signature="00" * 32), "bad signature"),
        (lambda c: msgspec.structs.replace(c, issued_by="mallory@elsewhere"), "bad signature"),
        (lambda c: msgspec.structs.replace(c, ts=c.ts - 1), "bad signature"),
        (lambda c: msgspec.structs.replace(c, target="another-run"), "bad signature"),
        (lambda c: msgspec.structs.replace(c, command_id="f" * 32), "bad signature"),
        (lambda c: msgspec.structs.replace(c, reason="other"), "bad signature"),
        (lambda c: msgspec.structs.replace(c, signature="ünïcode"), "bad signature"),
    ],
)
def test_every_field_is_covered_by_the_signature(mutate, reason) -> None:
    clock = Clock()
    cmd = sign_command(KEY, Shutdown(ts=clock.t, issued_by="alice@host", target="run1"))
    with pytest.raises(CommandRejected, match=reason):
        verifier(clock).check(mutate(cmd))


def test_a_command_signed_with_another_key_is_rejected() -> None:
    clock = Clock()
    cmd = sign_command(b"k" * 32, PauseTraining(paused=True, ts=clock.t))
    with pytest.raises(CommandRejected, match="bad signature"):
        verifier(clock).check(cmd)


def test_stale_future_and_pre_start_commands_are_rejected() -> None:
    clock = Clock(START + 100)
    v = verifier(clock, skew=30)
    with pytest.raises(CommandRejected, match="stale"):
        v.check(sign_command(KEY, Recompile(blueprint_id="mlp_block", ts=START + 60)))
    with pytest.raises(CommandRejected, match="future"):
        v.check(sign_command(KEY, Recompile(blueprint_id="mlp_block", ts=START + 140)))
    early = Clock(START + 10)
    with pytest.raises(CommandRejected, match="before this engine started"):
        verifier(early).check(sign_command(KEY, Recompile(blueprint_id="mlp_block", ts=START - 5)))
    v.check(sign_command(KEY, Recompile(blueprint_id="mlp_block", ts=START + 80)))


def test_the_replay_cache_forgets_only_what_can_no_longer_pass() -> None:
    clock = Clock()
    v = verifier(clock, skew=30)
    first = sign_command(KEY, Shutdown(ts=clock.t))
    v.check(first)
    clock.t += 31  # the command is now stale: replaying it fails on freshness, whatever the cache holds
    with pytest.raises(CommandRejected, match="stale"):
        v.check(first)
    clock.t += 60
    v.check(sign_command(KEY, Shutdown(ts=clock.t)))
    assert len(v._window) == 1  # the first id left the cache once it could no longer pass


def test_a_full_replay_cache_refuses_rather_than_forgets(monkeypatch: pytest.MonkeyPatch) -> None:
    import esper_tui.engine.freshness as freshness

    monkeypatch.setattr(freshness, "REPLAY_CACHE_LIMIT", 3)
    clock = Clock()
    v = verifier(clock)
    for _ in range(3):
        v.check(sign_command(KEY, Shutdown(ts=clock.t)))
    with pytest.raises(CommandRejected, match="too many"):
        v.check(sign_command(KEY, Shutdown(ts=clock.t)))
    assert REPLAY_CACHE_LIMIT >= 10_000


def test_frames_verify_only_with_the_engines_public_key() -> None:
    signer = FrameSigner(KEY)
    payload = b"frame bytes"
    sig = signer.sign(payload)
    assert signer.public_key == frame_public_key(KEY) and len(signer.public_key) == 64
    good = FrameVerifier(signer.public_key)
    assert good.verify(payload, sig)
    assert not good.verify(payload + b"!", sig)
    assert not good.verify(payload, b"\0" * 64)
    assert not good.verify(payload, b"short")
    assert not FrameVerifier(frame_public_key(b"x" * 32)).verify(payload, sig)


@pytest.mark.parametrize("bad", ["", "zz" * 32, "00" * 31, "not hex"])
def test_a_malformed_engine_key_is_one_clear_error(bad: str) -> None:
    with pytest.raises(ValueError, match="64 hex digits"):
        FrameVerifier(bad)


def test_keys_per_purpose_are_separate_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for spec in (SIGNING_KEY, OPERATOR_KEY, FRAME_KEY):
        monkeypatch.delenv(spec.env, raising=False)
    keys = {spec: load_or_create_key(spec, tmp_path) for spec in (SIGNING_KEY, OPERATOR_KEY, FRAME_KEY)}
    assert len(set(keys.values())) == 3
    for spec, key in keys.items():
        path = spec.path(tmp_path)
        assert path.stat().st_mode & 0o777 == 0o600
        assert load_key(spec, tmp_path) == key  # stable across loads
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700


def test_load_key_never_creates_and_names_the_ways_to_provide_one(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(OPERATOR_KEY.env, raising=False)
    with pytest.raises(KeyMissing, match="ESPER_OPERATOR_KEY"):
        load_key(OPERATOR_KEY, tmp_path)
    assert not (tmp_path / "keys").exists()
    with pytest.raises(KeyMissing, match=r"bus\.operator_key"):
        load_key(OPERATOR_KEY, None)


def test_key_sources_in_order_and_checked(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(OPERATOR_KEY.env, "ab" * 16)
    assert load_key(OPERATOR_KEY, tmp_path, "cd" * 16) == bytes.fromhex("ab" * 16)
    monkeypatch.delenv(OPERATOR_KEY.env)
    assert load_key(OPERATOR_KEY, tmp_path, "cd" * 16) == bytes.fromhex("cd" * 16)
    with pytest.raises(BadKey, match="at least 16 bytes"):
        load_key(OPERATOR_KEY, tmp_path, "ab" * 8)
    path = OPERATOR_KEY.path(tmp_path)
    path.parent.mkdir()
    path.write_text("ef" * 16)
    os.chmod(path, 0o644)
    with pytest.raises(BadKey, match="chmod 600"):
        load_key(OPERATOR_KEY, tmp_path)
    os.chmod(path, 0o600)
    assert load_key(OPERATOR_KEY, tmp_path) == bytes.fromhex("ef" * 16)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(BadKey):
        load_key(OPERATOR_KEY, tmp_path)


@pytest.mark.parametrize("ts", [float("nan"), float("inf"), float("-inf")])
def test_a_command_with_a_non_finite_time_is_refused_and_never_obeyed(ts: float) -> None:
    """Issue 18, finding 9: NaN compared false with every limit, so a signed command stamped NaN passed
    every freshness check, never stayed in the replay cache, and could be replayed forever."""
    clock = Clock()
    cmd = sign_command(KEY, Shutdown(ts=ts, issued_by="alice@host"))
    v = verifier(clock)
    with pytest.raises(CommandRejected, match="not a finite number"):
        v.check(cmd)
    clock.t += 86_400  # a day later, after a restart too
    with pytest.raises(CommandRejected, match="not a finite number"):
        verifier(clock).check(cmd)


# ----------------------------------------------------------------------------- key ownership (finding 3)

ANOTHER_UID = 65534  # nobody: a co-tenant's account


def key_file(state: Path, spec=OPERATOR_KEY, text: str = "ef" * 16) -> Path:
    """A well-formed key file of ours (mode 0600) in `<state>/keys/` (0700, created if missing)."""
    path = spec.path(state)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


def other_owner(path: Path) -> None:
    """Hand `path` to another account, as a co-tenant who planted it would own it (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("only root can create a file owned by another account")
    os.chown(path, ANOTHER_UID, -1)


@pytest.mark.parametrize("spec", [SIGNING_KEY, OPERATOR_KEY, FRAME_KEY], ids=lambda s: s.name)
def test_a_key_file_of_another_owner_is_refused(tmp_path: Path, monkeypatch, spec) -> None:
    """Issue 18, finding 3: an `esper-worker`-owned keys/operator.key (0600) was accepted by a root engine,
    and a Shutdown signed with it was obeyed."""
    monkeypatch.delenv(spec.env, raising=False)
    path = key_file(tmp_path, spec)
    other_owner(path)
    with pytest.raises(BadKey, match=rf"{path}: .*belongs to uid {ANOTHER_UID}, not to this engine's user"):
        load_key(spec, tmp_path)
    with pytest.raises(BadKey, match=f"belongs to uid {ANOTHER_UID}"):
        load_or_create_key(spec, tmp_path)  # nor is it replaced by a fresh one behind the planter's back
    assert path.read_text() == "ef" * 16


def test_a_keys_directory_of_another_owner_is_refused(tmp_path: Path, monkeypatch) -> None:
    """The directory decides who may swap a key file in: it must be the engine user's too."""
    monkeypatch.delenv(OPERATOR_KEY.env, raising=False)
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir(mode=0o700)
    other_owner(keys_dir)
    with pytest.raises(BadKey, match=rf"{keys_dir}: .*belongs to uid {ANOTHER_UID}"):
        load_or_create_key(OPERATOR_KEY, tmp_path)
    assert not OPERATOR_KEY.path(tmp_path).exists()
    key_file(tmp_path)  # our own file, in a directory someone else controls
    with pytest.raises(BadKey, match=rf"{keys_dir}: .*belongs to uid {ANOTHER_UID}"):
        load_key(OPERATOR_KEY, tmp_path)


def test_a_keys_directory_others_may_write_is_refused(tmp_path: Path, monkeypatch) -> None:
    """Owned by us but writable by others (a shared /tmp habit): anyone could replace the key file."""
    monkeypatch.delenv(OPERATOR_KEY.env, raising=False)
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    os.chmod(keys_dir, 0o777)
    with pytest.raises(BadKey, match=rf"{keys_dir}: .*writable by others"):
        load_or_create_key(OPERATOR_KEY, tmp_path)


def test_a_key_file_that_is_a_symlink_is_refused(tmp_path: Path, monkeypatch) -> None:
    """A link is followed to whatever it names: the owner and mode checked must be the key file's own."""
    monkeypatch.delenv(OPERATOR_KEY.env, raising=False)
    target = tmp_path / "elsewhere.key"
    target.write_text("ef" * 16)
    os.chmod(target, 0o600)
    path = OPERATOR_KEY.path(tmp_path)
    path.parent.mkdir(mode=0o700)
    path.symlink_to(target)
    with pytest.raises(BadKey, match="not a regular file"):
        load_key(OPERATOR_KEY, tmp_path)


def test_the_owner_rule_holds_for_any_engine_user(tmp_path: Path, monkeypatch) -> None:
    """Without root: the same rule seen from an engine running as another uid than the file's owner."""
    monkeypatch.delenv(OPERATOR_KEY.env, raising=False)
    key_file(tmp_path)
    assert load_key(OPERATOR_KEY, tmp_path) == bytes.fromhex("ef" * 16)
    mine = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: mine + 1)
    with pytest.raises(BadKey, match=f"belongs to uid {mine}, not to this engine's user"):
        load_key(OPERATOR_KEY, tmp_path)
