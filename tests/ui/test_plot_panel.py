"""The plot panel: toggled with `v`, curves gathered from every snapshot, decisions marked; SVG snapshots."""

from __future__ import annotations

import msgspec
from textual.pilot import Pilot

from esper_tui.engine.snapshot import EventLine, Snapshot
from esper_tui.engine.vocabulary import Level, Subsystem
from esper_tui.links.base import StaticLink
from esper_tui.ui.app import EsperApp
from esper_tui.ui.curves import Curves
from esper_tui.widgets.plot_panel import PlotPanel, curve

from .conftest import SIZE
from .fixtures import rich_snapshot

EPOCHS = 24
DECISIONS = {4: "germinate slot0 <- conv_a (plateau)", 12: "fossilize slot0 (gain)", 18: "prune slot1 (no gain)"}


def epoch_snapshots() -> list[Snapshot]:
    """The reference snapshot over EPOCHS epochs: falling losses, rising accuracies, three decisions."""
    base = rich_snapshot()
    out: list[Snapshot] = []
    events: list[EventLine] = []
    for epoch in range(1, EPOCHS + 1):
        if epoch in DECISIONS:
            line = EventLine(ts=1000.0 + epoch, source=Subsystem.TAMIYO, level=Level.INFO, text=DECISIONS[epoch])
            events = [*events, line]
        training = msgspec.structs.replace(
            base.training,
            epoch=epoch,
            loss=2.0 / epoch,
            val_loss=2.2 / epoch,
            val_metric=0.3 + 0.025 * epoch,
            test_metric=0.28 + 0.024 * epoch,
        )
        out.append(msgspec.structs.replace(base, seq=epoch, training=training, events=events))
    return out


def test_curves_fill_unseen_epochs_from_the_snapshots_history() -> None:
    curves = Curves()
    last = epoch_snapshots()[-1]
    history = [1.0 / e for e in range(1, EPOCHS + 1)]
    curves.add(msgspec.structs.replace(last, training=msgspec.structs.replace(last.training, loss_history=history)))
    assert [e for e, _ in curves.series("loss")] == list(range(1, EPOCHS + 1))
    assert curves.series("loss")[-1] == (EPOCHS, last.training.loss), "the snapshot's own value wins"


async def feed(pilot: Pilot[object]) -> None:
    """Offer the snapshots one by one with the panel hidden, then show it with `v`."""
    app = pilot.app
    assert isinstance(app, EsperApp) and isinstance(app.link, StaticLink)
    await pilot.pause()
    for snapshot in epoch_snapshots():
        app.link.set(snapshot)
        app.poll_link()
    await pilot.press("v")
    await pilot.pause()


def test_curve_scales_and_buckets() -> None:
    assert curve([(1, 0.0), (2, 1.0)], 1, 2, 2) == "▁█"
    assert curve([(2, 0.0), (3, 1.0)], 1, 4, 4) == " ▁██"
    assert len(curve([(e, float(e)) for e in range(1, 101)], 1, 100, 10)) == 10


async def test_v_toggles_the_panel_which_gathers_while_hidden() -> None:
    app = EsperApp(StaticLink(rich_snapshot()))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        panel = app.query_one(PlotPanel)
        assert not panel.display
        await feed(pilot)
        assert panel.display
        assert [m.kind for m in panel.curves.markers] == ["germinate", "fossilize", "prune"]
        assert [m.epoch for m in panel.curves.markers] == [4, 12, 18]
        text = str(panel.render())
        assert "val acc" in text and "test acc" in text and "G" in text and "epoch 24" in text
        await pilot.press("v")
        assert not panel.display


def test_plot_panel_snapshot(snap_compare) -> None:
    assert snap_compare(EsperApp(StaticLink(rich_snapshot())), terminal_size=SIZE, run_before=feed)
