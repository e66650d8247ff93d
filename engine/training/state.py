"""The whole training state as plain data: what a best-epoch restore or a rollback puts back, and what a
checkpoint writes (training/checkpoint.py). A module of its own so the checkpoint format and the trainer
both import it, and neither imports the other's module for it."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from esper_tui.engine.training.controller import ControllerState
from esper_tui.engine.training.reports import PendingDecision
from esper_tui.engine.training.seeds import SlotState

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
    best_val_metric: float
    best_epoch: int
    # decisions awaiting their field report: a resume awaits them again; restore() leaves the reports alone
    # (a rollback reports what it undid, and an early stop ends the run)
    pending_reports: tuple[PendingDecision, ...] = ()
