"""Tolaria in a process of its own: the trainer never shares an interpreter, a GIL or a core with the dashboard.

Why: in the engine's own process the training thread needs the GIL between every pair of torch ops, and
Textual's compositor, the aggregator, the bus and the recorder hold it in turn. Measured on 2 cores
(`python -m benchmarks.dashboard`), host-only epochs ran at 0.88x a bare PyTorch loop with the dashboard
open and 0.93x headless; in a child process the engine's work runs on the other core instead.

The child is `python -m esper_tui.engine.training.process`. The pipe between the two carries length-prefixed
msgpack frames: the engine writes one `Start` (the whole config, the state directory, the signing key, the
chaos faults) and then a `Control` whenever pause or stop changes. The child loads the task first (the user's code
runs here, never in the engine) and answers `TaskLoaded` (the task, its metric, the device, each slot's shape) or
`TaskRefused` (one line, then it exits 2); it trains once the engine says `Begin`. It writes every event it emits
(`Emitted`), every kernel it quarantines (`Quarantined`, so the engine's forge recompiles it) and its kernel
cache's counters (`CacheCounts`, for /metrics). The channel is a duplicate of the child's stdout, and fd 1 is
pointed at stderr, so a stray print can never corrupt it; stderr lines become warnings in the engine's log.

The child lives and dies with the engine: it ignores SIGINT and SIGTERM (Ctrl-C in a terminal and a service
manager's stop reach the whole process group; the engine decides when training stops, and a stop from the
engine lets it write its clean-stop checkpoint), it asks the kernel for SIGKILL when its parent dies, and
end-of-file on its stdin (the engine is gone) ends it at once. A killed engine therefore never leaves a trainer
behind it still writing checkpoints into a state directory the next engine resumes from.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import signal
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import msgspec

from esper_tui.engine.codec import encode_msgpack
from esper_tui.engine.config import EsperConfig
from esper_tui.engine.contracts import AnyEvent, EpochCompleted, TrainingFailed, TrainingFinished
from esper_tui.engine.kernels import usercode
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.kernels.compiled import cpu_isa, private_cache_dir, release_private_cache
from esper_tui.engine.kernels.device import DeviceError, resolve_device
from esper_tui.engine.kernels.pipelines import settings_for
from esper_tui.engine.kernels.probe import KernelTarget
from esper_tui.engine.library.base import KernelLibrary
from esper_tui.engine.library.factory import LibraryUnavailable, open_library
from esper_tui.engine.library.policies import open_policies
from esper_tui.engine.library.store import Identity
from esper_tui.engine.library.userbp import UserBlueprintError, extend_catalog
from esper_tui.engine.training.control import TrainingControl
from esper_tui.engine.training.faults import FaultPlan
from esper_tui.engine.training.follow import PolicyBox, PolicyFollower
from esper_tui.engine.training.kernel_source import EagerKernelSource, KernelSource
from esper_tui.engine.training.library_source import LibraryKernelSource
from esper_tui.engine.training.loop import Trainer
from esper_tui.engine.training.task import TaskContext, TaskError
from esper_tui.engine.training.task_loader import LoadedTask, load_task
from esper_tui.engine.vocabulary import Level, MetricInfo, Subsystem

HEADER = struct.Struct(">I")
MAX_FRAME = 64 << 20
"""A frame larger than this is a broken channel, not a message (the largest event is a few KB)."""
STDERR_LINE_LIMIT = 500


class Start(msgspec.Struct, tag="start"):
    config: EsperConfig
    state_dir: str
    signing_key: bytes
    faults: list[str]
    kernel_target: KernelTarget | None = None  # the engine's probe: None, this process asks inductor itself
    run_id: str = ""  # the engine's run: field reports say which run decided


class Control(msgspec.Struct, tag="control"):
    paused: bool
    stopped: bool


class PolicyChoice(msgspec.Struct, tag="policy"):
    """The operator's choice of Tamiyo's policy (SetPolicy), taken from the next epoch on."""

    spec: str


class Emitted(msgspec.Struct, tag="event"):
    event: AnyEvent


class Quarantined(msgspec.Struct, tag="quarantined"):
    blueprint_id: str
    version: str
    reason: str


class CacheCounts(msgspec.Struct, tag="cache"):
    hits: int
    misses: int


class Begin(msgspec.Struct, tag="begin"):
    """The engine's go-ahead after TaskLoaded: the forge has kernels for the task's slots (or nothing to compile)."""


class SlotInfo(msgspec.Struct, frozen=True):
    name: str
    shape: str  # SlotShape.tag, e.g. "40-64" or "8x8x8-16x8x8"


class TaskLoaded(msgspec.Struct, tag="task_loaded"):
    """The task loaded and passed its checks in the training process: what the engine tells the forge and the
    operator. The engine never imports the task itself."""

    task: str
    metric: MetricInfo  # its name, direction and unit; never its function (the user's code)
    device: str
    slots: list[SlotInfo]


class TaskRefused(msgspec.Struct, tag="task_refused"):
    """The task cannot be trained: one line (task_loader.py); the engine stops and exits 2 with it."""

    reason: str


ToTrainer = Start | Control | Begin | PolicyChoice
FromTrainer = Emitted | Quarantined | CacheCounts | TaskLoaded | TaskRefused
_to_trainer = msgspec.msgpack.Decoder(ToTrainer)
_from_trainer = msgspec.msgpack.Decoder(FromTrainer)


class ChannelBroken(Exception):
    """The pipe carried something that is not a frame of this protocol."""


def frame(message: ToTrainer | FromTrainer) -> bytes:
    payload = encode_msgpack(message)
    return HEADER.pack(len(payload)) + payload


def _length(header: bytes) -> int:
    (n,) = HEADER.unpack(header)
    if n > MAX_FRAME:
        raise ChannelBroken(f"a frame of {n} bytes")
    return int(n)


def _decode(decoder: msgspec.msgpack.Decoder[Any], payload: bytes) -> Any:
    try:
        return decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ChannelBroken(str(exc)) from None


# ---------------------------------------------------------------------------------------------- the engine's side


class TrainingProcessError(RuntimeError):
    """The training process ended without finishing its run (it crashed, or was killed)."""


class TaskRefusedError(TrainingProcessError):
    """The training process refused the task (TaskRefused): the operator's to fix, so the engine exits 2."""

    exit_code = 2


class TrainerProcess:
    """The engine's handle on its training process: start it, mirror `control` into it, turn its frames into
    `emit` calls, and report how it ended. Every method runs on the engine's event loop."""

    def __init__(
        self,
        start: Start,
        control: TrainingControl,
        emit: Callable[[AnyEvent], None],
        on_quarantine: Callable[[str, str, str], None],
        log: Callable[[Level, str], None],
        on_loaded: Callable[[TaskLoaded], None] = lambda loaded: None,
    ) -> None:
        """`on_loaded` hears the task the child loaded; training starts once `begin()` is called."""
        self._start = start
        self._control = control
        self._emit = emit
        self._on_quarantine = on_quarantine
        self._log = log
        self._on_loaded = on_loaded
        self._proc: asyncio.subprocess.Process | None = None
        self.loaded: TaskLoaded | None = None
        self.refused: str | None = None
        self.cache_hits = 0
        self.cache_misses = 0

    async def run(self) -> None:
        """Until the child exits; TaskRefusedError if it refused the task, TrainingProcessError if it ended without a
        TrainingFinished or TrainingFailed (except when stopped before training began: a clean stop)."""
        # Started from the event loop's thread, which lives as long as the engine: the child's parent-death
        # signal follows the thread that forked it.
        self._proc = proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            __name__,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write(frame(self._start))
        self._control.follow(self._mirror)
        relay = asyncio.create_task(self._relay_stderr(proc.stderr))
        ended: AnyEvent | None = None
        try:
            ended = await self._read(proc.stdout)
        except asyncio.CancelledError:  # the engine gave up on it: it must not train on unwatched
            self.kill()
            raise
        finally:
            code = await proc.wait()
            await relay
        if self.refused is not None:
            raise TaskRefusedError(self.refused)
        if isinstance(ended, TrainingFailed):
            raise TrainingProcessError(ended.error)
        if ended is None and code == 0 and self._control.stopped:
            return  # stopped before training began (while the task loaded, or before the go-ahead)
        if ended is None:
            how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            self._emit(TrainingFailed(source=Subsystem.TOLARIA, error=f"the training process died ({how})"))
            raise TrainingProcessError(f"the training process died ({how})")

    def kill(self) -> None:
        """The last resort of a stop that did not finish in time."""
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()

    def begin(self) -> None:
        """The go-ahead: the child trains once it has loaded its task (TaskLoaded) and heard this."""
        self._send(Begin())

    def choose_policy(self, spec: str) -> None:
        """Tamiyo follows `spec` (heuristic, learned, a policy file) from the next epoch on."""
        self._send(PolicyChoice(spec=spec))

    def _mirror(self, paused: bool, stopped: bool) -> None:
        self._send(Control(paused=paused, stopped=stopped))

    def _send(self, message: ToTrainer) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdin.is_closing():
            return
        proc.stdin.write(frame(message))

    async def _read(self, stdout: asyncio.StreamReader) -> AnyEvent | None:
        """Apply frames until end of file; the run's last event (TrainingFinished / TrainingFailed) if one came."""
        ended: AnyEvent | None = None
        while True:
            try:
                header = await stdout.readexactly(HEADER.size)
                message = _decode(_from_trainer, await stdout.readexactly(_length(header)))
            except asyncio.IncompleteReadError:
                return ended
            except ChannelBroken as exc:
                self._log(Level.ERROR, f"training process: broken channel ({exc}); stopping it")
                self.kill()
                return ended
            match message:
                case Emitted(event=event):
                    if isinstance(event, TrainingFinished | TrainingFailed):
                        ended = event
                    self._emit(event)
                case Quarantined():
                    self._on_quarantine(message.blueprint_id, message.version, message.reason)
                case CacheCounts():
                    self.cache_hits, self.cache_misses = message.hits, message.misses
                case TaskLoaded():
                    self.loaded = message
                    self._on_loaded(message)
                case TaskRefused():
                    self.refused = message.reason

    async def _relay_stderr(self, stderr: asyncio.StreamReader) -> None:
        while line := await stderr.readline():
            text = line.decode(errors="replace").rstrip()
            if text:
                self._log(Level.WARNING, f"training process: {text[:STDERR_LINE_LIMIT]}")


# ----------------------------------------------------------------------------------------------- the child's side


class _Channel:
    """Frames to the engine from any thread (the trainer's and its checkpoint writer's)."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._lock = threading.Lock()
        self.library: KernelLibrary | None = None
        self._counts = (0, 0)

    def send(self, message: FromTrainer) -> None:
        data = frame(message)
        with self._lock:
            self._out.write(data)
            self._out.flush()

    def emit(self, event: AnyEvent) -> None:
        self.send(Emitted(event=event))
        if isinstance(event, EpochCompleted) and self.library is not None:
            stats = self.library.stats
            counts = (stats.cache_hits, stats.cache_misses)
            if counts != self._counts:
                self._counts = counts
                self.send(CacheCounts(hits=counts[0], misses=counts[1]))

    def quarantined(self, blueprint_id: str, version: str, reason: str) -> None:
        self.send(Quarantined(blueprint_id=blueprint_id, version=version, reason=reason))


def _die_with_parent() -> None:
    """SIGKILL when the engine dies, however it dies (Linux); end-of-file on stdin covers the rest."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(0)


def _follow(inbox: IO[bytes], control: TrainingControl, begun: threading.Event, policy: PolicyBox) -> None:
    """Mirror the engine's Control frames and its go-ahead (Begin); end-of-file or a broken frame means the engine
    is gone: exit at once, writing nothing more."""
    while True:
        try:
            header = inbox.read(HEADER.size)
            if len(header) < HEADER.size:
                break
            message = _decode(_to_trainer, inbox.read(_length(header)))
        except (ChannelBroken, OSError):
            break
        if isinstance(message, Begin):
            begun.set()
        elif isinstance(message, PolicyChoice):
            policy.set(message.spec)
        elif isinstance(message, Control):
            control.set_paused(message.paused)
            if message.stopped:
                control.stop()
    release_private_cache()  # os._exit runs no atexit handlers
    os._exit(0)


def _kernel_source(start: Start, catalog: Catalog, channel: _Channel) -> KernelSource:
    cfg = start.config
    if not cfg.training.compile:
        return EagerKernelSource(catalog)
    private_cache_dir()  # this process's own inductor cache, not the engine's (inherited through the environment)
    target = start.kernel_target
    library = open_library(
        cfg.library,
        Path(start.state_dir),
        start.signing_key,
        catalog,
        identity=Identity.here(cpu_isa(), device=cfg.training.device)  # the engine's probe failed: inductor's word
        if target is None
        else Identity.here(target.cpu_isa, device=cfg.training.device, compiler=target.compiler),
        on_quarantine=channel.quarantined,
    )
    channel.library = library
    s = settings_for(cfg.tezzeret.compilation.default_strategy, cfg.training.device)
    return LibraryKernelSource(
        library,
        s.backend,
        s.mode or "default",
        refresh=lambda: _add_user_blueprints(catalog, library),
        refresh_s=cfg.tezzeret.polling.refresh_interval_minutes * 60,
    )


def _add_user_blueprints(catalog: Catalog, library: KernelLibrary) -> None:
    """The library's usable user blueprints join the catalog, unloaded until one is grafted: only a compiled kernel
    (validated in the sandbox) is ever offered."""
    try:
        extend_catalog(catalog, library.blueprints)
    except UserBlueprintError as exc:
        print(f"user blueprints: {exc}; the catalog stays as it is", file=sys.stderr)


def _policy(start: Start, box: PolicyBox, task: str, emit: Callable[[AnyEvent], None]) -> PolicyFollower:
    """Tamiyo's policy as `training.policy` (or the operator, later) names it; the heuristic decides while it is
    "heuristic" or anything fails."""
    cfg, state_dir, key = start.config.library, Path(start.state_dir), start.signing_key
    return PolicyFollower(box, key=key, task=task, emit=emit, policies=lambda: open_policies(cfg, state_dir, key))


def _loaded_frame(loaded: LoadedTask) -> TaskLoaded:
    task = loaded.task
    return TaskLoaded(
        task=task.name,
        metric=task.metric.info(),
        device=str(loaded.train[0].device),
        slots=[SlotInfo(slot.name, loaded.shapes[slot.name].tag) for slot in task.slots],
    )


def main() -> int:
    for signum in (signal.SIGINT, signal.SIGTERM):  # meant for the engine, which stops training cleanly
        signal.signal(signum, signal.SIG_IGN)
    _die_with_parent()
    channel = _Channel(os.fdopen(os.dup(1), "wb"))
    os.dup2(2, 1)  # anything printed goes to stderr, never into the channel
    inbox = sys.stdin.buffer
    header = inbox.read(HEADER.size)
    if len(header) < HEADER.size:
        return 0  # the engine went away before it said anything
    try:
        start = _decode(_to_trainer, inbox.read(_length(header)))
    except ChannelBroken as exc:
        start = exc
    if not isinstance(start, Start):
        print(f"training process: the first frame must be Start, not {start}", file=sys.stderr)
        return 2
    control, begun, policy = TrainingControl(), threading.Event(), PolicyBox(start.config.training.policy)
    threading.Thread(target=_follow, args=(inbox, control, begun, policy), name="esper-control", daemon=True).start()
    state_dir = Path(start.state_dir)
    cfg = start.config.training
    try:
        import torch

        ctx = TaskContext(device=torch.device(resolve_device(cfg.device)), seed=cfg.seed, data_dir=state_dir / "data")
        loaded = load_task(cfg.task, ctx, cfg)
    except (TaskError, DeviceError) as exc:
        channel.send(TaskRefused(reason=str(exc)))
        return 2
    channel.send(_loaded_frame(loaded))
    while not begun.wait(0.1):  # the engine's go-ahead: its forge has kernels for these slots
        if control.stopped:
            return 0
    catalog = Catalog(loader=usercode.load)  # this process may run user blueprints' code (the engine may not)
    try:
        kernels = _kernel_source(start, catalog, channel)
    except LibraryUnavailable as exc:
        channel.emit(TrainingFailed(source=Subsystem.TOLARIA, error=f"library: {exc}"))
        return 1
    if channel.library is not None:
        _add_user_blueprints(catalog, channel.library)
    trainer = Trainer(
        cfg,
        catalog,
        kernels,
        channel.emit,
        control,
        task=loaded,
        state_dir=state_dir,
        signing_key=start.signing_key,
        faults=FaultPlan.parse(start.faults),
        run_id=start.run_id,
    )
    trainer.controller.policy = _policy(start, policy, loaded.task.name, channel.emit)
    gc.freeze()  # torch's and the engine's import-time objects: the collector never rescans them while training
    try:
        trainer.run()
    except Exception:  # reported as TrainingFailed by run() itself
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    release_private_cache()  # os._exit runs no atexit handlers
    sys.stderr.flush()
    os._exit(code)  # every frame is flushed as sent; no finalisation racing the thread still reading stdin
