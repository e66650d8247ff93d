"""SVG snapshots of the dashboard at 160x50 from fixed snapshots (no clocks, nothing that blinks).

Regenerate after an intended visual change with `pytest tests/ui --snapshot-update`, then look at the
report or the SVGs before committing them.
"""

from __future__ import annotations

from textual.pilot import Pilot

from esper_tui.app import EsperApp
from esper_tui.link import StaticLink

from .conftest import SIZE
from .fixtures import compile_disabled_snapshot, rich_snapshot


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
