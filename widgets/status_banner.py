"""Tamiyo's status banner: what is running (compiled or EAGER), how training goes, what mode the forge is in.

Seed 002 (TELE-760): the border title says `TAMIYO [compiled]` when seeds run compiled kernels, and the
body names the backend:mode honestly (guide section 4: on CPU a compiled block can be slower than eager, so
the operator must see which one runs). Both are read from what the seeds actually run, not from the compile
setting: `TAMIYO [eager: faster]` when compiling is on but eager was measured faster, `[eager: compile off]`,
`[waiting for kernels]` before training starts, `[no training]` for a run that only compiles.

A control room attached from elsewhere (guide section 12) must never show a stale picture as live, so
for a remote link the bottom border says how old the picture is ("attached · 0.3 s"), shouts when the
engine has gone quiet ("no word from engine for 12 s", in the warning colour) or stopped, and marks
forged frames that were ignored.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec
from textual.content import Content
from textual.widgets import Static

from esper_tui.engine.snapshot import Infrastructure, LinkView, SeedsRun, Snapshot, seeds_run
from esper_tui.engine.vocabulary import LinkState, MetricInfo, TrainingStatus
from esper_tui.widgets import format as fmt
from esper_tui.widgets.panel import SnapshotPanel

TITLE = "TAMIYO"
"""The border title before the first snapshot; after it, `TAMIYO [what the seeds run]` (banner_title)."""

ALARMING = frozenset({TrainingStatus.PAUSED, TrainingStatus.FAILED})
"""Training states the banner shouts (bold): the operator must act on, or at least know about, them."""


class BannerSlice(NamedTuple):
    """Everything the banner shows, and nothing else (so unrelated changes skip the redraw)."""

    infrastructure: Infrastructure
    seeds_run: SeedsRun
    status: TrainingStatus
    epoch: int
    epochs_total: int | None
    task: str
    policy: str  # Tamiyo's: "heuristic" (not shown) or "learned v0003"
    metric: MetricInfo
    device: str
    val_metric: float | None  # the validation split (what Tamiyo decides on)
    best_val_metric: float | None
    samples_per_s: float | None
    conservative: bool
    conservative_reason: str
    forge_summary: str
    run_id: str
    uptime_s: int
    link: LinkView
    """With its age rounded (tenths while live, whole seconds after), so the banner redraws only as it reads."""


def link_age(view: LinkView) -> float:
    """The age as the banner shows it: tenths of a second while frames flow, whole seconds once silent,
    none otherwise (a stopped engine's picture needs no ticking clock)."""
    if view.state is LinkState.LIVE:
        return round(view.age_s, 1)
    return float(int(view.age_s)) if view.state is LinkState.SILENT else 0.0


def link_words(view: LinkView) -> Content | None:
    """What the bottom border says about a remote link; None for the engine's own process."""
    if view.state is LinkState.LOCAL:
        return None
    if view.state is LinkState.WAITING:
        words = fmt.styled("waiting for a verified frame", f"{fmt.MUTED} italic")
    elif view.state is LinkState.LIVE:
        words = fmt.styled(f"attached · {view.age_s:.1f} s", "$success")
    elif view.state is LinkState.SILENT:
        words = fmt.styled(f" no word from engine for {fmt.whole_seconds(int(view.age_s))} ", "$warning bold reverse")
    else:
        words = fmt.styled(" engine stopped ", "$error bold reverse")
    facts = [words]
    if view.read_only:
        facts.append(fmt.styled("read-only", fmt.MUTED))
    if view.frames_rejected:
        plural = "" if view.frames_rejected == 1 else "s"
        facts.append(fmt.styled(f"{view.frames_rejected} forged frame{plural} ignored", "$error bold"))
    return fmt.join(facts)


def banner_title(run: SeedsRun) -> str:
    """The border title (markup) for what the seeds run: "TAMIYO [compiled]", "TAMIYO [eager: faster]", ...

    Seed 002 wrote `[[compiled]]`, the escape of the Textual of its day; Textual 8 markup escapes `[` with a
    backslash and would show `[[compiled]]` verbatim.
    """
    return f"{TITLE} \\[{run.tag}]"


class StatusBanner(SnapshotPanel[BannerSlice], Static):
    """Top banner: compile status in the title, run and forge summary in the body."""

    DEFAULT_CSS = """
    StatusBanner {
        height: 5;
        border: round $primary;
        border-title-color: $primary;
        &.-compiled { border-title-color: $success; }
        &.-conservative { border: round $warning; }
        &.-silent { border: heavy $warning; }
        &.-stopped { border: heavy $error; }
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(Content.styled("waiting for engine…", f"{fmt.MUTED} italic"), id=id)
        self.border_title = TITLE

    def select(self, snapshot: Snapshot) -> BannerSlice:
        training, forge = snapshot.training, snapshot.forge
        return BannerSlice(
            infrastructure=snapshot.infrastructure,
            seeds_run=seeds_run(snapshot),
            status=training.status,
            epoch=training.epoch,
            epochs_total=training.epochs_total,
            task=training.task,
            policy=training.policy,
            metric=training.metric,
            device=training.device or snapshot.infrastructure.device,
            val_metric=training.val_metric,
            best_val_metric=training.best_val_metric,
            samples_per_s=training.samples_per_s,
            conservative=forge.conservative_mode,
            conservative_reason=forge.conservative_reason,
            forge_summary=fmt.forge_summary(forge),
            run_id=snapshot.run_id,
            uptime_s=int(snapshot.uptime_s),
            link=msgspec.structs.replace(snapshot.link, age_s=link_age(snapshot.link)),
        )

    def draw(self, part: BannerSlice) -> None:
        self.border_title = banner_title(part.seeds_run)
        self.set_class(part.seeds_run.compiled, "-compiled")
        self.set_class(part.conservative, "-conservative")
        self.set_class(part.status is TrainingStatus.PAUSED, "-paused")
        self.set_class(part.link.state is LinkState.SILENT, "-silent")
        self.set_class(part.link.state is LinkState.STOPPED, "-stopped")
        self.border_subtitle = link_words(part.link)
        lines = [self._run_line(part), self._mode_line(part), self._host_line(part)]
        self.update(Content("\n").join(lines), layout=False)

    @staticmethod
    def _run_line(part: BannerSlice) -> Content:
        infra = part.infrastructure
        run = part.seeds_run
        kernel = fmt.styled(run.words, "$success bold" if run.compiled else "$warning bold")
        total = f"/{part.epochs_total}" if part.epochs_total else ""
        m = part.metric
        return fmt.join(
            [
                kernel,
                f"epoch {part.epoch}{total}",
                f"val {fmt.metric_label(m)} {m.format(part.val_metric)} (best {m.format(part.best_val_metric)})",
                f"{fmt.number(part.samples_per_s, 0)} samples/s",
                f"bus {infra.bus}",
            ]
        )

    @staticmethod
    def _host_line(part: BannerSlice) -> Content:
        infra = part.infrastructure
        facts = [
            f"run {part.run_id or fmt.DASH}",
            f"up {fmt.duration(part.uptime_s)}",
            f"task {part.task or fmt.DASH}",
            f"device {part.device}",
        ]
        if part.policy != "heuristic":  # the default is not news; a learned policy is (its version)
            facts.insert(3, f"policy {part.policy}")
        if infra.torch_version:
            facts.append(f"torch {infra.torch_version}")
        return fmt.styled(fmt.SEP.join(facts), fmt.MUTED)

    @staticmethod
    def _mode_line(part: BannerSlice) -> Content:
        if part.conservative:
            reason = f" ({part.conservative_reason})" if part.conservative_reason else ""
            conservative = fmt.styled(f"CONSERVATIVE ON{reason}", "$warning bold reverse")
        else:
            conservative = Content("conservative off")
        alarm = " bold" if part.status in ALARMING else ""
        status = fmt.styled(f"training {part.status}", fmt.TRAINING_STATUS_VAR[part.status] + alarm)
        return fmt.join([status, conservative, part.forge_summary])
