"""Formatting shared by every panel, so the same quantity reads the same way everywhere.

Everything here is a pure function of snapshot values: times are computed against the snapshot's own
`ts` (never the wall clock) and clock times are UTC, so a given snapshot always renders identically
(SVG snapshot tests depend on that). The run's metric is the task's: values are shown through its MetricInfo
(`metric.format`), labelled by `metric_label`.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable

from textual.content import Content

from esper_tui.engine.snapshot import ForgeView
from esper_tui.engine.vocabulary import (
    BreakerState,
    GradientHealth,
    JobStatus,
    Level,
    MetricInfo,
    SeedStage,
    TrainingStatus,
)

DASH = "-"
"""What a cell shows when there is no value: quieter than "None", same width everywhere."""

SEP = " · "
"""Separator between facts on one line (the sketch in the guide uses it throughout)."""

MUTED = "$foreground-muted"
"""Secondary text. Content markup resolves `$text-muted` ("auto 60%") to full white, so not that one."""

DISABLED = "$foreground 40%"
"""Things that are off or absent (a dormant slot, a breaker with no hardware)."""

BREAKER_STATE_VAR: dict[BreakerState, str] = {
    BreakerState.CLOSED: "$success",
    BreakerState.HALF_OPEN: "$warning",
    BreakerState.OPEN: "$error",
    BreakerState.UNAVAILABLE: DISABLED,
}

LEVEL_VAR: dict[Level, str] = {
    Level.INFO: "$foreground",
    Level.WARNING: "$warning",
    Level.ERROR: "$error",
}

SEED_STAGE_VAR: dict[SeedStage, str] = {
    SeedStage.DORMANT: DISABLED,
    SeedStage.GERMINATED: "$secondary",
    SeedStage.TRAINING: "$accent",
    SeedStage.BLENDING: "$warning",
    SeedStage.HOLDING: "$primary",
    SeedStage.FOSSILIZED: "$success",
    SeedStage.PRUNED: "$error",
    SeedStage.EMBARGOED: "$error",
    SeedStage.RESETTING: MUTED,
}

TRAINING_STATUS_VAR: dict[TrainingStatus, str] = {
    TrainingStatus.WAITING: MUTED,
    TrainingStatus.RUNNING: "$success",
    TrainingStatus.PAUSED: "$warning reverse",
    TrainingStatus.FINISHED: "$primary",
    TrainingStatus.FAILED: "$error",
}

GRADIENT_HEALTH_VAR: dict[GradientHealth, str] = {
    GradientHealth.OK: "$success",
    GradientHealth.VANISHING: "$error",
    GradientHealth.EXPLODING: "$error",
    GradientHealth.NONE: MUTED,
}


def styled(text: str, variable: str) -> Content:
    """`text` coloured by a theme variable; the text itself is never parsed as markup."""
    return Content.styled(text, variable)


def join(parts: Iterable[Content | str], separator: str = SEP) -> Content:
    """Join facts with the standard separator, dimmed so the values stand out."""
    return Content(separator).stylize(MUTED).join(parts)


def clock(ts: float) -> str:
    """UTC wall time HH:MM:SS: deterministic whatever the machine's time zone."""
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%H:%M:%S")


def duration(seconds: float | None) -> str:
    """Compact duration: 0.8 s, 7.9 s, 2m05s, 1h02m."""
    if seconds is None:
        return DASH
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def round_age(then: float | None, now: float) -> int | None:
    """Age in whole seconds: panels compare it so that they redraw once a second, not every snapshot."""
    return None if then is None else max(int(now - then), 0)


def whole_seconds(whole: int) -> str:
    """Whole seconds as "12 s" or "3m05s": for ages, which tenths would only make flicker."""
    return f"{whole} s" if whole < 60 else duration(whole)


def age(whole: int | None) -> str:
    """A whole-second age as "12 s ago", "3m05s ago", or "never"."""
    return "never" if whole is None else f"{whole_seconds(whole)} ago"


def size(num_bytes: int) -> str:
    """Bytes in binary units: 512 B, 48 KiB, 1.2 MiB."""
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit in ("B", "KiB") or value >= 100 else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


SHORT_METRIC_NAMES = {"accuracy": "acc"}
"""Names cut short where a label must stay narrow (the banner, the curve labels); others are clipped."""
METRIC_LABEL_WIDTH = 10


def metric_label(metric: MetricInfo) -> str:
    """The metric's name as a narrow label: "acc", "mse", "perplexi…"."""
    return clip(SHORT_METRIC_NAMES.get(metric.name, metric.name), METRIC_LABEL_WIDTH)


def percent(fraction: float | None) -> str:
    """A fraction in [0, 1] as "71.4 %"."""
    return DASH if fraction is None else f"{fraction * 100:.1f} %"


def number(value: float | None, digits: int = 2) -> str:
    """A float with fixed digits, or the dash."""
    return DASH if value is None else f"{value:.{digits}f}"


def metric(value: float | None) -> str:
    """A loss-like value to 3 significant digits: 0.912, 0.000123 (a fixed 0.000 would hide it), 12.3."""
    return DASH if value is None else f"{value:.3g}"


def step_ms(compiled: float | None, eager: float | None) -> str:
    """Measured step time compiled vs eager ("0.41/0.47 ms"): the honest test of a kernel."""
    if compiled is None and eager is None:
        return DASH
    return f"{number(compiled)}/{number(eager)} ms"


def quantity(value: float | None) -> str:
    """A measurement with as many digits as it deserves: 1.2, 8.0, 312."""
    if value is None:
        return DASH
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"


def reading(value: float | None, threshold: float | None, unit: str) -> str:
    """A breaker reading against its threshold: "1.2/8.0 GiB", "312/300 s"."""
    if value is None and threshold is None:
        return ""
    suffix = f" {unit}" if unit else ""
    return f"{quantity(value)}/{quantity(threshold)}{suffix}"


def forge_summary(forge: ForgeView) -> str:
    """One-line forge progress, e.g. "forge 4/6 compiled, 1 running, 1 queued, 1 failed"."""
    counts = {status: 0 for status in JobStatus}
    for job in forge.jobs:
        counts[job.status] += 1
    parts = [f"forge {counts[JobStatus.COMPILED]}/{len(forge.jobs)} compiled"]
    for status, word in (
        (JobStatus.COMPILING, "running"),
        (JobStatus.QUEUED, "queued"),
        (JobStatus.FAILED, "failed"),
    ):
        if counts[status]:
            parts.append(f"{counts[status]} {word}")
    return ", ".join(parts)


def clip(text: str, width: int) -> str:
    """Cut `text` to at most `width` cells, marking the cut with an ellipsis; first line only."""
    text = text.splitlines()[0] if text else ""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def fit(text: str, width: int) -> str:
    """Pad or cut `text` to exactly `width` cells, so hand-made columns stay aligned."""
    return clip(text, width).ljust(width)


SPARK_BLOCKS = "▁▂▃▄▅▆▇█"


def spark(values: list[float], width: int) -> str:
    """`values` as a one-line text sparkline of at most `width` cells (the newest kept when there are more); a
    flat series draws at the bottom, a value that is not finite as a gap. For detail screens, where a Sparkline
    widget per series would cost more than the whole text."""
    shown = values[-width:] if width > 0 else []
    finite = [v for v in shown if math.isfinite(v)]
    if not finite:
        return ""
    low, high = min(finite), max(finite)
    scale = (len(SPARK_BLOCKS) - 1) / (high - low) if high > low else 0.0
    return "".join(SPARK_BLOCKS[round((v - low) * scale)] if math.isfinite(v) else " " for v in shown)
