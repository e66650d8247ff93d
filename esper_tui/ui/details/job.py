"""Job detail (Enter on a compile-queue row): every attempt at compiling one blueprint for one slot shape."""

from __future__ import annotations

from typing import Any

from textual.content import Content

from esper_tui.engine.history import Details, JobAttempt, JobHistory
from esper_tui.ui.details.base import NO_DETAILS, DetailScreen, Fetch, muted, section
from esper_tui.widgets import format as fmt

OUTCOME_VAR = {
    "compiled": "$success",
    "reused": "$success",
    "compiling": "$warning",
    "failed (will retry)": "$warning",
    "failed": "$error",
}


def attempt_lines(attempt: JobAttempt) -> list[Content]:
    started = fmt.clock(attempt.started_ts) if attempt.started_ts is not None else fmt.DASH
    lines = [
        Content.assemble(
            (f"attempt {attempt.attempt} ", "bold"),
            f"{attempt.strategy.value.capitalize()} · ",
            (attempt.outcome, OUTCOME_VAR.get(attempt.outcome, "")),
            f" · started {started} · {fmt.duration(attempt.duration_s)} · worker {attempt.worker}",
        )
    ]
    facts: list[str] = []
    if attempt.breakers:
        facts.append("breakers at start: " + ", ".join(f"{name} {state}" for name, state in attempt.breakers.items()))
    if attempt.step_ms_compiled is not None or attempt.step_ms_eager is not None:
        facts.append(
            f"step compiled {fmt.number(attempt.step_ms_compiled)} ms / eager {fmt.number(attempt.step_ms_eager)} ms"
            + (f" · {attempt.backend}" if attempt.backend else "")
        )
    if attempt.artifact_id:
        version = f" v{attempt.version}" if attempt.version is not None else ""
        facts.append(f"artifact {attempt.artifact_id}{version} · {attempt.verification or 'verification not reported'}")
    facts.append(f"WAL transaction {attempt.wal_txn or fmt.DASH}")
    lines += [muted(f"  {fact}") for fact in facts]
    if attempt.error:
        lines.append(fmt.styled(f"  error: {attempt.error}", "$error"))
    return lines


class JobDetail(DetailScreen):
    """Every attempt at one compile job."""

    def __init__(self, fetch: Fetch, blueprint_id: str, shape: str = "", **kwargs: Any) -> None:
        self.blueprint_id = blueprint_id
        self.shape = shape
        super().__init__(fetch, **kwargs)

    def title_text(self) -> str:
        return f"Compile job {self.blueprint_id}" + (f" [{self.shape}]" if self.shape else "")

    def pick(self, details: Details | None) -> object:
        return None if details is None else (details.job(self.blueprint_id, self.shape),)

    def body(self, picked: object) -> Content:
        if picked is None:
            return muted(NO_DETAILS)
        assert isinstance(picked, tuple)
        job = picked[0]
        if not isinstance(job, JobHistory):
            return muted(f"{self.title_text()}: no attempt seen in this run yet")
        lines: list[Content] = section(
            "Queued", [Content(why) for why in job.queued], "not queued in this run (found in the library)"
        )
        attempts: list[Content] = []
        for attempt in reversed(job.attempts):  # the newest first: it is what the row shows
            if attempts:
                attempts.append(Content(""))
            attempts += attempt_lines(attempt)
        lines += section("Attempts, newest first", attempts, "none yet", limit=len(attempts))  # bounded by the history
        return Content("\n").join(lines[1:])  # no blank line on top
