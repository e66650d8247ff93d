"""Sandboxed compile workers: child processes in their own session, memory-capped, killed as a group.

Each worker is `python -m esper_tui.engine.forge.worker` in a new session (so its process group holds
every g++ it spawns) with RLIMIT_AS set. A timeout kills the whole group: killing only the parent
leaves g++ orphans running (measured). Workers are reused for `jobs_per_worker` jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import resource
import signal
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import msgspec

from esper_tui.engine.forge.protocol import CompileRequest, CompileResponse
from esper_tui.engine.forge.worker import MAX_FRAME

_HEADER = struct.Struct("<I")


class WorkerError(RuntimeError):
    """The worker died or broke the protocol; the job may be retried on a fresh worker."""


class CompileTimeout(WorkerError):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"compile exceeded its {seconds:.0f} s timeout; worker process group killed")
        self.seconds = seconds


_PR_SET_PDEATHSIG = 1


def _limits(memory_limit_mb: int) -> Callable[[], None]:
    def apply() -> None:  # runs in the child between fork and exec
        limit = memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        with contextlib.suppress(OSError, AttributeError):  # Linux: die with the engine, never outlive it
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return apply


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks): tells a reused pid from the original."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[19]


def _identity(pid: int) -> str:
    return f"{_boot_id()} {_start_time(pid)}"


def reap_stale(registry: Path) -> list[int]:
    """Kill the process groups of workers a crashed engine left behind (their g++ children included).

    Each worker is a session leader, so its pid is its group id; the registry holds one file per live
    worker (boot id and start time), removed when the worker is closed. A group is killed only if it is
    provably ours: same boot, and either the leader is still the recorded process (same start time) or
    the leader is gone and the group lives on (Linux never reuses a pid that is still a group id).
    Returns the group ids that were signalled.
    """
    killed = []
    if not registry.is_dir():
        return killed
    for entry in registry.iterdir():
        with contextlib.suppress(ValueError, OSError):
            pgid = int(entry.name)
            boot, _, started = entry.read_text().partition(" ")
            leader = _start_time(pgid)
            ours = boot == _boot_id() and (leader == started.strip() if leader is not None else True)
            if ours:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
                    killed.append(pgid)
        entry.unlink(missing_ok=True)
    return killed


class Worker:
    def __init__(self, proc: asyncio.subprocess.Process, log_path: Path, registry: Path | None = None) -> None:
        self.proc = proc
        self._registry = registry
        self.pid = proc.pid
        self.log_path = log_path
        self.jobs_done = 0
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(CompileResponse)

    @classmethod
    async def spawn(cls, log_dir: Path, memory_limit_mb: int, registry: Path | None = None) -> Worker:
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"worker-{os.getpid()}-{os.urandom(3).hex()}.log"
        with open(log_path, "ab") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "esper_tui.engine.forge.worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                start_new_session=True,
                preexec_fn=_limits(memory_limit_mb),
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        worker = cls(proc, log_path, registry)
        if registry is not None:
            registry.mkdir(parents=True, exist_ok=True)
            (registry / str(proc.pid)).write_text(_identity(proc.pid))
        return worker

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def compile(self, request: CompileRequest, timeout_s: float) -> CompileResponse:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        payload = self._encoder.encode(request)
        try:
            self.proc.stdin.write(_HEADER.pack(len(payload)) + payload)
            await self.proc.stdin.drain()
            head = await asyncio.wait_for(self.proc.stdout.readexactly(_HEADER.size), timeout_s)
            (n,) = _HEADER.unpack(head)
            if n > MAX_FRAME:
                raise WorkerError(f"worker {self.pid} sent an oversized frame ({n} bytes)")
            body = await asyncio.wait_for(self.proc.stdout.readexactly(n), 30)
        except TimeoutError:
            self.kill()
            await self.wait()
            raise CompileTimeout(timeout_s) from None
        except (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError) as exc:
            self.kill()
            code = await self.wait()
            raise WorkerError(f"worker {self.pid} died (exit {code}); see {self.log_path}") from exc
        self.jobs_done += 1
        return self._decoder.decode(body)

    def kill(self) -> None:
        """SIGKILL the worker's whole process group (the worker and every compiler it started)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    async def wait(self) -> int | None:
        try:
            code = await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            return None
        if self._registry is not None:
            (self._registry / str(self.pid)).unlink(missing_ok=True)
        return code

    async def close(self) -> None:
        if self.alive and self.proc.stdin is not None:
            self.proc.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 5)
        self.kill()  # also reaps any g++ the worker left in its group
        await self.wait()


class WorkerPool:
    """Idle workers wait here between jobs; the forge bounds how many are busy at once."""

    def __init__(
        self, log_dir: Path, *, memory_limit_mb: int, jobs_per_worker: int, registry: Path | None = None
    ) -> None:
        self._log_dir = log_dir
        self._registry = registry
        self._memory_limit_mb = memory_limit_mb
        self._jobs_per_worker = jobs_per_worker
        self._idle: list[Worker] = []
        self._busy: set[Worker] = set()

    async def compile(self, request: CompileRequest, timeout_s: float) -> tuple[CompileResponse, int]:
        """Run one job on a reused or fresh worker; returns the response and the worker's pid."""
        worker = (
            self._idle.pop() if self._idle else await Worker.spawn(self._log_dir, self._memory_limit_mb, self._registry)
        )
        self._busy.add(worker)
        try:
            response = await worker.compile(request, timeout_s)
        except BaseException:
            worker.kill()
            raise
        finally:
            self._busy.discard(worker)
        if worker.alive and worker.jobs_done < self._jobs_per_worker:
            self._idle.append(worker)
        else:
            await worker.close()
        return response, worker.pid

    async def prestart(self, count: int) -> None:
        """Spawn idle workers now: their ~4 s start-up (torch, ISA probe) overlaps the engine's own."""
        while len(self._idle) + len(self._busy) < count:
            self._idle.append(await Worker.spawn(self._log_dir, self._memory_limit_mb, self._registry))

    def pids(self) -> list[int]:
        return [w.pid for w in [*self._idle, *self._busy]]

    async def close(self) -> None:
        workers, self._idle = [*self._idle, *self._busy], []
        self._busy.clear()
        await asyncio.gather(*(w.close() for w in workers), return_exceptions=True)
