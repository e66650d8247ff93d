"""The Oona bus on Redis Streams, for a control room or forge workers on other machines.

A thin mapping of the primitives in base.py onto redis.asyncio (RESP2, hiredis parser when
installed). Redis errors become the bus's own, which the shared loop knows how to ride out:
NOGROUP (and a blocked read whose stream was deleted) -> GroupMissing, so the consumer loop recreates
the group; no connection or no reply in time -> BusUnavailable (kind disconnected / timeout); any
error reply (OOM, READONLY, WRONGTYPE, MISCONF, LOADING, BUSY, ...) -> BusServerError with its kind.
Nothing from redis-py escapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT, KeyT, StreamIdT

from esper_tui.engine.bus.base import Bus
from esper_tui.engine.bus.core import START, Delivery, Entries, GroupLoad
from esper_tui.engine.bus.types import BusError, BusOptions, BusServerError, BusUnavailable, GroupMissing
from esper_tui.engine.config import BusConfig

MIN_REDIS_MAJOR = 7  # XINFO GROUPS lag, and XAUTOCLAIM dropping trimmed entries from the pending list
_GROUP_GONE = ("NOGROUP", "UNBLOCKED")  # UNBLOCKED: the stream was deleted under a blocked XREADGROUP
_KIND_OF_CODE = {
    "OOM": "oom",
    "READONLY": "readonly",
    "WRONGTYPE": "wrongtype",
    "MISCONF": "misconf",
    "LOADING": "loading",
    "BUSY": "busy",
}
_SCAN_COUNT = 1000
_GLOB_SPECIAL = str.maketrans({c: "\\" + c for c in "\\*?[]"})


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


def server_reply(exc: RedisError) -> str:
    """The server's error line as it sent it: redis-py strips the code (OOM, READONLY, ...) off the
    errors it has classes for, and keeps it in `status_code`."""
    code = getattr(exc, "status_code", None)
    text = str(exc)
    return f"{code} {text}" if code and not text.startswith(code) else text


def error_kind(reply: str) -> str:
    """The kind of an error reply, by its code (the first word): oom, readonly, ..., other."""
    return _KIND_OF_CODE.get(reply.split(" ", 1)[0], "other")


# redis-py's stubs type stream replies loosely; with decode_responses off they are these shapes.
_Entries = list[tuple[bytes, dict[bytes, bytes]]]
_StreamsReply = list[tuple[bytes, _Entries]] | None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entries(entries: _Entries) -> Entries:
    return [(_text(entry_id), fields) for entry_id, fields in entries]


class RedisStreamsBus(Bus):
    """Oona on Redis Streams: XADD MAXLEN ~, consumer groups, XACK after success, XAUTOCLAIM."""

    DEFAULT_DEPTH_REFRESH_S = 0.1  # one XINFO round trip per 100 ms at most while under the limits

    def __init__(self, config: BusConfig, url: str, options: BusOptions | None = None, *, run_id: str = "") -> None:
        super().__init__(config, options, run_id=run_id)
        self.name = redact_url(url)
        self.readable_elsewhere = True
        self._url = url
        self._client: aioredis.Redis | None = None

    @property
    def _redis(self) -> aioredis.Redis:
        if self._client is None:  # closed under a running consumer: its loop sees this and returns
            raise BusUnavailable(f"{self.name}: not connected")
        return self._client

    @contextlib.asynccontextmanager
    async def _errors(self, block_ms: int | None = None) -> AsyncIterator[None]:
        """Bound one request in time (request_timeout_s, plus the time a blocking read may wait) and
        translate every redis-py error into the bus's own.

        The bound is asyncio.timeout, not redis-py's socket_timeout: with a socket timeout redis-py
        sends through asyncio.wait_for, which on Python 3.11 can swallow a cancellation that lands
        as the send completes, and a consumer would then ignore its task being cancelled. A request
        cut off by the bound has its connection closed by redis-py, so no late reply is misread.
        """
        limit = self.options.request_timeout_s + (block_ms or 0) / 1000
        try:
            async with asyncio.timeout(limit):
                yield
        except ResponseError as exc:
            reply = server_reply(exc)
            if reply.startswith(_GROUP_GONE):
                raise GroupMissing(reply) from exc
            raise BusServerError(f"{self.name}: {reply}", kind=error_kind(reply)) from exc
        except BusyLoadingError as exc:  # a ConnectionError to redis-py, but the server did answer
            raise BusServerError(f"{self.name}: {server_reply(exc)}", kind="loading") from exc
        except (RedisTimeoutError, TimeoutError) as exc:
            raise BusUnavailable(f"{self.name}: no reply within {limit:g} s", kind="timeout") from exc
        except (RedisConnectionError, OSError) as exc:
            raise BusUnavailable(f"{self.name}: {exc or type(exc).__name__}") from exc
        except RedisError as exc:  # a garbled reply, or anything redis-py adds later
            raise BusServerError(f"{self.name}: {type(exc).__name__}: {exc}", kind="other") from exc

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
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    def _wake_consumers(self) -> None:
        """Nothing to do: a blocked XREADGROUP returns within one poll interval (BLOCK <= 1 s)."""

    async def _add(self, stream: str, fields: Mapping[bytes, bytes], maxlen: int) -> str:
        entry: dict[FieldT, EncodableT] = {k: v for k, v in fields.items()}
        async with self._errors():
            entry_id = await self._redis.xadd(stream, entry, maxlen=maxlen, approximate=True)
        return _text(entry_id)

    async def _ensure_group(self, stream: str, group: str) -> None:
        async with self._errors():
            try:
                await self._redis.xgroup_create(stream, group, id="0", mkstream=True)
            except ResponseError as exc:
                if not str(exc).startswith("BUSYGROUP"):
                    raise

    async def _read(
        self, starts: Mapping[str, str], group: str, consumer: str, count: int, block_ms: int | None
    ) -> list[Delivery]:
        wanted: dict[KeyT, StreamIdT] = {k: v for k, v in starts.items()}
        async with self._errors(block_ms):
            reply = cast(
                _StreamsReply,
                await self._redis.xreadgroup(group, consumer, streams=wanted, count=count, block=block_ms or None),
            )
        received = {_text(name): entries for name, entries in reply or []}
        batch: list[Delivery] = []
        for stream, start in starts.items():
            entries = received.get(stream) or []
            if start == ">":
                batch += [Delivery.of(stream, _text(i), fields, 1) for i, fields in entries]
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
        return [Delivery.of(stream, _text(i), fields or None, counts.get(i, 1)) for i, fields in entries]

    async def _ack(self, group: str, entry_ids: Mapping[str, Sequence[str]]) -> None:
        async with self._errors():
            if len(entry_ids) == 1:
                [(stream, ids)] = entry_ids.items()
                await self._redis.xack(stream, group, *ids)
                return
            pipe = self._redis.pipeline(transaction=False)
            for stream, ids in entry_ids.items():
                pipe.xack(stream, group, *ids)
            await pipe.execute()

    async def _loads(self, stream: str) -> list[GroupLoad]:
        """XINFO GROUPS + XLEN, then XINFO CONSUMERS of the groups that have consumers: two round
        trips, paid at most every depth_refresh_s by publishers."""
        async with self._errors():
            pipe = self._redis.pipeline(transaction=False)
            pipe.xinfo_groups(stream)
            pipe.xlen(stream)
            groups, length = await pipe.execute(raise_on_error=False)
            if isinstance(groups, ResponseError):
                if "no such key" in str(groups):
                    return []
                raise groups
            if isinstance(length, ResponseError):
                raise length
            with_consumers = [info["name"] for info in groups if info["consumers"]]
            consumer_lists: list[Any] = []
            if with_consumers:
                pipe = self._redis.pipeline(transaction=False)
                for name in with_consumers:
                    pipe.xinfo_consumers(stream, name)
                consumer_lists = await pipe.execute(raise_on_error=False)
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

    async def _tail(self, stream: str, limit: int) -> Entries:
        if limit <= 0:
            return []
        async with self._errors():
            entries = cast(_Entries, await self._redis.xrevrange(stream, count=limit))
        return _entries(entries[::-1])

    async def _read_plain(self, stream: str, after: str, count: int, block_ms: int | None) -> Entries:
        async with self._errors(block_ms):
            reply = cast(_StreamsReply, await self._redis.xread({stream: after}, count=count, block=block_ms or None))
        return [entry for _, entries in reply or [] for entry in _entries(entries)]

    async def _expire(self, keys: Sequence[str], ttl_s: float) -> None:
        ttl_ms = max(1, round(ttl_s * 1000))
        async with self._errors():
            pipe = self._redis.pipeline(transaction=False)
            for key in keys:
                pipe.pexpire(key, ttl_ms)
            await pipe.execute()

    async def _put_presence(self, key: str, value: bytes, ttl_s: float) -> None:
        async with self._errors():
            await self._redis.set(key, value, px=max(1, round(ttl_s * 1000)))

    async def _presence(self, prefix: str) -> dict[str, bytes]:
        """SCAN MATCH prefix* (glob characters in the prefix escaped), then MGET; a key that expired
        between the two is skipped."""
        async with self._errors():
            keys = [
                key
                async for key in self._redis.scan_iter(match=prefix.translate(_GLOB_SPECIAL) + "*", count=_SCAN_COUNT)
            ]
            values = cast(list[bytes | None], await self._redis.mget(keys)) if keys else []
        return {_text(key): value for key, value in zip(keys, values, strict=True) if value is not None}

    async def _drop_presence(self, key: str) -> None:
        async with self._errors():
            await self._redis.delete(key)
