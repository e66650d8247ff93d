"""Sandboxed compile workers: real `python -m esper_tui.engine.forge.worker` processes.

Process checks read /proc (live members of a process group, the worker's limits), never timings.
Zombies do not count as alive: they are dead processes waiting for their parent (or init) to reap them.
That is also why "the group is gone" is a /proc scan and not `os.killpg(pgid, 0)`: a killed compiler
is reparented to init, and until init reaps it the zombie keeps the group id answering to signals.

Where the thing under test is the pool's handling of replies, the worker is a small fake (FAKE_WORKER)
started exactly as a real one is (same account, environment and limits) that answers badly on purpose.
Tests run as root here, so workers run as the unprivileged worker account: whatever a worker must reach
(a shim compiler, a key to fail to read) lives in a directory that account can traverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import psutil
import pytest

from esper_tui.engine.forge.protocol import CompileRequest
from esper_tui.engine.forge.sandbox import (
    CompileTimeout,
    Worker,
    WorkerError,
    WorkerPool,
    reap_stale,
    worker_account,
)
from esper_tui.engine.kernels.pipelines import settings_for
from esper_tui.engine.library.signing import load_or_create_key
from esper_tui.engine.vocabulary import Strategy

pytestmark = pytest.mark.compile

MEMORY_MB = 4096
JOB_TIMEOUT_S = 300.0


def request(blueprint_id: str, strategy: Strategy, out_dir: Path) -> CompileRequest:
    s = settings_for(strategy)
    return CompileRequest(
        job_id=uuid.uuid4().hex,
        blueprint_id=blueprint_id,
        shape="40-64",
        strategy=strategy,
        backend=s.backend,
        mode=s.mode,
        device=s.device,
        out_dir=str(out_dir),
    )


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # state, ppid, pgrp, session, ...


def live_group_members(pgid: int) -> dict[int, str]:
    """pid -> comm of every process in the group that is not a zombie."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None or fields[0] in ("Z", "X"):
            continue
        if int(fields[2]) == pgid:
            with contextlib.suppress(OSError):
                found[int(entry.name)] = (entry / "comm").read_text().strip()
    return found


def is_alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


async def group_gone(pgid: int, within_s: float = 20.0) -> bool:
    """SIGKILL is delivered asynchronously: allow the kernel a moment, then report."""
    deadline = time.monotonic() + within_s
    while live_group_members(pgid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def until(predicate, within_s: float = 180.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def reaped(pid: int) -> bool:
    """The process is gone for good: not running, and no zombie left waiting for a wait()."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_DEAD
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the worker account can traverse (pytest's tmp_path sits under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="esper-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def pool(tmp_path):
    p = WorkerPool(tmp_path / "logs", memory_limit_mb=MEMORY_MB, jobs_per_worker=8)
    yield p
    pids = p.pids()
    await p.close()
    for pid in pids:
        assert await group_gone(pid), f"worker group {pid} survived pool.close(): {live_group_members(pid)}"


async def test_pool_compiles_on_a_real_worker_and_reuses_it(pool, tmp_path):
    r1, pid1 = await pool.compile(request("lowrank_adapter", Strategy.FAST, tmp_path / "a"), JOB_TIMEOUT_S)
    assert r1.ok, r1.error
    assert {"train.fn", "infer.fn", "weights.safetensors"} <= set(r1.files)
    assert all((tmp_path / "a" / f).is_file() for f in r1.files)
    assert r1.max_abs_error < 1e-3 and r1.cpu_isa
    assert pid1 != os.getpid() and pool.pids() == [pid1]
    # Its own session and process group: the group holds every compiler it starts.
    assert os.getsid(pid1) == pid1 and os.getpgid(pid1) == pid1

    r2, pid2 = await pool.compile(request("mlp_block", Strategy.EMERGENCY, tmp_path / "b"), JOB_TIMEOUT_S)
    assert r2.ok, r2.error
    assert pid2 == pid1

    # A job that fails inside the worker is an answer, not a dead worker.
    r3, pid3 = await pool.compile(request("no_such_blueprint", Strategy.EMERGENCY, tmp_path / "c"), JOB_TIMEOUT_S)
    assert not r3.ok and "no_such_blueprint" in r3.error
    assert pid3 == pid1 and pool.pids() == [pid1]


async def test_worker_is_replaced_after_jobs_per_worker(tmp_path):
    pool = WorkerPool(tmp_path / "logs", memory_limit_mb=MEMORY_MB, jobs_per_worker=1)
    try:
        r, pid = await pool.compile(request("lowrank_adapter", Strategy.EMERGENCY, tmp_path / "a"), JOB_TIMEOUT_S)
        assert r.ok, r.error
        assert pool.pids() == []  # retired after its one job
        assert await group_gone(pid)
    finally:
        await pool.close()


async def test_an_idle_worker_leaves_after_idle_s_and_the_next_job_starts_a_fresh_one(tmp_path):
    pool = WorkerPool(tmp_path / "logs", memory_limit_mb=MEMORY_MB, jobs_per_worker=8, idle_s=2.0)
    try:
        await pool.prestart(1)  # a prestarted worker that never gets a job leaves too
        (idle,) = pool.pids()
        await until(lambda: not pool.pids(), within_s=60, what="the prestarted worker to leave")
        assert await group_gone(idle) and pool.retired == 1

        r1, pid1 = await pool.compile(request("lowrank_adapter", Strategy.EMERGENCY, tmp_path / "a"), JOB_TIMEOUT_S)
        r2, pid2 = await pool.compile(request("lowrank_adapter", Strategy.EMERGENCY, tmp_path / "b"), JOB_TIMEOUT_S)
        assert r1.ok and r2.ok, (r1.error, r2.error)
        assert pid1 not in (idle, os.getpid()) and pid2 == pid1  # back on demand, then reused within idle_s
        await until(lambda: not pool.pids(), within_s=60, what="the worker to leave again")
        assert await group_gone(pid1) and pool.retired == 2
    finally:
        await pool.close()


async def test_tiny_timeout_raises_compile_timeout_and_kills_the_group(pool, tmp_path):
    job = asyncio.create_task(pool.compile(request("mlp_block", Strategy.STANDARD, tmp_path / "a"), 2.0))
    await until(lambda: pool.pids() or job.done(), what="the worker to start")
    (pid,) = pool.pids()
    with pytest.raises(CompileTimeout) as info:
        await job
    assert info.value.seconds == 2.0 and "timeout" in str(info.value)
    assert pool.pids() == []
    assert await group_gone(pid), f"left alive: {live_group_members(pid)}"


@pytest.fixture
def hanging_compiler(shared_dir, monkeypatch) -> Path:
    """A `g++` first on PATH that answers version probes but hangs on any real compile.

    It leaves one marker file per hanging compiler (named by its pid), so a test can wait until a
    compiler is certainly running inside the worker's process group.
    """
    bin_dir = shared_dir / "bin"
    markers = shared_dir / "markers"
    bin_dir.mkdir(mode=0o755)
    markers.mkdir()
    markers.chmod(0o1777)  # the shim runs as the worker account
    shim = bin_dir / "g++"
    shim.write_text(
        "#!/bin/bash\n"
        'for a in "$@"; do case "$a" in --version|-v|-dumpversion|-dumpfullversion|-print-*) '
        'exec /usr/bin/g++ "$@";; esac; done\n'
        f'touch "{markers}/$$"\n'
        "sleep 600\n"
    )
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CXX", raising=False)  # inductor would take $CXX over the g++ found on PATH
    return markers


async def test_timeout_with_a_compiler_running_leaves_no_orphan(tmp_path, hanging_compiler):
    """The case that matters: g++ children are busy when the deadline passes; all of them must die.

    The first job is given a long deadline and abandoned once a compiler hangs in the group; the
    second, queued behind it on the same worker, then hits a tiny deadline with that compiler running.
    """
    worker = await Worker.spawn(tmp_path / "logs", MEMORY_MB)
    try:
        first = asyncio.create_task(worker.compile(request("mlp_block", Strategy.STANDARD, tmp_path / "a"), 3600))
        await until(lambda: any(hanging_compiler.iterdir()) or first.done(), what="a compiler to start")
        assert not first.done(), f"the job ended without running the compiler: {first.result()}"
        compilers = [int(p.name) for p in hanging_compiler.iterdir()]
        members = live_group_members(worker.pid)
        assert worker.pid in members and all(pid in members for pid in compilers), members
        assert len(members) > 1
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first

        with pytest.raises(CompileTimeout):
            await worker.compile(request("mlp_block", Strategy.STANDARD, tmp_path / "b"), 0.5)
        assert not worker.alive
        assert await group_gone(worker.pid), f"orphans: {live_group_members(worker.pid)}"
        assert not any(is_alive(pid) for pid in compilers)
    finally:
        worker.kill()
        await worker.wait()


async def test_worker_killed_mid_job_gives_worker_error_and_a_fresh_worker_next(pool, tmp_path):
    out = tmp_path / "a"
    job = asyncio.create_task(pool.compile(request("mlp_block", Strategy.FAST, out), JOB_TIMEOUT_S))

    def job_running() -> bool:  # compile_kernel fills its job directory (in the worker's scratch) first thing
        dirs = [w.job_dir for w in pool.workers() if w.job_dir is not None]
        return job.done() or any(d.is_dir() and any(d.iterdir()) for d in dirs)

    await until(job_running, what="the job to start")
    assert not job.done()
    (victim,) = pool.pids()
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(WorkerError, match="died") as info:
        await job
    assert not isinstance(info.value, CompileTimeout)
    assert pool.pids() == []
    assert await group_gone(victim)

    r, pid = await pool.compile(request("lowrank_adapter", Strategy.EMERGENCY, tmp_path / "b"), JOB_TIMEOUT_S)
    assert r.ok, r.error
    assert pid != victim


def _limit(pid: int, name: str) -> tuple[str, str]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith(name):
            soft, hard = line[len(name) :].split()[:2]
            return soft, hard
    raise AssertionError(f"{name} not in /proc/{pid}/limits")


async def test_rlimit_as_is_applied_to_the_worker(tmp_path):
    worker = await Worker.spawn(tmp_path / "logs", 3000)
    try:
        assert worker.alive
        expected = str(3000 * 1024 * 1024)
        assert _limit(worker.pid, "Max address space") == (expected, expected)
        assert _limit(os.getpid(), "Max address space") != (expected, expected)  # the engine is not capped
        assert os.getpgid(worker.pid) == worker.pid
    finally:
        await worker.close()
    assert await group_gone(worker.pid)


# ---------------------------------------------------------------------------------- crashed engines


async def test_registry_tracks_live_workers_and_reap_stale_kills_their_groups(tmp_path):
    registry = tmp_path / "workers"
    closed = await Worker.spawn(tmp_path / "logs", MEMORY_MB, registry)
    assert (registry / str(closed.pid)).exists()
    await closed.close()
    assert not (registry / str(closed.pid)).exists()  # a clean close leaves no entry

    left = await Worker.spawn(tmp_path / "logs", MEMORY_MB, registry)  # the engine "crashes" here
    try:
        assert reap_stale(registry) == [left.pid]
        assert await group_gone(left.pid)
        assert list(registry.iterdir()) == []
        assert reap_stale(registry) == []
        assert reap_stale(tmp_path / "no-such-dir") == []
    finally:
        left.kill()
        await left.wait()


async def test_engine_killed_mid_compile_leaves_nothing_after_the_next_start(tmp_path, hanging_compiler):
    """SIGKILL the engine while its worker runs a compiler: the worker dies with it (PR_SET_PDEATHSIG),
    and whatever the dead worker's group still holds is killed by the next start (the registry)."""
    registry = tmp_path / "workers"
    job = request("mlp_block", Strategy.STANDARD, tmp_path / "a")
    script = textwrap.dedent(
        f"""
        import asyncio, msgspec
        from pathlib import Path
        from esper_tui.engine.forge.protocol import CompileRequest
        from esper_tui.engine.forge.sandbox import Worker

        async def main():
            w = await Worker.spawn(Path({str(tmp_path / "logs")!r}), {MEMORY_MB}, Path({str(registry)!r}))
            print(w.pid, flush=True)
            await w.compile(msgspec.json.decode({msgspec.json.encode(job).decode()!r}, type=CompileRequest), 3600)

        asyncio.run(main())
        """
    )
    engine = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    worker_pid = None
    try:
        worker_pid = int(await asyncio.to_thread(engine.stdout.readline))
        await until(lambda: any(hanging_compiler.iterdir()) or engine.poll() is not None, what="a compiler to start")
        assert engine.poll() is None, "the engine ended by itself"
        compilers = [int(p.name) for p in hanging_compiler.iterdir()]
        engine.kill()
        await asyncio.to_thread(engine.wait, 30)
        await until(lambda: not is_alive(worker_pid), within_s=20, what="the worker to die with the engine")
        assert (registry / str(worker_pid)).exists()  # the crash left its entry

        assert reap_stale(registry) == [worker_pid]  # the next engine start
        assert await group_gone(worker_pid), f"orphans: {live_group_members(worker_pid)}"
        assert not any(is_alive(pid) for pid in compilers)
    finally:
        engine.kill()
        engine.wait(30)
        if worker_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker_pid, signal.SIGKILL)


def test_reap_stale_spares_an_unrelated_group_that_reused_the_pid(tmp_path):
    registry = tmp_path / "workers"
    registry.mkdir()
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        (registry / str(stranger.pid)).touch()  # a crash long ago left this entry; the number was reused
        reap_stale(registry)
        time.sleep(0.2)
        assert stranger.poll() is None, "an unrelated process group was killed"
    finally:
        stranger.kill()
        stranger.wait()


def test_reap_stale_spares_a_live_process_that_is_not_the_recorded_one(tmp_path):
    """Same boot, same pid, another start time: the pid was reused, so the group is not ours."""
    registry = tmp_path / "workers"
    registry.mkdir()
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        started = psutil.Process(stranger.pid).create_time()
        (registry / str(stranger.pid)).write_text(f"{psutil.boot_time()!r} {started - 30.0!r}")
        assert reap_stale(registry) == []
        time.sleep(0.2)
        assert stranger.poll() is None, "an unrelated process group was killed"
        assert list(registry.iterdir()) == []
    finally:
        stranger.kill()
        stranger.wait()


# ---------------------------------------------------------------------------------- the trust boundary


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


async def test_worker_environment_is_an_allow_list(tmp_path, monkeypatch):
    """The signing key, operator key and the engine's private kernel cache never reach a worker."""
    secrets = {
        "ESPER_SIGNING_KEY": "ab" * 32,
        "ESPER_OPERATOR_KEY": "cd" * 32,
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "engine-verified-kernels"),  # what private_cache_dir() sets
        "TRITON_CACHE_DIR": str(tmp_path / "triton"),
        "SOME_SERVICE_TOKEN": "hunter2",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    worker = await Worker.spawn(tmp_path / "logs", MEMORY_MB)
    try:
        env = environ_of(worker.pid)
        assert not set(secrets) & set(env), sorted(set(secrets) & set(env))
        assert not [k for k in env if k.startswith(("ESPER_", "TORCHINDUCTOR_"))]
        assert env["OMP_NUM_THREADS"] == "1" and env["PATH"] == os.environ["PATH"]
        assert env["HOME"] == env["TMPDIR"] == str(worker.scratch)
        assert env["USER"] == env["LOGNAME"] == worker.account.name
    finally:
        await worker.close()


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs a root engine")


@root_only
async def test_a_root_engine_runs_its_workers_unprivileged(tmp_path):
    worker = await Worker.spawn(tmp_path / "logs", MEMORY_MB)
    try:
        proc = psutil.Process(worker.pid)
        assert 0 not in proc.uids() and 0 not in proc.gids(), (
            f"the worker runs as root: {proc.uids()}; if a warning says so, the worker account cannot execute "
            f"{sys.executable} (a Python under a 0700 home), and the engine fell back to its own user"
        )
        assert worker.account == worker_account() and worker.account.name in ("esper-worker", "nobody")
        status = dict(line.split(":", 1) for line in Path(f"/proc/{worker.pid}/status").read_text().splitlines())
        assert status["Groups"].split() == []  # no supplementary group (root's) kept
        assert status["NoNewPrivs"].strip() == "1"  # no setuid program hands root back
        scratch = worker.scratch.stat()
        assert scratch.st_uid == worker.account.uid and stat.S_IMODE(scratch.st_mode) == 0o700
    finally:
        await worker.close()
    assert await group_gone(worker.pid)


PROBE_KEY = textwrap.dedent(
    """
    import sys
    try:
        open(sys.argv[1], "rb").read()
    except PermissionError:
        sys.exit(13)
    sys.exit(0)
    """
)


@root_only
async def test_a_worker_cannot_read_the_signing_key(tmp_path, shared_dir):
    """Launched exactly as a compile worker is, a process cannot open `<state>/keys/signing.key`.

    The state directory is traversable here (0755), so only the key's own 0700/0600 root modes stand
    between the worker and the key.
    """
    state = shared_dir / "state"
    load_or_create_key(state)
    key = state / "keys" / "signing.key"
    worker = await Worker.spawn(tmp_path / "logs", MEMORY_MB, command=[sys.executable, "-c", PROBE_KEY, str(key)])
    try:
        code = await asyncio.wait_for(worker.proc.wait(), 60)
    finally:
        worker.kill()
        await worker.wait()
    assert code == 13, f"exit {code}: a process started as a compile worker read the signing key"
    keys = (state / "keys").stat()
    assert (keys.st_uid, stat.S_IMODE(keys.st_mode)) == (0, 0o700)
    assert (key.stat().st_uid, stat.S_IMODE(key.stat().st_mode)) == (0, 0o600)


# ---------------------------------------------------------------------------------- broken replies

FAKE_WORKER = textwrap.dedent(
    """
    import os, sys
    import msgspec
    from esper_tui.engine.forge.protocol import CompileRequest, CompileResponse
    from esper_tui.engine.forge.worker import read_frame, write_frame

    mode, arg = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""
    replies = sys.stdout.buffer
    while (frame := read_frame(sys.stdin.buffer)) is not None:
        req = msgspec.msgpack.decode(frame, type=CompileRequest)
        if mode == "silent":
            print("got the request", file=sys.stderr, flush=True)
            sys.stdin.buffer.read()
            break
        if mode == "garbage":
            write_frame(replies, b"\\xc1 this is no msgpack")
            continue
        if mode == "wrong-id":
            write_frame(replies, msgspec.msgpack.encode(CompileResponse(job_id="not-" + req.job_id, ok=False)))
            continue
        os.makedirs(req.out_dir)
        name = os.path.join(req.out_dir, "train.fn")
        if mode == "symlink":
            os.symlink(arg, name)
        elif mode == "fifo":
            os.mkfifo(name)
        elif mode != "escape":  # "good": the file names the directory it was made in
            with open(name, "w") as f:
                f.write(req.out_dir)
        files = ["../elsewhere"] if mode == "escape" else ["train.fn"]
        write_frame(replies, msgspec.msgpack.encode(CompileResponse(job_id=req.job_id, ok=True, files=files)))
    """
)


def fake_pool(tmp_path: Path, mode: str, *args: str) -> WorkerPool:
    return WorkerPool(
        tmp_path / "logs",
        memory_limit_mb=MEMORY_MB,
        jobs_per_worker=8,
        registry=tmp_path / "workers",
        command=[sys.executable, "-c", FAKE_WORKER, mode, *args],
    )


async def started_worker(pool: WorkerPool, registry: Path) -> int:
    await pool.prestart(1)
    (pid,) = pool.pids()
    assert (registry / str(pid)).exists()
    return pid


@pytest.mark.parametrize(
    ("mode", "message"),
    [("garbage", "unreadable reply"), ("wrong-id", "answered job 'not-")],
)
async def test_a_broken_reply_is_a_worker_error_and_the_worker_is_reaped(tmp_path, mode, message):
    pool = fake_pool(tmp_path, mode)
    try:
        pid = await started_worker(pool, tmp_path / "workers")
        with pytest.raises(WorkerError, match=message):
            await pool.compile(request("mlp_block", Strategy.EMERGENCY, tmp_path / "out"), 60)
        assert pool.pids() == [] and reaped(pid)
        assert list((tmp_path / "workers").iterdir()) == []
        assert not (tmp_path / "out").exists()
    finally:
        await pool.close()


async def test_a_cancelled_job_kills_and_reaps_its_worker(tmp_path):
    """Cancelling the job (the forge stopping) must not leave a zombie or a registry entry behind."""
    pool = fake_pool(tmp_path, "silent")
    try:
        pid = await started_worker(pool, tmp_path / "workers")
        (log,) = [w.log_path for w in pool.workers()]
        job = asyncio.create_task(pool.compile(request("mlp_block", Strategy.EMERGENCY, tmp_path / "out"), 600))
        await until(lambda: "got the request" in log.read_text(), within_s=30, what="the worker to get the job")
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        assert pool.pids() == [] and reaped(pid)
        assert list((tmp_path / "workers").iterdir()) == []
    finally:
        await pool.close()


async def test_reported_files_are_copied_out_as_the_engines_own(tmp_path):
    pool = fake_pool(tmp_path, "good")
    try:
        response, _ = await pool.compile(request("mlp_block", Strategy.EMERGENCY, tmp_path / "out"), 60)
        assert response.ok and response.files == ["train.fn"]
        copied = tmp_path / "out" / "train.fn"
        assert copied.is_file() and not copied.is_symlink()
        assert copied.stat().st_uid == os.geteuid()  # a new file: the worker holds no handle on it
        job_dir = Path(copied.read_text())
        assert job_dir.parent == pool.workers()[0].scratch and not job_dir.exists()  # scratch cleaned up
    finally:
        await pool.close()


@pytest.mark.parametrize("mode", ["symlink", "fifo", "escape"])
async def test_files_the_engine_will_not_take(tmp_path, shared_dir, mode):
    """A symlink (here to the signing key), a FIFO (which would block a reader) or a path out of the job
    directory: the worker is killed, and nothing reaches the staging directory."""
    state = shared_dir / "state"
    load_or_create_key(state)
    pool = fake_pool(tmp_path, mode, str(state / "keys" / "signing.key"))
    out = tmp_path / "out"
    try:
        with pytest.raises(WorkerError, match="will not take"):
            await asyncio.wait_for(pool.compile(request("mlp_block", Strategy.EMERGENCY, out), 60), 90)
        assert not (out / "train.fn").exists() and not (tmp_path / "elsewhere").exists()
        assert pool.pids() == [] and list((tmp_path / "workers").iterdir()) == []
    finally:
        await pool.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop (and so its fallback) exists only for a root engine")
async def test_a_weakened_sandbox_is_reported_to_the_operator(tmp_path):
    """An interpreter the worker account cannot reach: the worker runs as root, and the pool says so once."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    python = private / "python"
    python.symlink_to(sys.executable)
    warnings: list[str] = []
    pool = WorkerPool(
        tmp_path / "logs",
        memory_limit_mb=MEMORY_MB,
        jobs_per_worker=8,
        command=[str(python), "-c", FAKE_WORKER, "garbage"],
        on_warning=warnings.append,
    )
    try:
        await pool.prestart(2)
    finally:
        await pool.close()
    assert len(warnings) == 1, warnings
    assert "could read the signing key" in warnings[0] and str(python) in warnings[0]
