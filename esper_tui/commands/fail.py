"""How a command ends on bad input or trouble: one line on stderr, prefixed like every esper-tui error.

A module of its own because every command uses it (the CLI, `forge-worker`, `replay`), and no command
should import another for it.
"""

from __future__ import annotations

import sys
from pathlib import Path


def fail(message: str, code: int) -> int:
    """One line on stderr, prefixed like every esper-tui error; returns the exit code to give."""
    print(f"esper-tui: {message}", file=sys.stderr)
    return code


def missing_state_dir(state_dir: Path) -> int | None:
    """Exit 1 with one line when `state_dir` does not exist, else None. The read-only commands agree on it:
    nothing to read there is trouble (a mistyped path), while an existing directory with nothing in it yet is
    an answer, exit 0 (`runs` exited 0 on a missing directory and `reports` 1)."""
    if state_dir.is_dir():
        return None
    return fail(f"no state directory at {state_dir} (pass --state-dir: the one the engine ran with)", 1)
