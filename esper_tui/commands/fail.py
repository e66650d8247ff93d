"""How a command ends on bad input or trouble: one line on stderr, prefixed like every esper-tui error.

A module of its own because every command uses it (the CLI, `forge-worker`, `replay`), and no command
should import another for it.
"""

from __future__ import annotations

import sys


def fail(message: str, code: int) -> int:
    """One line on stderr, prefixed like every esper-tui error; returns the exit code to give."""
    print(f"esper-tui: {message}", file=sys.stderr)
    return code
