"""The Trainer's checkpoints: resume from the newest one that verifies, hand periodic ones to the writer.

The file format, signing and the writer thread are in checkpoint.py; this is when the run writes and reads.
"""

from __future__ import annotations

import time

from esper_tui.engine.training import checkpoint as ckpt
from esper_tui.engine.training.core import TrainerCore
from esper_tui.engine.training.state import TrainingState
from esper_tui.engine.vocabulary import Level, Subsystem


class Checkpointing(TrainerCore):
    """Resume, periodic checkpoints at most every checkpoint_min_interval_s, and the writer's lifetime."""

    def _resume(self) -> None:
        """Continue from the newest checkpoint that verifies and fits this run's shape; each newer torn, tampered or
        misfit one is a warning (a misfit one names the config key that changed)."""
        if self.state_dir is None or self.signing_key is None:
            return
        found, skipped = ckpt.latest_valid(ckpt.checkpoints_dir(self.state_dir), self.signing_key, self.misfit)
        for bad in skipped:
            self._log(Level.WARNING, f"checkpoint skipped: {bad.reason}", Subsystem.TOLARIA)
        if found is None:
            return
        saved, state = found
        self.restore(state)
        self.resumed_from_epoch, self.val_metric = saved.epoch, saved.val_metric
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
            self._writer = ckpt.Writer(
                ckpt.checkpoints_dir(self.state_dir),
                self.signing_key,
                self.cfg.keep_checkpoints,
                self._write_failed,
                self.metric,
            )
        self._writer.submit(state, self.val_metric)

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _write_failed(self, epoch: int, exc: Exception) -> None:
        """From the writer's thread (emit is thread-safe)."""
        what = str(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
        self._log(Level.WARNING, f"checkpoint of epoch {epoch} failed: {what}", Subsystem.TOLARIA)
