"""Loading the optional TOML file (or command-line overrides) into the typed EsperConfig, validated.

A bad value is refused while the file is read, as one ConfigError line naming the key, e.g.
`bus.max_deliveries: expected int >= 1`.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from esper_tui.engine.config.errors import ConfigError
from esper_tui.engine.config.rules import check_rules
from esper_tui.engine.config.sections import EsperConfig

# Seed 000 writes enum values in upper case (STANDARD, O_DSYNC); accept either spelling.
_ENUM_KEYS = {("tezzeret", "compilation", "default_strategy"), ("tezzeret", "wal", "durability_mode")}


def _normalise(raw: dict[str, Any]) -> dict[str, Any]:
    for path in _ENUM_KEYS:
        node: Any = raw
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(path[-1]), str):
            node[path[-1]] = node[path[-1]].lower()
    return raw


def _key_of(message: str) -> tuple[str, str]:
    """Turn msgspec's 'Expected `int` >= 1 - at `$.bus.max_deliveries`' into
    ('bus.max_deliveries', 'expected int >= 1'), and an unknown or missing field into its dotted key."""
    at = re.search(r" - at `\$\.?([^`]*)`", message)
    where = at.group(1) if at else ""
    text = message[: at.start()] if at else message
    unknown = re.match(r"Object contains unknown field `([^`]+)`", text)
    if unknown:
        return ".".join(p for p in (where, unknown.group(1)) if p), "unknown key"
    missing = re.match(r"Object missing required field `([^`]+)`", text)
    if missing:
        return ".".join(p for p in (where, missing.group(1)) if p), "missing key"
    text = text.replace("`", "")
    return where or "(top level)", text[0].lower() + text[1:] if text else "invalid"


def parse_config(raw: dict[str, Any]) -> EsperConfig:
    try:
        config = msgspec.convert(_normalise(raw), EsperConfig, strict=True)
    except msgspec.ValidationError as exc:
        key, why = _key_of(str(exc))
        raise ConfigError(f"{key}: {why}") from None
    check_rules(config)
    return config


def override(config: EsperConfig, values: dict[str, Any]) -> EsperConfig:
    """The config with dotted keys replaced (command-line flags), validated exactly like the file's values:
    the same ranges, the same rules, the same one-line error naming the key."""
    raw = msgspec.to_builtins(config)
    for dotted, value in values.items():
        *parents, leaf = dotted.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[leaf] = value
    return parse_config(raw)


def load_config(path: Path | None) -> EsperConfig:
    """Built-in defaults when path is None; otherwise the file, validated."""
    if path is None:
        return EsperConfig()
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return parse_config(raw)
