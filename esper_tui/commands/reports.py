"""`esper-tui reports`: Tamiyo's field reports (each decision and its measured outcome) as a table or JSON."""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec

from esper_tui.commands.fail import missing_state_dir
from esper_tui.engine.training.reports import FieldReport, ReportsInvalid, read, reports_path

REASON_WIDTH = 60  # long reasons are cut so a row stays on one line; --json has them whole


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def reports_table(reports: list[FieldReport]) -> str:
    """One row per decision, oldest first: epoch, slot, action, blueprint, reason, outcome."""
    head = ("EPOCH", "SLOT", "ACTION", "BLUEPRINT", "REASON", "OUTCOME")
    rows = [head] + [
        (
            str(r.epoch),
            r.slot or "-",
            r.action,
            r.blueprint_id or "-",
            _cut(r.reason, REASON_WIDTH),
            r.outcome(),
        )
        for r in reports
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def reports_main(state_dir: Path, as_json: bool) -> int:
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
    if as_json:
        for r in reports:
            print(msgspec.json.encode(r).decode())
    elif reports:
        print(reports_table(reports))
    else:
        print(f"no field reports yet in {path}")
    return 0
