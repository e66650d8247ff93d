"""Oona, the bus: is it up, how fast does it move, what is piling up, and what did it refuse.

An operator who watches from elsewhere depends on the bus for everything, so its trouble must be in
plain sight: the backend and whether it answers, rates in and out, the backlog of each stream, how many
control rooms are attached, dead letters and rejected commands with their reasons (a rejected command
is either an attack or a mis-keyed colleague), and the server's last error. The summary comes first and
fits a short panel; the newest notes follow for as many lines as the panel has.
"""

from __future__ import annotations

from typing import NamedTuple

from textual.content import Content
from textual.widgets import Static

from esper_tui.engine.snapshot import BusNote, BusView, Snapshot
from esper_tui.widgets import format as fmt
from esper_tui.widgets.panel import SnapshotPanel

MAX_NOTES = 12
"""Dead letters and rejections listed below the summary, newest first (more than the panel shows)."""


class BusSlice(NamedTuple):
    bus: BusView
    run_id: str
    """To shorten run-suffixed stream names ("oona.normal.3f2a9c" reads "normal")."""


def short_stream(name: str, run_id: str) -> str:
    """A stream as the operator thinks of it: without the prefix and the run suffix."""
    if run_id and name.endswith(f".{run_id}"):
        name = name[: -len(run_id) - 1]
    return name.rsplit(".", 1)[-1]


def _count(label: str, count: int, variable: str) -> Content:
    return fmt.styled(f"{label} {count}", variable if count else fmt.MUTED)


def _latest(label: str, count: int, notes: list[BusNote], variable: str) -> Content:
    """`rejected 2: Shutdown from eve@box: bad signature`: the count and the newest reason."""
    line = _count(label, count, variable)
    if count and notes:
        line += fmt.styled(f": {notes[-1].reason}", variable)
    return line


def note_line(kind: str, note: BusNote, run_id: str) -> Content:
    """`12:01:03 rejected emergency bad signature` (time in UTC, like the event log)."""
    variable = "$error" if kind == "rejected" else "$warning"
    return Content(" ").join(
        [
            fmt.styled(fmt.clock(note.ts), fmt.MUTED),
            fmt.styled(kind, variable),
            fmt.styled(short_stream(note.stream, run_id), "$secondary"),
            Content(note.reason),
        ]
    )


class BusPanel(SnapshotPanel[BusSlice], Static):
    """Backend and link, rates, backlogs, control rooms, dead letters, rejections, server errors."""

    PANEL_TITLE = "Oona"

    DEFAULT_CSS = """
    BusPanel {
        height: 1fr;
        overflow: hidden;
        &.-down { border: round $error; }
    }
    """

    def select(self, snapshot: Snapshot) -> BusSlice:
        return BusSlice(snapshot.bus, snapshot.run_id)

    def draw(self, part: BusSlice) -> None:
        self.set_class(not part.bus.connected, "-down")
        self.update(Content("\n").join(self._summary(part) + self._notes(part)), layout=False)

    @staticmethod
    def _summary(part: BusSlice) -> list[Content]:
        bus = part.bus
        link = (
            fmt.styled("● connected", "$success")
            if bus.connected
            else fmt.styled("○ disconnected", "$error bold reverse")
        )
        rooms = f"{bus.control_rooms} control room{'' if bus.control_rooms == 1 else 's'}"
        if bus.control_rooms_unverified:  # read-only rooms cannot sign; forged presence looks the same
            rooms += f" (+{bus.control_rooms_unverified} unverified)"
        backlogs = [f"{short_stream(b.stream, part.run_id)} {b.backlog}" for b in bus.backlogs]
        errors = ", ".join(f"{kind} {count}" for kind, count in sorted(bus.server_errors.items()) if count)
        lines = [
            fmt.styled(bus.backend, "bold"),
            fmt.join([link, rooms]),
            fmt.join(
                [
                    f"out {fmt.quantity(bus.rate_out)}/s",
                    f"in {fmt.quantity(bus.rate_in)}/s",
                    _count("dropped", bus.dropped, "$warning"),
                ]
            ),
            Content("backlog ") + (fmt.join(backlogs) if backlogs else fmt.styled("none", fmt.MUTED)),
            _latest("dead letters", bus.dead_lettered, bus.dead_letters, "$warning"),
            _latest("rejected", bus.rejected, bus.rejections, "$error"),
            fmt.styled(f"server errors: {errors}", "$error") if errors else fmt.styled("no server errors", fmt.MUTED),
        ]
        if bus.last_error:
            lines.append(fmt.styled(f"last error: {bus.last_error}", "$error"))
        return lines

    @staticmethod
    def _notes(part: BusSlice) -> list[Content]:
        """Every recent dead letter and rejection, newest first (the panel shows what fits)."""
        notes = [("rejected", note) for note in part.bus.rejections]
        notes += [("dead letter", note) for note in part.bus.dead_letters]
        notes.sort(key=lambda item: item[1].ts, reverse=True)
        if not notes:
            return []
        lines = [fmt.styled("recent", f"{fmt.MUTED} italic")]
        return lines + [note_line(kind, note, part.run_id) for kind, note in notes[:MAX_NOTES]]
