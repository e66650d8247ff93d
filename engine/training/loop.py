"""Tolaria: the training loop that hosts Kasmina's seeds and carries out Tamiyo's decisions.

`Trainer.run()` blocks; the engine runs it in a worker thread (`asyncio.to_thread`). torch releases the
GIL inside its ops, so the event loop stays responsive. The loop talks to the outside only through
`emit` (events) and `TrainingControl` (pause / stop), never through UI objects.

Threads (torch intra-op): measured on 2 cores, the bare host epoch takes ~24 ms with 1 thread and ~25 ms
with 2; with a conv1d seed grafted, 157 ms vs 113 ms. Either is far below a second, while the event loop,
the UI and the forge's compiles need the same cores, so the default is half the machine's cores, at least
1 and at most 2 (1 on the 2-core reference box). The previous setting is restored when `run()` returns.

Per epoch it emits EpochCompleted (tolaria), SeedsReport (kasmina) and one ControllerDecision (tamiyo)
per decision other than WAIT; TrainingStarted comes first, TrainingFinished last (TrainingFailed instead
when the loop dies with an error). Accuracies are fractions in [0, 1]. The validation set is MNIST-1D's
test split (the split the paper reports).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from esper_tui.engine.config import TrainingConfig
from esper_tui.engine.contracts import (
    AnyEvent,
    ControllerDecision,
    EpochCompleted,
    LogLine,
    SeedsReport,
    TrainingFailed,
    TrainingFinished,
    TrainingPaused,
    TrainingStarted,
)
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.kernels.compiled import kernel_threads
from esper_tui.engine.training.controller import Controller, Decision, EpochState
from esper_tui.engine.training.data import DEFAULT_DATA_SEED, load_mnist1d
from esper_tui.engine.training.host import HostNetwork
from esper_tui.engine.training.kernel_source import (
    EAGER_LABEL,
    Kernel,
    KernelOffer,
    KernelSource,
    KernelUnavailable,
    eager_kernel,
)
from esper_tui.engine.training.seeds import BlendSchedule, SeedSlot, SlotPolicy
from esper_tui.engine.vocabulary import Action, Level, Subsystem

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

    def set_paused(self, paused: bool) -> None:
        with self._cond:
            self._paused = paused
            self._cond.notify_all()

    def pause(self) -> None:
        self.set_paused(True)

    def resume(self) -> None:
        self.set_paused(False)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

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


class Trainer:
    """Trains the host on MNIST-1D, grows seeds as the controller decides, and reports every epoch."""

    # loaded by run(), in the training thread, so constructing a Trainer never blocks the event loop
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor

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
    ) -> None:
        self.cfg = cfg
        self.catalog = catalog
        self.kernels = kernels
        self.emit = emit
        self.control = control or TrainingControl()
        self.cache_dir = cache_dir
        self.threads = threads if threads is not None else kernel_threads()
        self.data_seed = data_seed
        self.controller = Controller(cfg, catalog)
        with torch.random.fork_rng(devices=[]):  # deterministic init without touching the global RNG
            torch.manual_seed(cfg.seed)
            self.host = HostNetwork(hidden=cfg.hidden, slots=cfg.slots, policy=SlotPolicy.from_config(cfg, schedule))
        self.optimizer = torch.optim.Adam(self.host.host_parameters(), lr=cfg.learning_rate)
        self._shuffle = torch.Generator().manual_seed(cfg.seed)
        self._germinations = 0
        self.epoch = 0
        self.accuracy_history: list[float] = []

    # ------------------------------------------------------------------ run

    def run(self) -> TrainingFinished:
        """Train until cfg.epochs are done or stop is requested; returns the TrainingFinished it emitted."""
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return self._run()
        except Exception as exc:
            self.emit(TrainingFailed(source=Subsystem.TOLARIA, error=f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            torch.set_num_threads(previous_threads)

    def _run(self) -> TrainingFinished:
        ds = load_mnist1d(self.data_seed, self.cache_dir)
        self.x_train, self.y_train = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
        self.x_val, self.y_val = torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test)
        self.emit(
            TrainingStarted(
                source=Subsystem.TOLARIA,
                compile_enabled=self.kernels.compile_enabled,
                compile_backend=self.kernels.backend,
                compile_mode=self.kernels.mode,
                dataset=f"mnist1d ({len(ds.y_train)} train / {len(ds.y_test)} test, seed {self.data_seed})",
                host=self.host.describe(),
                slots=self.cfg.slots,
                epochs=self.cfg.epochs,
                device="cpu",
            )
        )
        while self.cfg.epochs is None or self.epoch < self.cfg.epochs:
            if self.control.paused and not self.control.stopped:
                self.emit(TrainingPaused(source=Subsystem.TOLARIA, paused=True))
                self.control.wait_while_paused()
                if not self.control.stopped:
                    self.emit(TrainingPaused(source=Subsystem.TOLARIA, paused=False))
            if self.control.stopped or not self._epoch():
                break
            if self.cfg.epoch_delay_s > 0 and self.control.sleep(self.cfg.epoch_delay_s):
                break
        acc = self.accuracy_history
        final = acc[-1] if acc else 0.0
        finished = TrainingFinished(
            source=Subsystem.TOLARIA, epochs=self.epoch, final_accuracy=final, best_accuracy=max(acc, default=0.0)
        )
        self.emit(finished)
        return finished

    def _epoch(self) -> bool:
        """One epoch, its reports and decisions; False if a stop cut it short (nothing is reported)."""
        t0 = time.perf_counter()
        slots = self.host.seed_slots()
        for s in slots:
            s.begin_epoch()
        self.host.train()
        bs = self.cfg.batch_size
        n = len(self.y_train) // bs * bs  # full batches only: kernels see the batch size they were built for
        order = torch.randperm(len(self.y_train), generator=self._shuffle)[:n]
        steps, loss_sum = n // bs, 0.0
        for i in range(steps):
            if self.control.stopped:
                return False
            idx = order[i * bs : (i + 1) * bs]
            loss_sum += self._with_fallback(partial(self._step, self.x_train[idx], self.y_train[idx], steps))
        train_s = time.perf_counter() - t0
        val_loss, acc = self._with_fallback(self._evaluate)
        for s in slots:
            s.end_epoch()
        self.epoch += 1
        self.accuracy_history.append(acc)
        self.emit(
            EpochCompleted(
                source=Subsystem.TOLARIA,
                epoch=self.epoch,
                train_loss=loss_sum / max(steps, 1),
                val_loss=val_loss,
                val_accuracy=acc,
                samples_per_s=n / max(train_s, 1e-9),
                epoch_s=time.perf_counter() - t0,
            )
        )
        health = [s.health(acc) for s in slots]
        self.emit(SeedsReport(source=Subsystem.KASMINA, epoch=self.epoch, seeds=health))
        state = EpochState(self.epoch, acc, tuple(health), tuple(self._offers()))
        for d in self.controller.decide(state):
            if d.action is not Action.WAIT and self._apply(d, acc):
                self.emit(
                    ControllerDecision(
                        source=Subsystem.TAMIYO,
                        action=d.action,
                        slot=d.slot,
                        blueprint_id=d.blueprint_id,
                        reason=d.reason,
                    )
                )
        return True

    # ------------------------------------------------------------------ steps

    def _step(self, xb: torch.Tensor, yb: torch.Tensor, steps_per_epoch: int) -> float:
        """One optimizer step: host loss plus the TRAINING seeds' isolated auxiliary losses."""
        self.optimizer.zero_grad(set_to_none=True)
        logits, aux = self.host.forward_train(xb)
        loss = F.cross_entropy(logits, yb)
        total = loss
        for shadow in aux.values():
            total = total + F.cross_entropy(shadow, yb)
        torch.autograd.backward(total)  # Tensor.backward, but typed
        slots = self.host.seed_slots()
        for s in slots:
            s.record_gradients()
        host_loss = float(loss.detach())
        if math.isfinite(host_loss):  # a non-finite host loss would poison Adam's moments: skip the step
            self.optimizer.step()
        for s in slots:
            s.step(1.0 / steps_per_epoch)
        return host_loss

    @torch.no_grad()
    def _evaluate(self) -> tuple[float, float]:
        """Validation loss and accuracy, in training-sized batches (the shapes compiled kernels know)."""
        self.host.eval()
        bs, total, loss_sum, correct = self.cfg.batch_size, len(self.y_val), 0.0, 0
        for i in range(0, total, bs):
            xb, yb = self.x_val[i : i + bs], self.y_val[i : i + bs]
            logits = self.host(xb)
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
        self.host.train()
        return loss_sum / total, correct / total

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

    def _germinate(self, slot: SeedSlot, blueprint_id: str, accuracy: float) -> bool:
        try:
            kernel, offer = self.kernels.load(blueprint_id)
        except KernelUnavailable as exc:
            self._log(Level.WARNING, f"germinate {slot.name} <- {blueprint_id} failed: {exc}", Subsystem.KASMINA)
            return False
        self._germinations += 1
        with torch.random.fork_rng(devices=[]):  # each seed's init depends only on cfg.seed and its ordinal
            torch.manual_seed(self.cfg.seed * 1_000_003 + self._germinations)
            block = self.catalog.get(blueprint_id).build(self.host.in_features, self.host.hidden)
        label = offer.label
        error = self._probe(kernel, block)
        if error is not None and offer.compiled:
            self._log(
                Level.WARNING,
                f"{slot.name} ({blueprint_id}): compiled kernel failed its probe, running eagerly: {error}",
                Subsystem.KASMINA,
            )
            kernel, label = eager_kernel, EAGER_LABEL
            error = self._probe(kernel, block)
        if error is not None:
            self._log(
                Level.ERROR, f"germinate {slot.name} <- {blueprint_id} failed its probe: {error}", Subsystem.KASMINA
            )
            return False
        slot.germinate(blueprint_id, block, kernel, label, accuracy)
        self.optimizer.add_param_group({"params": list(block.parameters())})
        return True

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
