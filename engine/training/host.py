"""Kasmina's host: the task's own network, with a seed slot hooked onto each module the task names.

The network is trained as the user wrote it. A slot is a forward hook on its module: while a seed is attached,
the seed reads the module's input (or the input of the slot's `reads` module, captured by a pre-hook), detached,
and `alpha * seed(input)` is added to the module's output. The slot's shape is that input's shape -> that output's
shape, found by one no-grad forward pass on a sample batch (`probe_slots`). With no seed attached no hook is
registered at all, so the bare host runs at PyTorch's own speed (the dashboard benchmark compares it with a bare
loop).

Isolation while a seed is TRAINING: its output never reaches the live forward, and it learns in a shadow pass of
its own (`shadowing`), the host run again with that seed added at alpha = 1. The trainer back-propagates the shadow
loss into the seed's parameters only (`backward(inputs=...)`), the shadow pass runs with the global RNG forked
(dropout draws the same masks as the live pass, which follows it, and leaves the generator where the live pass alone
would) and every buffer it could move (BatchNorm's running statistics, of the host and of the other seeds) is put
back. So the host's gradients, weights and buffers stay bit-for-bit those of a host without the seed, whatever the
network is (tests/test_tasks.py proves it on every built-in task).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any, cast

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from esper_tui.engine.kernels.shapes import ShapeError, SlotShape
from esper_tui.engine.training.seeds import SeedSlot, SlotPolicy
from esper_tui.engine.training.task import Slot, TaskError, rng_devices


def _module(net: nn.Module, slot: Slot, path: str) -> nn.Module:
    try:
        return net.get_submodule(path)
    except AttributeError:
        raise TaskError(f"slot {slot.name}: the host has no module {path!r}") from None


def _tensor_input(slot: Slot, path: str, args: tuple[Any, ...]) -> torch.Tensor:
    if not args or not isinstance(args[0], torch.Tensor):
        raise TaskError(f"slot {slot.name}: module {path!r} must take a tensor as its first input")
    return args[0]


def probe_slots(net: nn.Module, slots: Sequence[Slot], sample: torch.Tensor) -> tuple[dict[str, SlotShape], Any]:
    """Each slot's shape, from one no-grad forward pass of `net` on `sample` (in eval mode, put back after), and the
    pass's output. TaskError, one line, for a module that is not there, never runs, takes no tensor, or runs before
    the module its slot reads from."""
    seen: dict[str, torch.Size] = {}
    shapes: dict[str, SlotShape] = {}
    handles: list[RemovableHandle] = []

    def before(slot: Slot, path: str, _module: nn.Module, args: tuple[Any, ...]) -> None:
        seen[slot.name] = _tensor_input(slot, path, args).shape

    def after(slot: Slot, path: str, _module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if slot.reads is None:
            seen[slot.name] = _tensor_input(slot, path, args).shape
        elif slot.name not in seen:
            raise TaskError(f"slot {slot.name}: module {slot.reads!r} must run before {path!r} to be read from")
        if not isinstance(output, torch.Tensor):
            raise TaskError(f"slot {slot.name}: module {path!r} must return a tensor, not {type(output).__name__}")
        try:
            shapes[slot.name] = SlotShape(tuple(seen[slot.name][1:]), tuple(output.shape[1:]))
        except ShapeError as exc:
            raise TaskError(f"slot {slot.name} on {path!r}: {exc}") from None

    was_training = net.training
    try:
        for s in slots:
            target = _module(net, s, s.module)
            if s.reads is not None:
                handles.append(_module(net, s, s.reads).register_forward_pre_hook(partial(before, s, s.reads)))
            handles.append(target.register_forward_hook(partial(after, s, s.module)))
        net.eval()
        with torch.no_grad():
            output = net(sample)
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    for s in slots:
        if s.name not in shapes:
            raise TaskError(f"slot {s.name}: module {s.module!r} never ran in the host's forward pass")
    return shapes, output


class SlottedHost(nn.Module):
    """The task's network (`net`) and its seed slots. An nn.Module so train()/eval() reach the seeds too."""

    def __init__(
        self,
        net: nn.Module,
        slots: Sequence[Slot],
        shapes: dict[str, SlotShape],
        policy: SlotPolicy | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.slots = nn.ModuleList(SeedSlot(s.name, shapes[s.name], policy) for s in slots)
        self._specs = {s.name: s for s in slots}
        self._handles: list[RemovableHandle] = []
        self._inputs: dict[str, torch.Tensor] = {}  # what a slot with `reads` captured in this pass
        self._shadow: SeedSlot | None = None

    def describe(self) -> str:
        """For the banner: the network's own `describe()` when it has one (else its class), size and slots."""
        own = getattr(self.net, "describe", None)
        what = str(own()) if callable(own) else type(self.net).__name__
        params = sum(p.numel() for p in self.host_parameters())
        return f"{what}, {params:,} params, {len(self.slots)} slots"

    def seed_slots(self) -> list[SeedSlot]:
        return cast(list[SeedSlot], list(self.slots))

    def slot(self, name: str) -> SeedSlot:
        for s in self.seed_slots():
            if s.name == name:
                return s
        raise KeyError(f"no slot {name!r}")

    def host_parameters(self) -> list[nn.Parameter]:
        """The host's own weights (seed parameters get their own optimizer groups)."""
        return list(self.net.parameters())

    def host_weights(self) -> dict[str, torch.Tensor]:
        """The host's own state (weights and buffers), cloned; the slots capture their seeds themselves. Keys are
        the network's own (`l1.weight`), so checkpoints written before tasks existed still fit the mnist1d host."""
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    def load_host_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """In place, so the optimizer keeps holding the same parameter objects."""
        with torch.no_grad():
            for k, v in self.net.state_dict().items():
                v.copy_(weights[k])

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor) -> Any:
        """The live network: what is evaluated, and what the host trains through."""
        self._sync_hooks()
        try:
            return self.net(x)
        finally:
            self._inputs.clear()

    @contextlib.contextmanager
    def shadowing(self, slot: SeedSlot) -> Iterator[None]:
        """Within it, the network's output has `slot`'s seed added at alpha = 1 (`shadow`), and leaves no trace on the
        host: the global RNG is forked, and every buffer but the seed's own is put back on the way out. Run the
        shadow pass *and* its backward (into the seed's parameters only) inside: BatchNorm's backward checks that
        the running statistics it saw were not changed under it."""
        buffers = [*self.net.buffers()]
        for other in self.seed_slots():
            if other is not slot and other.block is not None:
                buffers.extend(other.block.buffers())
        saved = [b.detach().clone() for b in buffers]
        device = next((b.device for b in buffers), None) or next((p.device for p in self.parameters()), None)
        with torch.random.fork_rng(devices=rng_devices(device or torch.device("cpu"))):
            self._shadow = slot
            try:
                yield
            finally:
                self._shadow = None
                with torch.no_grad():
                    for b, v in zip(buffers, saved, strict=True):
                        b.copy_(v)

    def _sync_hooks(self) -> None:
        """Hooks exactly while some slot holds a seed: a bare host pays nothing for its slots."""
        attached = any(s.block is not None for s in self.seed_slots())
        if attached == bool(self._handles):
            return
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if not attached:
            return
        for slot in self.seed_slots():
            spec = self._specs[slot.name]
            if spec.reads is not None:
                reads = self.net.get_submodule(spec.reads)
                self._handles.append(reads.register_forward_pre_hook(partial(self._remember, slot)))
            target = self.net.get_submodule(spec.module)
            self._handles.append(target.register_forward_hook(partial(self._graft, slot, spec.reads is not None)))

    def _remember(self, slot: SeedSlot, _module: nn.Module, args: tuple[Any, ...]) -> None:
        if slot.block is not None:
            self._inputs[slot.name] = args[0].detach()

    def _graft(
        self, slot: SeedSlot, remembered: bool, _module: nn.Module, args: tuple[Any, ...], output: torch.Tensor
    ) -> torch.Tensor | None:
        if slot.block is None or not (slot.contributes or slot is self._shadow):
            return None
        x = self._inputs.pop(slot.name) if remembered else args[0].detach()
        seed = cast(torch.Tensor, slot(x))
        if slot is self._shadow:
            return output.detach() + seed
        return output + slot.alpha * seed
