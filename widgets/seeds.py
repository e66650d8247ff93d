"""Kasmina's seed slots: lifecycle stage, graft, blend progress, health and which kernel runs.

A handful of slots fit in fixed-width text columns, which costs far less to repaint than a DataTable
(guide section 8) and keeps the columns aligned with the header.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar, NamedTuple

from textual import events
from textual.binding import Binding, BindingType
from textual.content import Content
from textual.message import Message
from textual.widgets import Static

from esper_tui.engine.snapshot import SeedView, Snapshot
from esper_tui.engine.vocabulary import ACCURACY, MetricInfo
from esper_tui.widgets import format as fmt
from esper_tui.widgets.panel import SnapshotPanel

SEED_COLUMNS: tuple[tuple[str, int], ...] = (
    ("", 2),
    ("stage", 10),
    ("blueprint", 13),
    ("kernel", 16),
    ("α", 4),  # noqa: RUF001 - alpha, the blend weight, as the runbook writes it
    ("grad", 5),
    ("gain", 5),
    ("health", 9),
    ("ep", 2),
)
"""Header label and width of each column (slot, stage, ... epochs in stage): 74 cells in all, what the
panel gets on a 120-column terminal."""

COMPILED = "compiled "
SLOT_WIDTH_MAX = 12
"""The slot column grows to a task's own slot names (`features`, `conv2`) up to this; `s0` keeps it at 2."""


def slot_width(seeds: Iterable[SeedView]) -> int:
    """The slot column's width for these slots: the longest name, at least the header's 2, at most SLOT_WIDTH_MAX."""
    return min(SLOT_WIDTH_MAX, max([SEED_COLUMNS[0][1], *(len(seed.slot) for seed in seeds)]))


def _columns(slot_w: int) -> tuple[tuple[str, int], ...]:
    return ((SEED_COLUMNS[0][0], slot_w), *SEED_COLUMNS[1:])


def kernel_label(kernel: str) -> str:
    """ "compiled inductor:default" -> "inductor:default": the colour already says compiled, and the
    column is the first to be cut on a narrow terminal."""
    return kernel.removeprefix(COMPILED)


def gain_var(gain: float | None) -> str:
    """Green when the seed made the metric better, red when worse, plain when neither (the gain is already
    signed by the metric's direction)."""
    if not gain:
        return ""
    return "$success" if gain > 0 else "$error"


def gain_text(gain: float | None, metric: MetricInfo) -> str:
    """A gain in the 5-cell column: points for a percent metric ("+1.2"), else 2 significant digits without the
    leading zero ("+.019"), so a small metric's change still fits."""
    if gain is None or metric.percent:
        return metric.format(gain, signed=True, unit=False)
    text = f"{gain:+.2g}"
    return text if "e" in text else text.replace("0.", ".", 1)


def seed_header(slot_w: int = SEED_COLUMNS[0][1]) -> Content:
    return fmt.styled(" ".join(fmt.fit(label, width) for label, width in _columns(slot_w)), f"{fmt.MUTED} bold")


def seed_line(seed: SeedView, metric: MetricInfo = ACCURACY, slot_w: int = SEED_COLUMNS[0][1]) -> Content:
    """One slot as aligned columns, coloured by lifecycle stage and health; the gain in the metric's units
    (points for a percent metric), positive when better."""
    gain = gain_text(seed.gain, metric)
    active = seed.blueprint_id is not None
    values: list[tuple[str, str]] = [
        (seed.slot, "bold"),
        (seed.stage.value.upper(), fmt.SEED_STAGE_VAR[seed.stage]),
        (seed.blueprint_id or fmt.DASH, ""),
        (kernel_label(seed.kernel), "$success" if seed.kernel.startswith(COMPILED) else fmt.MUTED),
        (f"{seed.alpha:.2f}", "$warning" if 0 < seed.alpha < 1 else ""),
        (f"{seed.grad_norm:.2f}" if active else fmt.DASH, ""),
        (gain, gain_var(seed.gain)),
        (seed.health, fmt.GRADIENT_HEALTH_VAR[seed.health]),
        (str(seed.epochs_in_stage) if active else fmt.DASH, ""),
    ]
    cells = [
        fmt.styled(fmt.fit(text, width), style)
        for (text, style), (_, width) in zip(values, _columns(slot_w), strict=True)
    ]
    return Content(" ").join(cells)


def outcome_note(seed: SeedView) -> Content | None:
    """The slot's latest field report under its row: what Tamiyo's last decision there led to. A note, not
    a column, because the row already fills the panel's width."""
    if not seed.outcome:
        return None
    return fmt.styled(f"   {seed.slot} last decision: {seed.outcome}", fmt.MUTED)


def seed_lines(seed: SeedView, metric: MetricInfo = ACCURACY, slot_w: int = SEED_COLUMNS[0][1]) -> list[Content]:
    line, note = seed_line(seed, metric, slot_w), outcome_note(seed)
    return [line] if note is None else [line, note]


class SeedsSlice(NamedTuple):
    metric: MetricInfo  # how the gains read
    seeds: tuple[SeedView, ...]


class SeedsPanel(SnapshotPanel[SeedsSlice], Static):
    """Every seed slot, dormant ones included (a free slot is information too). Focused (tab), the arrow keys
    pick a slot and Enter opens its history."""

    PANEL_TITLE = "Kasmina seeds"
    can_focus = True

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j,down", "move(1)", "Next slot", show=False, id="seeds.down"),
        Binding("k,up", "move(-1)", "Previous slot", show=False, id="seeds.up"),
        Binding("enter", "open", "Open", show=False, id="seeds.open"),
    ]

    DEFAULT_CSS = """
    SeedsPanel {
        height: 1fr;
        &:focus { border: round $accent; }
    }
    """

    class Opened(Message):
        """Enter on a slot: the dashboard opens its history."""

        def __init__(self, slot: str) -> None:
            super().__init__()
            self.slot = slot

    cursor = 0
    """The selected slot's row (highlighted while the panel has focus)."""

    def select(self, snapshot: Snapshot) -> SeedsSlice:
        return SeedsSlice(snapshot.training.metric, tuple(snapshot.training.seeds))

    def draw(self, part: SeedsSlice) -> None:
        if not part.seeds:
            self.update(fmt.styled("no seed slots reported", fmt.MUTED), layout=False)
            return
        self.cursor = min(self.cursor, len(part.seeds) - 1)
        slot_w = slot_width(part.seeds)
        lines: list[Content] = [seed_header(slot_w)]
        for index, seed in enumerate(part.seeds):
            rows = seed_lines(seed, part.metric, slot_w)
            if index == self.cursor and self.focused_here:
                rows[0] = rows[0].stylize("reverse")
            lines.extend(rows)
        self.update(Content("\n").join(lines), layout=False)

    @property
    def selected_slot(self) -> str | None:
        part = self.shown
        return part.seeds[self.cursor].slot if part is not None and part.seeds else None

    @property
    def shown(self) -> SeedsSlice | None:
        drawn = self._drawn
        return drawn if isinstance(drawn, SeedsSlice) else None

    def action_move(self, delta: int) -> None:
        part = self.shown
        if part is not None and part.seeds:
            self.cursor = min(max(self.cursor + delta, 0), len(part.seeds) - 1)
            self.redraw()

    def action_open(self) -> None:
        if (slot := self.selected_slot) is not None:
            self.post_message(self.Opened(slot))

    def on_focus(self, _event: events.Focus) -> None:
        self.redraw()

    def on_blur(self, _event: events.Blur) -> None:
        self.redraw()
