"""The control room's side of Simic: its panel, the banner's policy, `simic_*` on /metrics."""

from __future__ import annotations

import msgspec

from esper_tui.engine.snapshot import SimicView, Snapshot
from esper_tui.links.base import StaticLink
from esper_tui.ui.app import EsperApp
from esper_tui.widgets.simic_panel import SimicPanel, spark
from esper_tui.widgets.status_banner import StatusBanner
from tests.ui.fixtures import rich_snapshot

SIZE = (160, 50)
SIMIC = SimicView(
    episodes_done=40,
    episodes_total=60,
    returns=[-2.0, -1.0, 0.5, 1.5, 2.0, 3.1],
    losses=[9.0, 6.5, 4.0, 3.2],
    wall_s=412.0,
    candidate="v0002",
    current="v0001",
    verdict="failed",
    reasons=["worse than heuristic: validation -1.20 points on 3 held-out seeds (2 SE = 0.90)"],
)


def with_simic() -> Snapshot:
    snap = rich_snapshot()
    training = msgspec.structs.replace(snap.training, policy="learned v0001")
    return msgspec.structs.replace(snap, simic=SIMIC, training=training)


def test_the_sparkline_spans_its_own_range() -> None:
    assert spark([1.0, 2.0, 3.0], 10) == "▁▅█" and spark([], 5) == "" and spark([4.0, 4.0], 5) == "▁▁"


async def test_the_panel_appears_once_simic_has_trained_and_the_banner_names_the_policy() -> None:
    app = EsperApp(StaticLink(rich_snapshot()))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert not app.query_one(SimicPanel).display
        assert "policy" not in str(app.query_one(StatusBanner).render())
    app = EsperApp(StaticLink(with_simic()))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        panel = app.query_one(SimicPanel)
        assert panel.display and panel.has_class("-failed")
        text = str(panel.render())
        assert "episodes 40/60" in text and "candidate v0002" in text and "worse than heuristic" in text
        assert "policy learned v0001" in str(app.query_one(StatusBanner).render())


def test_dashboard_with_simic(snap_compare) -> None:
    assert snap_compare(EsperApp(StaticLink(with_simic())), terminal_size=SIZE, run_before=lambda pilot: pilot.pause())


def test_simic_metrics_on_metrics() -> None:
    from prometheus_client import generate_latest

    from esper_tui.engine.config import NissaConfig
    from esper_tui.engine.nissa import AlertEvaluator, EngineFacts, NissaMetrics

    def scrape(snap: Snapshot) -> str:
        return generate_latest(NissaMetrics(AlertEvaluator(NissaConfig()), lambda: snap, EngineFacts).registry).decode()

    text = scrape(with_simic())
    assert 'simic_policy_info{policy="learned v0001"} 1.0' in text
    assert "simic_episodes_total 40.0" in text and "simic_training_reward 3.1" in text
    assert "simic_training_loss 3.2" in text and "simic_validation_pass 0.0" in text
    bare = scrape(rich_snapshot())
    assert 'simic_policy_info{policy="heuristic"} 1.0' in bare and "simic_episodes" not in bare


async def test_the_palette_chooses_tamiyos_policy() -> None:
    from esper_tui.engine.contracts import SetPolicy

    link = StaticLink(rich_snapshot())
    app = EsperApp(link)
    async with app.run_test(size=SIZE) as pilot:
        for query in ("policy: learned", "policy: heuristic"):
            await pilot.press("ctrl+p")
            await pilot.press(*query)
            await pilot.pause(0.3)
            await pilot.press("enter")
            await pilot.pause(0.1)
        await app.wait_for_commands()
        sent = [c for c in link.sent if isinstance(c, SetPolicy)]
        assert [c.policy for c in sent] == ["learned", "heuristic"]
        assert sent[0].command_id != sent[1].command_id  # a fresh command each time: its id and ts are its freshness
