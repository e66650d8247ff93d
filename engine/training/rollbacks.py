"""Tamiyo's emergency: rolling the run back to its last good epoch when training goes unstable."""

from __future__ import annotations

import time

from esper_tui.engine.contracts import ControllerDecision, Rollback
from esper_tui.engine.training.core import TrainerCore
from esper_tui.engine.vocabulary import Action, Level, Subsystem


class Rollbacks(TrainerCore):
    """Restore the last good epoch, prune and embargo the seeds grafted since, and say so."""

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
            self.reports.rolled_back(good.epoch, self.val_metric)
        recovery_s = time.perf_counter() - t0
        self.emit(
            ControllerDecision(
                source=Subsystem.TAMIYO,
                action=Action.ROLLBACK,
                slot=None,
                blueprint_id=None,
                reason=reason,
                epoch=failed,
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
