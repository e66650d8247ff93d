"""Loading the optional TOML config into the typed EsperConfig (keys of seed 000 plus our sections).

Every numeric key declares its range on the field (msgspec `Meta`), so a bad value is refused while the
file is read, as one ConfigError line naming the key, e.g. `bus.max_deliveries: expected int >= 1`; the
CLI prints it as `config error: ...` and exits 2. The same declarations render the config reference
(`esper-tui config reference`, committed as docs/CONFIG.md), so the documented ranges are the enforced ones.

The package: ranges (the shared value ranges), sections (the structs), rules (checks across keys), loading
(file and overrides to a validated config) and reference (the markdown). Import from here.
"""

from esper_tui.engine.config.errors import ConfigError
from esper_tui.engine.config.loading import load_config, override, parse_config
from esper_tui.engine.config.reference import config_reference
from esper_tui.engine.config.rules import shared_forge_problem
from esper_tui.engine.config.sections import (
    BreakersConfig,
    BusConfig,
    CompilationConfig,
    ConservativeModeConfig,
    DurabilityMode,
    EsperConfig,
    ForgeWorkerConfig,
    LibraryConfig,
    MemoryManagementConfig,
    NissaConfig,
    PollingConfig,
    RecordingConfig,
    Section,
    SimicConfig,
    TezzeretConfig,
    TrainingConfig,
    UiConfig,
    WalConfig,
    wal_directory,
)

__all__ = [
    "BreakersConfig",
    "BusConfig",
    "CompilationConfig",
    "ConfigError",
    "ConservativeModeConfig",
    "DurabilityMode",
    "EsperConfig",
    "ForgeWorkerConfig",
    "LibraryConfig",
    "MemoryManagementConfig",
    "NissaConfig",
    "PollingConfig",
    "RecordingConfig",
    "Section",
    "SimicConfig",
    "TezzeretConfig",
    "TrainingConfig",
    "UiConfig",
    "WalConfig",
    "config_reference",
    "load_config",
    "override",
    "parse_config",
    "shared_forge_problem",
    "wal_directory",
]
