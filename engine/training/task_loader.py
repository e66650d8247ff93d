"""Finding, calling and checking a task: `--task NAME | path/to/file.py:factory | package.module:factory`.

Where it runs: only in the training process. The engine checks the spec's form (task_spec.py) before it starts, and
never imports the user's file; the training process loads it (`load_task`) and tells the engine what it found, or
refuses it in one line.

What is refused, in one line of TaskError each: a file or module that is not there or fails to import, a factory
that is missing, raises, or returns something other than a Task; a task whose form is wrong (`Task.problem`: no
slots, a batch size out of range...); a slot on a module the host does not have; and a host whose forward pass,
loss or metric on a sample batch raises or is not finite.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from esper_tui.engine.config import TrainingConfig
from esper_tui.engine.kernels.shapes import SlotShape
from esper_tui.engine.training.host import probe_slots
from esper_tui.engine.training.task import Split, Task, TaskContext, TaskError, one_line, rng_devices
from esper_tui.engine.training.task_spec import spec_problem

Factory = Callable[[TaskContext], Task]


@dataclass(frozen=True)
class LoadedTask:
    """A task that passed every check: its splits on the device and each slot's shape."""

    task: Task
    spec: str
    train: Split
    val: Split
    test: Split
    shapes: dict[str, SlotShape]


def _builtin(name: str, cfg: TrainingConfig) -> Factory:
    if name == "digits":
        from esper_tui.engine.training.tasks import digits

        return digits.task
    from esper_tui.engine.training.tasks import mnist1d

    return partial(mnist1d.task, cfg=cfg)


def _import_file(path: str) -> Any:
    """The file as a module of its own name (`esper_task_<stem>`), registered so pickling and dataclasses work."""
    file = Path(path).resolve()
    name = "esper_task_" + re.sub(r"\W", "_", file.stem)
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise TaskError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def factory_for(spec: str, cfg: TrainingConfig) -> Factory:
    """The factory a spec names (importing the user's file or module: the training process only)."""
    if (problem := spec_problem(spec)) is not None:
        raise TaskError(problem)
    if ":" not in spec:
        return _builtin(spec, cfg)
    where, attr = spec.rsplit(":", 1)
    try:
        module = _import_file(where) if where.endswith(".py") else importlib.import_module(where)
    except TaskError:
        raise
    except Exception as exc:
        raise TaskError(f"task {spec}: importing {where} raised {type(exc).__name__}: {one_line(str(exc))}") from None
    found = getattr(module, attr, None)
    if not callable(found):
        raise TaskError(f"task {spec}: {where} has no function {attr}")
    return found  # type: ignore[no-any-return]


def load_task(spec: str, ctx: TaskContext, cfg: TrainingConfig) -> LoadedTask:
    """The task `spec` names, called and checked; TaskError (one line) for anything that cannot be trained."""
    return call_factory(factory_for(spec, cfg), ctx, spec)


def _user_call(spec: str, what: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except TaskError as exc:
        raise TaskError(f"task {spec}: {exc}") from None
    except Exception as exc:
        raise TaskError(f"task {spec}: {what} raised {type(exc).__name__}: {one_line(str(exc))}") from None


def call_factory(factory: Factory, ctx: TaskContext, spec: str) -> LoadedTask:
    """Call the factory with the RNG seeded from the run's seed (the host's init is reproducible and the caller's
    RNG untouched), then check the task on one sample batch."""
    with torch.random.fork_rng(devices=rng_devices(ctx.device)):
        torch.manual_seed(ctx.seed)
        task = _user_call(spec, "the factory", lambda: factory(ctx))
    if not isinstance(task, Task):
        raise TaskError(f"task {spec}: the factory returned {type(task).__name__}, not a Task")
    if (problem := task.problem()) is not None:
        raise TaskError(f"task {spec}: {problem}")
    return check(task, ctx.device, spec)


def _finite(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and bool(torch.isfinite(value.detach()).all())


def check(task: Task, device: torch.device, spec: str) -> LoadedTask:
    """Put the host and splits on `device`, find each slot's shape with one forward pass on a sample batch, and
    refuse a host whose outputs, loss or metric on that batch are not finite."""
    task.host.to(device)
    train, val, test = (tuple(t.to(device) for t in split) for split in task.data.splits())
    x, y = train[0][: task.batch_size], train[1][: task.batch_size]
    shapes, out = _user_call(spec, "the host's forward pass", lambda: probe_slots(task.host, task.slots, x))
    if not _finite(out):
        raise TaskError(f"task {spec}: the host produces non-finite outputs on a sample batch")
    loss = _user_call(spec, "the loss", lambda: task.loss(out, y))
    if not _finite(loss) or loss.numel() != 1:
        raise TaskError(f"task {spec}: the loss on a sample batch is not one finite number")
    value = _user_call(spec, "the metric", lambda: task.metric(out, y))
    if not torch.isfinite(torch.tensor(value)):
        raise TaskError(f"task {spec}: the metric on a sample batch is not finite")
    _user_call(spec, "the optimizer", lambda: task.optimizer(list(task.host.parameters())))
    return LoadedTask(task, spec, train, val, test, shapes)  # type: ignore[arg-type]
