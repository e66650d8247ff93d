"""One human-readable line per snapshot, for `--no-ui` without `--json` (and for logs)."""

from __future__ import annotations

import time

from esper_tui.engine.codec import encode_json
from esper_tui.engine.snapshot import LinkView, Snapshot, seeds_run
from esper_tui.engine.vocabulary import JobStatus, Level, LinkState, SeedStage


def link_tag(link: LinkView) -> str:
    """A prefix such as `[live 0.3 s] ` for a picture from elsewhere, so a log never passes an old picture
    off as current; empty for the engine's own process."""
    if link.state is LinkState.LOCAL:
        return ""
    age = f" {link.age_s:.1f} s" if link.state in (LinkState.LIVE, LinkState.SILENT) else ""
    forged = f", {link.frames_rejected} forged frames ignored" if link.frames_rejected else ""
    return f"[{link.state}{age}{forged}] "


def status_line(s: Snapshot) -> str:
    t, f = s.training, s.forge
    epochs = f"{t.epoch}/{t.epochs_total}" if t.epochs_total else str(t.epoch)
    m = t.metric
    loss = f"{t.loss:.3f}" if t.loss is not None else "-"
    count = {st: sum(j.status is st for j in f.jobs) for st in JobStatus}
    status = t.status if s.infrastructure.training else "forge only"  # not [waiting]: nothing will ever train
    seeds = (
        " ".join(
            f"{sd.slot}:{sd.stage}"
            + (f"({sd.blueprint_id} a={sd.alpha:.2f})" if sd.stage is not SeedStage.DORMANT else "")
            for sd in t.seeds
        )
        or "-"
    )
    return (
        f"{link_tag(s.link)}[{status}] epoch {epochs} val {m.name} {m.format(t.val_metric)} "
        f"test {m.name} {m.format(t.test_metric)} loss {loss} | task {t.task or '-'} | "
        f"kernels {seeds_run(s).words} | "
        f"forge {count[JobStatus.COMPILED]}/{len(f.jobs)} compiled, {count[JobStatus.COMPILING]} running, "
        f"{count[JobStatus.QUEUED]} queued, {count[JobStatus.FAILED]} failed | conservative "
        f"{'ON' if f.conservative_mode else 'off'} | wal {len(f.wal.open_transactions)} open | seeds {seeds}"
        + "".join(f" | {part}" for part in trouble(s))
    )


TROUBLE_TEXT = 100
"""How much of the newest warning's text a status line carries (the event log and --json have all of it)."""


def trouble(s: Snapshot) -> list[str]:
    """What went wrong, which the line never said (only "conservative ON" hinted at a rollback): the rollbacks,
    the alerts firing, and the newest warning or error (a quarantined kernel, a failed compile, a rollback)."""
    parts = [f"rollbacks {s.training.rollbacks}"] if s.training.rollbacks else []
    if s.alerts:
        parts.append("ALERT " + ", ".join(alert.alertname for alert in s.alerts))
    worst = next((e for e in reversed(s.events) if e.level is not Level.INFO), None)
    if worst is not None:
        when = time.strftime("%H:%M:%S", time.gmtime(worst.ts))
        text = worst.text if len(worst.text) <= TROUBLE_TEXT else worst.text[: TROUBLE_TEXT - 1] + "…"
        parts.append(f"last {worst.level} {when} {worst.source}: {text}")
    return parts


def report_line(snapshot: Snapshot, as_json: bool) -> str:
    """What a headless client prints per snapshot: the JSON of the whole snapshot, or the status line."""
    return encode_json(snapshot).decode() if as_json else status_line(snapshot)
