"""Config: TOML into the typed EsperConfig; every problem is one ConfigError line naming the dotted key."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import msgspec.inspect as mi
import pytest

from esper_tui.engine.config import (
    ConfigError,
    DurabilityMode,
    EsperConfig,
    TrainingConfig,
    config_reference,
    load_config,
    parse_config,
)
from esper_tui.engine.training.data import TRAIN_SIZE
from esper_tui.engine.vocabulary import Strategy

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "esper_tui"]

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
            "expected int, got str",
        ),
        (
            "[tezzeret.compilation]\nmax_concurrent_jobs = true\n",
            "tezzeret.compilation.max_concurrent_jobs",
            "expected int, got bool",
        ),
        (
            "[tezzeret.compilation]\nmax_concurrent_jobs = 2.5\n",
            "tezzeret.compilation.max_concurrent_jobs",
            "expected int, got float",
        ),
        ('[tezzeret.polling]\ninitial_full_scan = "yes"\n', "tezzeret.polling.initial_full_scan", "expected bool"),
        (
            '[tezzeret.compilation]\ndefault_strategy = "TURBO"\n',
            "tezzeret.compilation.default_strategy",
            "invalid enum value",
        ),
        ("[tezzeret.wal]\ndurability_mode = 1\n", "tezzeret.wal.durability_mode", "expected str"),
        ("tezzeret = 5\n", "tezzeret", "expected object, got int"),
        ('[training]\nepochs = "10"\n', "training.epochs", "expected int | null"),
    ],
)
def test_bad_keys_and_types_name_the_dotted_key(tmp_path, text, key, why):
    message = error_of(tmp_path, text)
    assert message.startswith(f"{key}: "), message
    assert why in message, message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[tezzeret.compilation]\nmax_concurrent_jobs = 65\n", "tezzeret.compilation.max_concurrent_jobs"),
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
        ('[tezzeret.wal]\npath = ""\n', "tezzeret.wal.path"),  # would put the WAL's segments in the state dir itself
        ('[bus]\ngroup = ""\n', "bus.group"),
        ('[bus]\nstream_prefix = ""\n', "bus.stream_prefix"),
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


# --------------------------------------------------------------------------- ranges on every numeric key


def nested(dotted: str, value: Any) -> dict[str, Any]:
    """{"a": {"b": value}} for "a.b": the raw shape tomllib hands to parse_config."""
    raw: dict[str, Any] = {}
    node = raw
    *sections, key = dotted.split(".")
    for part in sections:
        node = node.setdefault(part, {})
    node[key] = value
    return raw


def numeric_keys() -> list[tuple[str, mi.IntType | mi.FloatType]]:
    """Every int or float key of EsperConfig, found by walking the schema (so new keys are covered)."""
    found: list[tuple[str, mi.IntType | mi.FloatType]] = []

    def walk(prefix: str, struct: mi.StructType) -> None:
        for f in struct.fields:
            t = f.type
            if isinstance(t, mi.StructType):
                walk(f"{prefix}{f.name}.", t)
                continue
            t = t.type if isinstance(t, mi.Metadata) else t
            if isinstance(t, mi.UnionType):
                t = next(u for u in t.types if not isinstance(u, mi.NoneType))
                t = t.type if isinstance(t, mi.Metadata) else t
            if isinstance(t, mi.IntType | mi.FloatType):
                found.append((f"{prefix}{f.name}", t))

    info = mi.type_info(EsperConfig)
    assert isinstance(info, mi.StructType)
    walk("", info)
    return found


NUMERIC = numeric_keys()
FLOAT_KEYS = [key for key, t in NUMERIC if isinstance(t, mi.FloatType)]
INT_KEYS = [key for key, t in NUMERIC if isinstance(t, mi.IntType)]


def test_the_schema_walk_finds_the_keys():
    assert len(FLOAT_KEYS) >= 16 and len(INT_KEYS) >= 21
    assert "training.epochs" in INT_KEYS and "tezzeret.breakers.open_seconds" in FLOAT_KEYS


@pytest.mark.parametrize("key", [key for key, _ in NUMERIC])
def test_every_numeric_key_declares_a_bounded_range(key):
    t = dict(NUMERIC)[key]
    assert (t.ge is not None or t.gt is not None) and t.le is not None, f"{key}: {t}"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_no_float_key_takes_nan_or_infinity(key, value):
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: expected float [<>]=? "):
        parse_config(nested(key, value))


@pytest.mark.parametrize("key", INT_KEYS)
def test_no_int_key_takes_a_huge_integer(key):
    """TOML integers are unbounded; one past 64 bits used to reach setrlimit or torch as an OverflowError."""
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: expected int <= \d+$"):
        parse_config(nested(key, 2**70))


# The findings, each as (key, value, the exact one-line error).
FINDINGS = [
    ("tezzeret.compilation.timeout_standard_s", math.nan, "expected float > 0.0"),  # hung until killed
    ("bus.max_deliveries", 0, "expected int >= 1"),  # dead-lettered every message, exit 0
    ("training.hidden", -3, "expected int >= 1"),  # torch error, exit 1
    ("training.learning_rate", math.nan, "expected float > 0.0"),  # torch error, exit 1
    ("tezzeret.breakers.failure_threshold", 0, "expected int >= 1"),  # traceback
    ("tezzeret.breakers.open_seconds", math.nan, "expected float >= 0.0"),
    ("tezzeret.breakers.half_open_probes", 0, "expected int >= 1"),
    ("tezzeret.compilation.worker_memory_limit_mb", 2**44, "expected int <= 1048576"),  # worker failed to start
    ("tezzeret.memory_management.memory_budget_mb", -1, "expected int >= 512"),
    ("bus.maxlen", -1, "expected int >= 1"),
    ("tezzeret.compilation.timeout_standard_s", math.inf, "expected float <= 86400.0"),
    ("training.epochs", 0, "expected int >= 1"),
    ("training.seed", 2**64, "expected int <= 4294967295"),
]


@pytest.mark.parametrize(("key", "value", "why"), FINDINGS)
def test_out_of_range_values_are_one_line_naming_the_key(key, value, why):
    with pytest.raises(ConfigError) as info:
        parse_config(nested(key, value))
    assert str(info.value) == f"{key}: {why}"


def test_range_errors_from_a_file(tmp_path):
    assert error_of(tmp_path, "[tezzeret.compilation]\ntimeout_standard_s = nan\n") == (
        "tezzeret.compilation.timeout_standard_s: expected float > 0.0"
    )
    assert error_of(tmp_path, "[training]\nlearning_rate = inf\n") == "training.learning_rate: expected float <= 1.0"


@pytest.mark.parametrize(
    ("bus", "key", "other"),
    [
        ({"emergency_threshold": 8000}, "bus.emergency_threshold", "bus.drop_threshold"),
        ({"emergency_threshold": 100, "drop_threshold": 50}, "bus.emergency_threshold", "bus.drop_threshold"),
        ({"maxlen": 5000}, "bus.drop_threshold", "bus.maxlen"),
        ({"drop_threshold": 100_000}, "bus.drop_threshold", "bus.maxlen"),
    ],
)
def test_rules_across_keys(bus, key, other):
    with pytest.raises(ConfigError) as info:
        parse_config({"bus": bus})
    message = str(info.value)
    assert message.startswith(f"{key}: must be below {other} (got ") and "\n" not in message, message


def test_the_tightest_legal_bus_is_accepted():
    bus = parse_config({"bus": {"emergency_threshold": 1, "drop_threshold": 2, "maxlen": 3}}).bus
    assert (bus.emergency_threshold, bus.drop_threshold, bus.maxlen) == (1, 2, 3)


def test_the_upper_and_lower_ends_are_accepted(tmp_path):
    config = load_config(
        write(
            tmp_path,
            """
[tezzeret.compilation]
max_concurrent_jobs = 64
worker_memory_limit_mb = 1048576
timeout_standard_s = 86400
timeout_fast_s = 0.001
[tezzeret.breakers]
open_seconds = 0
failure_threshold = 100
[tezzeret.memory_management]
memory_budget_mb = 512
[training]
epochs = 1_000_000
seed = 4294967295
blend_epochs = 0
learning_rate = 1
batch_size = 4000
[bus]
max_deliveries = 1
""",
        )
    )
    assert config.tezzeret.compilation.worker_memory_limit_mb == 1048576 and config.training.seed == 2**32 - 1
    assert config.tezzeret.breakers.open_seconds == 0.0 and config.training.epochs == 1_000_000


def test_batch_size_bound_is_the_training_split():
    """A batch larger than the training split never fills, so an epoch would take no step at all."""
    info = mi.type_info(TrainingConfig)
    assert isinstance(info, mi.StructType)
    field = next(f for f in info.fields if f.name == "batch_size")
    assert isinstance(field.type, mi.Metadata) and field.type.type.le == TRAIN_SIZE


def test_every_key_of_the_readme_example_is_accepted():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1]
    block = re.search(r"```toml\n(.*?)```", section, re.S)
    assert block, "README's Configuration section has no TOML example"
    raw = tomllib.loads(block.group(1))
    assert raw, block.group(1)
    parse_config(raw)


# --------------------------------------------------------------------------- the generated reference


def test_the_committed_reference_is_the_generated_one():
    """docs/CONFIG.md never drifts: regenerate it with `esper-tui config reference > docs/CONFIG.md`."""
    assert (ROOT / "docs" / "CONFIG.md").read_text() == config_reference()


def test_the_reference_shows_each_key_with_its_range():
    text = config_reference()
    assert "## [tezzeret.compilation]" in text and "## [bus]" in text and "## Rules across keys" in text
    for key, _ in NUMERIC:
        section, name = key.rsplit(".", 1)
        table = text.split(f"## [{section}]\n", 1)[1].split("\n## ", 1)[0]
        row = next((line for line in table.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, key
        assert re.fullmatch(r"[\[(][\d.]+, [\d.]+\]", row.split(" | ")[3]), row  # e.g. [1, 64] or (0, 86400]
    assert "| `max_deliveries` | int | `5` | [1, 100] | deliveries of a failing message" in text
    assert "| `timeout_standard_s` | float | `300.0` | (0, 86400] |" in text
    assert "| `epochs` | int (optional) | unset | [1, 1000000] | stop after" in text
    assert "`bus.emergency_threshold` must be below `bus.drop_threshold`" in text


# --------------------------------------------------------------------------- through the real CLI


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            "[tezzeret.compilation]\ntimeout_standard_s = nan\n",
            "tezzeret.compilation.timeout_standard_s: expected float > 0.0",
        ),
        ("[bus]\nmax_deliveries = 0\n", "bus.max_deliveries: expected int >= 1"),
        ("[training]\nhidden = -3\n", "training.hidden: expected int >= 1"),
        ("[training]\nlearning_rate = nan\n", "training.learning_rate: expected float > 0.0"),
        ("[tezzeret.breakers]\nfailure_threshold = 0\n", "tezzeret.breakers.failure_threshold: expected int >= 1"),
    ],
)
def test_the_cli_refuses_out_of_range_values_in_one_line(tmp_path, toml, message):
    """Before: a hang, exit 0 after dead-lettering, exit 1 with a torch error, a traceback. Now: exit 2, one line,
    and the state directory is never created."""
    config = write(tmp_path, toml)
    proc = run_cli("--no-ui", "--epochs", "1", "--config", str(config), "--state-dir", str(tmp_path / "state"))
    assert (proc.returncode, proc.stderr, proc.stdout) == (2, f"esper-tui: config error: {message}\n", "")
    assert not (tmp_path / "state").exists()


def test_the_operator_tools_refuse_them_too(tmp_path):
    config = write(tmp_path, "[bus]\nmaxlen = -1\n")
    proc = run_cli("wal", "inspect", "--config", str(config), "--state-dir", str(tmp_path))
    assert (proc.returncode, proc.stderr) == (2, "esper-tui: config error: bus.maxlen: expected int >= 1\n")


def test_config_reference_command_prints_the_committed_file():
    proc = run_cli("config", "reference")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (ROOT / "docs" / "CONFIG.md").read_text()
