"""SVG snapshots of the dashboard from fixed snapshots (no clocks, nothing that blinks).

Mostly at 160x50, the size the layout is designed for; the full layout is also kept at 120x36, and
the compact, tabbed one at 80x24 with each tab brought forward by its keys.

Regenerate after an intended visual change with `pytest tests/ui --snapshot-update`, then look at the
report or the SVGs before committing them.
"""

from __future__ import annotations

import msgspec
import pytest
from textual.pilot import Pilot

from esper_tui.engine.snapshot import AlertView
from esper_tui.links.base import StaticLink
from esper_tui.ui.app import EsperApp

from .conftest import SIZE
from .fixtures import (
    bus_trouble_snapshot,
    compile_disabled_snapshot,
    forge_workers_snapshot,
    live_snapshot,
    rich_snapshot,
    silent_snapshot,
    stopped_snapshot,
)
from .test_app import ReadOnlyLink

SMALL = (120, 36)
"""The smallest terminal checked with the full layout: every panel must still read."""

TINY = (80, 24)
"""The compact layout: one tab of panels at a time under the banner."""


async def _steady(pilot: Pilot[object]) -> None:
    """Let the first poll land and the layout settle before the screenshot."""
    await pilot.pause()


def test_dashboard(snap_compare) -> None:
    assert snap_compare(EsperApp(StaticLink(rich_snapshot())), terminal_size=SIZE, run_before=_steady)


def test_dashboard_compile_disabled(snap_compare) -> None:
    assert snap_compare(EsperApp(StaticLink(compile_disabled_snapshot())), terminal_size=SIZE, run_before=_steady)


def test_dashboard_light_theme(snap_compare) -> None:
    app = EsperApp(StaticLink(rich_snapshot()), theme="esper-light")
    assert snap_compare(app, terminal_size=SIZE, run_before=_steady)


def test_waiting_for_engine(snap_compare) -> None:
    assert snap_compare(EsperApp(StaticLink(None)), terminal_size=SIZE, run_before=_steady)


def test_help_screen(snap_compare) -> None:
    assert snap_compare(EsperApp(StaticLink(rich_snapshot())), terminal_size=SIZE, press=["f1"])


def test_strategy_picker(snap_compare) -> None:
    assert snap_compare(EsperApp(StaticLink(rich_snapshot())), terminal_size=SIZE, press=["s"])


def test_dashboard_small_terminal(snap_compare) -> None:
    assert snap_compare(EsperApp(StaticLink(rich_snapshot())), terminal_size=SMALL, run_before=_steady)


def test_dashboard_small_terminal_curves(snap_compare) -> None:
    """`v` at 120x36: the curves take the training summary's place, beside the seeds; every other panel stays."""
    app = EsperApp(StaticLink(rich_snapshot()))
    assert snap_compare(app, terminal_size=SMALL, press=["v"], run_before=_steady)


@pytest.mark.parametrize(
    "keys",
    ["", "t", "v", "tt", "ttt"],
    ids=["forge", "training", "training-curves", "events", "oona"],
)
def test_dashboard_80x24(snap_compare, keys: str) -> None:
    """Each tab of the compact layout; at 80 columns the queue drops whole columns rather than cut one."""

    async def show(pilot: Pilot[object]) -> None:
        await pilot.pause()
        for key in keys:
            await pilot.press(key)
        await pilot.pause()

    assert snap_compare(EsperApp(StaticLink(rich_snapshot())), terminal_size=TINY, run_before=show)


def test_forge_workers_elsewhere(snap_compare) -> None:
    """--forge-workers 0: the Tezzeret panel lists the workers, the queue says where each job ran."""
    assert snap_compare(EsperApp(StaticLink(forge_workers_snapshot())), terminal_size=SIZE, run_before=_steady)


def test_bus_panel_in_trouble(snap_compare) -> None:
    """Oona down: disconnected, dead letters, rejected commands, server errors, the last error."""
    assert snap_compare(EsperApp(StaticLink(bus_trouble_snapshot())), terminal_size=SIZE, run_before=_steady)


def test_bus_panel_in_trouble_small(snap_compare) -> None:
    assert snap_compare(EsperApp(StaticLink(bus_trouble_snapshot())), terminal_size=SMALL, run_before=_steady)


def test_banner_attached_live(snap_compare) -> None:
    assert snap_compare(EsperApp(StaticLink(live_snapshot())), terminal_size=SIZE, run_before=_steady)


def test_banner_silent(snap_compare) -> None:
    """No word from the engine for 12 s: the banner turns to the warning colour and says so."""
    assert snap_compare(EsperApp(StaticLink(silent_snapshot())), terminal_size=SIZE, run_before=_steady)


def test_banner_stopped(snap_compare) -> None:
    assert snap_compare(EsperApp(StaticLink(stopped_snapshot())), terminal_size=SIZE, run_before=_steady)


def test_read_only_key_press(snap_compare) -> None:
    """A command key in a read-only room: the toast says why and how to get the key."""

    async def press_pause(pilot: Pilot[object]) -> None:
        await pilot.pause()
        await pilot.press("p")
        app = pilot.app
        assert isinstance(app, EsperApp)
        await app.wait_for_commands()
        await pilot.pause()

    assert snap_compare(EsperApp(ReadOnlyLink(live_snapshot())), terminal_size=SIZE, run_before=press_pause)


def test_dashboard_with_alerts_firing(snap_compare) -> None:
    """Nissa's strip appears above the panels while alerts fire, critical ones in the error colour."""
    alerts = [
        AlertView(alertname="oona_queue_depth", severity="warning", summary="telemetry backlog 4512", since_ts=0.0),
        AlertView(
            alertname="kasmina_isolation_violation", severity="critical", summary="s1 gradients exploding", since_ts=0.0
        ),
    ]
    app = EsperApp(StaticLink(msgspec.structs.replace(rich_snapshot(), alerts=alerts)))
    assert snap_compare(app, terminal_size=SIZE, run_before=_steady)
