"""The engine's side of a forge shared with workers elsewhere: publish its bounds, list who is working.

Breakers and conservative mode stay the engine's decision (its memory, its timeouts, its operator's `s`
key); this publishes them once a second with a short expiry, so a worker that reads nothing (the engine
is gone) falls back to its own limits instead of obeying a stale bound forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from esper_tui.engine.forge.jobqueue import ForgeChannel, ForgeControl, QueueError, WorkerBeat
from esper_tui.engine.snapshot import ForgeWorkerView
from esper_tui.engine.vocabulary import BreakerState

CONTROL_TTL_S = 5.0


def worker_view(beat: WorkerBeat) -> ForgeWorkerView:
    return ForgeWorkerView(
        worker_id=beat.worker_id,
        host=beat.host,
        pid=beat.pid,
        jobs=beat.jobs,
        holding=beat.holding,
        concurrency=beat.concurrency,
        done=beat.done,
        failed=beat.failed,
        last_beat_ts=beat.ts,
    )


class ForgeCluster:
    def __init__(
        self,
        channel: ForgeChannel,
        issuer: str,
        bounds: Callable[[], tuple[bool, str, list[str]]],
        on_workers: Callable[[list[ForgeWorkerView]], None],
        log: Callable[[str], None],
    ) -> None:
        self.channel = channel
        self.issuer = issuer
        self.bounds = bounds  # () -> (conservative, reason, open breaker names)
        self.on_workers = on_workers
        self.log = log

    async def publish_control(self, period_s: float = 1.0) -> None:
        while True:
            conservative, reason, open_breakers = self.bounds()
            control = ForgeControl(
                issuer=self.issuer,
                conservative=conservative,
                reason=reason,
                open_breakers=open_breakers,
                ts=time.time(),
            )
            # On an outage the bus's own health view reports it; workers fall back to their own limits.
            with contextlib.suppress(QueueError):
                await self.channel.set_control(control, CONTROL_TTL_S)
            await asyncio.sleep(period_s)

    async def watch_workers(self, period_s: float = 1.0) -> None:
        """Heartbeats into the snapshot; a worker arriving or leaving is a line in the event log."""
        known: dict[str, str] = {}
        while True:
            try:
                beats = await self.channel.workers()
            except QueueError:
                beats = None
            if beats is not None:
                mine = [b for b in beats if b.identity == self.channel.identity]
                seen = {b.worker_id: f"{b.host}:{b.pid}" for b in mine}
                for wid, name in seen.items():
                    if wid not in known:
                        self.log(f"forge worker {name} joined")
                for wid, name in known.items():
                    if wid not in seen:
                        self.log(f"forge worker {name} left (no heartbeat)")
                known = seen
                self.on_workers([worker_view(b) for b in mine])
            await asyncio.sleep(period_s)


def open_breakers(states: dict[str, BreakerState]) -> list[str]:
    return sorted(name for name, state in states.items() if state is BreakerState.OPEN)
