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
per decision other than WAIT (and per WAIT that explains why growth stopped), then a second SeedsReport when
decisions moved a slot (so the seeds table follows "germinate s0" at once); TrainingStarted comes first,
TrainingFinished last (TrainingFailed instead when the loop dies with an error). The metric is `self.metric`
(the task's: accuracy for mnist1d); every comparison follows its direction.

Splits: the weights train on 4000 - `val_samples` samples; Tamiyo and early stopping read only the
validation split carved from the training samples (data.carve, fixed seed); MNIST-1D's test split is
evaluated each epoch for the dashboard and never reaches a decision.

Stopping: with `epochs` set the run takes exactly that many. Without, it stops on its own once the validation
metric has not improved for `early_stop_epochs` epochs and restores the best epoch's whole state
(architecture, weights, optimizer, controller): a run that knows when it is done. `capture()` and
`restore()` are that state as plain data, the seam a checkpoint writer serialises.

The Trainer is assembled from its parts: core.py (its state, capture and restore), decisions.py (carrying
out Tamiyo's decisions), checkpointing.py (resume and periodic checkpoints) and rollbacks.py; this module is
the epoch loop. Injected faults are the FaultPlan's (faults.py), pause and stop the TrainingControl's
(control.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import msgspec
import torch

from esper_tui.engine.contracts import (
    ControllerDecision,
    EpochCompleted,
    SeedHealth,
    SeedsReport,
    TrainingFailed,
    TrainingFinished,
    TrainingPaused,
    TrainingStarted,
)
from esper_tui.engine.training.checkpointing import Checkpointing
from esper_tui.engine.training.controller import EpochState
from esper_tui.engine.training.decisions import Decisions
from esper_tui.engine.training.faults import FaultKind, InjectedKernelCrash
from esper_tui.engine.training.rollbacks import Rollbacks
from esper_tui.engine.training.seeds import SeedSlot
from esper_tui.engine.training.state import TrainingState
from esper_tui.engine.vocabulary import Action, Level, Subsystem

T = TypeVar("T")

STOP_REQUESTED = "stop requested"


class Trainer(Decisions, Checkpointing, Rollbacks):
    """Trains the host on MNIST-1D, grows seeds as the controller decides, and reports every epoch."""

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

    def _dataset(self) -> str:
        counts = f"{len(self.y_train)} train / {len(self.y_val)} val / {len(self.y_test)} test"
        return f"{self.task.name} ({counts}{', ' + self.task.description if self.task.description else ''})"

    def _run(self) -> TrainingFinished:
        self._resume()
        self._good = self.capture()
        self.emit(
            TrainingStarted(
                source=Subsystem.TOLARIA,
                compile_enabled=self.kernels.compile_enabled,
                compile_backend=self.kernels.backend,
                compile_mode=self.kernels.mode,
                dataset=self._dataset(),
                host=self.host.describe(),
                slots=len(self.host.seed_slots()),
                epochs=self.cfg.epochs,
                device=str(self.device),
                resumed_from_epoch=self.resumed_from_epoch,
                task=self.task.name,
                metric=self.metric,
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
            self.val_metric = self._with_fallback(partial(self._evaluate, self.x_val, self.y_val))[1]
        # a stop may cut an epoch short: the clean-stop checkpoint is the last whole epoch's state
        final = self._good if reason == STOP_REQUESTED else self.capture()
        if ran and final is not None:
            self._checkpoint(final)
        self._close_writer()  # every checkpoint on disk before the run says it has finished
        test = self._with_fallback(partial(self._evaluate, self.x_test, self.y_test, loss=False))[1] if ran else None
        finished = TrainingFinished(
            source=Subsystem.TOLARIA,
            epochs=ran,
            val_metric=self.val_metric,
            best_val_metric=self.best_val_metric if math.isfinite(self.best_val_metric) else self.val_metric,
            best_epoch=self.best_epoch,
            test_metric=test,
            reason=reason,
        )
        self.emit(finished)
        return finished

    def _early_stop_reason(self) -> str:
        """Why to stop now (validation has not improved for early_stop_epochs epochs), or ""."""
        patience = self.cfg.early_stop_epochs
        if not self.early_stop or self.epoch - self.best_epoch < patience:
            return ""
        return f"early stop: validation {self.metric.name} has not improved for {patience} epochs"

    def _keep_epoch(self) -> TrainingState:
        """The epoch passed: capture it once, as the last good state (a rollback's target) and, with early
        stopping on, as the best state when its validation metric is strictly better (a TrainingState is never
        changed once taken, so the two may share it)."""
        improved = self.metric.better(self.val_metric, self.best_val_metric)
        if improved:
            self.best_val_metric, self.best_epoch = self.val_metric, self.epoch
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
        bs = min(self.batch_size, n_train)
        n = n_train // bs * bs  # full batches only: kernels see the batch size they were built for
        order = torch.randperm(n_train, generator=self._shuffle)[:n].to(self.device)
        steps, loss_sum = n // bs, 0.0
        step, attached = self._step, [s for s in slots if s.block is not None]  # fixed within an epoch
        crash = self.faults.due_of(FaultKind.KERNEL_CRASH, self.epoch + 1)
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
        val_loss, val = self._with_fallback(partial(self._evaluate, self.x_val, self.y_val))
        test = self._with_fallback(partial(self._evaluate, self.x_test, self.y_test, loss=False))[1]
        for s in slots:
            s.end_epoch()
        train_loss = loss_sum / max(steps, 1)
        if (nan := self.faults.due_of(FaultKind.NAN_LOSS, self.epoch + 1)) is not None:
            self.faults.fire(nan)
            train_loss = math.nan
        health = self.faults.explode_seed(self.epoch + 1, [s.health(val, self.metric) for s in slots])
        unstable = self.detector.check(train_loss, health)
        if unstable is not None:  # the epoch is undone: nothing of it is reported
            self._roll_back(unstable)
            return True
        self.epoch += 1
        self.val_metric = val
        stages = {s.name: s.stage for s in slots}
        if self.reports is not None:
            self.reports.epoch_done(self.epoch, val, stages)
        health = self._with_outcomes(health)
        self.emit(
            EpochCompleted(
                source=Subsystem.TOLARIA,
                epoch=self.epoch,
                train_loss=train_loss,
                val_loss=val_loss,
                val_metric=val,
                test_metric=test,
                samples_per_s=n / max(train_s, 1e-9),
                epoch_s=time.perf_counter() - t0,
                parameters=self.parameter_count(),
            )
        )
        self.emit(SeedsReport(source=Subsystem.KASMINA, epoch=self.epoch, seeds=health))
        # what Tamiyo sees: validation numbers and the training loss, never the test split's
        offers, slot_shapes = self._offers()
        state = EpochState(
            self.epoch, val, tuple(health), tuple(offers), train_loss=train_loss, slot_shapes=slot_shapes
        )
        moved = False
        for d in self.controller.decide(state):
            if (d.action is Action.WAIT and d.notable) or (d.action is not Action.WAIT and self._apply(d, val)):
                self.emit(
                    ControllerDecision(
                        source=Subsystem.TAMIYO,
                        action=d.action,
                        slot=d.slot,
                        blueprint_id=d.blueprint_id,
                        reason=d.reason,
                        epoch=self.epoch,
                        options=list(d.options),
                    )
                )
                moved = moved or d.action is not Action.WAIT
                if self.reports is not None:
                    self.reports.decided(self.epoch, d, val)
        if moved:  # the slots as the decisions left them, not an epoch later ("germinate s0" beside a DORMANT s0)
            self.emit(SeedsReport(source=Subsystem.KASMINA, epoch=self.epoch, seeds=self._after(health, slots, val)))
        good = self._keep_epoch()
        every = self.cfg.checkpoint_every_epochs
        if every and self.epoch % every == 0 and self._checkpoint_due():
            self._checkpoint(good)
        return True

    def _with_outcomes(self, health: list[SeedHealth]) -> list[SeedHealth]:
        """Each slot's report with its latest field report's outcome (the seeds panel's note)."""
        if self.reports is None:
            return health
        latest = self.reports.latest
        return [msgspec.structs.replace(h, outcome=latest[h.slot].outcome()) if h.slot in latest else h for h in health]

    def _after(self, before: list[SeedHealth], slots: list[SeedSlot], val: float) -> list[SeedHealth]:
        """The report again once decisions moved slots: a slot whose stage did not change keeps the epoch's own
        entry (its gradient flags included, which the alert rules count), a moved one is reported afresh."""
        was = {h.slot: h for h in before}
        fresh = self._with_outcomes([s.health(val, self.metric) for s in slots])
        return [was[h.slot] if h.slot in was and was[h.slot].stage is h.stage else h for h in fresh]

    # ------------------------------------------------------------------ steps

    def _step(self, xb: torch.Tensor, yb: torch.Tensor, steps_per_epoch: int, attached: list[SeedSlot]) -> float:
        """One optimizer step: each TRAINING seed's loss in its own shadow pass, into its own parameters only (the
        host never sees it: host.SlottedHost.shadowing), then the host's loss through the live network. `attached` are
        the slots holding a seed (the others have nothing to measure or ramp)."""
        self.optimizer.zero_grad(set_to_none=True)
        for s in attached:
            if s.shadow_trains and s.block is not None:
                params = list(s.block.parameters())
                if params:
                    with self.host.shadowing(s):
                        torch.autograd.backward(self.task.loss(self.host(xb), yb), inputs=params)
        loss = self.task.loss(self.host(xb), yb)
        torch.autograd.backward(loss)  # Tensor.backward, but typed
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
        """Loss (NaN when not asked for) and the task's metric on one split, computed over the whole split's
        outputs, which come in training-sized batches (the shapes compiled kernels know)."""
        self.host.eval()
        bs = self.batch_size
        try:
            out = torch.cat([self.host(x[i : i + bs]) for i in range(0, len(y), bs)])
        finally:
            self.host.train()
        return (float(self.task.loss(out, y)) if loss else math.nan), self.task.metric(out, y)

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
