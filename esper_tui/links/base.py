"""The seam between the dashboard and an engine, local or remote.

The dashboard only ever reads the newest snapshot and sends typed commands; everything else about the
engine (threads, processes, Redis) stays on the other side of this interface. That keeps the UI
testable with a fixed snapshot and lets the same App drive an in-process engine or a remote one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from esper_tui.engine.contracts import AnyCommand
from esper_tui.engine.history import Details, LogEntry
from esper_tui.engine.snapshot import LinkView, Snapshot


class CommandUnavailable(Exception):
    """This control room cannot send commands (no operator key, or attached read-only); the message says
    why and how to get the key, and the dashboard shows it instead of sending."""


class EngineLink(Protocol):
    """What the dashboard needs from an engine, local or remote."""

    def latest(self) -> Snapshot | None:
        """The newest snapshot, or None before the first one.

        The UI polls this at its refresh rate and skips a snapshot it has already drawn (same seq, same
        `link` view); it never queues snapshots, so a slow terminal only ever lags, never falls further
        behind. A remote link fills `Snapshot.link` at call time, so the age it shows is current.
        """
        ...

    async def send(self, command: AnyCommand) -> None:
        """Deliver an operator command to the engine (raises if it cannot be delivered; CommandUnavailable
        when this control room may not send any)."""
        ...


@runtime_checkable
class ReportsLink(Protocol):
    """A link that can say how it stands before the first snapshot arrives (a remote one).

    Once snapshots flow, `Snapshot.link` carries the same view; before that the dashboard asks here, so
    "waiting for engine…" can say what it waits for (no frame yet, frames rejected, Redis away).
    """

    def link_view(self) -> LinkView: ...


@runtime_checkable
class DetailsLink(Protocol):
    """A link that can hand over the history behind the detail views (seed, job, decision, event, run info).

    Details never travel with snapshots (they would make every frame large); a detail screen asks here when
    it opens and again while it stays open. A local engine answers from its aggregator, a remote link with the
    newest details the engine published for it (asking for them first), a replay with what it rebuilt from the
    recording up to the moment shown. None: nothing yet (the screen says so).
    """

    def details(self) -> Details | None: ...

    def event_log(self) -> Sequence[LogEntry] | None:
        """The event log's whole scrollback, oldest first (cheaper than `details()`: the focused log reads it at
        every new snapshot)."""
        ...


class StaticLink:
    """An EngineLink over a fixed snapshot (and, given them, fixed details): for tests and screenshots.

    Sent commands are recorded in `sent` instead of going anywhere.
    """

    def __init__(self, snapshot: Snapshot | None = None, details: Details | None = None) -> None:
        self._snapshot = snapshot
        self._details = details
        self.sent: list[AnyCommand] = []

    def details(self) -> Details | None:
        return self._details

    def event_log(self) -> Sequence[LogEntry] | None:
        return None if self._details is None else self._details.log

    def latest(self) -> Snapshot | None:
        return self._snapshot

    def set(self, snapshot: Snapshot | None) -> None:
        """Replace the snapshot the dashboard will see on its next poll."""
        self._snapshot = snapshot

    async def send(self, command: AnyCommand) -> None:
        self.sent.append(command)
