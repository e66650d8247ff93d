"""The form of a task spec (`--task`, `[training] task`), judged without importing anything of the task.

The engine calls `spec_problem` before it starts (a built-in name it knows, or a factory reference whose file
exists), and never imports the user's file: that happens in the training process only (task_loader.py).
"""

from __future__ import annotations

import re
from pathlib import Path

from esper_tui.engine.config.ranges import TASK_SPEC_PATTERN

BUILTIN = ("mnist1d", "digits")
DEFAULT = "mnist1d"


def spec_problem(spec: str) -> str | None:
    """What is wrong with a task spec's form, in one line, or None."""
    if re.match(TASK_SPEC_PATTERN, spec) is None:
        known = ", ".join(BUILTIN)
        return f"--task {spec!r}: expected a built-in name ({known}), path/to/file.py:factory or package.module:factory"
    if ":" not in spec and spec not in BUILTIN:
        return f"--task {spec!r}: no such built-in task (known: {', '.join(BUILTIN)})"
    path = spec.rsplit(":", 1)[0]
    if path.endswith(".py") and not Path(path).is_file():
        return f"--task {spec!r}: no file {path}"
    return None
