"""HMAC-SHA256 signing of artifacts, and where the key comes from.

Key order: ESPER_SIGNING_KEY (hex), then `library.signing_key` from config (hex), then
`<state>/keys/signing.key`, generated (32 random bytes, mode 0600) when absent. The compile workers
never see the key: only the engine signs, so a compromised sandbox cannot forge a kernel.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

ENV_VAR = "ESPER_SIGNING_KEY"


class SigningKeyError(ValueError):
    pass


def _from_hex(value: str, origin: str) -> bytes:
    try:
        key = bytes.fromhex(value.strip())
    except ValueError:
        raise SigningKeyError(f"{origin}: signing key must be hex") from None
    if len(key) < 16:
        raise SigningKeyError(f"{origin}: signing key must be at least 16 bytes (32 hex digits)")
    return key


def load_or_create_key(state_dir: Path, configured: str = "") -> bytes:
    if os.environ.get(ENV_VAR):
        return _from_hex(os.environ[ENV_VAR], ENV_VAR)
    if configured:
        return _from_hex(configured, "library.signing_key")
    path = state_dir / "keys" / "signing.key"
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise SigningKeyError(f"{path}: key file is readable by others; chmod 600 it")
        return _from_hex(path.read_text(), str(path))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return _from_hex(path.read_text(), str(path))


def sign(key: bytes, data: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def verify(key: bytes, data: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(key, data), signature.strip())
