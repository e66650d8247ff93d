"""Experience Simic did not gather itself: Tamiyo's field reports (`<state>/tamiyo/field_reports.jsonl`).

A report says what a germination led to (the validation gain `report_after_epochs` later, and whether its seed was
kept or pruned, settled by a later report when it was still in flight). It does not carry the rest of the state
Tamiyo saw, so a report becomes a sample of the germination arm with what it does say (the validation metric at
the decision) and a neutral rest, rewarded like an episode's germination: gain in points, less the rent of a kept
seed or the penalty of a wasted graft. The bandit starts from these samples, then learns from its episodes.

Only this engine's own reports are read; engines elsewhere publishing theirs on an Oona stream is not built yet.
"""

from __future__ import annotations

from pathlib import Path

from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.simic.episode import blueprint_params
from esper_tui.engine.simic.reward import RewardSpec
from esper_tui.engine.training.learned import STATE_FEATURES, Layout, germinate_features
from esper_tui.engine.training.reports import ReportsInvalid, read, reports_path, settled_later
from esper_tui.engine.vocabulary import Action


def report_samples(
    state_dir: Path, layout: Layout, reward: RewardSpec, hidden: int = 64
) -> list[tuple[list[float], float]]:
    """(features, reward) for every germination reported with a settled or known fate; [] without reports."""
    try:
        reports = read(reports_path(state_dir))
    except ReportsInvalid:
        return []
    catalog = Catalog()
    sizes: dict[str, int] = {}
    samples = []
    for report, later in zip(reports, settled_later(reports), strict=True):
        bp = report.blueprint_id
        if report.action != Action.GERMINATE.value or bp is None or bp not in layout.blueprints:
            continue
        fate = later or report.seed
        base = [0.0] * len(STATE_FEATURES)
        base[0] = 1.0
        base[1] = report.val_metric if report.metric.percent else 0.0
        value = 100.0 * report.gain / (1.0 if report.metric.percent else max(abs(report.val_metric), 1e-12))
        if fate == "pruned":
            value -= reward.waste
        elif fate == "kept":
            if bp not in sizes:
                sizes[bp] = blueprint_params(catalog, bp, hidden)
            value -= reward.rent_per_kparam * sizes[bp] / 1000
        samples.append((germinate_features(layout, base, bp, report.slot), value))
    return samples
