"""Sandboxed compile workers: child processes in their own session, memory-capped, killed as a group.

Each worker is `python -m esper_tui.engine.forge.worker` in a new session (so its process group holds
every g++ it spawns) with RLIMIT_AS set. A timeout kills the whole group: killing only the parent
leaves g++ orphans running (measured). Workers are reused for `jobs_per_worker` jobs.

The trust boundary. A worker runs compiler toolchains on the engine's behalf, so it is treated as
untrusted: it must not be able to sign anything, or touch what the engine keeps. (It still chooses
the bytes of the kernel it was asked for; the engine signs those as that job's output.)

- Its environment is an allow-list (`worker_environment`): never ESPER_* (the signing and operator
  keys), never the engine's TORCHINDUCTOR_* / TRITON_* cache pointers (the engine's verified-only
  kernel cache).
- Where the engine runs as root, the worker runs as an unprivileged account (`esper-worker`, created
  on first use, else `nobody`): supplementary groups cleared, then gid and uid dropped before exec,
  and no_new_privs set, so neither it nor a setuid program it runs can read `<state>/keys/` (0700
  root). Where the engine is an ordinary user, the worker is that same user and *could* read the key
  file; only the environment is scrubbed. The same holds if the unprivileged account cannot execute
  the interpreter (a Python installed under a 0700 home): the worker then runs as the engine's user
  and a warning says so.
- The worker never writes into the engine's state. Its HOME and TMPDIR are its account's scratch
  directory (`<tmp>/esper-worker-<uid>`, kept across workers: inductor's precompiled headers cost
  20-35 s to rebuild); each job gets a fresh directory there, and the engine copies the files the
  worker reports into the staging directory itself: regular files owned by the worker, below the job
  directory, never through a symlink (`take_files`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import pwd
import resource
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import msgspec
import psutil

from esper_tui.engine.forge.protocol import CompileRequest, CompileResponse
from esper_tui.engine.forge.worker import MAX_FRAME

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<I")

WORKER_COMMAND: tuple[str, ...] = (sys.executable, "-m", "esper_tui.engine.forge.worker")
WORKER_USER = "esper-worker"


class WorkerError(RuntimeError):
    """The worker died or broke the protocol; the job may be retried on a fresh worker."""


class CompileTimeout(WorkerError):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"compile exceeded its {seconds:.0f} s timeout; worker process group killed")
        self.seconds = seconds


# --------------------------------------------------------------------------- who the worker runs as


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    uid: int
    gid: int
    drop: bool  # True: the child gives up the engine's (root) identity for this one before exec


def engine_account() -> Account:
    """The engine's own identity: what a worker runs as when there is nothing to drop to."""
    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid with no passwd entry (containers)
        name = str(uid)
    return Account(name, uid, os.getegid(), drop=False)


def _passwd(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _create_system_user(name: str) -> None:
    """`useradd --system` (no home, no login); a failure just leaves the `nobody` fallback."""
    nologin = shutil.which("nologin", path="/usr/sbin:/sbin:/usr/bin:/bin") or "/bin/false"
    options = ["--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent", "--shell", nologin]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            ["useradd", *options, name],
            capture_output=True,
            check=False,
            timeout=60,
        )


@functools.cache
def worker_account() -> Account:
    """Who compile workers run as: an unprivileged account when the engine is root, else the engine's user."""
    if os.geteuid() != 0:
        return engine_account()
    pw = _passwd(WORKER_USER)
    if pw is None:
        _create_system_user(WORKER_USER)
        pw = _passwd(WORKER_USER) or _passwd("nobody")
    if pw is None or pw.pw_uid == 0:
        raise WorkerError(f"no unprivileged account for compile workers (could not create {WORKER_USER!r})")
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid, drop=True)


# Everything a compile needs from the engine's environment; the rest (keys, cache pointers, tokens) stays out.
_ENV_NAMES = frozenset(
    {"PATH", "LANG", "LANGUAGE", "TZ", "CC", "CXX", "LD_LIBRARY_PATH", "PYTHONPATH"}
    | {"CUDA_HOME", "CUDA_VISIBLE_DEVICES"}
)
_ENV_PREFIXES = ("LC_", "OMP_", "MKL_", "KMP_", "GOMP_", "OPENBLAS_")


def worker_environment(account: Account, scratch: Path) -> dict[str, str]:
    """The allow-listed environment, with HOME/TMPDIR at the worker's scratch and USER/LOGNAME its own.

    USER matters: inductor names its default cache `torchinductor_$USER`, and root's is not writable by
    the worker account.
    """
    env = {k: v for k, v in os.environ.items() if k in _ENV_NAMES or k.startswith(_ENV_PREFIXES)}
    env.update(HOME=str(scratch), TMPDIR=str(scratch), USER=account.name, LOGNAME=account.name, PYTHONUNBUFFERED="1")
    return env


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a FIFO never hangs the open


def scratch_dir(account: Account) -> Path:
    """`<tmp>/esper-worker-<uid>`, 0700 and owned by the account: the workers' HOME and TMPDIR.

    Kept across workers and runs (inductor's precompiled headers live there). A symlink or another
    user's directory in its place is refused, not followed.
    """
    path = Path(tempfile.gettempdir()) / f"esper-worker-{account.uid}"
    try:
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
        fd = os.open(path, _DIR_FLAGS)
    except OSError as exc:
        raise WorkerError(f"cannot use {path} as the compile workers' scratch: {exc.strerror}") from None
    try:
        owner = os.fstat(fd).st_uid
        if owner not in (account.uid, os.geteuid()):
            raise WorkerError(f"{path} belongs to uid {owner}, not {account.name}; remove it")
        if owner != account.uid:
            os.fchown(fd, account.uid, account.gid)
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return path


# --------------------------------------------------------------------------- files out of the sandbox


def _open_below(root: Path, parts: Sequence[str]) -> int:
    """Open root/parts... for reading without following a symlink at any step (each one O_NOFOLLOW)."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
        return os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)


def take_files(scratch: Path, job: str, names: Iterable[str], dest: Path, owner: int) -> None:
    """Copy the files a worker reports from `scratch/job` into `dest`, the engine's staging directory.

    The worker owns that tree and may be hostile while the engine may be root, so a name must be
    relative and stay below the job directory, no component may be a symlink, and only regular files
    owned by the worker are taken (no FIFO, device, or hard link to someone else's file). The copies
    are new files the worker holds no handle on. Raises ValueError or OSError on the first refusal.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        parts = PurePosixPath(name).parts
        if not parts or parts[0] == "/" or ".." in parts:
            raise ValueError(f"{name!r} is not a path below the job directory")
        with os.fdopen(_open_below(scratch, [job, *parts]), "rb") as src:
            st = os.fstat(src.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_uid != owner:
                raise ValueError(f"{name!r} is not a regular file of the worker's")
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "xb") as out:
                shutil.copyfileobj(src, out)


def _remove_job_dir(scratch: Path, job: str) -> None:
    """Remove scratch/job with fd-relative calls: a symlink the worker planted is unlinked, never followed."""
    with contextlib.suppress(OSError):
        fd = os.open(scratch, _DIR_FLAGS)
        try:
            shutil.rmtree(job, dir_fd=fd, ignore_errors=True)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- process groups


_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38


def _limits(memory_limit_mb: int) -> Callable[[], None]:
    def apply() -> None:  # runs in the child between fork and exec, after any uid/gid drop
        limit = memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        with contextlib.suppress(OSError, AttributeError):  # Linux only
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the engine, never outlive it
            libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # no setuid program hands privileges back

    return apply


# A registry entry is "<boot time> <leader start time>", both epoch seconds from psutil. Both derive from
# the kernel's boot time, which follows the wall clock, so an NTP step can move them: allow that much.
# A reboot moves boot time by far more, and a pid is only reused after the worker (alive for seconds at
# least: torch takes ~3 s to import) has died and the pid space wrapped.
_CLOCK_SLACK_S = 1.0


def _identity(pid: int) -> str:
    return f"{psutil.boot_time()!r} {psutil.Process(pid).create_time()!r}"


def _provably_ours(pgid: int, record: str) -> bool:
    boot, started = (float(v) for v in record.split())
    if abs(psutil.boot_time() - boot) > _CLOCK_SLACK_S:
        return False  # another boot: the number means nothing now
    try:
        leader = psutil.Process(pgid).create_time()
    except psutil.NoSuchProcess:
        return True  # the leader is gone; a pid still in use as a group id is never reused
    return abs(leader - started) <= _CLOCK_SLACK_S


def reap_stale(registry: Path) -> list[int]:
    """Kill the process groups of workers a crashed engine left behind (their g++ children included).

    Each worker is a session leader, so its pid is its group id; the registry holds one file per live
    worker (boot time and start time), removed when the worker is reaped. A group is killed only if it
    is provably ours: same boot, and either the leader is still the recorded process (same start time)
    or the leader is gone and the group lives on. Returns the group ids that were signalled.
    """
    killed: list[int] = []
    if not registry.is_dir():
        return killed
    for entry in registry.iterdir():
        with contextlib.suppress(ValueError, OSError, psutil.Error):
            pgid = int(entry.name)
            if _provably_ours(pgid, entry.read_text()):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
                    killed.append(pgid)
        entry.unlink(missing_ok=True)
    return killed


# --------------------------------------------------------------------------- workers


_fallback_warned: set[str] = set()


async def _launch(
    command: Sequence[str], account: Account, stderr: BinaryIO, memory_limit_mb: int
) -> tuple[asyncio.subprocess.Process, Path]:
    scratch = await asyncio.to_thread(scratch_dir, account)
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        cwd=scratch,
        start_new_session=True,
        user=account.uid if account.drop else None,
        group=account.gid if account.drop else None,
        extra_groups=[] if account.drop else None,
        preexec_fn=_limits(memory_limit_mb),
        env=worker_environment(account, scratch),
    )
    return proc, scratch


class Worker:
    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        log_path: Path,
        account: Account,
        scratch: Path,
        registry: Path | None = None,
    ) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.log_path = log_path
        self.account = account
        self.scratch = scratch
        self._registry = registry
        self.jobs_done = 0
        self.job_dir: Path | None = None  # the running job's directory in scratch, while there is one
        self.fallback = ""  # why it runs as the engine's user although the engine is root, if it does
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(CompileResponse)

    @classmethod
    async def spawn(
        cls,
        log_dir: Path,
        memory_limit_mb: int,
        registry: Path | None = None,
        *,
        command: Sequence[str] = WORKER_COMMAND,
    ) -> Worker:
        """Start a worker as `worker_account()`; its stderr goes to a log file the engine opens."""
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"worker-{os.getpid()}-{os.urandom(3).hex()}.log"
        account = await asyncio.to_thread(worker_account)
        fallback = ""
        with open(log_path, "ab") as stderr:
            try:
                try:
                    proc, scratch = await _launch(command, account, stderr, memory_limit_mb)
                except PermissionError as exc:
                    if not account.drop or exc.filename is None:
                        raise
                    account, fallback = _fall_back(account, exc)
                    proc, scratch = await _launch(command, account, stderr, memory_limit_mb)
            except OSError as exc:
                raise WorkerError(f"cannot start a compile worker as {account.name}: {exc}") from None
        worker = cls(proc, log_path, account, scratch, registry)
        worker.fallback = fallback
        if registry is not None:
            registry.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(psutil.NoSuchProcess):  # died at once: nothing to reap later
                (registry / str(proc.pid)).write_text(_identity(proc.pid))
        return worker

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def compile(self, request: CompileRequest, timeout_s: float) -> CompileResponse:
        """Run one job in a fresh directory of the worker's scratch; copy what it made to request.out_dir.

        Any broken reply (an undecodable frame, another job's id, a file the engine will not take)
        kills the worker and raises WorkerError.
        """
        job = f"job-{os.urandom(8).hex()}"
        self.job_dir = self.scratch / job
        try:
            response = await self._exchange(msgspec.structs.replace(request, out_dir=str(self.job_dir)), timeout_s)
            if response.ok:
                try:
                    await asyncio.to_thread(
                        take_files, self.scratch, job, response.files, Path(request.out_dir), self.account.uid
                    )
                except (OSError, ValueError) as exc:
                    raise await self._broken(f"reported a file the engine will not take: {exc}") from None
            return response
        finally:
            self.job_dir = None
            await asyncio.to_thread(_remove_job_dir, self.scratch, job)

    async def _exchange(self, request: CompileRequest, timeout_s: float) -> CompileResponse:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        payload = self._encoder.encode(request)
        try:
            self.proc.stdin.write(_HEADER.pack(len(payload)) + payload)
            await self.proc.stdin.drain()
            head = await asyncio.wait_for(self.proc.stdout.readexactly(_HEADER.size), timeout_s)
            (n,) = _HEADER.unpack(head)
            if n > MAX_FRAME:
                raise await self._broken(f"sent an oversized frame ({n} bytes)")
            body = await asyncio.wait_for(self.proc.stdout.readexactly(n), 30)
        except TimeoutError:
            await self.reap()
            raise CompileTimeout(timeout_s) from None
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            code = await self.reap()
            raise WorkerError(f"worker {self.pid} died (exit {code}); see {self.log_path}") from exc
        try:
            response = self._decoder.decode(body)
        except msgspec.DecodeError as exc:  # ValidationError included
            raise await self._broken(f"sent an unreadable reply ({exc})") from None
        if response.job_id != request.job_id:
            raise await self._broken(f"answered job {response.job_id!r} to job {request.job_id!r}")
        self.jobs_done += 1
        return response

    async def _broken(self, what: str) -> WorkerError:
        """A protocol violation: the worker can no longer be trusted to be in step, so it is killed."""
        await self.reap()
        return WorkerError(f"worker {self.pid} {what}; killed")

    def kill(self) -> None:
        """SIGKILL the worker's whole process group (the worker and every compiler it started)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    async def wait(self) -> int | None:
        """Reap the worker (at most 10 s) and drop its registry entry; None if it would not die."""
        try:
            code = await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            return None
        if self._registry is not None:
            (self._registry / str(self.pid)).unlink(missing_ok=True)
        return code

    async def reap(self) -> int | None:
        """Kill the group and reap the leader: no zombie, no stale registry entry."""
        self.kill()
        return await self.wait()

    async def close(self) -> None:
        if self.alive and self.proc.stdin is not None:
            self.proc.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 5)
        await self.reap()  # also kills any g++ the worker left in its group


def _fall_back(account: Account, exc: PermissionError) -> tuple[Account, str]:
    """The unprivileged account cannot execute the interpreter: run as the engine's user, and say why."""
    engine = engine_account()
    why = (
        f"compile workers run as {engine.name}: {account.name} cannot execute {exc.filename} ({exc.strerror}), "
        f"so a worker could read the signing key; let {account.name} reach the Python installation "
        f"(e.g. setfacl -m u:{account.name}:x on the directory that blocks it)"
    )
    key = f"{account.name}:{exc.filename}"
    if key not in _fallback_warned:
        _fallback_warned.add(key)
        log.warning("%s", why)
    return engine, why


class WorkerPool:
    """Idle workers wait here between jobs; the forge bounds how many are busy at once.

    A worker idle for `idle_s` leaves (closed like any other, its g++ group with it) and the next job starts a
    fresh one: an idle worker holds about 440 MB (torch and inductor) for nothing, and starting one costs ~4 s.
    None: idle workers stay until the pool closes.
    """

    def __init__(
        self,
        log_dir: Path,
        *,
        memory_limit_mb: int,
        jobs_per_worker: int,
        idle_s: float | None = None,
        registry: Path | None = None,
        command: Sequence[str] = WORKER_COMMAND,
        on_warning: Callable[[str], None] | None = None,
    ) -> None:
        self._log_dir = log_dir
        self._on_warning = on_warning  # the operator must see a weakened sandbox, not only a log file
        self._warned: set[str] = set()
        self._registry = registry
        self._memory_limit_mb = memory_limit_mb
        self._jobs_per_worker = jobs_per_worker
        self._idle_s = idle_s
        self._command = tuple(command)
        self._idle: list[Worker] = []
        self._busy: set[Worker] = set()
        self._timers: dict[Worker, asyncio.TimerHandle] = {}
        self._leaving: set[asyncio.Task[None]] = set()
        self.retired = 0  # workers that left after idle_s without a job

    async def _spawn(self) -> Worker:
        worker = await Worker.spawn(self._log_dir, self._memory_limit_mb, self._registry, command=self._command)
        if worker.fallback and worker.fallback not in self._warned:
            self._warned.add(worker.fallback)
            if self._on_warning is not None:
                self._on_warning(worker.fallback)
        return worker

    async def compile(self, request: CompileRequest, timeout_s: float) -> tuple[CompileResponse, int]:
        """Run one job on a reused or fresh worker; returns the response and the worker's pid. A worker that ran
        a user blueprint's code is closed after it, never reused.

        A worker whose job ends in any exception, cancellation included, is killed and reaped (the
        wait is bounded, so a cancellation is delayed by at most that).
        """
        worker = self._take() or await self._spawn()
        self._busy.add(worker)
        try:
            response = await worker.compile(request, timeout_s)
        except BaseException:
            await worker.reap()
            raise
        finally:
            self._busy.discard(worker)
        if worker.alive and worker.jobs_done < self._jobs_per_worker and not request.source:
            self._park(worker)
        else:
            await worker.close()
        return response, worker.pid

    def _park(self, worker: Worker) -> None:
        """Keep a worker for the next job, for idle_s at most."""
        self._idle.append(worker)
        if self._idle_s is not None:
            self._timers[worker] = asyncio.get_running_loop().call_later(self._idle_s, self._retire, worker)

    def _take(self) -> Worker | None:
        """The most recently parked worker still alive; one that died while idle is reaped on the way."""
        while self._idle:
            worker = self._idle.pop()
            if (timer := self._timers.pop(worker, None)) is not None:
                timer.cancel()
            if worker.alive:
                return worker
            self._close_later(worker)
        return None

    def _retire(self, worker: Worker) -> None:
        self._timers.pop(worker, None)
        if worker in self._idle:
            self._idle.remove(worker)
            self.retired += 1
            self._close_later(worker)

    def _close_later(self, worker: Worker) -> None:
        task = asyncio.get_running_loop().create_task(worker.close())
        self._leaving.add(task)
        task.add_done_callback(self._leaving.discard)

    async def prestart(self, count: int) -> None:
        """Spawn idle workers now: their ~4 s start-up (torch, ISA probe) overlaps the engine's own."""
        while len(self._idle) + len(self._busy) < count:
            self._park(await self._spawn())

    def workers(self) -> list[Worker]:
        """Every worker the pool holds, idle or busy."""
        return [*self._idle, *self._busy]

    def pids(self) -> list[int]:
        return [w.pid for w in self.workers()]

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        workers, self._idle = [*self._idle, *self._busy], []
        self._busy.clear()
        await asyncio.gather(*(w.close() for w in workers), *self._leaving, return_exceptions=True)
