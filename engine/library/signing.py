"""HMAC-SHA256 signing of artifacts, and where the key comes from.

Key order: ESPER_SIGNING_KEY (hex), then `library.signing_key` from config (hex), then
`<state>/keys/signing.key`, generated (32 random bytes, mode 0600) when absent.

Only the engine signs. Compile workers get no ESPER_* variable (forge.sandbox scrubs their
environment), and where the engine runs as root they run as an unprivileged account that cannot
open `keys/` (0700 root): a compromised worker then cannot sign, so it cannot plant an artifact or
alter a stored one without failing verification. What it can still do is return bad files for the
job it was given, which the engine signs as that job's output: the signature vouches for where a
kernel came from, not for what the compiler put in it. Where the engine is an ordinary user (or the
worker account cannot run the interpreter and the engine falls back to its own user), workers run
as that same user and could read the key file; only the environment is scrubbed then.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

ENV_VAR = "ESPER_SIGNING_KEY"


class SigningKeyError(ValueError):
    """The key is missing, unreadable or malformed: one line that names where it came from."""


class SigningKeyMissing(SigningKeyError):
    """No key configured and no key file: only the engine may create one (load_or_create_key)."""


def _from_hex(value: str, origin: str) -> bytes:
    try:
        key = bytes.fromhex(value.strip())
    except ValueError:
        raise SigningKeyError(f"{origin}: signing key must be hex") from None
    if len(key) < 16:
        raise SigningKeyError(f"{origin}: signing key must be at least 16 bytes (32 hex digits)")
    return key


def key_path(state_dir: Path) -> Path:
    return state_dir / "keys" / "signing.key"


def load_key(state_dir: Path, configured: str = "") -> bytes:
    """The signing key, from the environment, the config or the key file; never creates one.

    For read-only tools: a key created on the spot signed nothing, so every stored artifact would fail.
    """
    if os.environ.get(ENV_VAR):
        return _from_hex(os.environ[ENV_VAR], ENV_VAR)
    if configured:
        return _from_hex(configured, "library.signing_key")
    path = key_path(state_dir)
    if not path.exists():
        raise SigningKeyMissing(
            f"no signing key at {path}; verify needs the key that signed the library "
            f"(the key file, {ENV_VAR} or library.signing_key)"
        )
    try:
        if path.stat().st_mode & 0o077:
            raise SigningKeyError(f"{path}: key file is readable by others; chmod 600 it")
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SigningKeyError(f"{path}: cannot read the key file ({exc})") from None
    return _from_hex(text, str(path))


def load_or_create_key(state_dir: Path, configured: str = "") -> bytes:
    """The engine's key: as load_key, but a state directory without one gets a fresh key file (mode 0600)."""
    try:
        return load_key(state_dir, configured)
    except SigningKeyMissing:
        pass
    path = key_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return load_key(state_dir, configured)


def sign(key: bytes, data: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def verify(key: bytes, data: bytes, signature: str) -> bool:
    """Constant-time check; compared as bytes, so a signature file of any garbage is a mismatch, not a TypeError."""
    return hmac.compare_digest(sign(key, data).encode(), signature.strip().encode(errors="replace"))
