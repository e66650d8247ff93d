"""What run info (`i`) shows of a run's settings, without a secret in it.

The engine sends these with EngineStarted: every effective config key with its default (so a screen can mark
what differs), with the keys that hold secrets read as "(set)" or "(empty)" and every URL's password masked;
and each key's fingerprint (keys.fingerprint), never the key itself.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

from esper_tui.engine.config import EsperConfig
from esper_tui.engine.contracts import ConfigEntry

SECRET_KEYS = frozenset({"library.signing_key", "bus.operator_key", "bus.frame_key"})
"""Config keys whose value is a secret: run info says whether they are set, never what they are."""
MASK = "***"


def masked_url(url: str) -> str:
    """`url` with its password (if any) replaced by ***; anything that is not a URL with a host comes back as it
    was."""
    parts = urlsplit(url)
    if not parts.scheme or parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:{MASK}@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config (plain data) as dotted keys -> leaf values."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flat(inner, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def _shown(key: str, value: Any) -> str:
    """A value as run info writes it: secrets as (set)/(empty), URLs without passwords, the rest as JSON."""
    if key in SECRET_KEYS or "password" in key or "secret" in key:
        return "(set)" if value else "(empty)"
    if isinstance(value, str):
        return masked_url(value) if "://" in value else value
    return msgspec.json.encode(value).decode()


def config_entries(config: EsperConfig) -> list[ConfigEntry]:
    """Every key of `config`, in declaration order, with its default and whether it differs from it."""
    effective = _flat(msgspec.to_builtins(config))
    defaults = _flat(msgspec.to_builtins(EsperConfig()))
    return [
        ConfigEntry(
            key=key,
            value=_shown(key, value),
            default=_shown(key, defaults.get(key)),
            changed=value != defaults.get(key),
        )
        for key, value in effective.items()
    ]
