"""Loading the optional TOML config into the typed EsperConfig (keys of seed 000 plus our sections).

Every problem becomes one ConfigError line naming the key, e.g.
`config error: tezzeret.compilation.max_concurrent_jobs: expected int, got str`; the CLI exits 2.
"""

from __future__ import annotations

import enum
import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from esper_tui.engine.vocabulary import Strategy

# The TOML file mirrors these sections; keys follow seed 000. Unknown keys are errors (forbid_unknown_fields).


class DurabilityMode(enum.StrEnum):
    O_DSYNC = "o_dsync"
    FSYNC = "fsync"


class Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every config section."""


class CompilationConfig(Section, kw_only=True):
    max_concurrent_jobs: int = 2
    default_strategy: Strategy = Strategy.STANDARD
    enable_aggressive_pipeline: bool = False
    max_attempts: int = 3
    jobs_per_worker: int = 16  # a worker is reused this many times (inductor start-up is ~3-4 s)
    worker_memory_limit_mb: int = 4096  # RLIMIT_AS per sandboxed worker (g++ peaks near 1 GB)
    timeout_fast_s: float = 120.0
    timeout_standard_s: float = 300.0
    timeout_aggressive_s: float = 900.0
    timeout_emergency_s: float = 60.0


class WalConfig(Section, kw_only=True):
    path: str = "tezzeret/wal"  # relative paths are under the state directory
    durability_mode: DurabilityMode = DurabilityMode.O_DSYNC


class ConservativeModeConfig(Section, kw_only=True):
    gpu_threshold_percent: float = 25.0
    threshold_duration_minutes: float = 5.0
    calm_period_minutes: float = 0.0  # 0: only the operator leaves conservative mode


class MemoryManagementConfig(Section, kw_only=True):
    cleanup_interval_seconds: float = 300.0
    memory_budget_mb: int = 8192  # the memory breaker trips above this resident size (engine + workers)


class PollingConfig(Section, kw_only=True):
    initial_full_scan: bool = True
    refresh_interval_minutes: float = 0.0  # 0 disables periodic refresh


class BreakersConfig(Section, kw_only=True):
    failure_threshold: int = 3  # consecutive failures that open a breaker
    open_seconds: float = 30.0  # time spent open before half-open
    half_open_probes: int = 1  # calls let through while half-open


class TezzeretConfig(Section, kw_only=True):
    compilation: CompilationConfig = msgspec.field(default_factory=CompilationConfig)
    wal: WalConfig = msgspec.field(default_factory=WalConfig)
    conservative_mode: ConservativeModeConfig = msgspec.field(default_factory=ConservativeModeConfig)
    memory_management: MemoryManagementConfig = msgspec.field(default_factory=MemoryManagementConfig)
    polling: PollingConfig = msgspec.field(default_factory=PollingConfig)
    breakers: BreakersConfig = msgspec.field(default_factory=BreakersConfig)


class LibraryConfig(Section, kw_only=True):
    signing_key: str = ""  # hex; ESPER_SIGNING_KEY overrides; generated into the state dir when absent
    cache_ttl_seconds: float = 600.0


class TrainingConfig(Section, kw_only=True):
    enabled: bool = True
    compile: bool = True  # graft compiled kernels; false runs seeds eagerly (banner shows EAGER)
    epochs: int | None = None  # None: run until interrupted
    batch_size: int = 100
    learning_rate: float = 3e-3
    hidden: int = 64
    slots: int = 2
    seed: int = 0
    plateau_epochs: int = 3
    plateau_delta: float = 0.005
    fossilize_margin: float = 0.015  # accuracy gain a held seed must show; the 1000-sample val set is noisy
    blend_epochs: int = 5
    train_epochs: int = 2  # epochs a seed trains isolated before blending
    holding_epochs: int = 2
    embargo_epochs: int = 3
    epoch_delay_s: float = 0.0  # slow the loop down for demos


class BusConfig(Section, kw_only=True):
    redis_url: str = ""  # empty: the in-process bus
    stream_prefix: str = "oona"
    group: str = "esper"
    emergency_threshold: int = 4000
    drop_threshold: int = 8000
    max_deliveries: int = 5
    maxlen: int = 100_000


class UiConfig(Section, kw_only=True):
    refresh_hz: float = 4.0
    theme: str = "esper-dark"


class EsperConfig(Section, kw_only=True):
    tezzeret: TezzeretConfig = msgspec.field(default_factory=TezzeretConfig)
    library: LibraryConfig = msgspec.field(default_factory=LibraryConfig)
    training: TrainingConfig = msgspec.field(default_factory=TrainingConfig)
    bus: BusConfig = msgspec.field(default_factory=BusConfig)
    ui: UiConfig = msgspec.field(default_factory=UiConfig)


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
        (
            "tezzeret.compilation.worker_memory_limit_mb",
            c.tezzeret.compilation.worker_memory_limit_mb >= 2048,
            "must be >= 2048 (inductor's g++ children peak near 1 GB virtual)",
        ),
        (
            "tezzeret.memory_management.cleanup_interval_seconds",
            c.tezzeret.memory_management.cleanup_interval_seconds > 0,
            "must be > 0",
        ),
        (
            "tezzeret.conservative_mode.gpu_threshold_percent",
            0 < c.tezzeret.conservative_mode.gpu_threshold_percent <= 100,
            "must be in (0, 100]",
        ),
        ("training.epochs", c.training.epochs is None or c.training.epochs >= 1, "must be >= 1"),
        ("training.slots", 1 <= c.training.slots <= 8, "must be between 1 and 8"),
        ("training.batch_size", c.training.batch_size >= 2, "must be >= 2"),
        ("ui.refresh_hz", 0 < c.ui.refresh_hz <= 30, "must be in (0, 30]"),
        (
            "bus.redis_url",
            not c.bus.redis_url or c.bus.redis_url.startswith(("redis://", "rediss://", "unix://")),
            "must start with redis://, rediss:// or unix://",
        ),
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
