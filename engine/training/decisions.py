"""Carrying out Tamiyo's decisions on the host: germinate (with a probed kernel), advance, fossilize, prune.

Also the static graft of a grown architecture and what the network computes with (its seeds and parameters).
"""

from __future__ import annotations

import torch
from torch import nn

from esper_tui.engine.training.controller import Decision
from esper_tui.engine.training.core import TrainerCore
from esper_tui.engine.training.kernel_source import KernelOffer, KernelUnavailable
from esper_tui.engine.training.seeds import MAIN_LINE, SeedSlot
from esper_tui.engine.training.task import rng_devices
from esper_tui.engine.vocabulary import Action, Level, Subsystem


class Decisions(TrainerCore):
    """Decisions applied to seed slots, and the optimizer kept in step with the seeds they add or prune."""

    def _offers(self) -> tuple[list[KernelOffer], dict[str, str]]:
        """What Tamiyo may germinate: the offers for each slot shape of the host, and each slot's shape tag."""
        shapes = {slot.name: slot.shape for slot in self.host.seed_slots()}
        offers: list[KernelOffer] = []
        try:
            for shape in dict.fromkeys(shapes.values()):
                offers += self.kernels.offers(shape)
        except Exception as exc:  # the library being unreadable must not stop training
            self._log(Level.WARNING, f"kernel offers unavailable: {type(exc).__name__}: {exc}", Subsystem.KASMINA)
        return offers, {name: shape.tag for name, shape in shapes.items()}

    def _apply(self, d: Decision, val_metric: float) -> bool:
        """Carry out a decision on its slot; False (with a warning) if it could not be done."""
        slot = self.host.slot(d.slot) if d.slot is not None else None
        if slot is None:
            return False
        if d.action is Action.GERMINATE and d.blueprint_id is not None:
            return self._germinate(slot, d.blueprint_id, val_metric)
        if d.action is Action.ADVANCE:
            slot.advance()
        elif d.action is Action.FOSSILIZE:
            slot.fossilize()
        elif d.action is Action.PRUNE:
            self._forget(slot.prune())
        return True

    def _germinate(self, slot: SeedSlot, blueprint_id: str, val_metric: float) -> bool:
        if blueprint_id not in self.catalog:
            self._log(
                Level.WARNING, f"germinate {slot.name} <- {blueprint_id} failed: not in the catalog", Subsystem.KASMINA
            )
            return False
        self._germinations += 1
        with torch.random.fork_rng(devices=rng_devices(self.device)):  # a seed's init: cfg.seed and its ordinal only
            torch.manual_seed(self.cfg.seed * 1_000_003 + self._germinations)
            try:
                block = self._build_seed(blueprint_id, slot)
            except ValueError as exc:  # the blueprint does not fit the slot's shape
                self._log(Level.WARNING, f"germinate {slot.name} <- {blueprint_id} failed: {exc}", Subsystem.KASMINA)
                return False
        loaded = self._kernel_for(slot, blueprint_id, block)
        if loaded is None:
            return False
        kernel, offer = loaded
        note = "faster" if offer.eager_by_choice else ""
        slot.germinate(blueprint_id, block, kernel, offer.label, val_metric, note)
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

    def _forget(self, params: list[nn.Parameter]) -> None:
        """Remove a pruned seed's parameter group and Adam state: nothing of it stays alive."""
        ids = {id(p) for p in params}
        self.optimizer.param_groups[:] = [
            g for g in self.optimizer.param_groups if not any(id(p) in ids for p in g["params"])
        ]
        for p in params:
            self.optimizer.state.pop(p, None)
