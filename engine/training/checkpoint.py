"""Tolaria's checkpoints: a TrainingState on disk, written atomically, signed, and found again after a crash.

Layout: `<state>/checkpoints/epoch-NNNNNN/` holds
- `tensors.safetensors`: host weights, seed weights, optimizer state tensors and the RNG states;
- `state.msgpack`: everything else (slots, optimizer groups, controller memory, the decisions awaiting their field
  report), msgspec Structs: never pickle, so loading a checkpoint can never run code;
- `manifest.json`: epoch, the validation metric and which metric it is, the sha256 of each file; `manifest.sig`:
  its HMAC-SHA256 with the engine's signing key, exactly like a library artifact's meta.json / meta.sig.

A checkpoint is staged in a hidden temp directory, every file and the directory fsynced, then renamed into place
and the parent fsynced: a crash leaves either the whole checkpoint or none (a leftover stage is removed on the
next write). `latest_valid` walks newest first and skips a torn or tampered checkpoint with a reason, so a run
restarts from the newest one that verifies. Retention keeps the newest `keep` and the best-validation one (best
by the metric's direction). Format 1 (before the metric was the task's: `val_accuracy`, ...) still loads, its
fields renamed on the way in (engine/legacy.py).

`Writer` does the writing and the retention on a thread of its own: a checkpoint's fsyncs (about 10 ms here)
would otherwise stall the training thread every K epochs. The training thread hands it a captured state (its
tensors already cloned, never changed after) and goes on; `flush` waits for what was handed over.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from esper_tui.engine.fsutil import fsync_dir, write_durable
from esper_tui.engine.legacy import upgraded
from esper_tui.engine.library import signing
from esper_tui.engine.training.controller import ControllerState
from esper_tui.engine.training.reports import PendingDecision
from esper_tui.engine.training.seeds import SlotState
from esper_tui.engine.training.state import TrainingState
from esper_tui.engine.vocabulary import ACCURACY, MetricInfo, SeedStage

FORMAT_VERSION = 2
LEGACY_FORMAT_VERSION = 1  # accuracy's names; read, never written
CHECKPOINTS_DIR = "checkpoints"
TENSORS = "tensors.safetensors"
STATE = "state.msgpack"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
_NAME = re.compile(r"^epoch-(\d{6,})$")
_STAGE_PREFIX = ".staging-"


class CheckpointInvalid(ValueError):
    """A checkpoint that must not be loaded: one line saying which and why."""


class SlotDoc(msgspec.Struct, frozen=True, kw_only=True):
    """A slot's state without its weights (those are in the safetensors file under `slot.<name>.`)."""

    name: str
    stage: SeedStage
    blueprint_id: str | None
    epochs_in_stage: int
    blend_progress: float
    metric_at_germination: float | None
    kernel_label: str
    kernel_note: str
    has_weights: bool


_SLOT_FIELDS = tuple(f.name for f in msgspec.structs.fields(SlotDoc) if f.name != "has_weights")


def _slot_fields(slot: SlotState | SlotDoc) -> dict[str, Any]:
    """The fields a slot's state and its document share: one mapping for both directions."""
    return {name: getattr(slot, name) for name in _SLOT_FIELDS}


class StateDoc(msgspec.Struct, frozen=True, kw_only=True):
    """The non-tensor part of a TrainingState. Optimizer state scalars sit in `optimizer_scalars`
    (param index -> key -> value); its tensors are in the safetensors file under `optim.<index>.<key>`."""

    epoch: int
    slots: tuple[SlotDoc, ...]
    groups: tuple[str, ...]
    param_groups: list[dict[str, Any]]
    optimizer_scalars: dict[str, dict[str, Any]]
    controller: ControllerState
    germinations: int
    best_val_metric: float
    best_epoch: int
    pending_reports: tuple[PendingDecision, ...] = ()  # absent from checkpoints written before it: none pending


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    epoch: int
    val_metric: float  # this epoch's validation metric: retention keeps the best one
    files: dict[str, str]  # name -> sha256
    metric: MetricInfo = ACCURACY  # which way val_metric is better (format 1: always accuracy)


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint on disk."""

    path: Path
    epoch: int
    val_metric: float
    metric: MetricInfo = ACCURACY

    @property
    def rank(self) -> tuple[float, int]:
        """Retention's order: the better validation metric, then the newer epoch."""
        return self.metric.gain(self.val_metric, 0.0), self.epoch


@dataclass(frozen=True)
class Skipped:
    """A checkpoint `latest_valid` passed over, and why (the engine warns once per skipped one)."""

    path: Path
    reason: str


def checkpoints_dir(state_dir: Path) -> Path:
    return state_dir / CHECKPOINTS_DIR


def dir_name(epoch: int) -> str:
    return f"epoch-{epoch:06d}"


# ---------------------------------------------------------------------- encode / decode


def _tensors(state: TrainingState) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """Every tensor of the state under a flat name (safetensors wants contiguous, unshared storage), and the
    optimizer state's non-tensor values."""
    out: dict[str, torch.Tensor] = {f"host.{k}": v for k, v in state.host.items()}
    for slot in state.slots:
        for k, v in (slot.weights or {}).items():
            out[f"slot.{slot.name}.{k}"] = v
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state.optimizer.get("state", {}).items():
        for k, v in entry.items():
            if isinstance(v, torch.Tensor):
                out[f"optim.{index}.{k}"] = v
            else:
                scalars.setdefault(str(index), {})[k] = v
    out["rng.shuffle"] = state.shuffle_rng
    out["rng.torch"] = state.torch_rng
    # copied to the CPU: a run on a GPU writes the same file, and a resume loads it onto its own device
    return {k: v.detach().contiguous().to("cpu", copy=True) for k, v in out.items()}, scalars


def encode(state: TrainingState) -> tuple[bytes, bytes]:
    """(safetensors bytes, msgpack bytes) of a TrainingState."""
    tensors, scalars = _tensors(state)
    doc = StateDoc(
        epoch=state.epoch,
        slots=tuple(SlotDoc(**_slot_fields(s), has_weights=s.weights is not None) for s in state.slots),
        groups=state.groups,
        param_groups=list(state.optimizer.get("param_groups", [])),
        optimizer_scalars=scalars,
        controller=state.controller,
        germinations=state.germinations,
        best_val_metric=state.best_val_metric,
        best_epoch=state.best_epoch,
        pending_reports=state.pending_reports,
    )
    return st_save(tensors), msgspec.msgpack.encode(doc)


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _group(raw: dict[str, Any]) -> dict[str, Any]:
    """msgpack has no tuples: torch's param groups hold them (Adam's betas) and a list only under `params`."""
    return {k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in raw.items()}


def decode(tensor_bytes: bytes, state_bytes: bytes, *, legacy: bool = False) -> TrainingState:
    """A TrainingState from the two files' bytes (`legacy`: a format 1 state, accuracy's names); CheckpointInvalid
    if they do not decode or do not fit."""
    try:
        tensors = st_load(tensor_bytes)
        if legacy:
            doc = upgraded(msgspec.msgpack.decode(state_bytes), StateDoc)
        else:
            doc = msgspec.msgpack.decode(state_bytes, type=StateDoc)
    except (SafetensorError, msgspec.DecodeError, ValueError) as exc:
        raise CheckpointInvalid(f"does not decode ({exc})") from None
    try:
        optim_state: dict[int, dict[str, Any]] = {}
        for key, v in tensors.items():
            if key.startswith("optim."):
                index, name = key[len("optim.") :].split(".", 1)
                optim_state.setdefault(int(index), {})[name] = v
        for index_text, values in doc.optimizer_scalars.items():
            optim_state.setdefault(int(index_text), {}).update(values)
        slots = tuple(
            SlotState(**_slot_fields(s), weights=_prefixed(tensors, f"slot.{s.name}.") if s.has_weights else None)
            for s in doc.slots
        )
        return TrainingState(
            epoch=doc.epoch,
            host=_prefixed(tensors, "host."),
            slots=slots,
            groups=doc.groups,
            optimizer={
                "state": dict(sorted(optim_state.items())),
                "param_groups": [_group(g) for g in doc.param_groups],
            },
            controller=doc.controller,
            shuffle_rng=tensors["rng.shuffle"],
            torch_rng=tensors["rng.torch"],
            germinations=doc.germinations,
            best_val_metric=doc.best_val_metric,
            best_epoch=doc.best_epoch,
            pending_reports=doc.pending_reports,
        )
    except (KeyError, ValueError) as exc:
        raise CheckpointInvalid(f"state does not fit its tensors ({exc})") from None


# ---------------------------------------------------------------------- write


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(root: Path, state: TrainingState, key: bytes, val_metric: float, metric: MetricInfo = ACCURACY) -> Checkpoint:
    """Write `state` as `root/epoch-NNNNNN` atomically (stage, fsync, rename, fsync the parent).

    An existing checkpoint of the same epoch is replaced (a rollback replays epochs)."""
    root.mkdir(parents=True, exist_ok=True)
    _remove_stages(root)
    tensor_bytes, state_bytes = encode(state)
    files = {TENSORS: tensor_bytes, STATE: state_bytes}
    manifest = msgspec.json.encode(
        Manifest(
            version=FORMAT_VERSION,
            epoch=state.epoch,
            val_metric=val_metric,
            files={name: _sha256(data) for name, data in files.items()},
            metric=metric,
        )
    )
    files[MANIFEST] = manifest
    files[SIGNATURE] = signing.sign(key, manifest).encode()
    stage = root / f"{_STAGE_PREFIX}{dir_name(state.epoch)}.{os.getpid()}"
    stage.mkdir()
    for name, data in files.items():
        write_durable(stage / name, data)  # each file fsynced as it is written: the directory is what is left
    fsync_dir(stage)
    final = root / dir_name(state.epoch)
    if final.exists():
        shutil.rmtree(final)
    os.rename(stage, final)
    fsync_dir(root)
    return Checkpoint(final, state.epoch, val_metric, metric)


def _remove_stages(root: Path) -> None:
    """A stage left by a crash mid-write is not a checkpoint: remove it."""
    for p in root.glob(f"{_STAGE_PREFIX}*"):
        shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------- read


def _read(path: Path, name: str) -> bytes:
    try:
        return (path / name).read_bytes()
    except FileNotFoundError:
        raise CheckpointInvalid(f"{path.name}: {name} is missing (torn write?)") from None
    except OSError as exc:
        raise CheckpointInvalid(f"{path.name}: cannot read {name} ({exc.strerror})") from None


def verify(path: Path, key: bytes) -> Manifest:
    """The signed manifest of a checkpoint whose every file matches it; CheckpointInvalid otherwise."""
    raw = _read(path, MANIFEST)
    if not signing.verify(key, raw, _read(path, SIGNATURE).decode(errors="replace")):
        raise CheckpointInvalid(f"{path.name}: signature mismatch (manifest altered or signed with another key)")
    try:
        doc = msgspec.json.decode(raw)
        legacy = isinstance(doc, dict) and doc.get("version") == LEGACY_FORMAT_VERSION
        manifest = upgraded(doc, Manifest) if legacy else msgspec.convert(doc, Manifest)
    except msgspec.DecodeError as exc:
        raise CheckpointInvalid(f"{path.name}: signed manifest does not decode ({exc})") from None
    if manifest.version not in (FORMAT_VERSION, LEGACY_FORMAT_VERSION):
        raise CheckpointInvalid(f"{path.name}: format version {manifest.version}, this engine reads {FORMAT_VERSION}")
    if dir_name(manifest.epoch) != path.name:
        raise CheckpointInvalid(f"{path.name}: signed as {dir_name(manifest.epoch)} (copied or renamed)")
    for name, digest in manifest.files.items():
        if _sha256(_read(path, name)) != digest:
            raise CheckpointInvalid(f"{path.name}: {name} does not match its signed checksum")
    return manifest


def _load(path: Path, key: bytes) -> tuple[Manifest, TrainingState]:
    manifest = verify(path, key)
    try:
        legacy = manifest.version == LEGACY_FORMAT_VERSION
        return manifest, decode(_read(path, TENSORS), _read(path, STATE), legacy=legacy)
    except CheckpointInvalid as exc:
        raise CheckpointInvalid(f"{path.name}: {exc}") from None


def load(path: Path, key: bytes) -> TrainingState:
    """Verify and decode one checkpoint directory."""
    return _load(path, key)[1]


def candidates(root: Path) -> list[Path]:
    """Checkpoint directories by epoch, newest first (staging directories are not candidates)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


def latest_valid(
    root: Path, key: bytes, misfit: Callable[[TrainingState], str | None] = lambda _state: None
) -> tuple[tuple[Checkpoint, TrainingState] | None, list[Skipped]]:
    """The newest checkpoint that verifies, decodes and fits this run (`misfit` says why one does not), with its
    state, and every newer one skipped and why."""
    skipped: list[Skipped] = []
    for path in candidates(root):
        try:
            manifest, state = _load(path, key)
        except CheckpointInvalid as exc:
            skipped.append(Skipped(path, str(exc)))
            continue
        if (why := misfit(state)) is not None:
            skipped.append(Skipped(path, f"{path.name} {why}"))
            continue
        return (Checkpoint(path, manifest.epoch, manifest.val_metric, manifest.metric), state), skipped
    return None, skipped


def prune(root: Path, key: bytes, keep: int) -> list[Path]:
    """Keep the newest `keep` verified checkpoints and the best-validation one; delete the other verified
    ones. Returns what was deleted. Invalid ones are left for an operator to inspect (they are never loaded)."""
    valid: list[Checkpoint] = []
    for path in candidates(root):
        try:
            m = verify(path, key)
        except CheckpointInvalid:
            continue
        valid.append(Checkpoint(path, m.epoch, m.val_metric, m.metric))
    if not valid:
        return []
    best = max(valid, key=lambda c: c.rank)
    kept = {c.path for c in valid[:keep]} | {best.path}
    removed = [c.path for c in valid if c.path not in kept]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    if removed:
        fsync_dir(root)
    return removed


class Writer:
    """Writes and prunes checkpoints on its own thread, newest first: a state handed over while an older one
    still waits replaces it (the newer one is what a restart wants). A failed write (a full disk) goes to
    `on_error` with the epoch, and the run goes on; so does any other error, so the thread never dies and
    `flush` never waits on it forever."""

    def __init__(
        self,
        root: Path,
        key: bytes,
        keep: int,
        on_error: Callable[[int, Exception], None],
        metric: MetricInfo = ACCURACY,
    ) -> None:
        self.root, self.key, self.keep, self.on_error, self.metric = root, key, keep, on_error, metric
        self._cond = threading.Condition()
        self._next: tuple[TrainingState, float] | None = None
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="esper-checkpoints", daemon=True)
        self._thread.start()

    def submit(self, state: TrainingState, val_metric: float) -> None:
        """Write `state` (with this epoch's validation metric, for retention) as soon as the thread is free."""
        with self._cond:
            if self._closed:
                raise RuntimeError("checkpoint writer closed")
            self._next = (state, val_metric)
            self._cond.notify_all()

    def flush(self) -> None:
        """Return once everything handed over is on disk (or has failed)."""
        with self._cond:
            self._cond.wait_for(lambda: self._next is None and not self._busy)

    def close(self) -> None:
        """Flush, then end the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._next is not None or self._closed)
                if self._next is None:
                    return
                (state, val_metric), self._next = self._next, None
                self._busy = True
            try:
                write(self.root, state, self.key, val_metric, self.metric)
                prune(self.root, self.key, self.keep)
            except Exception as exc:
                self.on_error(state.epoch, exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
