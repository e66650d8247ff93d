"""`esper-tui bus prune`: remove from a Redis what finished runs left there, never a live run's keys.

Retention (`bus.retention_hours`) already lets every key of a run lapse on its own: the engine keeps an expiry on
its streams while it runs and sets the final one when it stops (broadcast.py). Prune is for an operator who wants
the space back sooner, or who has keys from runs that predate retention (no expiry at all).

What a run writes, under its prefix, and so what prune knows about (everything else is left alone):
- `<prefix>.{telemetry,normal,emergency,frames}.<run>`: its streams (with their consumer groups);
- `<prefix>.engine.<run>`: its heartbeat, which says RUNNING, STOPPING or STOPPED;
- `<prefix>.room.<run>.<room>`: the presence of each control room attached to it (they expire within seconds);
- entries of the shared `<prefix>.deadletter` stream whose `stream` field names one of its streams.
The forge's keys (`<prefix>.forge.*`) are shared by every engine and worker of a machine identity, not a run's:
prune leaves them alone (the job stream empties itself, news is capped, heartbeats and control expire).

A run is live, and kept whatever its age, while its heartbeat exists and does not say STOPPED (or cannot be read:
another version's engine may be running), or, when its heartbeat is gone, while one of its streams had an entry
within LIVE_WITHIN_S (an engine writes a keyframe every second; its heartbeat may be failing to renew while it still
runs). Any other run is removed once its last sign of life (its STOPPED heartbeat's time, else its newest entry) is
older than `older_than_s`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis

from esper_tui.engine.codec import SchemaMismatch
from esper_tui.engine.frames import EngineHeartbeat, open_heartbeat
from esper_tui.engine.vocabulary import EngineState

RUN_STREAMS = ("telemetry", "normal", "emergency", "frames")
"""The kinds of stream every run owns: `<prefix>.<kind>.<run>` (bus.types.StreamNames)."""
HEARTBEAT = "engine"
ROOM = "room"
LIVE_WITHIN_S = 10.0
"""A run without a STOPPED heartbeat that wrote an entry this recently is taken for live (keyframes come every s)."""
SCAN_COUNT = 1000
DEAD_LETTER_PAGE = 500


@dataclass(slots=True)
class RunKeys:
    """What one run left on the Redis, and whether it may go."""

    run_id: str
    keys: dict[str, int | None] = field(default_factory=dict)  # key -> stream entries (None: not a stream)
    heartbeat: EngineHeartbeat | None = None
    unreadable_heartbeat: bool = False
    newest_entry_ts: float | None = None  # time of the newest entry in any of its streams

    @property
    def last_seen_ts(self) -> float | None:
        """The last sign of life: the heartbeat's time (a STOPPED one is the engine's last word), else the
        newest entry; None when there is neither (empty streams, no heartbeat)."""
        if self.heartbeat is not None:
            return self.heartbeat.ts
        return self.newest_entry_ts

    def live(self, now: float) -> bool:
        """Whether the run may still be running (then nothing of it is touched)."""
        if self.unreadable_heartbeat:  # another version's engine, perhaps a running one: never guess
            return True
        if self.heartbeat is not None:
            return self.heartbeat.state is not EngineState.STOPPED
        return self.newest_entry_ts is not None and now - self.newest_entry_ts < LIVE_WITHIN_S

    @property
    def state(self) -> str:
        if self.unreadable_heartbeat:
            return "unreadable heartbeat"
        return "no heartbeat" if self.heartbeat is None else self.heartbeat.state.value


@dataclass(slots=True)
class PruneReport:
    removed: list[RunKeys]  # runs whose keys were removed (or would be, in a dry run)
    kept_live: list[RunKeys]
    kept_recent: list[RunKeys]  # finished, but not older than the cut
    dead_letters_removed: int
    dead_letter_stream: str
    dry_run: bool


def run_key(prefix: str, key: str) -> tuple[str, str] | None:
    """(kind, run id) when `key` is one a run writes under `prefix` (RUN_STREAMS, HEARTBEAT, ROOM), else None."""
    if not key.startswith(prefix + "."):
        return None
    kind, _, rest = key[len(prefix) + 1 :].partition(".")
    if not rest:
        return None
    if kind == ROOM:
        run_id, _, room = rest.partition(".")
        return (kind, run_id) if run_id and room else None
    if kind in RUN_STREAMS or kind == HEARTBEAT:
        return (kind, rest) if "." not in rest else None
    return None


def entry_ts(entry_id: bytes | str) -> float:
    """The time a stream entry was added, from its id (`<ms>-<seq>`)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[0]) / 1000


def _glob(prefix: str) -> str:
    return "".join("\\" + c if c in "\\*?[]" else c for c in prefix) + ".*"


async def survey(client: aioredis.Redis, prefix: str) -> dict[str, RunKeys]:
    """Every run with a key under `prefix`, with its keys, heartbeat and newest entry."""
    runs: dict[str, RunKeys] = {}
    async for raw in client.scan_iter(match=_glob(prefix), count=SCAN_COUNT):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        found = run_key(prefix, key)
        if found is not None:
            kind, run_id = found
            runs.setdefault(run_id, RunKeys(run_id)).keys[key] = 0 if kind in RUN_STREAMS else None
    for run in runs.values():
        await _inspect(client, prefix, run)
    return runs


async def _inspect(client: aioredis.Redis, prefix: str, run: RunKeys) -> None:
    streams = [key for key, entries in run.keys.items() if entries is not None]
    pipe = client.pipeline(transaction=False)
    pipe.get(f"{prefix}.{HEARTBEAT}.{run.run_id}")
    for stream in streams:
        pipe.xlen(stream)
        pipe.xrevrange(stream, count=1)
    replies: list[Any] = await pipe.execute(raise_on_error=False)
    value = replies[0]
    if isinstance(value, bytes):
        try:
            run.heartbeat = open_heartbeat(value)[0]
        except (msgspec.DecodeError, msgspec.ValidationError, SchemaMismatch):
            run.unreadable_heartbeat = True
    newest = []
    for stream, length, last in zip(streams, replies[1::2], replies[2::2], strict=True):
        if isinstance(length, int):
            run.keys[stream] = length
        else:  # gone between SCAN and now, or not a stream after all
            run.keys[stream] = None
        if isinstance(last, list) and last:
            newest.append(entry_ts(last[0][0]))
    run.newest_entry_ts = max(newest, default=None)


async def prune(
    client: aioredis.Redis, prefix: str, older_than_s: float, *, dry_run: bool = False, now: float | None = None
) -> PruneReport:
    """Remove the keys of every run that is not live and was last seen more than `older_than_s` ago, and its dead
    letters older than that; with `dry_run`, only say what would go."""
    now = time.time() if now is None else now
    runs = await survey(client, prefix)
    live = [run for run in runs.values() if run.live(now)]
    finished = [run for run in runs.values() if not run.live(now)]
    removed = [r for r in finished if r.last_seen_ts is None or now - r.last_seen_ts > older_than_s]
    kept_recent = [r for r in finished if r not in removed]
    if removed and not dry_run:
        keys = [key for run in removed for key in run.keys]
        for i in range(0, len(keys), SCAN_COUNT):
            await client.delete(*keys[i : i + SCAN_COUNT])
    deadletter = f"{prefix}.deadletter"
    live_ids = {run.run_id for run in live}
    dead = await _prune_dead_letters(client, prefix, deadletter, now - older_than_s, live_ids, dry_run=dry_run)
    return PruneReport(
        removed=sorted(removed, key=_order),
        kept_live=sorted(live, key=_order),
        kept_recent=sorted(kept_recent, key=_order),
        dead_letters_removed=dead,
        dead_letter_stream=deadletter,
        dry_run=dry_run,
    )


def _order(run: RunKeys) -> tuple[float, str]:
    return (run.last_seen_ts or 0.0, run.run_id)


async def _prune_dead_letters(
    client: aioredis.Redis, prefix: str, stream: str, cut_ts: float, live: set[str], *, dry_run: bool
) -> int:
    """XDEL the dead letters added before `cut_ts` that do not belong to a live run; an emptied stream is deleted."""
    cut_id = f"{max(0, int(cut_ts * 1000))}-0"
    doomed: list[bytes] = []
    start: str = "-"
    while True:
        page = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            await client.xrange(stream, min=start, max=f"({cut_id}", count=DEAD_LETTER_PAGE),
        )
        for entry_id, fields in page:
            owner = run_key(prefix, fields.get(b"stream", b"").decode(errors="replace"))
            if owner is None or owner[1] not in live:
                doomed.append(entry_id)
        if len(page) < DEAD_LETTER_PAGE:
            break
        start = "(" + page[-1][0].decode()
    if doomed and not dry_run:
        for i in range(0, len(doomed), DEAD_LETTER_PAGE):
            await client.xdel(stream, *doomed[i : i + DEAD_LETTER_PAGE])
        if await client.xlen(stream) == 0:
            await client.delete(stream)
    return len(doomed)


def describe(report: PruneReport, now: float, older_than_s: float) -> Iterable[str]:
    """The report as lines for people: what was removed, key by key, and what was kept and why."""
    verb = "would remove" if report.dry_run else "removed"
    for run in report.removed:
        seen = "never" if run.last_seen_ts is None else f"{(now - run.last_seen_ts) / 3600:.1f} h ago"
        yield f"{verb} run {run.run_id} ({run.state}, last seen {seen}):"
        for key, entries in sorted(run.keys.items()):
            yield f"  {key}" + ("" if entries is None else f" ({entries} entries)")
    for run in report.kept_live:
        yield f"kept run {run.run_id}: live ({run.state})"
    for run in report.kept_recent:
        hours = (now - run.last_seen_ts) / 3600 if run.last_seen_ts is not None else 0.0
        yield f"kept run {run.run_id}: {run.state} {hours:.1f} h ago, within --older-than {older_than_s / 3600:g} h"
    keys = sum(len(run.keys) for run in report.removed)
    yield (
        f"{verb} {keys} keys of {len(report.removed)} runs and {report.dead_letters_removed} dead letters from "
        f"{report.dead_letter_stream}; kept {len(report.kept_live)} live and {len(report.kept_recent)} recent runs"
    )
