"""Tolaria: the training loop that hosts Kasmina's seeds and carries out Tamiyo's decisions.

`Trainer.run()` blocks; the engine runs it in a process of its own (training/process.py), so the dashboard
and the engine's tasks never hold the GIL it needs. The loop talks to the outside only through `emit`
(events) and `TrainingControl` (pause / stop), never through UI objects; benchmarks and tests run it in
their own thread.

Threads (torch intra-op): measured on 2 cores, the bare host epoch takes ~24 ms with 1 thread and ~25 ms
with 2; with a conv1d seed grafted, 157 ms vs 113 ms. Either is far below a second, while the event loop,
the UI and the forge's compiles need the same cores, so the default is half the machine's cores, at least
1 and at most 2 (1 on the 2-core reference box). The previous setting is restored when `run()` returns.

Per epoch it emits EpochCompleted (tolaria), SeedsReport (kasmina) and one ControllerDecision (tamiyo)
per decision other than WAIT (and per WAIT that explains why growth stopped); TrainingStarted comes first,
TrainingFinished last (TrainingFailed instead when the loop dies with an error). Accuracies are fractions
in [0, 1].

Splits: the weights train on 4000 - `val_samples` samples; Tamiyo and early stopping read only the
validation split carved from the training samples (data.carve, fixed seed); MNIST-1D's test split is
evaluated each epoch for the dashboard and never reaches a decision.

Stopping: with `epochs` set the run takes exactly that many. Without, it stops on its own once validation
accuracy has not improved for `early_stop_epochs` epochs and restores the best epoch's whole state
(architecture, weights, optimizer, controller): a run that knows when it is done. `capture()` and
`restore()` are that state as plain data, the seam a checkpoint writer serialises.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import torch
import torch.nn.functional as F
from torch import nn

from esper_tui.engine.config import TrainingConfig
from esper_tui.engine.contracts import (
    AnyEvent,
    ControllerDecision,
    EpochCompleted,
    LogLine,
    Rollback,
    SeedHealth,
    SeedsReport,
    TrainingFailed,
    TrainingFinished,
    TrainingPaused,
    TrainingStarted,
)
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.kernels.compiled import kernel_threads
from esper_tui.engine.training.controller import Controller, ControllerState, Decision, EpochState
from esper_tui.engine.training.data import DEFAULT_DATA_SEED, Splits, carve, load_mnist1d
from esper_tui.engine.training.faults import Fault, FaultKind, FaultPlan, InjectedKernelCrash, InstabilityDetector
from esper_tui.engine.training.host import HostNetwork
from esper_tui.engine.training.kernel_source import (
    EAGER_LABEL,
    Kernel,
    KernelOffer,
    KernelSource,
    KernelUnavailable,
    eager_kernel,
)
from esper_tui.engine.training.reports import FieldReports, PendingDecision, reports_path
from esper_tui.engine.training.seeds import MAIN_LINE, BlendSchedule, SeedSlot, SlotPolicy, SlotState
from esper_tui.engine.vocabulary import Action, Level, SeedStage, Subsystem

if TYPE_CHECKING:  # checkpoint.py imports this module
    from esper_tui.engine.training.checkpoint import Writer

T = TypeVar("T")


class TrainingControl:
    """Pause and stop, shared between the engine (commands) and the training thread.

    A Condition rather than bare Events: pause/resume/stop and the loop's waits then never race (a stop
    always wakes a paused loop, and a pause can never swallow a stop).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._paused = False
        self._stopped = False
        self._followers: list[Callable[[bool, bool], None]] = []

    def follow(self, follower: Callable[[bool, bool], None]) -> None:
        """Call `follower(paused, stopped)` now and after every change: how a trainer in a process of its own
        mirrors this control (training.process)."""
        self._followers.append(follower)
        follower(self._paused, self._stopped)

    def _changed(self) -> None:
        for follower in self._followers:
            follower(self._paused, self._stopped)

    def set_paused(self, paused: bool) -> None:
        with self._cond:
            self._paused = paused
            self._cond.notify_all()
        self._changed()

    def pause(self) -> None:
        self.set_paused(True)

    def resume(self) -> None:
        self.set_paused(False)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._changed()

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def stopped(self) -> bool:
        return self._stopped

    def wait_while_paused(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self._paused or self._stopped)

    def sleep(self, seconds: float) -> bool:
        """Sleep up to `seconds`, waking at once on stop; True if stopped."""
        with self._cond:
            return self._cond.wait_for(lambda: self._stopped, timeout=max(0.0, seconds))


STOP_REQUESTED = "stop requested"
HOST_GROUP = ""
"""The optimizer group of the host's own weights in TrainingState.groups (the others name their slot)."""


@dataclasses.dataclass(frozen=True)
class TrainingState:
    """The whole training state as plain data: what a best-epoch restore puts back, and what a checkpoint
    would write (tensors for safetensors, the rest msgpack-able)."""

    epoch: int
    host: dict[str, torch.Tensor]
    slots: tuple[SlotState, ...]
    groups: tuple[str, ...]  # the optimizer's param groups in order: HOST_GROUP or a slot name
    optimizer: dict[str, Any]  # torch.optim state_dict, deep-copied
    controller: ControllerState
    shuffle_rng: torch.Tensor
    torch_rng: torch.Tensor  # the global CPU generator: dropout draws from it
    germinations: int
    best_val_accuracy: float
    best_epoch: int
    # decisions awaiting their field report: a resume awaits them again; restore() leaves the reports alone
    # (a rollback reports what it undid, and an early stop ends the run)
    pending_reports: tuple[PendingDecision, ...] = ()


def _cloned(state_dict: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state_dict with its tensors cloned and its lists copied: what copy.deepcopy gives, at an
    eighth of its cost (measured: 0.06 against 0.45 ms for the host's Adam), and capture() runs every epoch."""

    def copied(value: Any) -> Any:
        return value.clone() if isinstance(value, torch.Tensor) else list(value) if isinstance(value, list) else value

    return {
        "state": {i: {k: copied(v) for k, v in entry.items()} for i, entry in state_dict["state"].items()},
        "param_groups": [{k: copied(v) for k, v in group.items()} for group in state_dict["param_groups"]],
    }


class Trainer:
    """Trains the host on MNIST-1D, grows seeds as the controller decides, and reports every epoch."""

    # loaded by run(), in the training thread, so constructing a Trainer never blocks the event loop
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def __init__(
        self,
        cfg: TrainingConfig,
        catalog: Catalog,
        kernels: KernelSource,
        emit: Callable[[AnyEvent], None],
        control: TrainingControl | None = None,
        cache_dir: Path | None = None,
        *,
        threads: int | None = None,
        data_seed: int = DEFAULT_DATA_SEED,
        schedule: BlendSchedule = BlendSchedule.COSINE,
        splits: Splits | None = None,
        early_stop: bool | None = None,
        state_dir: Path | None = None,
        signing_key: bytes | None = None,
        faults: FaultPlan | None = None,
    ) -> None:
        """`splits` replaces the carved MNIST-1D splits (benchmarks load them once; tests poison them).
        `early_stop`: None stops early only without an epoch budget; True also within one (then the best
        epoch is restored at the budget's end too); False never. With `state_dir` and `signing_key` the run
        resumes from its newest valid checkpoint, writes signed ones, and Tamiyo's field reports go there.
        `faults`: chaos testing (--inject-fault), each fault ending in a rollback."""
        self.cfg = cfg
        self.catalog = catalog
        self.kernels = kernels
        self.emit = emit
        self.control = control or TrainingControl()
        self.cache_dir = cache_dir
        self.threads = threads if threads is not None else kernel_threads()
        self.data_seed = data_seed
        self.splits = splits
        self.early_stop = cfg.epochs is None if early_stop is None else early_stop
        self.controller = Controller(cfg, catalog)
        with torch.random.fork_rng(devices=[]):  # deterministic init without touching the global RNG
            torch.manual_seed(cfg.seed)
            self.host = HostNetwork(
                hidden=cfg.hidden, slots=cfg.slots, policy=SlotPolicy.from_config(cfg, schedule), dropout=cfg.dropout
            )
        self.optimizer = torch.optim.Adam(self.host.host_parameters(), lr=cfg.learning_rate)
        self._shuffle = torch.Generator().manual_seed(cfg.seed)
        self._germinations = 0
        self.epoch = 0
        self.val_accuracy = 0.0  # the latest epoch's
        self.best_val_accuracy = -1.0
        self.best_epoch = 0
        self._best: TrainingState | None = None  # kept only while early stopping is on
        self.state_dir = state_dir
        self.signing_key = signing_key
        self.faults = faults or FaultPlan()
        self.detector = InstabilityDetector(cfg.loss_spike_factor, cfg.loss_median_window)
        self.reports = FieldReports(reports_path(state_dir), cfg.report_after_epochs) if state_dir is not None else None
        self.resumed_from_epoch: int | None = None
        self.rollbacks = 0
        self._good: TrainingState | None = None  # the newest epoch that passed the instability check
        self._last_rollback_to: int | None = None
        self._writer: Writer | None = None  # started with the first checkpoint, closed when run() returns
        self._checkpointed_at = -math.inf  # monotonic time of the last checkpoint handed to the writer

    # ------------------------------------------------------------------ run

    def run(self) -> TrainingFinished:
        """Train until the run is done (budget, early stop) or stop is requested; returns the TrainingFinished
        it emitted. The global torch RNG (dropout's) is seeded from cfg.seed for the run and put back after,
        so a run is reproducible and leaves the process's RNG as it found it."""
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.cfg.seed)
                return self._run()
        except Exception as exc:
            self.emit(TrainingFailed(source=Subsystem.TOLARIA, error=f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            self._close_writer()
            torch.set_num_threads(previous_threads)

    def _load(self) -> Splits:
        if self.splits is None:
            self.splits = carve(load_mnist1d(self.data_seed, self.cache_dir), self.cfg.val_samples)
        sp = self.splits
        self.x_train, self.y_train = torch.from_numpy(sp.x_train), torch.from_numpy(sp.y_train)
        self.x_val, self.y_val = torch.from_numpy(sp.x_val), torch.from_numpy(sp.y_val)
        self.x_test, self.y_test = torch.from_numpy(sp.x_test), torch.from_numpy(sp.y_test)
        return sp

    def _run(self) -> TrainingFinished:
        sp = self._load()
        self._resume()
        self._good = self.capture()
        self.emit(
            TrainingStarted(
                source=Subsystem.TOLARIA,
                compile_enabled=self.kernels.compile_enabled,
                compile_backend=self.kernels.backend,
                compile_mode=self.kernels.mode,
                dataset=f"mnist1d ({sp.describe()}, seed {self.data_seed})",
                host=self.host.describe(),
                slots=self.cfg.slots,
                epochs=self.cfg.epochs,
                device="cpu",
                resumed_from_epoch=self.resumed_from_epoch,
            )
        )
        reason = ""
        while not reason:
            if self.cfg.epochs is not None and self.epoch >= self.cfg.epochs:
                reason = f"epoch budget reached ({self.cfg.epochs} epochs)"
                break
            if self.control.paused and not self.control.stopped:
                self.emit(TrainingPaused(source=Subsystem.TOLARIA, paused=True))
                self.control.wait_while_paused()
                if not self.control.stopped:
                    self.emit(TrainingPaused(source=Subsystem.TOLARIA, paused=False))
            if self.control.stopped or not self._epoch():
                reason = STOP_REQUESTED
                break
            reason = self._early_stop_reason()
            if not reason and self.cfg.epoch_delay_s > 0 and self.control.sleep(self.cfg.epoch_delay_s):
                reason = STOP_REQUESTED
        ran = self.epoch
        # a run that ended on its own ends on its best epoch; a stopped one stays as it was (a clean stop)
        if reason != STOP_REQUESTED and self._best is not None and self._best.epoch != self.epoch:
            self.restore(self._best)
            reason += f"; the best epoch, {self._best.epoch}, restored"
            self.val_accuracy = self._with_fallback(partial(self._evaluate, self.x_val, self.y_val))[1]
        # a stop may cut an epoch short: the clean-stop checkpoint is the last whole epoch's state
        final = self._good if reason == STOP_REQUESTED else self.capture()
        if ran and final is not None:
            self._checkpoint(final)
        self._close_writer()  # every checkpoint on disk before the run says it has finished
        test = self._with_fallback(partial(self._evaluate, self.x_test, self.y_test, loss=False))[1] if ran else None
        finished = TrainingFinished(
            source=Subsystem.TOLARIA,
            epochs=ran,
            val_accuracy=self.val_accuracy,
            best_val_accuracy=max(self.best_val_accuracy, 0.0),
            best_epoch=self.best_epoch,
            test_accuracy=test,
            reason=reason,
        )
        self.emit(finished)
        return finished

    def _early_stop_reason(self) -> str:
        """Why to stop now (validation has not improved for early_stop_epochs epochs), or ""."""
        patience = self.cfg.early_stop_epochs
        if not self.early_stop or self.epoch - self.best_epoch < patience:
            return ""
        return f"early stop: validation accuracy has not improved for {patience} epochs"

    def _keep_epoch(self) -> TrainingState:
        """The epoch passed: capture it once, as the last good state (a rollback's target) and, with early
        stopping on, as the best state when its validation accuracy is strictly better (a TrainingState is never
        changed once taken, so the two may share it)."""
        improved = self.val_accuracy > self.best_val_accuracy
        if improved:
            self.best_val_accuracy, self.best_epoch = self.val_accuracy, self.epoch
        self._good = good = self.capture()
        if improved and self.early_stop:
            self._best = good
        return good

    def _epoch(self) -> bool:
        """One epoch, its reports and decisions; False if a stop cut it short (nothing is reported)."""
        t0 = time.perf_counter()
        slots = self.host.seed_slots()
        for s in slots:
            s.begin_epoch()
        self.host.train()
        n_train = len(self.y_train)
        bs = min(self.cfg.batch_size, n_train)
        n = n_train // bs * bs  # full batches only: kernels see the batch size they were built for
        order = torch.randperm(n_train, generator=self._shuffle)[:n]
        steps, loss_sum = n // bs, 0.0
        step, attached = self._step, [s for s in slots if s.block is not None]  # fixed within an epoch
        crash = self._due(FaultKind.KERNEL_CRASH)
        try:
            for i in range(steps):
                if self.control.stopped:
                    return False
                if crash is not None and i == steps // 2:
                    self.faults.fire(crash)
                    raise InjectedKernelCrash(f"injected fault {crash}")
                idx = order[i * bs : (i + 1) * bs]
                loss_sum += self._with_fallback(partial(step, self.x_train[idx], self.y_train[idx], steps, attached))
        except InjectedKernelCrash as exc:
            self._roll_back(f"kernel crash in epoch {self.epoch + 1}: {exc}")
            return True
        train_s = time.perf_counter() - t0
        val_loss, acc = self._with_fallback(partial(self._evaluate, self.x_val, self.y_val))
        test_acc = self._with_fallback(partial(self._evaluate, self.x_test, self.y_test, loss=False))[1]
        for s in slots:
            s.end_epoch()
        train_loss = loss_sum / max(steps, 1)
        if (nan := self._due(FaultKind.NAN_LOSS)) is not None:
            self.faults.fire(nan)
            train_loss = math.nan
        health = self._inject_explosion([s.health(acc) for s in slots])
        unstable = self.detector.check(train_loss, health)
        if unstable is not None:  # the epoch is undone: nothing of it is reported
            self._roll_back(unstable)
            return True
        self.epoch += 1
        self.val_accuracy = acc
        stages = {s.name: s.stage for s in slots}
        if self.reports is not None:
            self.reports.epoch_done(self.epoch, acc, stages)
            latest = self.reports.latest
            health = [
                msgspec.structs.replace(h, outcome=latest[h.slot].outcome()) if h.slot in latest else h for h in health
            ]
        self.emit(
            EpochCompleted(
                source=Subsystem.TOLARIA,
                epoch=self.epoch,
                train_loss=train_loss,
                val_loss=val_loss,
                val_accuracy=acc,
                test_accuracy=test_acc,
                samples_per_s=n / max(train_s, 1e-9),
                epoch_s=time.perf_counter() - t0,
            )
        )
        self.emit(SeedsReport(source=Subsystem.KASMINA, epoch=self.epoch, seeds=health))
        # what Tamiyo sees: validation numbers and the training loss, never test_acc
        state = EpochState(self.epoch, acc, tuple(health), tuple(self._offers()), train_loss=train_loss)
        for d in self.controller.decide(state):
            if (d.action is Action.WAIT and d.notable) or (d.action is not Action.WAIT and self._apply(d, acc)):
                self.emit(
                    ControllerDecision(
                        source=Subsystem.TAMIYO,
                        action=d.action,
                        slot=d.slot,
                        blueprint_id=d.blueprint_id,
                        reason=d.reason,
                    )
                )
                if self.reports is not None:
                    self.reports.decided(self.epoch, d, acc)
        good = self._keep_epoch()
        every = self.cfg.checkpoint_every_epochs
        if every and self.epoch % every == 0 and self._checkpoint_due():
            self._checkpoint(good)
        return True

    # ------------------------------------------------------------------ checkpoints and rollback

    def _resume(self) -> None:
        """Continue from the newest checkpoint that verifies; each newer torn or tampered one is a warning."""
        if self.state_dir is None or self.signing_key is None:
            return
        from esper_tui.engine.training import checkpoint as ckpt  # checkpoint.py imports this module

        found, skipped = ckpt.latest_valid(ckpt.checkpoints_dir(self.state_dir), self.signing_key)
        for bad in skipped:
            self._log(Level.WARNING, f"checkpoint skipped: {bad.reason}", Subsystem.TOLARIA)
        if found is None:
            return
        saved, state = found
        self.restore(state)
        self.resumed_from_epoch, self.val_accuracy = saved.epoch, saved.val_accuracy
        if self.reports is not None:
            self.reports.resumed(state.epoch, state.pending_reports)

    def _checkpoint_due(self) -> bool:
        """A periodic checkpoint waits until `checkpoint_min_interval_s` has passed since the last one: host-only
        epochs of ~27 ms checkpointed every 5 epochs are 7 fsynced checkpoints a second (benchmarks.dashboard:
        0.957x a bare loop with them, 0.967x without, one 9-pair run each)."""
        return time.monotonic() - self._checkpointed_at >= self.cfg.checkpoint_min_interval_s

    def _checkpoint(self, state: TrainingState) -> None:
        """Hand `state` to the checkpoint writer's thread (signed, written atomically, old ones pruned there); a
        full disk is a warning, not a dead run."""
        if self.state_dir is None or self.signing_key is None:
            return
        self._checkpointed_at = time.monotonic()
        if self._writer is None:
            from esper_tui.engine.training import checkpoint as ckpt  # checkpoint.py imports this module

            self._writer = ckpt.Writer(
                ckpt.checkpoints_dir(self.state_dir), self.signing_key, self.cfg.keep_checkpoints, self._write_failed
            )
        self._writer.submit(state, self.val_accuracy)

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _write_failed(self, epoch: int, exc: Exception) -> None:
        """From the writer's thread (emit is thread-safe)."""
        what = str(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
        self._log(Level.WARNING, f"checkpoint of epoch {epoch} failed: {what}", Subsystem.TOLARIA)

    def _due(self, kind: FaultKind) -> Fault | None:
        """The injected fault of `kind` due in the epoch about to finish, if any."""
        return next((f for f in self.faults.due(self.epoch + 1) if f.kind is kind), None)

    def _inject_explosion(self, health: list[SeedHealth]) -> list[SeedHealth]:
        """A due seed-explode fault marks the first training seed's gradients as exploding (it waits for one)."""
        fault = self._due(FaultKind.SEED_EXPLODE)
        target = next((i for i, h in enumerate(health) if h.stage is SeedStage.TRAINING), None)
        if fault is None or target is None:
            return health
        self.faults.fire(fault)
        health = list(health)
        health[target] = msgspec.structs.replace(health[target], exploding=True, grad_norm=1e6)
        return health

    def _roll_back(self, reason: str) -> None:
        """Tamiyo's emergency: restore the last good epoch, prune and embargo the seeds grafted since, say so.

        The data order is reshuffled so the replay is not the same epoch again; instability that persists
        right after a rollback to the same epoch is let through (with a warning) rather than looped on."""
        good = self._good
        assert good is not None, "a rollback before the first capture"
        failed = self.epoch + 1
        if self._last_rollback_to == good.epoch:
            self._log(
                Level.WARNING,
                f"epoch {failed} unstable again after a rollback to {good.epoch} ({reason}): continuing",
                Subsystem.TOLARIA,
            )
            self._last_rollback_to = None
            return
        t0 = time.perf_counter()
        before = {s.name: s.blueprint_id for s in self.host.seed_slots()}
        self.restore(good)
        grafted = [
            (s.name, bp) for s in self.host.seed_slots() if (bp := before[s.name]) is not None and bp != s.blueprint_id
        ]
        memory = self.controller.s
        for slot, bp in grafted:
            pair = f"{slot}/{bp}"
            memory.failures[pair] = memory.failures.get(pair, 0) + 1
            memory.retry_after[pair] = good.epoch + (max(1, self.cfg.embargo_epochs) << (memory.failures[pair] - 1))
        self.rollbacks += 1
        self._last_rollback_to = good.epoch
        self._shuffle.manual_seed(self.cfg.seed + self.rollbacks)
        if self.reports is not None:
            self.reports.rolled_back(good.epoch, self.val_accuracy)
        recovery_s = time.perf_counter() - t0
        self.emit(
            ControllerDecision(
                source=Subsystem.TAMIYO, action=Action.ROLLBACK, slot=None, blueprint_id=None, reason=reason
            )
        )
        self.emit(
            Rollback(
                source=Subsystem.TOLARIA,
                reason=reason,
                from_epoch=failed,
                to_epoch=good.epoch,
                recovery_s=recovery_s,
                pruned=[f"{slot}/{bp}" for slot, bp in grafted],
            )
        )

    # ------------------------------------------------------------------ state

    def capture(self) -> TrainingState:
        """The whole training state as plain data (tensors cloned): restore() puts it back exactly."""
        slots = self.host.seed_slots()
        owner = {id(p): s.name for s in slots if s.block is not None for p in s.block.parameters()}
        groups = tuple(owner.get(id(g["params"][0]), HOST_GROUP) for g in self.optimizer.param_groups)
        return TrainingState(
            epoch=self.epoch,
            host=self.host.host_weights(),
            slots=tuple(s.capture() for s in slots),
            groups=groups,
            optimizer=_cloned(self.optimizer.state_dict()),
            controller=self.controller.state(),
            shuffle_rng=self._shuffle.get_state(),
            torch_rng=torch.get_rng_state(),
            germinations=self._germinations,
            best_val_accuracy=self.best_val_accuracy,
            best_epoch=self.best_epoch,
            pending_reports=tuple(self.reports.pending) if self.reports is not None else (),
        )

    def restore(self, state: TrainingState) -> None:
        """Become `state`: host and seed weights, each slot's stage, the optimizer, the controller, the RNG.

        Seeds are rebuilt from the catalog; a seed still attached keeps its kernel, another loads one
        (eager when its compiled kernel can no longer be had, with a warning)."""
        self.host.load_host_weights(state.host)
        for slot, saved in zip(self.host.seed_slots(), state.slots, strict=True):
            if saved.blueprint_id is None or saved.weights is None:
                slot.restore(saved, None, None, "-")
                continue
            if slot.block is not None and slot.blueprint_id == saved.blueprint_id and slot.kernel is not None:
                block, kernel, label = slot.block, slot.kernel, slot.kernel_label
            else:
                block = self.catalog.get(saved.blueprint_id).build(self.host.in_features, self.host.hidden)
                loaded = self._kernel_for(slot, saved.blueprint_id, block)
                if loaded is None:
                    kernel, label = eager_kernel, EAGER_LABEL
                else:
                    kernel, label = loaded[0], loaded[1].label
            slot.restore(saved, block, kernel, label)
        by_name = {s.name: s for s in self.host.seed_slots()}
        self.optimizer = torch.optim.Adam(self.host.host_parameters(), lr=self.cfg.learning_rate)
        for name in state.groups:
            if name == HOST_GROUP:
                continue
            seed = by_name[name].block
            assert seed is not None, f"optimizer group for {name} without a seed"
            self.optimizer.add_param_group({"params": list(seed.parameters())})
        self.optimizer.load_state_dict(copy.deepcopy(state.optimizer))
        self.controller.restore(state.controller)
        self._shuffle.set_state(state.shuffle_rng)
        torch.set_rng_state(state.torch_rng)
        self._germinations = state.germinations
        self.epoch = state.epoch
        self.best_val_accuracy, self.best_epoch = state.best_val_accuracy, state.best_epoch

    # ------------------------------------------------------------------ steps

    def _step(self, xb: torch.Tensor, yb: torch.Tensor, steps_per_epoch: int, attached: list[SeedSlot]) -> float:
        """One optimizer step: host loss plus the TRAINING seeds' isolated auxiliary losses. `attached` are
        the slots holding a seed (the others have nothing to measure or ramp)."""
        self.optimizer.zero_grad(set_to_none=True)
        logits, aux = self.host.forward_train(xb)
        loss = F.cross_entropy(logits, yb)
        total = loss
        for shadow in aux.values():
            total = total + F.cross_entropy(shadow, yb)
        torch.autograd.backward(total)  # Tensor.backward, but typed
        for s in attached:
            s.record_gradients()
        host_loss = float(loss.detach())
        if math.isfinite(host_loss):  # a non-finite host loss would poison Adam's moments: skip the step
            self.optimizer.step()
        for s in attached:
            s.step(1.0 / steps_per_epoch)
        return host_loss

    @torch.no_grad()
    def _evaluate(self, x: torch.Tensor, y: torch.Tensor, *, loss: bool = True) -> tuple[float, float]:
        """Loss (NaN when not asked for) and accuracy on one split, in training-sized batches (the shapes
        compiled kernels know)."""
        self.host.eval()
        bs, total, loss_sum, correct = self.cfg.batch_size, len(y), 0.0, 0
        for i in range(0, total, bs):
            xb, yb = x[i : i + bs], y[i : i + bs]
            logits = self.host(xb)
            if loss:
                loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
        self.host.train()
        return (loss_sum / total if loss else math.nan), correct / total

    def _with_fallback(self, fn: Callable[[], T]) -> T:
        """Seed 003's kernel-failure path: if a step fails while compiled kernels run, switch those seeds
        to eager (same module, same maths), say so, and retry once. Without compiled seeds, re-raise."""
        try:
            return fn()
        except Exception as exc:
            compiled = [s for s in self.host.seed_slots() if s.compiled]
            if not compiled:
                raise
            reason = f"{type(exc).__name__}: {exc}"
            for s in compiled:
                self._log(
                    Level.WARNING,
                    f"{s.name} ({s.blueprint_id}): compiled kernel failed, running eagerly: {reason}",
                    Subsystem.KASMINA,
                )
                s.fall_back_to_eager(reason)
            return fn()

    # ------------------------------------------------------------------ decisions

    def _offers(self) -> list[KernelOffer]:
        try:
            return self.kernels.offers()
        except Exception as exc:  # the library being unreadable must not stop training
            self._log(Level.WARNING, f"kernel offers unavailable: {type(exc).__name__}: {exc}", Subsystem.KASMINA)
            return []

    def _apply(self, d: Decision, accuracy: float) -> bool:
        """Carry out a decision on its slot; False (with a warning) if it could not be done."""
        slot = self.host.slot(d.slot) if d.slot is not None else None
        if slot is None:
            return False
        if d.action is Action.GERMINATE and d.blueprint_id is not None:
            return self._germinate(slot, d.blueprint_id, accuracy)
        if d.action is Action.ADVANCE:
            slot.advance()
        elif d.action is Action.FOSSILIZE:
            slot.fossilize()
        elif d.action is Action.PRUNE:
            self._forget(slot.prune())
        return True

    def _kernel_for(self, slot: SeedSlot, blueprint_id: str, block: nn.Module) -> tuple[Kernel, KernelOffer] | None:
        """A probed kernel for a new seed module: the source's (compiled or eager by choice), eager when a
        compiled one fails its probe; None (with the reason logged) when neither runs."""
        try:
            kernel, offer = self.kernels.load(blueprint_id)
        except KernelUnavailable as exc:
            self._log(Level.WARNING, f"germinate {slot.name} <- {blueprint_id} failed: {exc}", Subsystem.KASMINA)
            return None
        error = self._probe(kernel, block)
        if error is not None and offer.compiled:
            self._log(
                Level.WARNING,
                f"{slot.name} ({blueprint_id}): compiled kernel failed its probe, running eagerly: {error}",
                Subsystem.KASMINA,
            )
            kernel, offer = (
                eager_kernel,
                dataclasses.replace(offer, label=EAGER_LABEL, why=""),  # the warning says why,
            )
            error = self._probe(kernel, block)
        if error is not None:
            self._log(
                Level.ERROR, f"germinate {slot.name} <- {blueprint_id} failed its probe: {error}", Subsystem.KASMINA
            )
            return None
        return kernel, offer

    def _germinate(self, slot: SeedSlot, blueprint_id: str, accuracy: float) -> bool:
        if blueprint_id not in self.catalog:
            self._log(
                Level.WARNING, f"germinate {slot.name} <- {blueprint_id} failed: not in the catalog", Subsystem.KASMINA
            )
            return False
        self._germinations += 1
        with torch.random.fork_rng(devices=[]):  # each seed's init depends only on cfg.seed and its ordinal
            torch.manual_seed(self.cfg.seed * 1_000_003 + self._germinations)
            block = self.catalog.get(blueprint_id).build(self.host.in_features, self.host.hidden)
        loaded = self._kernel_for(slot, blueprint_id, block)
        if loaded is None:
            return False
        kernel, offer = loaded
        note = "faster" if offer.eager_by_choice else ""
        slot.germinate(blueprint_id, block, kernel, offer.label, accuracy, note)
        self.optimizer.add_param_group({"params": list(block.parameters())})
        if offer.why:
            self._log(Level.INFO, f"{slot.name} <- {blueprint_id} runs {offer.why}", Subsystem.KASMINA)
        return True

    def graft(self, slot_name: str, blueprint_id: str) -> None:
        """Put a seed straight into FOSSILIZED before training starts (legal transitions only): how a
        grown network's final architecture is built static, trained from epoch 0, for comparison."""
        slot = self.host.slot(slot_name)
        if not self._germinate(slot, blueprint_id, 0.0):
            raise KernelUnavailable(f"{blueprint_id}: cannot graft into {slot_name} (see the log)")
        while slot.stage in MAIN_LINE:
            slot.advance()
        slot.fossilize()

    def parameter_count(self) -> int:
        """Parameters of the network as it computes: the host and every seed whose output it adds."""
        seeds = [s.block for s in self.host.seed_slots() if s.contributes and s.block is not None]
        params = [*self.host.host_parameters(), *(p for m in seeds for p in m.parameters())]
        return sum(p.numel() for p in params)

    def architecture(self) -> list[tuple[str, str]]:
        """(slot, blueprint) of every seed the network's output depends on."""
        return [(s.name, s.blueprint_id) for s in self.host.seed_slots() if s.contributes and s.blueprint_id]

    def _probe(self, kernel: Kernel, block: nn.Module) -> str | None:
        """What GERMINATED certifies: one no-grad call at the training batch size gives [B, hidden], finite.
        Returns the problem, or None."""
        x = torch.zeros(self.cfg.batch_size, self.host.in_features)
        try:
            with torch.no_grad():
                y = kernel(block, x)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        want = (self.cfg.batch_size, self.host.hidden)
        if tuple(y.shape) != want:
            return f"output shape {tuple(y.shape)}, expected {want}"
        return None if bool(torch.isfinite(y).all()) else "non-finite output"

    def _forget(self, params: list[nn.Parameter]) -> None:
        """Remove a pruned seed's parameter group and Adam state: nothing of it stays alive."""
        ids = {id(p) for p in params}
        self.optimizer.param_groups[:] = [
            g for g in self.optimizer.param_groups if not any(id(p) in ids for p in g["params"])
        ]
        for p in params:
            self.optimizer.state.pop(p, None)

    def _log(self, level: Level, message: str, source: Subsystem) -> None:
        self.emit(LogLine(source=source, level=level, message=message))
