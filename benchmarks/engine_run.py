"""A headless engine in a subprocess for the benchmarks that watch one run from outside (soak, memprofile)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path


@contextlib.contextmanager
def headless_engine(
    state_dir: Path, config: Path | None, *extra: str, env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`esper-tui --no-ui` on `state_dir` (and `config`), output discarded; stopped with SIGTERM on leaving, as an
    operator would (killed if it has not ended a minute later)."""
    command = [sys.executable, "-m", "esper_tui", "--no-ui", "--interval", "30", "--state-dir", str(state_dir)]
    engine = subprocess.Popen(
        [*command, *(["--config", str(config)] if config else []), *extra],
        env=None if env is None else dict(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield engine
    finally:
        engine.send_signal(signal.SIGTERM)
        try:
            engine.wait(60)
        except subprocess.TimeoutExpired:
            engine.kill()


def check_alive(engine: subprocess.Popen[bytes]) -> None:
    """RuntimeError when the engine has already exited (a soak of a dead engine measures nothing)."""
    if engine.poll() is not None:
        raise RuntimeError(f"the engine exited early with {engine.returncode}")
