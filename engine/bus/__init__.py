"""Oona, the message bus: telemetry out of the engine, commands into it.

`create_bus` picks the backend: the in-process `EmbeddedBus` by default, `RedisStreamsBus` when a
Redis URL is configured. Both implement `Bus` with the same delivery semantics (see base.py).
"""

from __future__ import annotations

from esper_tui.engine.bus.base import Bus
from esper_tui.engine.bus.embedded import EmbeddedBus
from esper_tui.engine.bus.redis_streams import RedisStreamsBus, redact_url
from esper_tui.engine.bus.types import (
    BusBackpressure,
    BusError,
    BusMetrics,
    BusOptions,
    BusUnavailable,
    DeadLetter,
    StreamNames,
)
from esper_tui.engine.config import BusConfig

__all__ = [
    "Bus",
    "BusBackpressure",
    "BusError",
    "BusMetrics",
    "BusOptions",
    "BusUnavailable",
    "DeadLetter",
    "EmbeddedBus",
    "RedisStreamsBus",
    "StreamNames",
    "create_bus",
    "redact_url",
]


def create_bus(config: BusConfig, redis_url: str | None = None, options: BusOptions | None = None) -> Bus:
    """The bus for this run: `redis_url` (e.g. from the command line) overrides `config.redis_url`;
    an empty URL means the in-process bus. Nothing connects until `start()`."""
    url = config.redis_url if redis_url is None else redis_url
    if url:
        return RedisStreamsBus(config, url, options)
    return EmbeddedBus(config, options)
