"""The replay dashboard driven through Pilot: play/pause, steps, speed, start/end, commands refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets._footer import FooterKey

from benchmarks.story import story
from esper_tui.commands.cli import main
from esper_tui.engine.aggregator import Aggregator
from esper_tui.engine.recorder import Recording, RecordingWriter
from esper_tui.engine.snapshot import Snapshot, TrainingView
from esper_tui.links.replay import ReplayLink
from esper_tui.ui.app import EsperApp
from esper_tui.ui.replay_app import ReplayApp
from esper_tui.widgets.replay_bar import ReplayBar, bar, clock
from tests.ui.conftest import NotificationSpy, settle
from tests.ui.fixtures import rich_snapshot

FRAMES = 6


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def recording(tmp_path: Path) -> Recording:
    """Six frames of the dashboard's reference snapshot, one recorded second apart, epoch = position."""
    base = rich_snapshot()
    path = tmp_path / "run.esrec"
    writer = RecordingWriter(path)
    for i in range(FRAMES):
        training = TrainingView(epoch=i, loss=1.0 / (i + 1), seeds=base.training.seeds)
        writer.write(Snapshot(seq=10 + i, ts=5000.0 + i, run_id="rec1", forge=base.forge, training=training))
    writer.close()
    with Recording(path) as rec:
        yield rec


def test_link_plays_at_speed_and_stops_at_the_end(recording: Recording) -> None:
    clock_ = FakeClock()
    link = ReplayLink(recording, clock=clock_)
    assert link.latest().seq == 10
    clock_.now = 2.5
    assert link.latest().seq == 12  # 2.5 recorded seconds at 1x
    link.change_speed(+1)
    assert link.speed == 2.0
    clock_.now = 3.5
    assert link.latest().seq == 14
    clock_.now = 100.0
    assert link.latest().seq == 15 and link.latest().seq == 15
    assert not link.playing, "at the end the replay pauses"
    assert link.latest().link.read_only


async def test_replay_keys_through_pilot(recording: Recording) -> None:
    clock_ = FakeClock()
    app = ReplayApp(ReplayLink(recording, clock=clock_))
    spy = NotificationSpy(app)
    async with app.run_test(size=(160, 50)) as pilot:
        await settle(pilot)
        link = app.replay
        assert app.snapshot is not None and app.snapshot.seq == 10
        await pilot.press("space")  # pause
        assert not link.playing
        await pilot.press("right", "right")
        assert app.snapshot.seq == 12 and app.snapshot.training.epoch == 2
        await pilot.press("left")
        assert app.snapshot.seq == 11
        await pilot.press("G")
        assert app.snapshot.seq == 15
        await pilot.press("g")
        assert app.snapshot.seq == 10
        await pilot.press("right_square_bracket", "right_square_bracket")
        assert link.speed == 4.0
        await pilot.press("left_square_bracket")
        assert link.speed == 2.0
        await pilot.press("space")  # play again: recorded time runs at 2x
        assert link.playing
        clock_.now += 1.0
        app.poll_link()
        assert app.snapshot.seq == 12
        text = str(app.query_one(ReplayBar).render())
        assert "playing" in text and "0:02 / 0:05" in text and "3/6" in text and "2x" in text
        await pilot.press("p")  # a command key: refused with the reason, nothing sent
        await settle(pilot)
        assert any("not sent" in message and "replay" in message for message in spy.texts())


async def test_a_snapshot_that_cannot_be_read_ends_the_replay_with_its_reason(tmp_path: Path) -> None:
    """A decompression bomb after two good frames: the dashboard shows them, then exits 1 with the reason."""
    from tests.test_recorder import declaring, record

    path = tmp_path / "run.esrec"
    writer = RecordingWriter(path)
    for i in range(2):
        writer.write(Snapshot(seq=10 + i, ts=5000.0 + i, run_id="rec1"))
    with path.open("ab") as f:  # no footer: the reader scans, and finds the bomb whole
        f.write(record(12, 5002.0, declaring(64 << 30)))
    with Recording(path) as rec:
        app = ReplayApp(ReplayLink(rec, clock=FakeClock()))
        async with app.run_test(size=(160, 50)) as pilot:
            await settle(pilot)
            assert app.snapshot is not None and app.snapshot.seq == 10
            await pilot.press("G")
            await settle(pilot)
        assert app.return_code == 1
        assert app.failure is not None and "snapshot 2 declares 64 GiB" in app.failure


def test_bar_and_clock() -> None:
    assert clock(65.2) == "1:05" and clock(3725) == "1:02:05"
    assert bar(0.0, 5) == "●────" and bar(1.0, 5) == "━━━━●" and bar(0.5, 5) == "━━●──"


def footer_keys(app: ReplayApp | EsperApp) -> list[str]:
    """The keys the footer shows whole on screen, left to right."""
    width = app.screen.size.width
    keys = [key for key in app.screen.query(FooterKey) if key.region and key.region.right <= width]
    return [key.key_display for key in sorted(keys, key=lambda key: key.region.x)]


@pytest.mark.parametrize("size", [(160, 50), (80, 24)], ids=str)
async def test_replay_offers_its_own_keys_not_the_engines(recording: Recording, size: tuple[int, int]) -> None:
    """In a replay the footer listed r, s, R, c and p (which only say "not sent" there), `?` did not list the
    replay keys, and the palette had neither them nor `v` and `t`."""
    app = ReplayApp(ReplayLink(recording, clock=FakeClock()))
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        shown = footer_keys(app)
        assert not {"r", "s", "R", "c", "p"} & set(shown), shown
        assert {"?", "^q"} <= set(shown), shown
        if size == (160, 50):
            assert {"space", "←", "→", "[", "]", "g", "G"} <= set(shown), shown
        help_keys = dict(app.help_rows())
        for key in ("space", "←", "→", "[", "]", "g", "G", "v", "t"):
            assert key in help_keys, help_keys
        assert not any("Recompile" in what or "conservative" in what for what in help_keys.values())
        palette = {command.title for command in app.get_system_commands(app.dashboard)}
        assert {"Replay: play / pause", "Replay: step forward", "Replay: go to end"} <= palette
        assert {"Show / hide the curves", "Next view"} <= palette
        assert not {"Recompile all", "Toggle conservative mode", "Pause / resume training"} & palette


@pytest.mark.parametrize("config", ["", "[ui]\nevent_scrollback = 50\n"])
def test_the_replays_event_log_holds_what_ui_event_scrollback_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: str
) -> None:
    """`esper-tui replay` rebuilt its history with the default depth whatever the config said."""
    now = [0.0]
    agg = Aggregator(clock=lambda: now[0])
    path = tmp_path / "story.esrec"
    writer = RecordingWriter(path)
    for event in story(200):
        now[0] = event.ts
        agg.apply(event)
        writer.write(agg.snapshot())
    writer.close()
    said = len(agg.details().log)
    assert said > 50  # the story says more than the smaller depth holds
    (tmp_path / "esper.toml").write_text(config)
    kept: list[int] = []

    def run(app: ReplayApp) -> None:  # in place of the terminal: the link the CLI built, asked for its history
        assert isinstance(app.link, ReplayLink)
        history = app.link.wait_for_history(timeout_s=60)
        assert history is not None
        kept.append(len(history.log))

    monkeypatch.setattr(ReplayApp, "run", run)
    assert main(["replay", str(path), "--config", str(tmp_path / "esper.toml")]) == 0
    assert kept == [50 if config else said]
