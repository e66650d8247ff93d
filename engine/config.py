"""Loading the optional TOML config into the typed EsperConfig (keys of seed 000 plus our sections).

Every problem becomes one ConfigError line naming the key, e.g.
`config error: tezzeret.compilation.max_concurrent_jobs: expected int, got str`; the CLI exits 2.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from .contracts import EsperConfig

# Seed 000 writes enum values in upper case (STANDARD, O_DSYNC); accept either spelling.
_ENUM_KEYS = {("tezzeret", "compilation", "default_strategy"), ("tezzeret", "wal", "durability_mode")}


class ConfigError(ValueError):
    pass


def _normalise(raw: dict[str, Any]) -> dict[str, Any]:
    for path in _ENUM_KEYS:
        node: Any = raw
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(path[-1]), str):
            node[path[-1]] = node[path[-1]].lower()
    return raw


def _key_of(message: str) -> tuple[str, str]:
    """Turn msgspec's 'Object contains unknown field `x` - at `$.a.b`' into ('a.b.x', 'unknown key')."""
    at = re.search(r" - at `\$\.?([^`]*)`", message)
    where = at.group(1) if at else ""
    text = message[: at.start()] if at else message
    unknown = re.match(r"Object contains unknown field `([^`]+)`", text)
    if unknown:
        return ".".join(p for p in (where, unknown.group(1)) if p), "unknown key"
    missing = re.match(r"Object missing required field `([^`]+)`", text)
    if missing:
        return ".".join(p for p in (where, missing.group(1)) if p), "missing key"
    return where or "(top level)", text[0].lower() + text[1:] if text else "invalid"


def parse_config(raw: dict[str, Any]) -> EsperConfig:
    try:
        config = msgspec.convert(_normalise(raw), EsperConfig, strict=True)
    except msgspec.ValidationError as exc:
        key, why = _key_of(str(exc))
        raise ConfigError(f"{key}: {why}") from None
    _check_ranges(config)
    return config


def _check_ranges(c: EsperConfig) -> None:
    checks = [
        ("tezzeret.compilation.max_concurrent_jobs", c.tezzeret.compilation.max_concurrent_jobs >= 1, "must be >= 1"),
        ("tezzeret.compilation.max_attempts", c.tezzeret.compilation.max_attempts >= 1, "must be >= 1"),
        ("tezzeret.compilation.worker_memory_limit_mb", c.tezzeret.compilation.worker_memory_limit_mb >= 2048,
         "must be >= 2048 (inductor's g++ children peak near 1 GB virtual)"),
        ("tezzeret.memory_management.cleanup_interval_seconds",
         c.tezzeret.memory_management.cleanup_interval_seconds > 0, "must be > 0"),
        ("tezzeret.conservative_mode.gpu_threshold_percent",
         0 < c.tezzeret.conservative_mode.gpu_threshold_percent <= 100, "must be in (0, 100]"),
        ("training.epochs", c.training.epochs is None or c.training.epochs >= 1, "must be >= 1"),
        ("training.slots", 1 <= c.training.slots <= 8, "must be between 1 and 8"),
        ("training.batch_size", c.training.batch_size >= 2, "must be >= 2"),
        ("ui.refresh_hz", 0 < c.ui.refresh_hz <= 30, "must be in (0, 30]"),
        ("bus.redis_url", not c.bus.redis_url or c.bus.redis_url.startswith(("redis://", "rediss://", "unix://")),
         "must start with redis://, rediss:// or unix://"),
    ]
    for key, ok, why in checks:
        if not ok:
            raise ConfigError(f"{key}: {why}")


def wal_directory(config: EsperConfig, state_dir: Path) -> Path:
    """tezzeret.wal.path, relative to the state directory unless absolute."""
    path = Path(config.tezzeret.wal.path)
    return path if path.is_absolute() else state_dir / path


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
