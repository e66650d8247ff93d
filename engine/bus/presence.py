"""Presence keys on Oona: a value that vanishes unless renewed (SET PX), for heartbeats of engines and
forge workers; the one primitive that is not a stream."""

from __future__ import annotations

import abc

from esper_tui.engine.bus.core import BusCore


class PresenceKeys(BusCore):
    """Heartbeats: put a key with a time to live, list the live ones by prefix, drop one."""

    async def put_presence(self, key: str, value: bytes, ttl_s: float) -> None:
        """SET key value PX: a value that vanishes unless renewed within `ttl_s` (heartbeats)."""
        self._require_started()
        await self._tracked(self._put_presence(key, value, ttl_s))

    async def presence(self, prefix: str) -> dict[str, bytes]:
        """Every live presence key starting with `prefix`, with its value."""
        self._require_started()
        return await self._tracked(self._presence(prefix))

    async def drop_presence(self, key: str) -> None:
        self._require_started()
        await self._tracked(self._drop_presence(key))

    @abc.abstractmethod
    async def _put_presence(self, key: str, value: bytes, ttl_s: float) -> None: ...

    @abc.abstractmethod
    async def _presence(self, prefix: str) -> dict[str, bytes]: ...

    @abc.abstractmethod
    async def _drop_presence(self, key: str) -> None: ...
