"""How a forge turns a job into a stored kernel: in its own sandboxed workers, or through the job queue.

`LocalBuilder` compiles in this machine's sandboxed worker processes and commits to the library; an
engine with workers of its own uses it, and so does every `esper-tui forge-worker` (the same code, the
same sandbox). `RemoteBuilder` is an engine with `--forge-workers 0`: it queues the job on the Oona job
stream and waits for a forge worker somewhere to report the version it registered in the shared library,
which the engine then reads back and verifies itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from esper_tui.engine.forge import journal
from esper_tui.engine.forge.jobqueue import ForgeChannel, ForgeJob, JobNews, NewsKind, QueueError
from esper_tui.engine.forge.protocol import CompileRequest
from esper_tui.engine.forge.sandbox import CompileTimeout, WorkerError, WorkerPool
from esper_tui.engine.kernels.catalog import BUILTIN_IDS
from esper_tui.engine.kernels.pipelines import settings_for
from esper_tui.engine.library.base import KernelLibrary
from esper_tui.engine.library.meta import ArtifactMeta, KernelBuild, shape_of
from esper_tui.engine.library.store import Identity
from esper_tui.engine.library.userbp import UserBlueprintError, as_blueprint
from esper_tui.engine.vocabulary import Strategy

Started = Callable[[str], None]  # called with where the compile runs ("" for this machine)
Staged = Callable[[journal.JobStaged], Awaitable[None]]


@dataclass(frozen=True)
class BuildSpec:
    job_id: str
    blueprint_id: str
    strategy: Strategy
    key: str
    shape: str  # the slot shape's tag
    timeout_s: float
    force: bool = False
    attempt: int = 1
    reason: str = ""


def job_for(spec: BuildSpec, issuer: str) -> ForgeJob:
    """The queued form of a build (what `RemoteBuilder` puts on the stream)."""
    return ForgeJob(
        job_id=spec.job_id,
        blueprint_id=spec.blueprint_id,
        strategy=spec.strategy,
        artifact_key=spec.key,
        shape=spec.shape,
        force=spec.force,
        attempt=spec.attempt,
        reason=spec.reason,
        timeout_s=spec.timeout_s,
        issued_ts=time.time(),
        issuer=issuer,
    )


def spec_for(job: ForgeJob) -> BuildSpec:
    """The build a queued job asks for (what a forge worker hands its `LocalBuilder`); the inverse of `job_for`."""
    return BuildSpec(
        job_id=job.job_id,
        blueprint_id=job.blueprint_id,
        strategy=job.strategy,
        key=job.artifact_key,
        shape=job.shape,
        timeout_s=job.timeout_s,  # conservative mode's longer timeout is already in it
        force=job.force,
        attempt=job.attempt,
        reason=job.reason,
    )


@dataclass(frozen=True)
class Built:
    meta: ArtifactMeta
    reused: bool = False  # the key was already stored: nothing was compiled
    worker: str = ""


class BuildFailed(Exception):
    """The compile did not produce a kernel; `timed_out` feeds the timeout breaker."""

    def __init__(self, error: str, *, timed_out: bool = False) -> None:
        super().__init__(error)
        self.timed_out = timed_out


class Builder(Protocol):
    async def build(self, spec: BuildSpec, *, started: Started, staged: Staged) -> Built: ...

    async def close(self) -> None: ...


class LocalBuilder:
    """Compile in this machine's sandboxed workers, then commit the staged files to the library."""

    def __init__(self, library: KernelLibrary, pool: WorkerPool, identity: Identity) -> None:
        self.library = library
        self.pool = pool
        self.identity = identity

    async def _user_code(self, blueprint_id: str) -> tuple[str, str]:
        """("", "") for a built-in blueprint; for a user blueprint its source and class, read from the library now
        and verified (signature, source hash) before the worker sees a byte. The library's catalog learns it too
        (a forge worker's knows only the built-ins): the commit signs its IR hash."""
        if blueprint_id in BUILTIN_IDS:
            return "", ""
        try:
            record, source = await asyncio.to_thread(self.library.blueprints.get, blueprint_id)
        except UserBlueprintError as exc:
            raise BuildFailed(str(exc)) from None
        self.library.catalog.add(as_blueprint(record, source))
        return source, record.class_name

    async def build(self, spec: BuildSpec, *, started: Started, staged: Staged) -> Built:
        settings = settings_for(spec.strategy, self.identity.device)
        source, class_name = await self._user_code(spec.blueprint_id)
        out_dir = self.library.new_staging_dir(spec.blueprint_id)
        request = CompileRequest(
            job_id=spec.job_id,
            blueprint_id=spec.blueprint_id,
            shape=spec.shape,
            strategy=spec.strategy,
            backend=settings.backend,
            mode=settings.mode,
            device=settings.device,
            out_dir=str(out_dir),
            source=source,
            class_name=class_name,
        )
        started("")
        t0 = time.monotonic()
        try:
            try:
                response, pid = await self.pool.compile(request, spec.timeout_s)
            except CompileTimeout as exc:
                raise BuildFailed(str(exc), timed_out=True) from None
            except WorkerError as exc:
                raise BuildFailed(str(exc)) from None
            if not response.ok:
                raise BuildFailed(response.error or "unknown error")
            await staged(journal.JobStaged(staged=out_dir.name, worker_pid=pid, wall_s=time.monotonic() - t0))
            build = KernelBuild(
                strategy=spec.strategy,
                backend=settings.backend,
                mode=settings.mode or "default",
                device=settings.device,
                torch_version=self.identity.torch_version,
                python_version=self.identity.python_version,
                cpu_isa=response.cpu_isa,
                threads=self.identity.threads,
                compiler=self.identity.compiler,
                shape=spec.shape,
                in_features=shape_of(spec.shape).in_shape[0],
                batch_min=2,
                batch_max=65536,
                grad_modes=[True, False],
                compile_s=response.compile_s,
                step_ms_compiled=response.step_ms_compiled,
                step_ms_eager=response.step_ms_eager,
            )
            meta = await asyncio.to_thread(
                self.library.commit,
                out_dir,
                blueprint_id=spec.blueprint_id,
                key=spec.key,
                build=build,
                job_id=spec.job_id,
                force=spec.force,
            )
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)  # committed trees were moved or uploaded already
        return Built(meta)

    async def close(self) -> None:
        await self.pool.close()


class RemoteBuilder:
    """Queue jobs for forge workers elsewhere and wait for what they report (`follow` must run)."""

    def __init__(self, channel: ForgeChannel, library: KernelLibrary, issuer: str) -> None:
        self.channel = channel
        self.library = library
        self.issuer = issuer
        self._waiting: dict[str, asyncio.Queue[JobNews]] = {}
        self._started: set[str] = set()  # jobs of `_waiting` a worker has taken
        self._following = asyncio.Event()  # set once `follow` knows where the news stream stands

    @property
    def awaiting_worker(self) -> int:
        """Jobs handed to the queue (or about to be) that no worker has started."""
        return len(self._waiting) - len(self._started)

    async def build(self, spec: BuildSpec, *, started: Started, staged: Staged) -> Built:
        job = job_for(spec, self.issuer)
        inbox: asyncio.Queue[JobNews] = asyncio.Queue()
        self._waiting[spec.job_id] = inbox
        await self._following.wait()  # news of this job must come after the point `follow` reads from
        try:
            try:
                await self.channel.submit(job)
            except QueueError as exc:
                raise BuildFailed(str(exc)) from None
            while True:
                news = await inbox.get()
                if news.kind is NewsKind.STARTED:
                    self._started.add(spec.job_id)
                    started(news.worker)
                elif news.kind is NewsKind.FAILED:
                    raise BuildFailed(f"{news.worker}: {news.error}", timed_out=news.timed_out)
                else:
                    return await self._registered(spec, news)
        finally:
            self._waiting.pop(spec.job_id, None)
            self._started.discard(spec.job_id)

    async def _registered(self, spec: BuildSpec, news: JobNews) -> Built:
        """The version a worker reports, read back from the shared library and verified here."""
        meta = await asyncio.to_thread(self.library.current, spec.blueprint_id, shape_of(spec.shape), spec.key)
        if meta is None:
            raise BuildFailed(f"{news.worker} reported v{news.version}, but no verified version with its key is stored")
        return Built(meta, reused=news.reused, worker=news.worker)

    async def follow(self) -> None:
        """Read the news stream from now on and hand each report to the job waiting for it.

        Redis trouble is ridden out with a capped backoff; jobs keep waiting, since the workers keep their
        jobs pending in the group until their outcome is published.
        """
        last = "$"
        delay = 0.1
        while True:
            try:
                if last == "$":
                    last = await self.channel.last_news_id()
                    self._following.set()
                for entry_id, news in await self.channel.news_after(last, block_ms=1000):
                    last = entry_id
                    if news is not None and (inbox := self._waiting.get(news.job_id)) is not None:
                        inbox.put_nowait(news)
                delay = 0.1
            except QueueError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def close(self) -> None:
        with contextlib.suppress(QueueError):
            await self.channel.close()
