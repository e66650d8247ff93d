"""Flags several commands take alike: the three that name a shared library (the engine, `forge-worker` and
`library …`), the check of `--redis-url` (the engine, `attach` and `forge-worker`), and the map from a flag to the
config key it sets, so that every value given on the command line passes the config file's ranges."""

from __future__ import annotations

import argparse
from typing import Any

from esper_tui.engine.config import ConfigError, EsperConfig, override

# A flag's argparse dest -> the config key it sets. Values reach the config only through `override`, which checks
# them against the key's declared range: a flag never skips a check the file's value would meet.
FLAG_KEYS: dict[str, str] = {
    "epochs": "training.epochs",
    "device": "training.device",
    "task": "training.task",
    "policy": "training.policy",
    "metrics_port": "nissa.port",
    "forge_workers": "tezzeret.compilation.max_concurrent_jobs",
    "interval": "ui.status_interval_s",
    "library": "library.catalog_url",
    "artifacts": "library.artifacts_url",
    "artifacts_endpoint": "library.artifacts_endpoint",
    "concurrency": "forge_worker.concurrency",
}


def add_library_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--library", metavar="URL", help="a shared catalog, postgresql://… (default: library.catalog_url)")
    p.add_argument(
        "--artifacts",
        metavar="URL",
        help="the shared library's bytes: s3://bucket/prefix or file:///dir (library.artifacts_url)",
    )
    p.add_argument("--artifacts-endpoint", metavar="URL", help="an S3-compatible server's endpoint (MinIO, moto)")


def given_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The flags of FLAG_KEYS that were given, as config keys for `config.override`."""
    return {key: value for dest, key in FLAG_KEYS.items() if (value := getattr(args, dest, None)) is not None}


def with_flags(config: EsperConfig, args: argparse.Namespace, extra: dict[str, Any] | None = None) -> EsperConfig:
    """The config with the given flags applied and checked like the file's values. A value out of range is refused
    in one ConfigError line naming the flag and its key, e.g.
    `--epochs (training.epochs): expected int <= 1000000`."""
    values = {**given_flags(args), **(extra or {})}
    if not values:
        return config
    try:
        return override(config, values)
    except ConfigError as exc:
        text = str(exc)
        for dest, key in FLAG_KEYS.items():
            if text.startswith(f"{key}:") and getattr(args, dest, None) is not None:
                text = f"--{dest.replace('_', '-')} ({key}){text[len(key) :]}"
                break
        raise ConfigError(text) from None


def redis_url_problem(url: str | None) -> str | None:
    if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
        return f"--redis-url: must start with redis://, rediss:// or unix:// (got {url!r})"
    return None
