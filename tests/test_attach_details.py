"""Details reach a control room elsewhere only when it asks, signed, beside the frames and never inside them.

The engine's side is the real Broadcaster and BusWatch, the room the real RemoteLink, over one embedded bus they
share (as in test_attach); the details are a real aggregator's, folded from benchmarks/story.py.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
from test_attach import OTHER_SECRET, RUN, SECRET, until

from benchmarks.story import T0, story
from esper_tui.engine.aggregator import Aggregator
from esper_tui.engine.broadcast import Broadcaster, BusWatch, EngineIdentity
from esper_tui.engine.bus import Bus, EmbeddedBus
from esper_tui.engine.bus.auth import FrameSigner, frame_public_key
from esper_tui.engine.codec import encode_msgpack
from esper_tui.engine.config import BusConfig
from esper_tui.engine.frames import DETAILS_FIELD, SIGNATURE_FIELD
from esper_tui.engine.vocabulary import EngineState
from esper_tui.links.base import DetailsLink
from esper_tui.links.remote import RemoteLink


@pytest.fixture
async def bus() -> AsyncIterator[Bus]:
    shared = EmbeddedBus(BusConfig(stream_prefix=f"test-details-{uuid.uuid4().hex[:12]}"), run_id=RUN)
    await shared.start(create_groups=False)
    yield shared
    await shared.close()


def engine(bus: Bus, secret: bytes = SECRET, run_id: str = RUN) -> tuple[Broadcaster, Aggregator]:
    agg = Aggregator(clock=lambda: T0 + 1000)
    for event in story(30):
        agg.apply(event)
    agg.run_id = run_id
    identity = EngineIdentity(run_id=run_id, host="lab-1", pid=4242, started_ts=time.time(), state_dir="/srv")
    broadcaster = Broadcaster(
        bus,
        FrameSigner(secret),
        identity,
        latest=agg.snapshot,
        state=lambda: EngineState.RUNNING,
        refresh_hz=4.0,
        details=agg.details,
    )
    return broadcaster, agg


async def room(bus: Bus) -> RemoteLink:
    link = RemoteLink(bus, RUN, frame_public_key(SECRET), operator_key=None)
    await link.start()
    return link


async def test_a_room_gets_the_details_when_it_asks_and_only_then(bus: Bus) -> None:
    broadcaster, agg = engine(bus)
    watch = BusWatch(bus, RUN, on_view=lambda _view: None)
    await broadcaster.publish(agg.snapshot(), keyframe=True)
    link = await room(bus)
    try:
        assert isinstance(link, DetailsLink)
        await until(lambda: link.latest() is not None, "the first picture")
        await watch.measure()
        assert not watch.details_wanted, "no room asked: nothing is published"
        assert link.details() is None  # asking: the room says so in its presence at once
        assert link.wants_details

        async def asked() -> bool:
            watch._rooms_at = float("-inf")  # measure the rooms now, not in two seconds
            await watch.measure()
            return watch.details_wanted

        await until(asked, "the engine to see that a room asks")
        assert await broadcaster.publish_details()
        details = await until(link.details, "the details to arrive")
        assert details == agg.details()
        assert link.event_log() == details.log
        assert link.frames_rejected == 0, "a details entry is no forged frame"
        await broadcaster.publish(agg.snapshot())
        await until(lambda: link.latest() is not None and link.latest().seq == agg.snapshot().seq, "frames go on")
    finally:
        await link.close()


async def test_forged_or_foreign_details_are_refused(bus: Bus) -> None:
    broadcaster, agg = engine(bus)
    await broadcaster.publish(agg.snapshot(), keyframe=True)
    link = await room(bus)
    try:
        link.details()
        forger, _ = engine(bus, secret=OTHER_SECRET)
        await forger.publish_details()
        payload = encode_msgpack(agg.details())
        await bus.add_entry(broadcaster.stream, {DETAILS_FIELD: payload, SIGNATURE_FIELD: b"x" * 64}, maxlen=100)
        other_run, _ = engine(bus, run_id="another-run")
        await other_run.publish_details()
        await until(lambda: link.details_rejected >= 2, "the forgeries to be refused")
        assert link.details() is None
        await broadcaster.publish_details()
        assert await until(link.details, "the engine's own details")
    finally:
        await link.close()
