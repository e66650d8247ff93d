"""Config: TOML into the typed EsperConfig; every problem is one ConfigError line naming the dotted key."""

from __future__ import annotations

from pathlib import Path

import pytest

from esper_tui.engine.config import ConfigError, DurabilityMode, EsperConfig, load_config, parse_config
from esper_tui.engine.vocabulary import Strategy

# Seed 000's "Configuration Notes", written as TOML (the seed shows YAML).
SEED_000 = """
[tezzeret.compilation]
max_concurrent_jobs = 2
default_strategy = "STANDARD"
enable_aggressive_pipeline = false

[tezzeret.wal]
path = "/var/lib/esper/tezzeret/wal"
durability_mode = "O_DSYNC"

[tezzeret.conservative_mode]
gpu_threshold_percent = 20
threshold_duration_minutes = 5

[tezzeret.memory_management]
cleanup_interval_seconds = 300

[tezzeret.polling]
initial_full_scan = true
refresh_interval_minutes = 0  # 0 disables periodic refresh
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "esper.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_defaults_without_a_file():
    config = load_config(None)
    assert config == EsperConfig()
    c = config.tezzeret.compilation
    assert (c.max_concurrent_jobs, c.default_strategy, c.enable_aggressive_pipeline) == (2, Strategy.STANDARD, False)
    assert config.tezzeret.wal.durability_mode is DurabilityMode.O_DSYNC
    assert config.tezzeret.memory_management.cleanup_interval_seconds == 300
    assert config.tezzeret.polling.initial_full_scan is True


def test_an_empty_file_gives_the_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == EsperConfig()


def test_every_seed_000_key_is_accepted(tmp_path):
    config = load_config(write(tmp_path, SEED_000))
    t = config.tezzeret
    assert t.compilation.max_concurrent_jobs == 2
    assert t.compilation.default_strategy is Strategy.STANDARD
    assert t.compilation.enable_aggressive_pipeline is False
    assert t.wal.path == "/var/lib/esper/tezzeret/wal"
    assert t.wal.durability_mode is DurabilityMode.O_DSYNC
    assert t.conservative_mode.gpu_threshold_percent == 20.0
    assert t.conservative_mode.threshold_duration_minutes == 5.0
    assert t.memory_management.cleanup_interval_seconds == 300.0
    assert t.polling.initial_full_scan is True and t.polling.refresh_interval_minutes == 0.0


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("STANDARD", Strategy.STANDARD),
        ("standard", Strategy.STANDARD),
        ("Fast", Strategy.FAST),
        ("EMERGENCY", Strategy.EMERGENCY),
        ("AGGRESSIVE", Strategy.AGGRESSIVE),
    ],
)
def test_strategy_in_either_case(tmp_path, strategy, expected):
    config = load_config(write(tmp_path, f'[tezzeret.compilation]\ndefault_strategy = "{strategy}"\n'))
    assert config.tezzeret.compilation.default_strategy is expected


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("O_DSYNC", DurabilityMode.O_DSYNC), ("o_dsync", DurabilityMode.O_DSYNC), ("FSYNC", DurabilityMode.FSYNC)],
)
def test_durability_mode_in_either_case(tmp_path, mode, expected):
    config = load_config(write(tmp_path, f'[tezzeret.wal]\ndurability_mode = "{mode}"\n'))
    assert config.tezzeret.wal.durability_mode is expected


def test_our_own_sections_are_accepted(tmp_path):
    config = load_config(
        write(
            tmp_path,
            """
[library]
signing_key = "00112233445566778899aabbccddeeff"
cache_ttl_seconds = 30
[training]
epochs = 3
compile = false
[bus]
redis_url = "redis://localhost:6379/0"
[ui]
refresh_hz = 10
theme = "esper-light"
[tezzeret.breakers]
failure_threshold = 5
""",
        )
    )
    assert config.training.epochs == 3 and config.training.compile is False
    assert config.bus.redis_url.startswith("redis://") and config.ui.refresh_hz == 10.0
    assert config.tezzeret.breakers.failure_threshold == 5 and config.library.cache_ttl_seconds == 30.0


@pytest.mark.parametrize(
    ("text", "key", "why"),
    [
        ("[tezzeret.compilation]\nmax_concurent_jobs = 2\n", "tezzeret.compilation.max_concurent_jobs", "unknown key"),
        ("[tezzeret]\nbogus = 1\n", "tezzeret.bogus", "unknown key"),
        ("[nonsense]\na = 1\n", "nonsense", "unknown key"),
        (
            '[tezzeret.compilation]\nmax_concurrent_jobs = "two"\n',
            "tezzeret.compilation.max_concurrent_jobs",
            "expected `int`, got `str`",
        ),
        (
            "[tezzeret.compilation]\nmax_concurrent_jobs = true\n",
            "tezzeret.compilation.max_concurrent_jobs",
            "expected `int`, got `bool`",
        ),
        (
            "[tezzeret.compilation]\nmax_concurrent_jobs = 2.5\n",
            "tezzeret.compilation.max_concurrent_jobs",
            "expected `int`, got `float`",
        ),
        ('[tezzeret.polling]\ninitial_full_scan = "yes"\n', "tezzeret.polling.initial_full_scan", "expected `bool`"),
        (
            '[tezzeret.compilation]\ndefault_strategy = "TURBO"\n',
            "tezzeret.compilation.default_strategy",
            "invalid enum value",
        ),
        ("[tezzeret.wal]\ndurability_mode = 1\n", "tezzeret.wal.durability_mode", "expected `str`"),
        ("tezzeret = 5\n", "tezzeret", "expected `object`, got `int`"),
        ('[training]\nepochs = "10"\n', "training.epochs", "expected `int | null`"),
    ],
)
def test_bad_keys_and_types_name_the_dotted_key(tmp_path, text, key, why):
    message = error_of(tmp_path, text)
    assert message.startswith(f"{key}: "), message
    assert why in message, message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[tezzeret.compilation]\nmax_concurrent_jobs = 0\n", "tezzeret.compilation.max_concurrent_jobs"),
        ("[tezzeret.compilation]\nmax_attempts = 0\n", "tezzeret.compilation.max_attempts"),
        ("[tezzeret.compilation]\nworker_memory_limit_mb = 1024\n", "tezzeret.compilation.worker_memory_limit_mb"),
        (
            "[tezzeret.memory_management]\ncleanup_interval_seconds = 0\n",
            "tezzeret.memory_management.cleanup_interval_seconds",
        ),
        (
            "[tezzeret.conservative_mode]\ngpu_threshold_percent = 0\n",
            "tezzeret.conservative_mode.gpu_threshold_percent",
        ),
        (
            "[tezzeret.conservative_mode]\ngpu_threshold_percent = 101\n",
            "tezzeret.conservative_mode.gpu_threshold_percent",
        ),
        ("[training]\nepochs = 0\n", "training.epochs"),
        ("[training]\nslots = 9\n", "training.slots"),
        ("[training]\nbatch_size = 1\n", "training.batch_size"),
        ("[ui]\nrefresh_hz = 0\n", "ui.refresh_hz"),
        ("[ui]\nrefresh_hz = 31\n", "ui.refresh_hz"),
        ('[bus]\nredis_url = "http://x"\n', "bus.redis_url"),
    ],
)
def test_range_errors_name_the_key(tmp_path, text, key):
    assert error_of(tmp_path, text).startswith(f"{key}: ")


def test_edges_of_the_ranges_are_accepted(tmp_path):
    config = load_config(
        write(
            tmp_path,
            """
[tezzeret.compilation]
max_concurrent_jobs = 1
worker_memory_limit_mb = 2048
[tezzeret.conservative_mode]
gpu_threshold_percent = 100
[training]
slots = 8
batch_size = 2
[ui]
refresh_hz = 30
[bus]
redis_url = "unix:///run/redis.sock"
""",
        )
    )
    assert config.tezzeret.compilation.worker_memory_limit_mb == 2048 and config.training.slots == 8


def test_bad_toml_is_one_line(tmp_path):
    message = error_of(tmp_path, "[tezzeret.compilation\nmax_concurrent_jobs = 2\n")
    assert "not valid TOML" in message and str(tmp_path) in message


def test_duplicate_key_is_bad_toml(tmp_path):
    assert "not valid TOML" in error_of(tmp_path, "[ui]\nrefresh_hz = 1\nrefresh_hz = 2\n")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")


def test_a_directory_is_not_a_config(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)


def test_not_utf8(tmp_path):
    path = tmp_path / "esper.toml"
    path.write_bytes(b'[ui]\ntheme = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_parse_config_does_not_need_a_file():
    config = parse_config({"tezzeret": {"compilation": {"default_strategy": "FAST"}}})
    assert config.tezzeret.compilation.default_strategy is Strategy.FAST
    with pytest.raises(ConfigError, match=r"^ui\.nope: unknown key$"):
        parse_config({"ui": {"nope": 1}})


def test_config_is_frozen():
    config = load_config(None)
    with pytest.raises(AttributeError):
        config.tezzeret.compilation.max_concurrent_jobs = 3  # type: ignore[misc]
