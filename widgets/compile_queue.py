"""Tezzeret's compile queue: one row per blueprint and slot shape, updated cell by cell.

A DataTable repaint costs ~38 ms whatever changed (guide section 8), so rows are keyed by blueprint id
and shape and changed cells are rewritten with `update_cell`; rows are added and removed individually, never
cleared and re-added, which also keeps the cursor (the operator's selection) where it was.

A column is either shown whole or not at all: when the table is narrow (an 80-column terminal) the
least useful columns give way (`column_plan`), and the note stretches over whatever width is left with
an ellipsis, so no cell is ever cut mid-word at the table's edge. The shape column is left out while no
job names a shape (a recording of an engine from before kernels were kept per shape).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from rich.cells import cell_len
from rich.text import Text
from textual import events
from textual.coordinate import Coordinate
from textual.theme import Theme
from textual.widgets import DataTable

from esper_tui.engine.snapshot import JobView, Snapshot
from esper_tui.engine.vocabulary import JobStatus
from esper_tui.widgets import format as fmt
from esper_tui.widgets.panel import SnapshotPanel

COLUMNS: tuple[tuple[str, str], ...] = (
    ("blueprint", "blueprint"),
    ("shape", "shape"),
    ("strategy", "strategy"),
    ("state", "state"),
    ("time", "time"),
    ("step", "compiled/eager"),
    ("ver", "ver"),
    ("note", "note"),
)
"""(column key, header label), in display order."""

NOTE_WIDTH = 48
"""Errors can be long tracebacks; the table shows their start (the event log has the rest)."""

PRIORITY: tuple[str, ...] = ("blueprint", "state", "strategy", "time", "step", "shape", "note", "ver")
"""Column keys, most useful first: a narrow table drops them from the end of this list."""

KEPT: frozenset[str] = frozenset({"blueprint", "state"})
"""Columns shown however narrow the table is: without them a row means nothing."""

MIN_WIDTHS: Mapping[str, int] = {"strategy": len("Aggressive"), "state": len("● compiling"), "time": len("10.0 s")}
"""Content widths reserved whatever the rows hold now, so a ticking clock does not reshuffle the columns."""

NOTE_MIN = 16
"""The note is shown only when this many cells are left for it (less would read as noise)."""


Plan = tuple[tuple[str, int], ...]
"""(column key, content width) of the columns shown, in display order."""


def column_plan(
    widths: Mapping[str, int], available: int, padding: int = 1, without: frozenset[str] = frozenset()
) -> Plan:
    """Which columns fit in `available` cells: taken in `PRIORITY` order while they fit whole.

    `widths` are the content widths of the fixed columns (the note's is ignored: it takes the rest,
    at least `NOTE_MIN`). Each column also costs `padding` on both sides. Columns in `without` have
    nothing to show and are left out.
    """
    chosen: dict[str, int] = {}
    used = 0
    for key in (k for k in PRIORITY if k not in without):
        width = NOTE_MIN if key == "note" else max(widths.get(key, 0), MIN_WIDTHS.get(key, 0))
        if key in KEPT or used + width + 2 * padding <= available:
            chosen[key] = width
            used += width + 2 * padding
    if "note" in chosen:
        chosen["note"] += max(available - used, 0)
    return tuple((key, chosen[key]) for key, _ in COLUMNS if key in chosen)


class Cell(NamedTuple):
    """A cell's text and the component class that colours it ("" for the default colour)."""

    text: str
    component: str = ""


Row = tuple[Cell, ...]


def job_time(job: JobView, now: float) -> str:
    """Compile time when done, running time (against the snapshot clock) while compiling."""
    if job.duration_s is not None:
        return fmt.duration(job.duration_s)
    if job.status is JobStatus.COMPILING and job.started_ts is not None:
        return fmt.duration(now - job.started_ts)
    return fmt.DASH


def job_state(job: JobView) -> str:
    """ "● compiling", with the attempt number when it is a retry ("● failed #3")."""
    retries = f" #{job.attempt}" if job.attempt > 1 else ""
    return f"● {job.status.value}{retries}"


def job_note(job: JobView) -> Cell:
    """Why it failed, or which backend produced the kernel, and on which forge worker when not this engine."""
    if job.error:
        return Cell(fmt.clip(job.error, NOTE_WIDTH), "compile-queue--failed")
    where = f"on {job.worker}" if job.worker else ""
    return Cell(" ".join(part for part in (job.backend or "", where) if part), "compile-queue--muted")


def job_row(job: JobView, now: float) -> Row:
    """The cells of one job, as comparable values (no rendering, so diffs are cheap and exact)."""
    slower = (
        job.step_ms_compiled is not None and job.step_ms_eager is not None and job.step_ms_compiled > job.step_ms_eager
    )
    return (
        Cell(job.blueprint_id),
        Cell(job.shape, "compile-queue--muted"),
        Cell(job.strategy.value.capitalize()),
        Cell(job_state(job), f"compile-queue--{job.status.value}"),
        Cell(job_time(job, now)),
        Cell(
            fmt.step_ms(job.step_ms_compiled, job.step_ms_eager),
            "compile-queue--slower" if slower else "",
        ),
        Cell(f"v{job.version}" if job.version is not None else fmt.DASH, "compile-queue--muted"),
        job_note(job),
    )


def row_key(job: JobView) -> str:
    """A job's row: its blueprint, and its shape when it names one (`mlp_block@40-64`)."""
    return f"{job.blueprint_id}@{job.shape}" if job.shape else job.blueprint_id


class QueueSlice(NamedTuple):
    rows: tuple[tuple[str, Row], ...]
    """(row key, cells) in snapshot order."""


class CompileQueue(SnapshotPanel[QueueSlice], DataTable[Text]):
    """The forge's jobs; the cursor row is the blueprint that `r` and `s` recompile."""

    PANEL_TITLE = "Compile queue"

    COMPONENT_CLASSES = DataTable.COMPONENT_CLASSES | {
        "compile-queue--queued",
        "compile-queue--compiling",
        "compile-queue--compiled",
        "compile-queue--failed",
        "compile-queue--muted",
        "compile-queue--slower",
    }

    DEFAULT_CSS = """
    CompileQueue {
        height: 1fr;
        padding: 0;
        scrollbar-size-horizontal: 0;  /* a long note scrolls with left/right, without a bar */
        &:focus { border: round $accent; }
        & > .compile-queue--queued { color: $foreground-muted; }
        & > .compile-queue--compiling { color: $warning; text-style: bold; }
        & > .compile-queue--compiled { color: $success; }
        & > .compile-queue--failed { color: $error; }
        & > .compile-queue--muted { color: $foreground-muted; }
        & > .compile-queue--slower { color: $warning; }
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False, cell_padding=1)
        self._cells: dict[str, Row] = {}
        self._restyle = False
        self._plan: Plan = ()
        """The columns shown; empty until the table knows its width (then every column, auto-sized)."""
        for key, label in COLUMNS:
            self.add_column(label, key=key)

    def on_mount(self) -> None:
        self.app.theme_changed_signal.subscribe(self, self._on_theme_changed)

    def _on_theme_changed(self, _theme: Theme) -> None:
        """Cell colours are baked into Rich Text: rewrite every cell in place (the cursor stays put)."""
        self._restyle = True
        self.redraw()

    def select(self, snapshot: Snapshot) -> QueueSlice:
        return QueueSlice(tuple((row_key(job), job_row(job, snapshot.ts)) for job in snapshot.forge.jobs))

    def draw(self, part: QueueSlice) -> None:
        wanted = dict(part.rows)
        for key in [key for key in self._cells if key not in wanted]:
            self.remove_row(key)
            del self._cells[key]
        shown = self._shown_columns()
        for key, row in part.rows:
            old = self._cells.get(key)
            if old is None:
                self.add_row(*self._row_texts(row), key=key)
            else:
                for (column, _), new, previous in zip(COLUMNS, row, old, strict=True):
                    if column in shown and (self._restyle or new != previous):
                        self.update_cell(key, column, self._cell_text(new), update_width=True)
            self._cells[key] = row
        self._restyle = False
        self.call_after_refresh(self._fit_columns)  # wider cells or a new scrollbar may change the plan

    def on_resize(self, _event: events.Resize) -> None:
        self._fit_columns()

    def _shown_columns(self) -> set[str]:
        return {key for key, _ in self._plan} if self._plan else {key for key, _ in COLUMNS}

    def _row_texts(self, row: Row) -> list[Text]:
        shown = self._shown_columns()
        return [self._cell_text(cell) for (column, _), cell in zip(COLUMNS, row, strict=True) if column in shown]

    def content_widths(self) -> dict[str, int]:
        """Each column's widest cell or header, in cells (what the column needs to show whole)."""
        return {
            key: max([cell_len(label), *(cell_len(row[index].text) for row in self._cells.values())])
            for index, (key, label) in enumerate(COLUMNS)
        }

    def _fit_columns(self) -> None:
        """Show the columns that fit the current width; rebuilt only when that set or a width changes.

        A rebuild re-adds every row (the one full repaint this table allows itself) and puts the
        cursor back on the blueprint it was on.
        """
        available = self.scrollable_content_region.width
        if available <= 0 or not self.is_mounted:
            return
        shapeless = frozenset() if any(row[1].text for row in self._cells.values()) else frozenset({"shape"})
        plan = column_plan(self.content_widths(), available, self.cell_padding, shapeless)
        if plan == self._plan:
            return
        selected = self._selected_key()
        self._plan = plan
        labels = dict(COLUMNS)
        self.clear(columns=True)
        for key, width in plan:
            self.add_column(labels[key], key=key, width=width)
        for key, row in self._cells.items():
            self.add_row(*self._row_texts(row), key=key)
        if selected is not None:
            self.move_cursor(row=self.get_row_index(selected), animate=False)

    def shown_columns(self) -> list[str]:
        """Keys of the columns on screen, in display order (tests check nothing is cut)."""
        return [str(column.key.value) for column in self.ordered_columns]

    def _cell_text(self, cell: Cell) -> Text:
        """A cell as Rich Text (never parsed as markup: blueprint ids and errors are data)."""
        style = self.get_component_rich_style(cell.component, partial=True) if cell.component else ""
        return Text(cell.text, style=style, no_wrap=True, overflow="ellipsis")

    def _selected_key(self) -> str | None:
        """The row key under the cursor, or None when the queue is empty."""
        if self.row_count == 0:
            return None
        row = min(self.cursor_row, self.row_count - 1)
        return self.coordinate_to_cell_key(Coordinate(row, 0)).row_key.value

    def selected_key(self) -> str | None:
        """The row under the cursor, as `row_key` writes it ("mlp_block@40-64"), or None when the queue is empty."""
        return self._selected_key()

    def selected_blueprint(self) -> str | None:
        """The blueprint under the cursor (whichever shape the row is for), or None when the queue is empty."""
        key = self._selected_key()
        return None if key is None else key.split("@", 1)[0]

    def blueprint_ids(self) -> list[str]:
        """Row keys in display order (tests use it to prove rows are never duplicated)."""
        return [str(row.key.value) for row in self.ordered_rows]
