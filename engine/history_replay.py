"""A replay's history: rebuilt from a recording's snapshots, then read as of the moment shown.

A recording keeps snapshots, not events (engine/recorder.py), so the detail views of a replay are rebuilt from what
the snapshots show, through the same `History` the live aggregator feeds: each new event-log line (a Tamiyo line is
read back into its decision), the seeds as each snapshot shows them, every job row's changes and the breakers.
What only the events carried is not there: a replay's events have no fields beyond their line, a decision no
options, an attempt no WAL transaction or verification. `as_of` cuts the whole run's history back to a moment, so
stepping back in a replay never rebuilds anything.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

import msgspec

from esper_tui.engine.history import DecisionRecord, Details, History, LogEntry, RunInfo
from esper_tui.engine.snapshot import EventLine, Snapshot
from esper_tui.engine.vocabulary import Action, Subsystem

_ACTIONS = {action.value: action for action in Action}


def parse_decision(line: EventLine, epoch: int, event_id: str = "") -> DecisionRecord | None:
    """The decision a Tamiyo event-log line says ("germinate s0 <- conv1d_block (accuracy flat ...)"), or None
    for any other line. The aggregator writes them as `action[ slot][ <- blueprint] (reason)`."""
    if line.source is not Subsystem.TAMIYO:
        return None
    head, _, reason = line.text.partition(" (")
    words = head.split()
    if not words or words[0] not in _ACTIONS:
        return None
    slot = words[1] if len(words) > 1 and words[1] != "<-" else None
    blueprint = words[words.index("<-") + 1] if "<-" in words[:-1] else None
    return DecisionRecord(
        event_id=event_id,
        ts=line.ts,
        epoch=line.epoch if line.epoch is not None else epoch,
        action=_ACTIONS[words[0]],
        slot=slot,
        blueprint_id=blueprint,
        reason=reason.removesuffix(")"),
    )


def _key(line: EventLine) -> tuple[float, str, str]:
    return (line.ts, line.source.value, line.text)


def rebuild(snapshots: Iterable[Snapshot], *, scrollback: int) -> History:
    """The history of the run the snapshots show, in their order."""
    history = History(scrollback=scrollback)
    seen: set[tuple[float, str, str]] = set()
    for snapshot in snapshots:
        if history.run is None and snapshot.run_id:
            infra = snapshot.infrastructure
            history.run = RunInfo(
                run_id=snapshot.run_id,
                started_ts=snapshot.ts - snapshot.uptime_s,
                bus=infra.bus,
                torch_version=infra.torch_version,
                device=infra.device,
            )
        for breaker in snapshot.forge.breakers:
            history.observe_breaker(breaker.name, breaker.state.value)
        training = snapshot.training
        if training.val_metric is not None and training.epoch and training.epoch != history.epoch:
            history.observe_epoch(training.epoch, training.val_metric, snapshot.ts)
        for line in snapshot.events:
            key = _key(line)
            if key in seen:
                continue
            seen.add(key)
            entry_id = f"line-{len(seen)}"  # the line's own id here: decision and log entry find each other by it
            decision = parse_decision(line, training.epoch, entry_id)
            if decision is not None:
                history.observe_decision(decision)
            history.log.append(LogEntry(line=line, event_id=entry_id))
        if training.seeds:
            history.observe_seeds(training.epoch, snapshot.ts, training.seeds)
        for job in snapshot.forge.jobs:
            history.observe_job(job, snapshot.ts)
    return history


def as_of(details: Details, ts: float) -> Details:
    """`details` as they stood at `ts`: what happened later is left out, an attempt still running then reads as
    compiling, and a decision's outcome appears once its report had come in."""
    slots = []
    for slot in details.slots:
        n = bisect.bisect_right(slot.times, ts)
        slots.append(
            msgspec.structs.replace(
                slot,
                stages=[c for c in slot.stages if c.ts <= ts],
                epochs=slot.epochs[:n],
                times=slot.times[:n],
                alpha=slot.alpha[:n],
                grad_norm=slot.grad_norm[:n],
                gain=slot.gain[:n],
                health=slot.health[:n],
                kernels=[k for k in slot.kernels if k.ts <= ts],
                reports=[r for r in slot.reports if r.ts <= ts],
                rollbacks=[r for r in slot.rollbacks if r.ts <= ts],
                graveyard=[g for g in slot.graveyard if g.ts <= ts],
            )
        )
    jobs = []
    for job in details.jobs:
        attempts = []
        for attempt in job.attempts:
            if attempt.started_ts is None or attempt.started_ts > ts:
                continue
            if attempt.started_ts + (attempt.duration_s or 0.0) > ts and attempt.outcome != "compiling":
                attempt = msgspec.structs.replace(attempt, outcome="compiling", duration_s=None, error="")
            attempts.append(attempt)
        jobs.append(msgspec.structs.replace(job, attempts=attempts))
    decisions = [
        d if d.outcome_ts is None or d.outcome_ts <= ts else msgspec.structs.replace(d, outcome="", outcome_ts=None)
        for d in details.decisions
        if d.ts <= ts
    ]
    n = bisect.bisect_right(details.val_times, ts)
    return msgspec.structs.replace(
        details,
        ts=ts,
        slots=slots,
        jobs=jobs,
        decisions=decisions,
        log=details.log[: bisect.bisect_right([e.line.ts for e in details.log], ts)],
        epochs=details.epochs[:n],
        val_history=details.val_history[:n],
        val_times=details.val_times[:n],
    )
