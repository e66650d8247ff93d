"""`esper-tui replay` (the dashboard over a recording, or its snapshots as lines) and `esper-tui runs`
(the recordings kept under <state>/runs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import msgspec

from esper_tui.commands.fail import fail, missing_state_dir
from esper_tui.engine.config import UiConfig
from esper_tui.engine.recorder import (
    EXTENSION,
    BadRecording,
    Recording,
    RunSummary,
    format_start,
    list_recordings,
    runs_directory,
    summarize,
)
from esper_tui.links.replay import ReplayLink
from esper_tui.ui.replay_app import ReplayApp
from esper_tui.ui.status_line import report_line


def find_recording(given: Path, state_dir: Path) -> Path:
    """The recording `replay` and `plot` open: FILE as given, or a run id (or the unique start of one) looked up
    in <state>/runs, so what `runs` lists can be pasted as it is. BadRecording says what was not found."""
    if given.exists() or given.suffix == EXTENSION or len(given.parts) > 1:
        return given
    runs_dir = runs_directory(state_dir)
    matches = [path for path in list_recordings(runs_dir) if path.stem.startswith(str(given))]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise BadRecording(
            f"{given}: no such file, and no run {str(given)!r} in {runs_dir} (`esper-tui runs` lists them)"
        )
    runs = ", ".join(path.stem for path in matches)
    raise BadRecording(f"{given}: {len(matches)} runs in {runs_dir} start with it ({runs}): give more of the id")


def replay_main(args: argparse.Namespace, ui: UiConfig) -> int:
    """`esper-tui replay FILE [--no-ui [--json]]`: exit 1 for a file that is not a readable recording. The replay
    draws at `ui.refresh_hz` in `ui.theme`, and its event log holds the last `ui.event_scrollback` lines."""
    try:
        recording = Recording(args.file)
    except BadRecording as exc:
        return fail(str(exc), 1)
    with recording:
        if recording.torn:
            print(
                f"esper-tui: {args.file}: no index (the run did not stop cleanly); replaying the "
                f"{len(recording)} whole snapshots, {recording.ignored_bytes} bytes of torn tail ignored",
                file=sys.stderr,
            )
        try:
            if args.no_ui:
                for snapshot in recording.frames():
                    print(report_line(snapshot, args.json), flush=True)
                return 0
            link = ReplayLink(recording, scrollback=ui.event_scrollback)
            app = ReplayApp(link, refresh_hz=ui.refresh_hz, theme=ui.theme, settle_heap=True)
            app.run()
            if app.failure is not None:
                return fail(app.failure, 1)
        except BadRecording as exc:
            return fail(str(exc), 1)
        except BrokenPipeError:
            return 0
    return 0


def runs_table(summaries: list[RunSummary]) -> str:
    """`esper-tui runs`: one row per recording, oldest first."""
    head = ("RUN", "START", "DURATION", "EPOCHS", "TASK", "METRIC", "VAL", "TEST", "STATUS", "SNAPSHOTS")
    rows = [head] + [
        (
            s.run_id,
            format_start(s.start_ts),
            f"{s.duration_s:.0f} s",
            str(s.epochs),
            s.task or "-",
            s.metric.name,
            s.metric.format(s.val_metric),
            s.metric.format(s.test_metric),
            s.status if s.complete else f"{s.status} (torn)",
            str(s.snapshots),
        )
        if s.problem is None
        else (s.run_id, "-", "-", "-", "-", "-", "-", "-", "unreadable (see above)", "-")
        for s in summaries
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def runs_main(state_dir: Path, as_json: bool, show_all: bool = False) -> int:
    """`esper-tui runs`: the recordings under <state>/runs. An unreadable one is listed, marked, with its reason
    in one line on stderr (and `problem` in JSON); it never keeps the others from being listed. Runs that only
    compiled (`--forge-only`) are counted, not listed, unless `show_all`: they read "waiting" among the runs
    that trained."""
    if (code := missing_state_dir(state_dir)) is not None:
        return code
    runs_dir = runs_directory(state_dir)
    summaries: list[RunSummary] = []
    for path in list_recordings(runs_dir):
        try:
            summaries.append(summarize(path))
        except BadRecording as exc:
            print(f"esper-tui: {exc}", file=sys.stderr)
            summaries.append(RunSummary.unreadable(path, str(exc)))
    forge_only = [s for s in summaries if not s.trained]
    if not show_all:
        summaries = [s for s in summaries if s.trained]
    if as_json:
        for summary in summaries:
            print(msgspec.json.encode(summary).decode())
    elif summaries:
        print(runs_table(summaries))
    else:
        print(f"no runs that trained in {runs_dir}" if forge_only else f"no recordings in {runs_dir}")
    if forge_only and not show_all and not as_json:
        plural = "s" if len(forge_only) > 1 else ""
        print(f"({len(forge_only)} forge-only run{plural} not listed: --all lists them)")
    return 0
