"""Seed detail (Enter on a seed row): a slot's lifecycle, its series, the kernel it serves, its field reports,
the rollbacks that touched it and its graveyard; `f` switches between this slot and all slots."""

from __future__ import annotations

from typing import Any, ClassVar

from textual.binding import Binding, BindingType
from textual.content import Content

from esper_tui.engine.history import Details, SlotHistory
from esper_tui.engine.vocabulary import ACCURACY, MetricInfo, SeedStage
from esper_tui.ui.details.base import NO_DETAILS, DetailScreen, Fetch, heading, muted, section
from esper_tui.widgets import format as fmt

SPARK_WIDTH = 60
"""Cells of each series' sparkline (the newest epochs when there are more)."""


def _epochs(epochs: list[int]) -> str:
    return f"epochs {epochs[0]}-{epochs[-1]}" if epochs else "no epochs"


def slot_lines(slot: SlotHistory, metric: MetricInfo) -> list[Content]:
    """One slot's whole history, as the screen shows it."""
    current = slot.stages[-1] if slot.stages else None
    stage = current.stage if current is not None else SeedStage.DORMANT
    title = fmt.styled(f"{slot.slot} ", "bold") + fmt.styled(stage.value.upper(), fmt.SEED_STAGE_VAR[stage])
    if current is not None and current.blueprint_id:
        title += Content(f"  {current.blueprint_id}")
    lines = [title]
    lines += section(
        "Lifecycle",
        [
            Content.assemble(
                (f"ep {change.epoch:<4} ", fmt.MUTED),
                (fmt.fit(change.stage.value.upper(), 11), fmt.SEED_STAGE_VAR[change.stage]),
                f"{fmt.fit(change.blueprint_id or fmt.DASH, 16)}",
                (change.reason or "", fmt.MUTED),
            )
            for change in slot.stages
        ],
        "no stage change seen yet",
    )
    series: list[Content] = []
    if slot.epochs:
        last_gain = slot.gain[-1] if slot.gain else None
        series = [
            muted(_epochs(slot.epochs)),
            Content(f"alpha  {fmt.spark(slot.alpha, SPARK_WIDTH)}  {slot.alpha[-1]:.2f}"),
            Content(f"grad   {fmt.spark(slot.grad_norm, SPARK_WIDTH)}  {slot.grad_norm[-1]:.3g}"),
            Content(f"gain   {fmt.spark(slot.gain, SPARK_WIDTH)}  {metric.format(last_gain, signed=True)}"),
            muted(f"health now {slot.health[-1]}" if slot.health else ""),
        ]
    lines += section("Alpha, gradient norm and the metric's change", series, "no seed has grown here yet")
    lines += section(
        "Kernel served",
        [
            Content(
                f"ep {k.epoch:<4} {k.blueprint_id or fmt.DASH}: {k.kernel}"
                + (f" · v{k.version}" if k.version is not None else "")
                + (f" · {k.artifact_id[:16]}" if k.artifact_id else "")
                + (f" · {k.verification}" if k.verification else "")
            )
            for k in slot.kernels
        ],
        "no kernel grafted",
    )
    lines += section(
        "Field reports",
        [Content(f"ep {note.epoch:<4} {note.outcome}") for note in slot.reports],
        "none yet (a decision is reported some epochs after it)",
    )
    lines += section(
        "Rollbacks that touched it",
        [
            Content(
                f"{fmt.clock(r.ts)} epoch {r.from_epoch} -> {r.to_epoch}: {r.reason}"
                + (f" (pruned {', '.join(r.pruned)})" if r.pruned else "")
            )
            for r in slot.rollbacks
        ],
        "none",
    )
    lines += section(
        "Graveyard",
        [
            Content(
                f"{g.blueprint_id or fmt.DASH}: germinated ep "
                f"{g.germinated_epoch if g.germinated_epoch is not None else '?'}"
                f", {g.stage.value} ep {g.ended_epoch}, gain {metric.format(g.gain, signed=True)}"
                + (f" · {g.reason}" if g.reason else "")
            )
            for g in slot.graveyard
        ],
        "no seed pruned from this slot",
    )
    return lines


class SeedDetail(DetailScreen):
    """One slot's history, or every slot's (`f`)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f", "toggle_all", "This slot / all slots", id="detail.seed_all"),
    ]
    KEYS_HINT = "f this slot / all slots · esc close"

    def __init__(self, fetch: Fetch, slot: str, *, metric: MetricInfo = ACCURACY, **kwargs: Any) -> None:
        self.slot = slot
        self.metric = metric
        self.all_slots = False
        super().__init__(fetch, **kwargs)

    def title_text(self) -> str:
        return "Seeds · every slot" if self.all_slots else f"Seed slot {self.slot}"

    def pick(self, details: Details | None) -> object:
        if details is None:
            return None
        if self.all_slots:
            return (True, tuple(details.slots))
        return (False, details.slot(self.slot))

    def body(self, picked: object) -> Content:
        if picked is None:
            return muted(NO_DETAILS)
        assert isinstance(picked, tuple)
        all_slots, what = picked
        slots = list(what) if all_slots else [what] if what is not None else []
        if not slots:
            return muted(f"slot {self.slot}: nothing reported yet")
        lines: list[Content] = []
        for slot in slots:
            if lines:
                lines += [Content(""), heading("─" * 40)]
            lines += slot_lines(slot, self.metric)
        return Content("\n").join(lines)

    def action_toggle_all(self) -> None:
        self.all_slots = not self.all_slots
        self.query_one("#detail-box").border_title = self.title_text()
        self.reload(force=True)
