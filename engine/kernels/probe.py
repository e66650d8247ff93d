"""What this machine's kernels are built for (the vector ISA inductor picks, the C++ compiler), asked of a child.

Probing imports torch's inductor, about 80 MB that then stays resident (the engine held 343 MB with it, 261 MB
without), and neither the engine nor a training process whose seeds run eager ever runs a kernel: the answer is
all they need. So the engine runs `python -m esper_tui.engine.kernels.probe`, which prints the answer as one JSON
line and exits, and hands it to its training process. Where the child fails, the engine probes in-process (and
says why): an identity is never guessed.

The child costs 3-10 s of every start (torch's and inductor's import), for an answer that changes only with the
Python, torch, CPU or C++ compiler: `known_target` keeps it in the user's cache directory under a name hashed from
exactly those, and reads it back only from a file of this user that nobody else may write.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import sys
from pathlib import Path

import msgspec

PROBE_COMMAND: tuple[str, ...] = (sys.executable, "-m", "esper_tui.engine.kernels.probe")
PROBE_TIMEOUT_S = 300.0  # torch's import and the ISA probe take 3-10 s on a loaded 2-core machine


class KernelTarget(msgspec.Struct, frozen=True, kw_only=True):
    """The parts of a kernel's identity only inductor can tell (the rest, torch and Python versions, are known)."""

    cpu_isa: str
    compiler: str


class ProbeFailed(RuntimeError):
    """The child could not say: it did not start, exited with an error, timed out or printed no answer."""


def probe_here() -> KernelTarget:
    """Ask inductor in this process (it stays loaded)."""
    from esper_tui.engine.kernels.compiled import compiler_id, cpu_isa

    return KernelTarget(cpu_isa=cpu_isa(), compiler=compiler_id())


async def probe_child(command: tuple[str, ...] = PROBE_COMMAND, timeout_s: float = PROBE_TIMEOUT_S) -> KernelTarget:
    """Ask a child process. Its environment is this one's without the inductor cache pointer, so it probes (and
    caches) in the default cache the compile workers use. Raises ProbeFailed."""
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    try:
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
    except OSError as exc:
        raise ProbeFailed(f"cannot start {command[-1]}: {exc.strerror or exc}") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ProbeFailed(f"no answer within {timeout_s:g} s") from None
    if proc.returncode != 0:
        last = (err.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise ProbeFailed(f"exit {proc.returncode}: {last}")
    lines = out.strip().splitlines()
    try:
        return msgspec.json.decode(lines[-1] if lines else b"", type=KernelTarget)
    except msgspec.DecodeError as exc:
        raise ProbeFailed(f"unreadable answer ({exc})") from None


def _cpu_flags() -> str:
    """The CPU's feature flags (what the ISA probe decides on), or its model name where /proc has none."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[-1].strip()
    return platform.processor()


def _compiler_file() -> str:
    """The C++ compiler inductor would find (CXX, else g++ on PATH), with its size and time: a new one is new."""
    name = os.environ.get("CXX") or "g++"
    path = shutil.which(name) or name
    try:
        st = os.stat(path)
    except OSError:
        return path
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def cache_file() -> Path:
    """Where this Python, torch, CPU and compiler's answer is kept (XDG_CACHE_HOME, else ~/.cache)."""
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "none"
    blob = json.dumps(
        [sys.executable, platform.python_version(), torch_version, platform.machine(), _cpu_flags(), _compiler_file()]
    )
    name = f"kernel-target-{hashlib.sha256(blob.encode()).hexdigest()[:24]}.json"
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "esper-tui" / name


def _cached(path: Path) -> KernelTarget | None:
    try:
        st = path.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o022:  # only what this user alone could have written
            return None
        return msgspec.json.decode(path.read_bytes(), type=KernelTarget)
    except (OSError, msgspec.DecodeError):
        return None


def _remember(path: Path, target: KernelTarget) -> None:
    """Best effort: a cache that cannot be written only means the next start probes again."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with contextlib.suppress(OSError):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(msgspec.json.encode(target))
        os.replace(tmp, path)
    with contextlib.suppress(OSError):
        tmp.unlink()


async def known_target(command: tuple[str, ...] = PROBE_COMMAND) -> tuple[KernelTarget, str]:
    """This machine's answer: cached, else asked of a child (and cached), else probed in this process, with the
    reason to log when the child failed (that answer is not cached: the next start asks a child again)."""
    path = cache_file()
    if (target := _cached(path)) is not None:
        return target, ""
    try:
        target = await probe_child(command)
    except ProbeFailed as exc:
        why = f"kernel identity probe in a child process failed ({exc}); probed in the engine instead"
        return await asyncio.to_thread(probe_here), why
    _remember(path, target)
    return target, ""


def main() -> int:
    answer = msgspec.json.encode(probe_here())
    sys.stdout.flush()  # anything torch printed comes first; the answer is the last line
    sys.stdout.buffer.write(answer + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
