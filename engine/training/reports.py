"""Tamiyo's field reports: every controller decision with its measured outcome, in `<state>/tamiyo/field_reports.jsonl`.

Seed 004's runbook judges the controller by what its decisions did, not by what it meant: each decision is
held until `after_epochs` epochs later, then written with the validation metric's change since it was made (its
gain: positive when better, whichever way the metric points; the report names the metric) and what became of
its seed (kept, pruned, still in flight). One JSON object per line (a msgspec Struct), each line
flushed and fsynced on its own, so a crash loses at most the line being written; `read` tolerates that torn
last line, and the next writer cuts it off before appending. Decisions still pending when a rollback undoes
their epochs are written at once with the outcome "rolled back".

Pending decisions are plain data (`PendingDecision`), so each checkpoint carries them. A run resumed from the
checkpoint of epoch E awaits them again and cuts from the file every line of a later epoch (written before a
crash, of epochs the resumed run replays and reports again): each decision of the run is reported exactly once.

Only validation numbers appear here: like every decision, a report never reads the test split. Lines written
before the metric was the task's (`val_accuracy`, `val_delta`) read as accuracy's (engine/legacy.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import msgspec

from esper_tui.engine.fsutil import fsync_dir, write_all, write_synced
from esper_tui.engine.legacy import upgraded
from esper_tui.engine.training.controller import Decision
from esper_tui.engine.vocabulary import ACCURACY, Action, MetricInfo, SeedStage

S = SeedStage
REPORTS_FILE = Path("tamiyo") / "field_reports.jsonl"
ROLLED_BACK = "rolled back"
_GONE = frozenset({S.PRUNED, S.EMBARGOED, S.RESETTING, S.DORMANT})


class ReportsInvalid(ValueError):
    """The reports file cannot be read: one line saying where and why."""


class FieldReport(msgspec.Struct, frozen=True, kw_only=True):
    """One decision and what it led to `epochs_later` epochs on (fewer when a rollback cut it short)."""

    epoch: int  # the epoch the decision was made after
    action: str
    slot: str | None
    blueprint_id: str | None
    reason: str
    val_metric: float  # at the decision
    outcome_epoch: int
    val_metric_after: float
    gain: float  # metric.gain(val_metric_after, val_metric): positive when the metric got better
    seed: str  # "kept", "pruned", "in flight (training)", "rolled back", or "-" for a decision without a seed
    run_id: str = ""  # the run that decided (empty in reports written before runs were named)
    metric: MetricInfo = ACCURACY

    @property
    def epochs_later(self) -> int:
        return self.outcome_epoch - self.epoch

    def outcome(self) -> str:
        """The outcome in words, as the table and the seeds panel show it."""
        gain = self.metric.format(self.gain, signed=True, unit=False)
        delta = f"{gain} pts" if self.metric.percent else f"{self.metric.name} gain {gain}"
        delta += f" after {self.epochs_later} ep"
        return delta if self.seed == "-" else f"{delta}, {self.seed}"


class PendingDecision(msgspec.Struct, frozen=True, kw_only=True):
    """A decision awaiting its outcome: plain data, so a checkpoint carries it across a restart (msgpack)."""

    epoch: int  # the epoch the decision was made after
    action: Action
    slot: str | None
    blueprint_id: str | None
    reason: str
    val_metric: float  # at the decision


def reports_path(state_dir: Path) -> Path:
    return state_dir / REPORTS_FILE


SETTLED = frozenset({"kept", "pruned", ROLLED_BACK})
"""A seed's fates that do not change any more (an "in flight" one is only where it was at the report)."""


def settled_later(reports: Sequence[FieldReport]) -> list[str | None]:
    """For each report whose seed was still in flight, the fate a later report of the same seed settled (kept,
    pruned, rolled back), or None. A report is written a few epochs after its decision and never rewritten, so a
    germination read "in flight (blending)" for good although the seed was kept later."""
    fates: list[str | None] = []
    for i, report in enumerate(reports):
        fate = None
        if report.seed.startswith("in flight") and report.slot is not None:
            for later in reports[i + 1 :]:
                if later.slot != report.slot or later.run_id != report.run_id:
                    continue
                if later.action == Action.GERMINATE.value:
                    break  # a new seed in that slot: this one's fate was never reported
                if later.seed in SETTLED:
                    fate = later.seed
                    break
        fates.append(fate)
    return fates


def seed_outcome(slot: str | None, stages: Mapping[str, SeedStage]) -> str:
    """What became of a decision's seed, from its slot's stage now."""
    if slot is None or slot not in stages:
        return "-"
    stage = stages[slot]
    if stage is S.FOSSILIZED:
        return "kept"
    if stage in _GONE:
        return "pruned"
    return f"in flight ({stage.value})"


class FieldReports:
    """Holds decisions until their outcome is due, then appends them to `path` (one fsynced line each)."""

    def __init__(self, path: Path, after_epochs: int, *, run_id: str = "", metric: MetricInfo = ACCURACY) -> None:
        self.path = path
        self.after_epochs = after_epochs
        self.run_id = run_id
        self.metric = metric
        self.pending: list[PendingDecision] = []
        self.latest: dict[str, FieldReport] = {}  # slot -> its newest report (the seeds panel's column)
        self._repaired = False

    def decided(self, epoch: int, decision: Decision, val_metric: float) -> None:
        """Tamiyo made `decision` after `epoch`, when the validation metric was `val_metric`."""
        self.pending.append(
            PendingDecision(
                epoch=epoch,
                action=decision.action,
                slot=decision.slot,
                blueprint_id=decision.blueprint_id,
                reason=decision.reason,
                val_metric=val_metric,
            )
        )

    def resumed(self, epoch: int, pending: Sequence[PendingDecision]) -> None:
        """The run resumed from the checkpoint of `epoch`, which held `pending`: await those again, and cut
        the lines of later epochs from the file (the resumed run replays those epochs and reports them anew).

        A pending decision made after `epoch` (an early-stopped run checkpoints its restored best epoch with
        the later decisions still pending) belongs to the epochs replayed, so it is dropped too."""
        self.pending = [p for p in pending if p.epoch <= epoch]
        kept = _cut_after(self.path, epoch)
        self._repaired = True
        self.latest = {r.slot: r for r in kept if r.slot is not None}

    def epoch_done(self, epoch: int, val_metric: float, slot_stages: Mapping[str, SeedStage]) -> list[FieldReport]:
        """Resolve the decisions whose outcome is due after `epoch`; returns (and appends) their reports."""
        due = [p for p in self.pending if epoch - p.epoch >= self.after_epochs]
        return self._resolve(due, epoch, val_metric, lambda p: seed_outcome(p.slot, slot_stages))

    def rolled_back(self, to_epoch: int, val_metric: float) -> list[FieldReport]:
        """A rollback restored `to_epoch`: decisions made after it are undone, so report them now."""
        undone = [p for p in self.pending if p.epoch > to_epoch]
        return self._resolve(undone, to_epoch, val_metric, lambda p: ROLLED_BACK)

    def _resolve(
        self, chosen: list[PendingDecision], epoch: int, val_metric: float, seed: Callable[[PendingDecision], str]
    ) -> list[FieldReport]:
        if not chosen:
            return []
        reports = [
            FieldReport(
                epoch=p.epoch,
                action=str(p.action.value),
                slot=p.slot,
                blueprint_id=p.blueprint_id,
                reason=p.reason,
                val_metric=p.val_metric,
                outcome_epoch=epoch,
                val_metric_after=val_metric,
                gain=self.metric.gain(val_metric, p.val_metric),
                seed=seed(p),
                run_id=self.run_id,
                metric=self.metric,
            )
            for p in chosen
        ]
        self.pending = [p for p in self.pending if p not in chosen]
        self._append(reports)
        for r in reports:
            if r.slot is not None:
                self.latest[r.slot] = r
        return reports

    def _append(self, reports: list[FieldReport]) -> None:
        """One write and fsync per line: a crash tears at most the line in progress."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._repaired:
            _cut_torn_tail(self.path)
            self._repaired = True
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            for r in reports:
                write_all(fd, msgspec.json.encode(r) + b"\n")
                os.fsync(fd)
        finally:
            os.close(fd)


def _cut_torn_tail(path: Path) -> None:
    """Drop a last line without its newline (a write torn by a crash), so the next line starts clean."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    if data and not data.endswith(b"\n"):
        os.truncate(path, data.rfind(b"\n") + 1)


def _cut_after(path: Path, epoch: int) -> list[FieldReport]:
    """Rewrite `path` (atomically) without the reports of a decision or an outcome after `epoch`, and without a
    torn last line; returns the reports kept. A line that does not decode is kept as it is, for `read` to name."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")[:-1]
    kept_lines: list[bytes] = []
    kept: list[FieldReport] = []
    for line in lines:
        try:
            report = _decoded(line)
        except msgspec.DecodeError:
            kept_lines.append(line)
            continue
        if report.epoch <= epoch and report.outcome_epoch <= epoch:
            kept_lines.append(line)
            kept.append(report)
    if len(kept_lines) < len(lines) or not data.endswith(b"\n"):
        staged = path.with_name(f".{path.name}.{os.getpid()}")
        write_synced(staged, b"".join(line + b"\n" for line in kept_lines))
        os.replace(staged, path)
        fsync_dir(path.parent)
    return kept


def _decoded(line: bytes) -> FieldReport:
    """One line as a FieldReport; a line of accuracy's days (`val_accuracy`, ...) under today's names."""
    return upgraded(msgspec.json.decode(line), FieldReport)


def read(path: Path) -> list[FieldReport]:
    """Every report in the file, oldest first; a torn last line is skipped, any other bad line is an error."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ReportsInvalid(
            f"no field reports at {path} (Tamiyo writes them once a run has decided something)"
        ) from None
    except OSError as exc:
        raise ReportsInvalid(f"{path}: cannot read ({exc.strerror})") from None
    lines = data.split(b"\n")[:-1]  # what follows the last newline is empty, or a line never finished
    reports: list[FieldReport] = []
    for number, line in enumerate(lines, 1):
        try:
            reports.append(_decoded(line))
        except msgspec.DecodeError as exc:
            raise ReportsInvalid(f"{path}: line {number} is not a field report ({exc})") from None
    return reports
