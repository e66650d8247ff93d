"""Rules across keys: a field's Meta sees only its own value; these few rules relate two keys, so they are
checked after conversion. They are data, so the reference lists exactly the rules that are enforced.

shared_forge_problem relates keys to the bus URL, which may come from a flag, so it is a question the caller
asks before running, not a rule the file must pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from esper_tui.engine.config.errors import ConfigError
from esper_tui.engine.config.sections import EsperConfig


@dataclass(frozen=True)
class Below:
    """`key` must be strictly below `other`, because of `why`."""

    key: str
    other: str
    why: str


RULES = (
    Below(
        "bus.emergency_threshold",
        "bus.drop_threshold",
        "commands must reroute to the emergency stream before the normal stream refuses them",
    ),
    Below(
        "bus.drop_threshold",
        "bus.maxlen",
        "streams are trimmed to maxlen, so with a larger threshold unhandled entries are trimmed away, never refused",
    ),
    Below(
        "forge_worker.keepalive_s",
        "forge_worker.claim_idle_s",
        "a live worker must re-claim its job before others may take it over",
    ),
    Below(
        "forge_worker.heartbeat_s",
        "forge_worker.heartbeat_ttl_s",
        "a heartbeat must be renewed before it expires, or a live worker flickers out of the list",
    ),
)


def _value(config: EsperConfig, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def check_rules(config: EsperConfig) -> None:
    for rule in RULES:
        value, limit = _value(config, rule.key), _value(config, rule.other)
        if not value < limit:
            raise ConfigError(f"{rule.key}: must be below {rule.other} (got {value} and {limit}): {rule.why}")


def shared_forge_problem(config: EsperConfig, redis_url: str | None) -> str | None:
    """Why this config cannot run as given, for the shared library and remote forge (None when it can).

    A shared library needs both of its URLs; an engine without compile workers of its own needs one, and a
    Redis bus, because forge workers take the jobs from there.
    """
    lib = config.library
    if bool(lib.catalog_url) != bool(lib.artifacts_url):
        return (
            "a shared library needs both --library postgresql://… and --artifacts s3://bucket/prefix (or file:///dir)"
        )
    if config.tezzeret.compilation.max_concurrent_jobs == 0 and not (lib.catalog_url and redis_url):
        return (
            "--forge-workers 0 needs a shared library (--library, --artifacts) and a Redis bus (--redis-url): "
            "forge workers take the jobs from there"
        )
    return None
