"""A run told as events, the same every time: what the detail views' tests, screenshots and benchmark fold.

`story(epochs)` is an engine start, a forge compiling three blueprints (one fails twice first, with the timeout
breaker opening, one is reused from the library), and `epochs` epochs of training on two seed slots where Tamiyo
germinates, trains, blends and holds seeds, fossilizes or prunes them, with a rollback a third of the way in and
each decision's field report five epochs later. Every time stamp and event id is fixed, so whatever folds it
renders identically on every machine.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from esper_tui.engine.config import EsperConfig, override
from esper_tui.engine.contracts import (
    AnyEvent,
    BreakerChanged,
    ControllerDecision,
    EngineStarted,
    EpochCompleted,
    JobCompiled,
    JobFailed,
    JobQueued,
    JobStarted,
    LogLine,
    Rollback,
    SeedHealth,
    SeedsReport,
    TrainingStarted,
)
from esper_tui.engine.run_info import config_entries
from esper_tui.engine.vocabulary import Action, BreakerState, Level, SeedStage, Strategy, Subsystem

T0 = dt.datetime(2025, 6, 1, 12, 0, 0, tzinfo=dt.UTC).timestamp()
"""The run starts at 12:00:00 UTC."""
CONFIG_SHOWN = frozenset(
    {
        "tezzeret.compilation.max_concurrent_jobs",
        "tezzeret.compilation.default_strategy",
        "library.signing_key",
        "training.epochs",
        "training.device",
        "training.task",
        "training.compile",
        "bus.operator_key",
        "ui.refresh_hz",
        "ui.event_scrollback",
    }
)
"""The config keys the story's run info lists: a fixed few, so a key added to the config changes no screenshot."""
EPOCH_S = 0.5
SLOTS = ("s0", "s1")
BLUEPRINTS = ("conv1d_block", "mlp_block", "residual_block")
CYCLE = (  # a seed's life: (stage, epochs in it)
    (SeedStage.GERMINATED, 1),
    (SeedStage.TRAINING, 2),
    (SeedStage.BLENDING, 5),
    (SeedStage.HOLDING, 3),
)


class _Ids:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"ev{self.n:06d}"


def _forge(ids: _Ids) -> Iterator[AnyEvent]:
    def at(s: float) -> float:
        return T0 + s

    tez = Subsystem.TEZZERET
    yield BreakerChanged(
        event_id=ids(),
        ts=at(1.0),
        source=tez,
        name="gpu",
        state=BreakerState.UNAVAILABLE,
        previous=BreakerState.CLOSED,
        transition=True,
        detail="no GPU",
    )
    for n, bp in enumerate(BLUEPRINTS):
        yield JobQueued(
            event_id=ids(),
            ts=at(1.1 + n / 10),
            source=tez,
            blueprint_id=bp,
            shape="40-64",
            strategy=Strategy.STANDARD,
            reason="initial scan",
        )
    yield JobCompiled(
        event_id=ids(),
        ts=at(1.5),
        source=tez,
        blueprint_id="mlp_block",
        shape="40-64",
        strategy=Strategy.STANDARD,
        artifact_id="a1f3c9d2e4b5",
        version=2,
        backend="inductor",
        mode="default",
        compile_s=7.9,
        step_ms_compiled=0.41,
        step_ms_eager=0.47,
        reused=True,
        wal_txn="5c0ffee15bad0001",
        verification="verified in the library",
    )
    breakers = {"memory": "closed", "gpu": "unavailable", "timeout": "closed"}
    for attempt in (1, 2):
        yield JobStarted(
            event_id=ids(),
            ts=at(2.0 + 40 * (attempt - 1)),
            source=tez,
            blueprint_id="residual_block",
            shape="40-64",
            strategy=Strategy.STANDARD,
            attempt=attempt,
            wal_txn=f"7f3a9c00000000{attempt:02d}",
            breakers=breakers,
        )
        yield JobFailed(
            event_id=ids(),
            ts=at(32.0 + 40 * (attempt - 1)),
            source=tez,
            blueprint_id="residual_block",
            shape="40-64",
            strategy=Strategy.STANDARD,
            attempt=attempt,
            will_retry=True,
            error="timeout after 30 s (worker group killed)",
            wal_txn=f"7f3a9c00000000{attempt:02d}",
        )
        if attempt == 2:
            breakers = {"memory": "closed", "gpu": "unavailable", "timeout": "half_open"}
            yield BreakerChanged(
                event_id=ids(),
                ts=at(72.5),
                source=tez,
                name="timeout",
                state=BreakerState.HALF_OPEN,
                previous=BreakerState.CLOSED,
                transition=True,
                failures=2,
                detail="2 timeouts: probing",
            )
    yield JobStarted(
        event_id=ids(),
        ts=at(80.0),
        source=tez,
        blueprint_id="residual_block",
        shape="40-64",
        strategy=Strategy.STANDARD,
        attempt=3,
        worker="forge-2:4242",
        wal_txn="7f3a9c0000000003",
        breakers=breakers,
    )
    yield JobCompiled(
        event_id=ids(),
        ts=at(91.2),
        source=tez,
        blueprint_id="residual_block",
        shape="40-64",
        strategy=Strategy.STANDARD,
        artifact_id="b7e210aa55cc",
        version=1,
        backend="inductor",
        mode="default",
        compile_s=11.2,
        step_ms_compiled=1.32,
        step_ms_eager=1.18,
        worker="forge-2:4242",
        wal_txn="7f3a9c0000000003",
        verification="verified here (signature, key) from forge-2:4242",
    )
    yield JobStarted(
        event_id=ids(),
        ts=at(2.1),
        source=tez,
        blueprint_id="conv1d_block",
        shape="40-64",
        strategy=Strategy.STANDARD,
        attempt=1,
        wal_txn="9e1d000000000001",
        breakers=breakers,
    )
    yield JobCompiled(
        event_id=ids(),
        ts=at(26.9),
        source=tez,
        blueprint_id="conv1d_block",
        shape="40-64",
        strategy=Strategy.STANDARD,
        artifact_id="c40d5e6f7a8b",
        version=1,
        backend="inductor",
        mode="default",
        compile_s=24.8,
        step_ms_compiled=7.83,
        step_ms_eager=6.78,
        wal_txn="9e1d000000000001",
        verification="signed by this engine's library",
    )


def story(epochs: int = 60) -> list[AnyEvent]:
    """The whole run, oldest first (see the module docstring)."""
    ids = _Ids()
    config = override(EsperConfig(), {"training.epochs": epochs, "ui.refresh_hz": 4.0, "training.device": "cpu"})
    events: list[AnyEvent] = [
        EngineStarted(
            event_id=ids(),
            ts=T0,
            run_id="run-0001",
            bus="embedded",
            state_dir="/var/esper",
            device="cpu",
            torch_version="2.13.0+cpu",
            compile_enabled=True,
            compile_backend="inductor",
            compile_mode="default",
            python_version="3.11.7",
            cpu_isa="avx2",
            host="lab-1",
            pid=4242,
            library="/var/esper/library",
            key_fingerprints={"library signing key": "3f9a1c0e5b7d2a64", "operator key": "88c1d4e2f0a3b915"},
            config=[entry for entry in config_entries(config) if entry.key in CONFIG_SHOWN],
        ),
        *_forge(ids),
        TrainingStarted(
            event_id=ids(),
            ts=T0 + 3,
            source=Subsystem.TOLARIA,
            compile_enabled=True,
            compile_backend="inductor",
            compile_mode="default",
            dataset="mnist1d",
            host="mlp",
            slots=len(SLOTS),
            epochs=epochs,
            device="cpu",
        ),
    ]
    events += _training(ids, epochs)
    return sorted(events, key=lambda e: e.ts)


def _training(ids: _Ids, epochs: int) -> list[AnyEvent]:
    out: list[AnyEvent] = []
    life: dict[str, tuple[str, int, int, float]] = {}  # slot -> (blueprint, cycle step, epochs in it, gain)
    outcomes: dict[str, str] = {}
    reports: list[tuple[int, str, str]] = []  # (epoch due, slot, outcome)
    rollback_at = max(epochs // 3, 8)
    grown = 0
    for epoch in range(1, epochs + 1):
        ts = T0 + 5 + epoch * EPOCH_S
        val = 0.5 + 0.3 * (1 - 0.97**epoch) + 0.002 * (epoch % 5)
        out.append(
            EpochCompleted(
                event_id=ids(),
                ts=ts,
                source=Subsystem.TOLARIA,
                epoch=epoch,
                train_loss=1.5 * 0.98**epoch,
                val_loss=1.6 * 0.98**epoch,
                val_metric=val,
                samples_per_s=7800.0,
                epoch_s=EPOCH_S,
                test_metric=val - 0.01,
            )
        )
        for _due, slot, outcome in [r for r in reports if r[0] == epoch]:
            outcomes[slot] = outcome
        before = _seeds(ids, ts, epoch, life, outcomes)  # the epoch's report, before Tamiyo decides
        decisions: list[ControllerDecision] = []
        for slot in SLOTS:
            if slot not in life:
                continue
            bp, step, n, gain = life[slot]
            n += 1
            gain += 0.002 if bp != "mlp_block" else -0.003
            stage, length = CYCLE[step]
            if n >= length:
                if step + 1 < len(CYCLE):
                    nxt = CYCLE[step + 1][0]
                    decisions.append(_decision(ids, ts, epoch, Action.ADVANCE, slot, bp, f"{stage} done; {nxt} next"))
                    life[slot] = (bp, step + 1, 0, gain)
                    continue
                keep = gain > 0
                action = Action.FOSSILIZE if keep else Action.PRUNE
                words = f"{gain * 100:+.1f} points since germination"
                decisions.append(_decision(ids, ts, epoch, action, slot, bp, words))
                reports.append((epoch + 5, slot, f"{gain * 100:+.1f} pts after 5 ep, {'kept' if keep else 'pruned'}"))
                del life[slot]
                continue
            life[slot] = (bp, step, n, gain)
        free = [s for s in SLOTS if s not in life]
        if free and epoch % 9 == 4 and epoch != rollback_at:
            bp = BLUEPRINTS[grown % len(BLUEPRINTS)]
            grown += 1
            options = [f"{bp} -> {free[0]}: chosen, serves inductor:default (pruned 0, used {grown - 1})"] + [
                f"{other}: ranked lower" for other in BLUEPRINTS if other != bp
            ]
            decisions.append(
                _decision(ids, ts, epoch, Action.GERMINATE, free[0], bp, "accuracy flat for 3 epochs", options)
            )
            reports.append((epoch + 5, free[0], "+0.4 pts after 5 ep, in flight (blending)"))
            life[free[0]] = (bp, 0, 0, 0.0)
        if epoch == rollback_at and life:
            pruned = [f"{slot}/{life[slot][0]}" for slot in sorted(life)]
            out.append(_decision(ids, ts, epoch, Action.ROLLBACK, None, None, "loss went NaN"))
            out.append(
                Rollback(
                    event_id=ids(),
                    ts=ts,
                    source=Subsystem.TOLARIA,
                    reason="loss went NaN",
                    from_epoch=epoch,
                    to_epoch=epoch - 1,
                    recovery_s=0.12,
                    pruned=pruned,
                )
            )
            life.clear()
        out.append(before)
        if decisions:
            out += decisions
            out.append(_seeds(ids, ts + 0.01, epoch, life, outcomes))
        if epoch % 25 == 0:
            out.append(
                LogLine(
                    event_id=ids(),
                    ts=ts,
                    source=Subsystem.ENGINE,
                    level=Level.WARNING,
                    message=f"epoch {epoch}: slow step",
                )
            )
    return out


def _decision(
    ids: _Ids,
    ts: float,
    epoch: int,
    action: Action,
    slot: str | None,
    bp: str | None,
    reason: str,
    options: list[str] | None = None,
) -> ControllerDecision:
    return ControllerDecision(
        event_id=ids(),
        ts=ts,
        source=Subsystem.TAMIYO,
        action=action,
        slot=slot,
        blueprint_id=bp,
        reason=reason,
        epoch=epoch,
        options=options or [],
    )


def _seeds(
    ids: _Ids, ts: float, epoch: int, life: dict[str, tuple[str, int, int, float]], outcomes: dict[str, str]
) -> SeedsReport:
    seeds = []
    for slot in SLOTS:
        if slot in life:
            bp, step, n, gain = life[slot]
            stage = CYCLE[step][0]
            alpha = {SeedStage.BLENDING: (n + 1) / 5, SeedStage.HOLDING: 1.0}.get(stage, 0.0)
            seeds.append(
                SeedHealth(
                    slot=slot,
                    stage=stage,
                    blueprint_id=bp,
                    alpha=min(alpha, 1.0),
                    grad_norm=0.9 - 0.05 * n,
                    gain=gain,
                    epochs_in_stage=n,
                    kernel="compiled inductor:default" if bp != "residual_block" else "eager (faster)",
                    outcome=outcomes.get(slot, ""),
                )
            )
        else:
            seeds.append(
                SeedHealth(
                    slot=slot,
                    stage=SeedStage.DORMANT,
                    blueprint_id=None,
                    alpha=0.0,
                    grad_norm=0.0,
                    gain=None,
                    epochs_in_stage=0,
                    kernel="-",
                    outcome=outcomes.get(slot, ""),
                )
            )
    return SeedsReport(event_id=ids(), ts=ts, source=Subsystem.KASMINA, epoch=epoch, seeds=seeds)
