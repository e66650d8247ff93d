"""Decision detail (Enter on a Tamiyo event): what it saw, what it weighed, and what it led to."""

from __future__ import annotations

from typing import Any

from textual.content import Content

from esper_tui.engine.history import DecisionRecord, Details, LogEntry
from esper_tui.engine.vocabulary import ACCURACY, MetricInfo
from esper_tui.ui.details.base import NO_DETAILS, DetailScreen, Fetch, heading, muted, section
from esper_tui.widgets import format as fmt
from esper_tui.widgets.seeds import seed_header, seed_line, slot_width

SPARK_WIDTH = 60


def find_decision(details: Details, entry: LogEntry) -> DecisionRecord | None:
    """The decision an event-log line was made from: by event id, else (a replay's lines) by time and words."""
    if entry.event_id:
        return details.decision(entry.event_id)
    return next(
        (
            d
            for d in reversed(details.decisions)
            if d.ts == entry.line.ts and entry.line.text.startswith(d.action.value)
        ),
        None,
    )


def decision_lines(d: DecisionRecord, metric: MetricInfo) -> list[Content]:
    target = f" {d.slot}" if d.slot else ""
    bp = f" <- {d.blueprint_id}" if d.blueprint_id else ""
    after = f"after epoch {d.epoch}" if d.epoch is not None else "epoch not recorded"
    lines = [heading(f"{d.action.value}{target}{bp}"), muted(f"{after} · {fmt.clock(d.ts)}")]
    lines += section("Why", [Content(d.reason or fmt.DASH)], "")
    lines += section(
        "Options weighed",
        [Content(option) for option in d.options],
        "none listed (a decision about a seed in flight judges that seed alone)",
    )
    curve: list[Content] = []
    if d.val_history:
        last = d.val_first_epoch + len(d.val_history) - 1
        best = max(d.val_history) if metric.higher_is_better else min(d.val_history)
        curve = [
            muted(f"validation {metric.name}, epochs {d.val_first_epoch}-{last}"),
            Content(
                f"{fmt.spark(d.val_history, SPARK_WIDTH)}  {metric.format(d.val_history[0])} -> "
                f"{metric.format(d.val_history[-1])} (best {metric.format(best)})"
            ),
        ]
    lines += section("Validation it decided on", curve, "no epoch seen before it")
    slot_w = slot_width(d.seeds)
    lines += section(
        "Slots it saw",
        [seed_header(slot_w), *(seed_line(seed, metric, slot_w) for seed in d.seeds)] if d.seeds else [],
        "no slot reported before it",
    )
    outcome = [Content(d.outcome)] if d.outcome else []
    lines += section("Outcome (its field report)", outcome, "not known yet: reported some epochs after the decision")
    return lines


class DecisionDetail(DetailScreen):
    """One Tamiyo decision, found from its event-log line."""

    def __init__(self, fetch: Fetch, entry: LogEntry, *, metric: MetricInfo = ACCURACY, **kwargs: Any) -> None:
        self.entry = entry
        self.metric = metric
        super().__init__(fetch, **kwargs)

    def title_text(self) -> str:
        return "Tamiyo decision"

    def pick(self, details: Details | None) -> object:
        return None if details is None else (find_decision(details, self.entry),)

    def body(self, picked: object) -> Content:
        if picked is None:
            return muted(NO_DETAILS)
        assert isinstance(picked, tuple)
        record = picked[0]
        if record is None:
            return Content("\n").join(
                [Content(self.entry.line.text), muted("this decision is older than the history kept here")]
            )
        return Content("\n").join(decision_lines(record, self.metric))
