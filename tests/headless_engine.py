"""A real headless engine in a subprocess, for the multi-process tests (outage, forged commands).

Its stdout and stderr go to files, not pipes: an engine whose JSON lines nobody reads from a full pipe
would block on its next write and stop running. Waits poll with a deadline that only guards against hangs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

CLI = [sys.executable, "-m", "esper_tui"]
DEADLINE_S = 300.0


def wait_for(condition: Callable[[], Any], what: str, alive: Callable[[], bool] = lambda: True) -> Any:
    """Poll until `condition()` is truthy and return it; fail if `alive()` turns false first."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        assert alive(), f"the engine exited while waiting for {what}"
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


class HeadlessEngine:
    """`esper-tui --no-ui --json <args>`; killed on leaving the `with` block if it is still running."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self._out, self._err = workdir / "engine.jsonl", workdir / "engine.err"
        with self._out.open("w") as stdout, self._err.open("w") as stderr:
            self.proc = subprocess.Popen(
                [*CLI, "--no-ui", "--json", *args],
                stdout=stdout,
                stderr=stderr,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def __enter__(self) -> HeadlessEngine:
        return self

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def snapshots(self) -> list[dict[str, Any]]:
        """The complete JSON lines written so far (a line still being written is left for later)."""
        lines = self._out.read_text().splitlines(keepends=True)
        return [json.loads(line) for line in lines if line.startswith("{") and line.endswith("\n")]

    def stderr(self) -> str:
        return self._err.read_text()

    def wait_for(self, condition: Callable[[], Any], what: str) -> Any:
        return wait_for(condition, what, self.alive)

    def identity(self) -> tuple[str, str]:
        """(run id, frame public key) from the line the engine prints at start."""
        line = self.wait_for(
            lambda: next((x for x in self.stderr().splitlines() if " frames signed by " in x), None), "its identity"
        )
        run_id = line.split("engine ", 1)[1].split(" ", 1)[0]
        return run_id, line.split("frames signed by ", 1)[1].split(";", 1)[0]

    def finish(self) -> int:
        return self.proc.wait(timeout=DEADLINE_S)
