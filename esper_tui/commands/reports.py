"""`esper-tui reports`: Tamiyo's field reports (each decision and its measured outcome) as a table or JSON."""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec

from esper_tui.commands.fail import fail, missing_state_dir
from esper_tui.engine.training.reports import FieldReport, ReportsInvalid, read, reports_path, settled_later

REASON_WIDTH = 60  # long reasons are cut so a row stays on one line; --json has them whole


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def reports_table(reports: list[FieldReport], later: list[str | None]) -> str:
    """One row per decision, oldest first: run, epoch, slot, action, blueprint, reason, outcome (and the fate a
    later report settled for a seed that was still in flight)."""
    head = ("RUN", "EPOCH", "SLOT", "ACTION", "BLUEPRINT", "REASON", "OUTCOME")
    rows = [head] + [
        (
            r.run_id or "-",
            str(r.epoch),
            r.slot or "-",
            r.action,
            r.blueprint_id or "-",
            _cut(r.reason, REASON_WIDTH),
            r.outcome() + (f", later {fate}" if fate else ""),
        )
        for r, fate in zip(reports, later, strict=True)
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def reports_main(state_dir: Path, as_json: bool, run: str | None = None) -> int:
    """Print the reports under `state_dir`; a missing state directory or an unreadable file is one line on
    stderr and exit 1, a run that has decided nothing yet (no file) an answer and exit 0."""
    if (code := missing_state_dir(state_dir)) is not None:
        return code
    path = reports_path(state_dir)
    if not path.exists():
        print(f"no field reports yet in {path} (Tamiyo writes them once a run has decided something)")
        return 0
    try:
        reports = read(path)
    except ReportsInvalid as exc:
        print(f"esper-tui: {exc}", file=sys.stderr)
        return 1
    later = settled_later(reports)  # over every run's reports: a filter must not hide a seed's fate
    if run is not None:
        chosen = [i for i, r in enumerate(reports) if r.run_id.startswith(run)]
        if not chosen:
            runs = sorted({r.run_id for r in reports if r.run_id})
            return fail(f"no field reports of run {run!r} in {path} (runs there: {', '.join(runs) or 'none named'})", 1)
        reports, later = [reports[i] for i in chosen], [later[i] for i in chosen]
    if as_json:
        for r, fate in zip(reports, later, strict=True):
            print(msgspec.json.encode({**msgspec.structs.asdict(r), "seed_later": fate}).decode())
    elif reports:
        print(reports_table(reports, later))
    else:
        print(f"no field reports yet in {path}")
    return 0
