"""Run info (`i`): the run id and uptime, the identity (Python, torch, device, CPU ISA), where its state and
library are, the bus, the key fingerprints (never the keys) and the effective config with what differs from the
defaults marked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual.content import Content

from esper_tui.engine.history import Details, RunInfo
from esper_tui.engine.snapshot import Snapshot
from esper_tui.ui.details.base import DetailScreen, Fetch, heading, muted, section
from esper_tui.widgets import format as fmt

CHANGED = "*"


def run_lines(run: RunInfo | None, snapshot: Snapshot | None) -> list[Content]:
    run_id = snapshot.run_id if snapshot is not None else run.run_id if run is not None else fmt.DASH
    facts = [f"run {run_id}"]
    if snapshot is not None:
        facts.append(f"up {fmt.duration(snapshot.uptime_s)}")
    if run is not None:
        facts.append(f"started {fmt.clock(run.started_ts)} UTC")
    lines = [heading(" · ".join(facts))]
    if run is None:
        infra = snapshot.infrastructure if snapshot is not None else None
        known = f"device {infra.device} · torch {infra.torch_version} · bus {infra.bus}" if infra is not None else ""
        return [
            *lines,
            Content(known),
            muted("identity, config and keys are not known here (the engine has not sent its details)"),
        ]
    lines += section(
        "Identity",
        [
            Content(f"Python {run.python_version or fmt.DASH} · torch {run.torch_version or fmt.DASH}"),
            Content(f"device {run.device or fmt.DASH} · CPU ISA {run.cpu_isa or fmt.DASH}"),
            Content(f"host {run.host or fmt.DASH} · pid {run.pid or fmt.DASH}"),
        ],
        "",
    )
    lines += section(
        "Where",
        [
            Content(f"state directory {run.state_dir or fmt.DASH}"),
            Content(f"bus {run.bus or fmt.DASH}"),
            Content(f"library {run.library or fmt.DASH}"),
        ],
        "",
    )
    lines += section(
        "Key fingerprints (never the keys)",
        [Content(f"{name}: {print_}") for name, print_ in run.key_fingerprints.items()],
        "not reported",
    )
    changed = sum(entry.changed for entry in run.config)
    config = [
        Content.assemble(
            (f"{CHANGED if entry.changed else ' '} ", "$warning bold"),
            (f"{entry.key} = {entry.value}", "$warning" if entry.changed else ""),
            (f"  (default {entry.default})" if entry.changed else "", fmt.MUTED),
        )
        for entry in run.config
    ]
    title = f"Effective config ({CHANGED} differs from the default: {changed} of {len(run.config)} keys)"
    lines += section(title, config, "not reported", limit=len(config))
    return lines


class RunInfoScreen(DetailScreen):
    """The run's identity and settings."""

    def __init__(self, fetch: Fetch, snapshot: Callable[[], Snapshot | None], **kwargs: Any) -> None:
        self._snapshot = snapshot
        super().__init__(fetch, **kwargs)

    def title_text(self) -> str:
        return "Run info"

    def pick(self, details: Details | None) -> object:
        snapshot = self._snapshot()
        return (details.run if details is not None else None, snapshot.run_id if snapshot else "", self._uptime())

    def _uptime(self) -> int:
        snapshot = self._snapshot()
        return int(snapshot.uptime_s) if snapshot is not None else 0

    def body(self, picked: object) -> Content:
        assert isinstance(picked, tuple)
        return Content("\n").join(run_lines(picked[0], self._snapshot()))
