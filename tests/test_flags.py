"""Command-line values pass the same range checks as the config file's (audit finding 11: `--epochs 1e20`
skipped them and died with an OverflowError traceback)."""

from __future__ import annotations

import argparse

import msgspec
import pytest

from esper_tui.commands.cli import main
from esper_tui.commands.flags import FLAG_KEYS, with_flags
from esper_tui.engine.config import ConfigError, EsperConfig


def _value_at(config: EsperConfig, dotted: str) -> object:
    node: object = msgspec.to_builtins(config)
    for part in dotted.split("."):
        assert isinstance(node, dict), dotted
        node = node[part]
    return node


def test_every_flag_names_a_config_key() -> None:
    config = EsperConfig()
    for dest, key in FLAG_KEYS.items():
        try:
            _value_at(config, key)
        except KeyError:
            pytest.fail(f"--{dest} maps to {key}, which the config does not have")


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--no-ui", "--epochs", "100000000000000000000"], "--epochs"),
        (["--no-ui", "--epochs", "0"], "--epochs"),
        (["--no-ui", "--interval", "nan"], "--interval"),
        (["--no-ui", "--interval", "inf"], "--interval"),
        (["--no-ui", "--metrics-port", "70000"], "--metrics-port"),
        (["--no-ui", "--forge-workers", "100000000000000000000"], "--forge-workers"),
        (["attach", "--no-ui", "--interval", "0", "--redis-url", "redis://127.0.0.1:1"], "--interval"),
        (["forge-worker", "--redis-url", "redis://127.0.0.1:1", "--concurrency", "999"], "--concurrency"),
    ],
)
def test_an_out_of_range_flag_is_one_line_naming_it_and_exit_2(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"{flag} (" in err and "): expected" in err, err


def test_flags_in_range_reach_the_config() -> None:
    args = argparse.Namespace(epochs=7, interval=0.25, metrics_port=9100, forge_workers=0, library=None)
    config = with_flags(EsperConfig(), args, {"training.compile": False})
    assert config.training.epochs == 7
    assert config.ui.status_interval_s == 0.25
    assert config.nissa.port == 9100
    assert config.tezzeret.compilation.max_concurrent_jobs == 0
    assert config.training.compile is False


def test_no_flags_leave_the_config_as_it_is() -> None:
    config = EsperConfig()
    assert with_flags(config, argparse.Namespace()) is config


def test_an_extra_key_out_of_range_is_refused_under_its_key() -> None:
    with pytest.raises(ConfigError, match=r"^training\.epochs: "):
        with_flags(EsperConfig(), argparse.Namespace(), {"training.epochs": -1})
