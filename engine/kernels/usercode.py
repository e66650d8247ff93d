"""A user blueprint's code: read without running it, and load it only where it may run.

Who runs a user blueprint's code: the sandboxed compile worker (forge/worker.py), to validate and compile it,
and the training process of an engine that grafts its kernel. Never the engine process, and never
`esper-tui blueprint add`: `describe` reads the source with `ast` only (the class, its `serves`, its
docstring), so a hostile file can do nothing when it is added.

`load` turns signed source into a class: the text is compiled under a file name of its own and executed as a
module `esper_tui_user.<blueprint>_<sha12>`, the same name in the worker and the training process, because a
compiled kernel's code looks its free names up in that module's globals.

`probe` is the worker's first look at a user class, before any compile: build it, run one forward eagerly
on a small batch with file, socket and process access refused, and check the output's shape and values.
Every refusal is one line (`UserCodeRefused`); `refusal` turns anything else the compile raises into one.
"""

from __future__ import annotations

import ast
import hashlib
import linecache
import resource
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from esper_tui.engine.kernels.catalog import USER_FAMILY, Blueprint
from esper_tui.engine.kernels.shapes import KINDS as SHAPE_KINDS
from esper_tui.engine.kernels.shapes import SlotKind, SlotShape

USER_PACKAGE = "esper_tui_user"
KINDS: tuple[SlotKind, ...] = tuple(SHAPE_KINDS.values())
DEFAULT_SERVES: tuple[SlotKind, ...] = ("vector",)
PROBE_BATCH = 8
REASON_CHARS = 300
# Audit events a forward has no business raising: files, sockets, processes.
_FORBIDDEN = ("open", "socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork")


class UserCodeRefused(Exception):
    """A user blueprint that must not be compiled or grafted; the message is the one-line reason."""


@dataclass(frozen=True)
class SourceFacts:
    """What `describe` read from a source without running it."""

    class_name: str
    serves: tuple[SlotKind, ...]
    doc: str  # the class docstring's first line, or ""


def describe(source: str, class_name: str, filename: str = "<blueprint>") -> SourceFacts:
    """The class `class_name` of a module's source, read with `ast` (nothing is executed).

    Refused (UserCodeRefused): a syntax error, no top-level class of that name, or a `serves` that is not a
    literal tuple of slot kinds.
    """
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as exc:
        raise UserCodeRefused(f"{filename}:{exc.lineno}: syntax error: {exc.msg}") from None
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    node = classes.get(class_name)
    if node is None:
        known = ", ".join(classes) or "none"
        raise UserCodeRefused(f"{filename}: no top-level class {class_name!r} (classes: {known})")
    serves = DEFAULT_SERVES
    for stmt in node.body:
        if isinstance(stmt, ast.Assign):
            targets, value = stmt.targets, stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            targets, value = [stmt.target], stmt.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "serves" for t in targets):
            serves = _serves(value, filename, class_name)
    doc = (ast.get_docstring(node) or "").strip().splitlines()
    return SourceFacts(class_name, serves, doc[0] if doc else "")


def _serves(value: ast.expr, filename: str, class_name: str) -> tuple[SlotKind, ...]:
    try:
        kinds = ast.literal_eval(value)
    except ValueError:
        kinds = None
    if isinstance(kinds, str):
        kinds = (kinds,)
    if not isinstance(kinds, tuple | list) or not kinds or not all(k in KINDS for k in kinds):
        raise UserCodeRefused(f"{filename}: {class_name}.serves must be a literal tuple of {', '.join(KINDS)}")
    return tuple(k for k in KINDS if k in kinds)


def from_source(blueprint_id: str, source: str, class_name: str) -> Blueprint:
    """A user blueprint from its source alone (the compile worker's view of a request): the kinds it serves are
    read from the class as `describe` reads them."""
    return Blueprint(
        blueprint_id,
        USER_FAMILY,
        "",
        None,
        serves=describe(source, class_name).serves,
        source=source,
        class_name=class_name,
    )


def module_name(blueprint: Blueprint) -> str:
    """The module a user blueprint's source runs as: one name per (blueprint, source) in every process."""
    digest = hashlib.sha256(blueprint.source.encode()).hexdigest()[:12]
    return f"{USER_PACKAGE}.{blueprint.blueprint_id}_{digest}"


def _package() -> types.ModuleType:
    package = sys.modules.get(USER_PACKAGE)
    if package is None:
        package = types.ModuleType(USER_PACKAGE, "user blueprints, loaded from the library's signed source")
        package.__path__ = []
        sys.modules[USER_PACKAGE] = package
    return package


def load(blueprint: Blueprint) -> Blueprint:
    """The blueprint with its class loaded from its (verified) source. Only the compile worker and the training
    process call this. UserCodeRefused when the module raises at import or lacks a suitable class."""
    if blueprint.module is not None or not blueprint.is_user:
        return blueprint
    name = module_name(blueprint)
    module = sys.modules.get(name)
    if module is None:
        _package()
        module = types.ModuleType(name)
        module.__file__ = f"<user blueprint {blueprint.blueprint_id}>"
        # dynamo reads a traced function's source through inspect, which finds it here (mtime None: never evicted)
        linecache.cache[module.__file__] = (
            len(blueprint.source),
            None,
            blueprint.source.splitlines(True),
            module.__file__,
        )
        sys.modules[name] = module
        try:
            code = compile(blueprint.source, module.__file__, "exec")
            exec(code, module.__dict__)  # the user's code, on purpose: this is the worker or the trainer
        except (Exception, SystemExit) as exc:  # SystemExit: a module that calls sys.exit()
            del sys.modules[name]
            raise UserCodeRefused(f"import failed: {_memory_hint(exc)}") from None
    cls = getattr(module, blueprint.class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise UserCodeRefused(f"{blueprint.class_name} is not an nn.Module class")
    return blueprint.with_module(cls)


def one_line(exc: BaseException) -> str:
    """`Type: first line of the message`, at most REASON_CHARS characters."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line[:REASON_CHARS]


class _Guard:
    """An audit hook (installed once per process: hooks cannot be removed) that refuses file, socket and process
    access while `watching` is set, and remembers the first attempt even if the user's code swallows the error."""

    installed = False
    watching = ""
    attempt = ""

    @classmethod
    def hook(cls, event: str, args: tuple[Any, ...]) -> None:
        if cls.watching and event.startswith(_FORBIDDEN):
            what = f"{cls.watching} tried {event}" + (f" {args[0]!r}" if args and event == "open" else "")
            cls.attempt = cls.attempt or what
            raise PermissionError(what)


@contextmanager
def guarded(phase: str) -> Iterator[None]:
    """Run user code with file, socket and process access refused; UserCodeRefused if it tried any."""
    if not _Guard.installed:
        sys.addaudithook(_Guard.hook)
        _Guard.installed = True
    _Guard.watching, _Guard.attempt = phase, ""
    try:
        yield
    finally:
        _Guard.watching = ""
    if _Guard.attempt:
        raise UserCodeRefused(_Guard.attempt)


def probe(blueprint: Blueprint, shape: SlotShape) -> None:
    """Build the user's module for a slot shape and run one eager forward on a small batch; UserCodeRefused (one
    line) when it does not serve the shape, raises, touches files, sockets or processes, or returns the wrong
    shape or non-finite values."""
    if (unfit := blueprint.unfit(shape)) is not None:
        raise UserCodeRefused(unfit)
    try:
        with guarded("build"):
            module = blueprint.build(shape)
    except UserCodeRefused:
        raise
    except (Exception, SystemExit) as exc:
        raise UserCodeRefused(f"build failed: {_memory_hint(exc)}") from None
    x = torch.randn(PROBE_BATCH, *shape.in_shape)
    try:
        with guarded("forward"), torch.no_grad():
            y = module(x)
    except UserCodeRefused:
        raise
    except (Exception, SystemExit) as exc:
        raise UserCodeRefused(f"forward failed: {_memory_hint(exc)}") from None
    want = (PROBE_BATCH, *shape.out_shape)
    if not isinstance(y, torch.Tensor):
        raise UserCodeRefused(f"forward returned {type(y).__name__}, not a tensor")
    if tuple(y.shape) != want:
        raise UserCodeRefused(f"wrong output shape: {list(y.shape)} for input {list(x.shape)}, expected {list(want)}")
    if not torch.isfinite(y).all():
        raise UserCodeRefused("non-finite output (NaN or infinity) on a finite input")


def _memory_hint(exc: BaseException) -> str:
    line = one_line(exc)
    if isinstance(exc, MemoryError) or "can't allocate memory" in line or "out of memory" in line:
        soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = "" if soft == resource.RLIM_INFINITY else f" ({soft >> 20} MiB)"
        return f"memory: more than the sandbox's limit{limit}: {line}"[:REASON_CHARS]
    return line


def refusal(exc: BaseException) -> str:
    """One line for what a user blueprint's compile raised: a graph break named as such, else the first line."""
    if isinstance(exc, UserCodeRefused):
        return str(exc)
    unsupported: tuple[type[BaseException], ...] = ()
    try:
        from torch._dynamo.exc import Unsupported, UserError

        unsupported = (Unsupported, UserError)
    except ImportError:  # pragma: no cover - torch without dynamo
        pass
    if isinstance(exc, unsupported) or "graph break" in str(exc).lower():
        return f"graph break under fullgraph=True: {one_line(exc)}"[:REASON_CHARS]
    return f"compile failed: {_memory_hint(exc)}"
