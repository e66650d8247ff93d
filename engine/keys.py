"""Where the engine's secret keys come from: one rule for every purpose, one key per purpose.

Artifact signing, operator commands and control-room frames each have their own key, so that holding
one grants nothing else (an operator key cannot sign a kernel; a frame key cannot steer the engine).
Each is looked up in the same order: its environment variable (hex), its config key (hex), then its file
under `<state>/keys/` (hex, mode 0600). Only the engine creates a missing key file; read-only tools and
control rooms call `load_key`, which never does: a key made on the spot would match nothing already signed.

A key file is trusted only when it and `keys/` belong to the user this process runs as, the file is
readable by nobody else and the directory writable by nobody else: otherwise another account on the
machine (a compile worker's, a co-tenant's in a shared /tmp) could have planted a key of its choosing,
and commands signed with it would be obeyed. A key is named in messages by its fingerprint, never shown.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from esper_tui.engine import fsutil

MIN_KEY_BYTES = 16
_FINGERPRINT_DOMAIN = b"esper.key-fingerprint.v1\0"


class BadKey(ValueError):
    """A key is missing, unreadable or malformed: one line naming where it came from."""


class KeyMissing(BadKey):
    """No key in the environment, the config or the key file."""


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One purpose's key: its file under `<state>/keys/`, its environment variable and its config key."""

    name: str  # "signing", "operator", "frame": as messages say it
    file: str
    env: str
    config_key: str
    needed_for: str  # what a missing key stops, for the message

    def path(self, state_dir: Path) -> Path:
        return state_dir / "keys" / self.file


SIGNING_KEY = KeySpec(
    "signing", "signing.key", "ESPER_SIGNING_KEY", "library.signing_key", "verify needs the key that signed the library"
)
OPERATOR_KEY = KeySpec(
    "operator", "operator.key", "ESPER_OPERATOR_KEY", "bus.operator_key", "commands need the engine's operator key"
)
FRAME_KEY = KeySpec(
    "frame", "frames.key", "ESPER_FRAME_KEY", "bus.frame_key", "frames are signed with the engine's frame key"
)


def from_hex(value: str, origin: str) -> bytes:
    try:
        key = bytes.fromhex(value.strip())
    except ValueError:
        raise BadKey(f"{origin}: key must be hex") from None
    if len(key) < MIN_KEY_BYTES:
        raise BadKey(f"{origin}: key must be at least {MIN_KEY_BYTES} bytes ({2 * MIN_KEY_BYTES} hex digits)")
    return key


def fingerprint(key: bytes) -> str:
    """A short public name for a key (16 hex digits of a domain-separated SHA-256): safe to print and
    store, useless for signing, and equal for two keys only when they are the same key."""
    return hashlib.sha256(_FINGERPRINT_DOMAIN + key).hexdigest()[:16]


def _check_owner(path: Path, st: os.stat_result, what: str) -> None:
    euid = os.geteuid()
    if st.st_uid != euid:
        raise BadKey(
            f"{path}: {what} belongs to uid {st.st_uid}, not to this engine's user (uid {euid}); "
            "keys must be the engine user's own"
        )


def _check_key_dir(directory: Path) -> None:
    """`keys/` must be this user's and writable by nobody else: whoever may write it may swap the keys."""
    st = os.stat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise BadKey(f"{directory}: not a directory")
    _check_owner(directory, st, "the keys directory")
    if st.st_mode & 0o022:
        raise BadKey(f"{directory}: the keys directory is writable by others; chmod 700 it")


def _check_key_file(path: Path) -> Callable[[os.stat_result], None]:
    def check(st: os.stat_result) -> None:
        _check_owner(path, st, "key file")
        if st.st_mode & 0o077:
            raise BadKey(f"{path}: key file is readable by others; chmod 600 it")

    return check


def load_key(spec: KeySpec, state_dir: Path | None, configured: str = "") -> bytes:
    """The key for `spec`, from the environment, the config or the key file; never creates one."""
    if os.environ.get(spec.env):
        return from_hex(os.environ[spec.env], spec.env)
    if configured:
        return from_hex(configured, spec.config_key)
    if state_dir is None:
        raise KeyMissing(f"no {spec.name} key; {spec.needed_for} ({spec.env} or {spec.config_key})")
    path = spec.path(state_dir)
    if not os.path.lexists(path):
        where = f"the key file, {spec.env} or {spec.config_key}"
        raise KeyMissing(f"no {spec.name} key at {path}; {spec.needed_for} ({where})")
    try:
        _check_key_dir(path.parent)
        text = fsutil.read_regular(path, "it", check=_check_key_file(path)).decode()
    except (fsutil.NotRegularFile, OSError, UnicodeDecodeError) as exc:
        raise BadKey(f"{path}: cannot read the key file ({exc})") from None
    return from_hex(text, str(path))


def load_or_create_key(spec: KeySpec, state_dir: Path, configured: str = "") -> bytes:
    """As load_key, but a state directory without the key file gets a fresh one (32 random bytes, 0600)."""
    try:
        return load_key(spec, state_dir, configured)
    except KeyMissing:
        pass
    path = spec.path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _check_key_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return load_key(spec, state_dir, configured)
