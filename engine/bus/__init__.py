"""Oona, the message bus: telemetry out of the engine, commands into it.

`create_bus` picks the backend: the in-process `EmbeddedBus` by default, `RedisStreamsBus` when a
Redis URL is configured. Both implement `Bus` with the same delivery semantics (see base.py).
"""

from __future__ import annotations

from esper_tui.engine.bus.base import Bus
from esper_tui.engine.bus.embedded import EmbeddedBus
from esper_tui.engine.bus.redis_streams import RedisStreamsBus, redact_url
from esper_tui.engine.bus.types import (
    LINK_ERROR_KINDS,
    SERVER_ERROR_KINDS,
    BusBackpressure,
    BusError,
    BusMetrics,
    BusOptions,
    BusServerError,
    BusUnavailable,
    DeadLetter,
    StreamNames,
)
from esper_tui.engine.config import BusConfig

__all__ = [
    "LINK_ERROR_KINDS",
    "SERVER_ERROR_KINDS",
    "Bus",
    "BusBackpressure",
    "BusError",
    "BusMetrics",
    "BusOptions",
    "BusServerError",
    "BusUnavailable",
    "DeadLetter",
    "EmbeddedBus",
    "RedisStreamsBus",
    "StreamNames",
    "create_bus",
    "redact_url",
]


def create_bus(
    config: BusConfig, redis_url: str | None = None, options: BusOptions | None = None, *, run_id: str = ""
) -> Bus:
    """The bus for this run: `redis_url` (e.g. from the command line) overrides `config.redis_url`;
    an empty URL means the in-process bus. With `run_id`, the telemetry, command and frame streams are
    that engine's own (StreamNames.for_prefix). Nothing connects until `start()`."""
    url = config.redis_url if redis_url is None else redis_url
    if url:
        return RedisStreamsBus(config, url, options, run_id=run_id)
    return EmbeddedBus(config, options, run_id=run_id)
