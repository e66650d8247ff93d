"""The Oona bus on Redis Streams, for a control room or forge workers on other machines.

A thin mapping of the primitives in base.py onto redis.asyncio (RESP2). Redis errors become the
bus's own: NOGROUP (and a blocked read whose stream was deleted) -> GroupMissing, so the consumer
loop recreates the group; connection trouble -> BusUnavailable, so it backs off and reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT, KeyT, StreamIdT

from esper_tui.engine.bus.base import START, Bus, Delivery, GroupLoad
from esper_tui.engine.bus.types import PAYLOAD, BusError, BusOptions, BusUnavailable, GroupMissing
from esper_tui.engine.config import BusConfig

MIN_REDIS_MAJOR = 7  # XINFO GROUPS lag, and XAUTOCLAIM dropping trimmed entries from the pending list
_GROUP_GONE = ("NOGROUP", "UNBLOCKED")  # UNBLOCKED: the stream was deleted under a blocked XREADGROUP
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)


def redact_url(url: str) -> str:
    """scheme://host:port/db with any user name and password left out: safe for banners and logs."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        db = parse_qs(parts.query).get("db", ["0"])[0]
        return f"unix://{parts.path}?db={db}"
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    db = parts.path.lstrip("/") or parse_qs(parts.query).get("db", ["0"])[0]
    return f"{parts.scheme}://{host}:{parts.port or 6379}/{db}"


# redis-py's stubs type stream replies loosely; with decode_responses off they are these shapes.
_Entries = list[tuple[bytes, dict[bytes, bytes]]]
_StreamsReply = list[tuple[bytes, _Entries]] | None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisStreamsBus(Bus):
    """Oona on Redis Streams: XADD MAXLEN ~, consumer groups, XACK after success, XAUTOCLAIM."""

    DEFAULT_DEPTH_REFRESH_S = 0.1  # one XINFO round trip per 100 ms at most while under the limits

    def __init__(self, config: BusConfig, url: str, options: BusOptions | None = None) -> None:
        super().__init__(config, options)
        self.name = redact_url(url)
        self._url = url
        self._client: aioredis.Redis | None = None
        self._request_timeout_s = self._poll_ms / 1000 + 5.0  # longer than a blocking XREADGROUP

    @property
    def _redis(self) -> aioredis.Redis:
        if self._client is None:  # closed under a running consumer: its loop sees this and returns
            raise BusUnavailable(f"{self.name}: not connected")
        return self._client

    @contextlib.asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        """Bound one request in time and translate redis-py errors into the bus's own, which the
        shared loop knows how to handle.

        The bound is asyncio.timeout, not redis-py's socket_timeout: with a socket timeout redis-py
        sends through asyncio.wait_for, which on Python 3.11 can swallow a cancellation that lands
        as the send completes, and a consumer would then ignore its task being cancelled.
        """
        try:
            async with asyncio.timeout(self._request_timeout_s):
                yield
        except ResponseError as exc:
            if str(exc).startswith(_GROUP_GONE):
                raise GroupMissing(str(exc)) from exc
            raise
        except _UNREACHABLE as exc:
            raise BusUnavailable(f"{self.name}: {exc or type(exc).__name__}") from exc

    async def _open(self) -> None:
        if self._client is not None:
            return
        client = aioredis.Redis.from_url(
            self._url,
            protocol=2,
            # Short retries inside redis-py ride over a blip; longer outages are the consumer loop's
            # capped backoff. A retried XADD may store an entry twice: consumers deduplicate.
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2),
            socket_connect_timeout=2.0,
            socket_timeout=None,  # see _errors
            socket_keepalive=True,
            client_name="oona",
        )
        try:
            async with self._errors():
                info = await client.info("server")
            version = str(info.get("redis_version", "0"))
            if int(version.split(".")[0]) < MIN_REDIS_MAJOR:
                raise BusError(f"{self.name}: Redis {version} is too old; the bus needs {MIN_REDIS_MAJOR}.0 or newer")
        except BaseException:
            await client.aclose()
            raise
        self._client = client

    async def _close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(*_UNREACHABLE):
                await client.aclose()

    def _wake_consumers(self) -> None:
        """Nothing to do: a blocked XREADGROUP returns within one poll interval (BLOCK <= 1 s)."""

    async def _add(self, stream: str, fields: Mapping[bytes, bytes]) -> None:
        async with self._errors():
            entry: dict[FieldT, EncodableT] = {k: v for k, v in fields.items()}
            await self._redis.xadd(stream, entry, maxlen=self.config.maxlen, approximate=True)

    async def _ensure_group(self, stream: str, group: str) -> None:
        try:
            async with self._errors():
                await self._redis.xgroup_create(stream, group, id="0", mkstream=True)
        except ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise

    async def _read(
        self, starts: Mapping[str, str], group: str, consumer: str, count: int, block_ms: int | None
    ) -> list[Delivery]:
        async with self._errors():
            wanted: dict[KeyT, StreamIdT] = {k: v for k, v in starts.items()}
            reply = cast(
                _StreamsReply,
                await self._redis.xreadgroup(group, consumer, streams=wanted, count=count, block=block_ms or None),
            )
        received = {_text(name): entries for name, entries in reply or []}
        batch: list[Delivery] = []
        for stream, start in starts.items():
            entries = received.get(stream) or []
            if start == ">":
                batch += [Delivery(stream, _text(i), fields.get(PAYLOAD, b""), 1) for i, fields in entries]
            elif entries:
                batch += await self._with_counts(stream, group, consumer, entries)
        return batch

    async def _claim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, cursor: str, count: int
    ) -> tuple[str, list[Delivery]]:
        async with self._errors():
            reply = await self._redis.xautoclaim(
                stream, group, consumer, min_idle_time=min_idle_ms, start_id=cursor, count=count
            )
        next_cursor, entries = _text(reply[0]), reply[1]
        claimed = await self._with_counts(stream, group, consumer, entries) if entries else []
        return next_cursor or START, claimed

    async def _with_counts(
        self, stream: str, group: str, consumer: str, entries: list[tuple[Any, Any]]
    ) -> list[Delivery]:
        """Attach delivery counts (XPENDING) to re-read entries; only the recovery paths pay this."""
        pipe = self._redis.pipeline(transaction=False)
        for entry_id, _ in entries:
            pipe.xpending_range(stream, group, min=entry_id, max=entry_id, count=1, consumername=consumer)
        async with self._errors():
            rows = await pipe.execute()
        counts = {row[0]["message_id"]: int(row[0]["times_delivered"]) for row in rows if row}
        return [
            Delivery(stream, _text(i), fields.get(PAYLOAD, b"") if fields else None, counts.get(i, 1))
            for i, fields in entries
        ]

    async def _ack(self, stream: str, group: str, entry_id: str) -> None:
        async with self._errors():
            await self._redis.xack(stream, group, entry_id)

    async def _loads(self, stream: str) -> list[GroupLoad]:
        """XINFO GROUPS + XLEN, then XINFO CONSUMERS of the groups that have consumers: two round
        trips, paid at most every depth_refresh_s by publishers."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.xinfo_groups(stream)
        pipe.xlen(stream)
        async with self._errors():
            groups, length = await pipe.execute(raise_on_error=False)
        if isinstance(groups, ResponseError):
            if "no such key" in str(groups):
                return []
            raise groups
        with_consumers = [info["name"] for info in groups if info["consumers"]]
        pipe = self._redis.pipeline(transaction=False)
        for name in with_consumers:
            pipe.xinfo_consumers(stream, name)
        async with self._errors():
            consumer_lists = await pipe.execute(raise_on_error=False) if with_consumers else []
        idle_ms = {
            name: min(int(c["idle"]) for c in consumers)
            for name, consumers in zip(with_consumers, consumer_lists, strict=True)
            if isinstance(consumers, list) and consumers
        }
        loads = []
        for info in groups:
            lag = info.get("lag")
            # lag counts entries trimmed away before delivery, so it is capped by the length; Redis
            # reports no lag when it cannot tell, and then the length is the bound.
            undelivered = int(length) if lag is None else min(int(lag), int(length))
            idle = idle_ms.get(info["name"])
            loads.append(
                GroupLoad(
                    _text(info["name"]),
                    undelivered + int(info["pending"]),
                    math.inf if idle is None else idle / 1000,
                )
            )
        return loads

    async def _tail(self, stream: str, limit: int) -> list[tuple[str, dict[bytes, bytes]]]:
        async with self._errors():
            entries = cast(_Entries, await self._redis.xrevrange(stream, count=limit)) if limit > 0 else []
        return [(_text(entry_id), fields) for entry_id, fields in reversed(entries)]
