"""HMAC-SHA256 signing of artifacts, with the signing key (engine/keys.py says where keys come from).

Key order: ESPER_SIGNING_KEY (hex), then `library.signing_key` from config (hex), then
`<state>/keys/signing.key`, which only the engine generates (32 random bytes, mode 0600) when absent.

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
from pathlib import Path

from esper_tui.engine.keys import SIGNING_KEY, BadKey, KeyMissing
from esper_tui.engine.keys import load_key as _load
from esper_tui.engine.keys import load_or_create_key as _load_or_create

ENV_VAR = SIGNING_KEY.env
SigningKeyError = BadKey
SigningKeyMissing = KeyMissing


def load_key(state_dir: Path, configured: str = "") -> bytes:
    """The signing key; never creates one: a key made on the spot would match no stored artifact."""
    return _load(SIGNING_KEY, state_dir, configured)


def load_or_create_key(state_dir: Path, configured: str = "") -> bytes:
    """The engine's signing key: a state directory without one gets a fresh key file (mode 0600)."""
    return _load_or_create(SIGNING_KEY, state_dir, configured)


def sign(key: bytes, data: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def verify(key: bytes, data: bytes, signature: str) -> bool:
    """Constant-time check; compared as bytes, so a signature file of any garbage is a mismatch, not a TypeError."""
    return hmac.compare_digest(sign(key, data).encode(), signature.strip().encode(errors="replace"))
