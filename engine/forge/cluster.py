"""The engine's side of a forge shared with workers elsewhere: publish its bounds, list who is working.

Breakers and conservative mode stay the engine's decision (its memory, its timeouts, its operator's `s`
key); this publishes them once a second with a short expiry, so a worker that reads nothing (the engine
is gone) falls back to its own limits instead of obeying a stale bound forever.

Jobs that wait while no worker is announced are said once in the event log (and counted in the snapshot,
which Nissa's tezzeret_no_forge_worker alert reads): an engine with `--forge-workers 0` otherwise waits in
silence. A worker that stops says why in its last heartbeat; a worker that never started (no signing key,
no library) cannot seal a message the engine would trust, so only its own stderr can say why.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from esper_tui.engine.forge.jobqueue import ForgeChannel, ForgeControl, QueueError, WorkerBeat
from esper_tui.engine.snapshot import ForgeWorkerView
from esper_tui.engine.vocabulary import BreakerState, Level

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
        on_workers: Callable[[list[ForgeWorkerView], int], None],
        say: Callable[[Level, str], None],
        *,
        waiting: Callable[[], int] = lambda: 0,
        no_worker_s: float = 30.0,
    ) -> None:
        self.channel = channel
        self.issuer = issuer
        self.bounds = bounds  # () -> (conservative, reason, open breaker names)
        self.on_workers = on_workers  # (workers, jobs awaiting one)
        self.say = say
        self.waiting = waiting  # jobs queued for workers that none has started
        self.no_worker_s = no_worker_s

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
        """Heartbeats into the snapshot; a worker arriving or leaving (with its reason, when it gave one) is a
        line in the event log, and so are jobs left waiting with nobody to take them."""
        known: dict[str, str] = {}
        alone_since: float | None = None  # jobs waiting and no worker, since then
        warned = False
        while True:
            try:
                beats = await self.channel.workers()
            except QueueError:
                beats = None
            if beats is not None:
                mine = [b for b in beats if b.identity == self.channel.identity]
                working = [b for b in mine if not b.leaving]
                seen = {b.worker_id: f"{b.host}:{b.pid}" for b in working}
                for wid, name in seen.items():
                    if wid not in known:
                        self.say(Level.INFO, f"forge worker {name} joined")
                farewells = {b.worker_id: b.leaving for b in mine if b.leaving}
                for wid, name in known.items():
                    if wid not in seen:
                        why = f": {farewells[wid]}" if wid in farewells else " (no heartbeat)"
                        self.say(Level.INFO, f"forge worker {name} left{why}")
                known = seen
                waiting = self.waiting()
                self.on_workers([worker_view(b) for b in working], waiting)
                if waiting and not working:
                    now = time.monotonic()
                    alone_since = now if alone_since is None else alone_since
                    if not warned and now - alone_since >= self.no_worker_s:
                        warned = True
                        self.say(Level.WARNING, self._alone(waiting, now - alone_since))
                else:
                    alone_since = None
                    if warned and working:
                        self.say(Level.INFO, "forge jobs have a worker again")
                    warned = False
            await asyncio.sleep(period_s)

    def _alone(self, waiting: int, waited_s: float) -> str:
        return (
            f"{waiting} forge jobs have waited {waited_s:.1f} s and no forge worker has announced itself "
            f"(identity {self.channel.identity[:12]}): start `esper-tui forge-worker` with this library's signing "
            "key; a worker that could not start (no key, no library) says why on its own stderr only"
        )


def open_breakers(states: dict[str, BreakerState]) -> list[str]:
    return sorted(name for name, state in states.items() if state is BreakerState.OPEN)
