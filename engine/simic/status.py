"""Where Simic stands, as plain data: its progress (`status.json`) and its gate's verdicts (`verdicts.jsonl`).

Kept apart from the training code (no torch here): the engine reads it for the control room's Simic panel and
/metrics, `simic status` prints it, and neither should load what trains a policy.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import msgspec

from esper_tui.engine.fsutil import write_all
from esper_tui.engine.snapshot import SimicView
from esper_tui.engine.vocabulary import Struct, new_id

SIMIC_DIR = "simic"
STATUS = Path(SIMIC_DIR) / "status.json"
VERDICTS = Path(SIMIC_DIR) / "verdicts.jsonl"


class SimicError(Exception):
    """Simic cannot train or report: one line for the operator."""


class Verdict(Struct, kw_only=True):
    """The gate's judgement of one candidate, with its reasons (passed or not)."""

    verdict_id: str = msgspec.field(default_factory=new_id)
    ts: float = msgspec.field(default_factory=time.time)
    candidate: str
    current: str  # "heuristic" when no learned policy was published before
    passed: bool
    reasons: list[str]
    seeds: list[int]
    candidate_val: list[float]
    heuristic_val: list[float]
    current_val: list[float] = msgspec.field(default_factory=list)
    published: bool = False


class Progress(Struct, kw_only=True):
    """A training run as far as it got: the checkpoint's and status.json's content."""

    episodes_total: int
    episodes_done: int = 0
    returns: list[float] = msgspec.field(default_factory=list)  # per episode (the learning curve)
    losses: list[float] = msgspec.field(default_factory=list)  # per round
    wall_s: float = 0.0
    field_reports: int = 0  # germinations read from Tamiyo's field reports before the first episode
    blueprints: list[str] = msgspec.field(default_factory=list)
    slots: list[str] = msgspec.field(default_factory=list)
    candidate: str = ""
    current: str = "heuristic"
    verdict: Verdict | None = None
    finished: bool = False
    updated_ts: float = msgspec.field(default_factory=time.time)


def read_status(state_dir: Path) -> Progress | None:
    """status.json as the last round wrote it; None when Simic never ran here; SimicError when unreadable."""
    path = state_dir / STATUS
    try:
        return msgspec.json.decode(path.read_bytes(), type=Progress)
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SimicError(f"{path}: unreadable ({exc})") from None


def record_verdict(state_dir: Path, verdict: Verdict) -> None:
    """Append the verdict as one fsynced JSON line."""
    path = state_dir / VERDICTS
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, msgspec.json.encode(verdict) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def verdicts(state_dir: Path) -> list[Verdict]:
    """The recorded verdicts, oldest first (a torn or foreign line is skipped)."""
    try:
        lines = (state_dir / VERDICTS).read_bytes().split(b"\n")
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(msgspec.json.decode(line, type=Verdict))
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
    return out


CURVE = 60
"""Episodes (and rounds) of the learning curve the control room shows: the newest."""


def view(state_dir: Path) -> SimicView | None:
    """The control room's slice of Simic: None when it never trained here (or its status is unreadable)."""
    try:
        p = read_status(state_dir)
    except SimicError:
        return None
    if p is None:
        return None
    v = p.verdict
    return SimicView(
        episodes_done=p.episodes_done,
        episodes_total=p.episodes_total,
        returns=p.returns[-CURVE:],
        losses=p.losses[-CURVE:],
        wall_s=p.wall_s,
        candidate=p.candidate,
        current=p.current,
        verdict="" if v is None else "passed" if v.passed else "failed",
        reasons=list(v.reasons) if v is not None else [],
        finished=p.finished,
        updated_ts=p.updated_ts,
    )
