"""What this machine's kernels are built for (the vector ISA inductor picks, the C++ compiler), asked of a child.

Probing imports torch's inductor, about 80 MB that then stays resident (the engine held 343 MB with it, 261 MB
without), and neither the engine nor a training process whose seeds run eager ever runs a kernel: the answer is
all they need. So the engine runs `python -m esper_tui.engine.kernels.probe`, which prints the answer as one JSON
line and exits, and hands it to its training process. Where the child fails, the engine probes in-process (and
says why): an identity is never guessed.
"""

from __future__ import annotations

import asyncio
import os
import sys

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


def main() -> int:
    answer = msgspec.json.encode(probe_here())
    sys.stdout.flush()  # anything torch printed comes first; the answer is the last line
    sys.stdout.buffer.write(answer + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
