"""Tezzeret end to end: real WAL, real library, real sandboxed workers, a small catalog.

The forge looks blueprints up in the catalog it is given (`Catalog().subset(...)`), while the worker
always uses the full built-in catalog, so only built-in ids are used here. Emergency (eager) and Fast
(aot_eager) keep compiles cheap; the one inductor artifact comes from the session fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from esper_tui.engine.config import BreakersConfig, CompilationConfig, DurabilityMode, TezzeretConfig
from esper_tui.engine.contracts import (
    BreakerChanged,
    ConservativeModeChanged,
    JobCompiled,
    JobFailed,
    JobQueued,
    JobStarted,
    LogLine,
    WalStatus,
)
from esper_tui.engine.forge.forge import Forge, ForgeFatal
from esper_tui.engine.forge.protocol import CompileResponse
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.kernels.pipelines import settings_for
from esper_tui.engine.kernels.shapes import SlotShape, vector
from esper_tui.engine.library.store import Identity, Library, artifact_key
from esper_tui.engine.vocabulary import BreakerState, Level, Strategy
from esper_tui.engine.wal import writer as wal_module
from esper_tui.engine.wal.writer import WriteAheadLog

pytestmark = pytest.mark.compile

KEY = bytes(range(32))
MNIST1D = vector(40, 64)  # the MLP host's slots: the shape these forges compile for unless a test sets others
SETTLE_S = 300.0


class Recorder:
    """The forge's emit callback. `sample(kind, fn)` records fn() whenever an event of that kind is emitted
    (the forge's state at that very moment)."""

    def __init__(self) -> None:
        self.events: list[object] = []
        self._probes: dict[type, object] = {}
        self.samples: dict[type, list[object]] = {}

    def __call__(self, event: object) -> None:
        self.events.append(event)
        probe = self._probes.get(type(event))
        if probe is not None:
            self.samples[type(event)].append(probe())

    def sample(self, kind: type, probe) -> None:
        self._probes[kind] = probe
        self.samples[kind] = []

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    def clear(self) -> None:
        self.events.clear()


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def quarantined() -> list[tuple[str, str, str]]:
    return []


@pytest.fixture
def library(state_dir, quarantined) -> Library:
    return Library(state_dir / "library", KEY, Catalog(), on_quarantine=lambda *args: quarantined.append(args))


def open_wal(state_dir: Path):
    return WriteAheadLog.open(state_dir / "wal", durability=DurabilityMode.FSYNC)


@pytest.fixture
def make_forge(state_dir, library, identity, rec):
    made: list[Forge] = []

    def make(ids: list[str], *, wal: WriteAheadLog | None = None, clock=None, **compilation) -> Forge:
        breakers = compilation.pop("breakers", BreakersConfig())
        shapes = compilation.pop("shapes", [MNIST1D])
        config = TezzeretConfig(compilation=CompilationConfig(**compilation), breakers=breakers)
        extra = {"clock": clock} if clock is not None else {}
        forge = Forge(
            config=config,
            catalog=Catalog().subset(ids),
            library=library,
            wal=wal if wal is not None else open_wal(state_dir)[0],
            emit=rec,
            state_dir=state_dir,
            identity=identity,
            **extra,
        )
        forge.set_shapes(shapes, scan=False)
        made.append(forge)
        return forge

    yield make
    for forge in made:
        with contextlib.suppress(Exception):
            forge.wal.close()


@contextlib.asynccontextmanager
async def running(forge: Forge) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(forge.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ForgeFatal):
            await task
        await forge.close()


async def settle(forge: Forge, task: asyncio.Task[None], within_s: float = SETTLE_S) -> None:
    """Until the forge is idle; re-raises if run() ended (ForgeFatal)."""
    idle = asyncio.create_task(forge.wait_idle())
    done, _ = await asyncio.wait({idle, task}, timeout=within_s, return_when=asyncio.FIRST_COMPLETED)
    idle.cancel()
    if task in done:
        task.result()
    assert idle in done, f"forge not idle after {within_s}s: queue {forge.queue_depth}, running {forge.running}"


def ids_of(events: list) -> list[str]:
    return [e.blueprint_id for e in events]


def key_for(bp_id: str, strategy: Strategy, identity: Identity) -> str:
    return artifact_key(Catalog().get(bp_id).ir_hash(), settings_for(strategy), strategy, identity, MNIST1D)


# ---------------------------------------------------------------------------------- discovery and compiling


async def test_set_shapes_compiles_every_fitting_blueprint_once_per_shape(make_forge, rec, library, identity):
    """One job, key and kernel per (blueprint, slot shape); a blueprint that fits no shape is never queued."""
    ids = ["lowrank_adapter", "conv1d_block", "conv2d_block"]
    forge = make_forge(ids, default_strategy=Strategy.FAST, shapes=[])
    small, sequence, image = vector(12, 8), SlotShape((4, 8), (6, 8)), SlotShape((3, 4, 4), (4, 4, 4))
    forge.set_shapes([small, sequence, image, small])
    want = {
        ("lowrank_adapter", small.tag),
        ("conv1d_block", small.tag),
        ("conv1d_block", sequence.tag),
        ("conv2d_block", image.tag),
    }
    assert {(e.blueprint_id, e.shape) for e in rec.of(JobQueued)} == want
    assert not forge.enqueue("conv2d_block", reason="operator", shape=small)  # does not fit: never queued
    assert not forge.enqueue("conv1d_block", reason="again")  # queued for both its shapes already
    async with running(forge) as task:
        await settle(forge, task)
    compiled = rec.of(JobCompiled)
    assert {(e.blueprint_id, e.shape) for e in compiled} == want and not rec.of(JobFailed)
    assert {(e.blueprint_id, e.shape) for e in rec.of(JobStarted)} == want
    conv = {e.shape: e for e in compiled if e.blueprint_id == "conv1d_block"}
    assert conv[small.tag].artifact_id != conv[sequence.tag].artifact_id
    for bp, tag in want:
        meta = library.current(bp, SlotShape.parse(tag))
        assert meta is not None and meta.shape == tag
        ir = Catalog().get(bp).ir_hash()
        assert meta.artifact_id == artifact_key(
            ir, settings_for(Strategy.FAST), Strategy.FAST, identity, meta.slot_shape
        )
    assert library.current("lowrank_adapter", sequence) is None
    assert sorted(d.name.split("-", 1)[1].rsplit("-", 2)[0] for d in library.version_dirs()) == sorted(
        tag for _, tag in want
    )
    rec.clear()
    forge.set_shapes([small])  # known already: nothing scanned again
    assert rec.of(JobQueued) == []
    forge.discover()  # every kernel is stored: reported, nothing queued
    assert rec.of(JobQueued) == [] and {(e.blueprint_id, e.shape) for e in rec.of(JobCompiled)} == want
    forge.wal.close()


async def test_discover_compile_once_reuse_force_and_a_second_forge_queues_nothing(
    make_forge, rec, library, state_dir, identity
):
    ids = ["lowrank_adapter", "mlp_block"]
    forge = make_forge(ids, default_strategy=Strategy.FAST)
    forge.discover()
    queued = rec.of(JobQueued)
    assert sorted(ids_of(queued)) == sorted(ids)
    assert all(e.strategy is Strategy.FAST and e.reason == "initial scan" for e in queued)
    assert forge.queue_depth == 2
    assert not forge.enqueue("mlp_block", reason="again")  # already queued: not twice
    assert not forge.enqueue("attention_block", reason="not in this catalog")
    assert rec.of(LogLine)[-1].level is Level.WARNING

    async with running(forge) as task:
        await settle(forge, task)
        started, compiled = rec.of(JobStarted), rec.of(JobCompiled)
        assert sorted(ids_of(started)) == sorted(ids)  # each compiled exactly once
        assert sorted(ids_of(compiled)) == sorted(ids)
        for e in compiled:
            assert (e.version, e.reused, e.strategy, e.backend) == (1, False, Strategy.FAST, "aot_eager")
            assert e.artifact_id == key_for(e.blueprint_id, Strategy.FAST, identity)
            assert e.step_ms_compiled > 0 and e.step_ms_eager > 0
        assert not rec.of(JobFailed)
        wal_events = rec.of(WalStatus)
        assert wal_events and wal_events[-1].open_transactions == [] and wal_events[-1].commits == 2
        assert [library.current(bp_id, MNIST1D).version for bp_id in ids] == [1, 1]
        assert len(library.version_dirs()) == 2
        assert all(library.verify(d) is None for d in library.version_dirs())
        workers = set(forge.pool.pids())
        assert 1 <= len(workers) <= 2  # at most max_concurrent_jobs workers

        rec.clear()
        assert forge.enqueue("lowrank_adapter", reason="operator")  # not forced: the stored kernel is reused
        assert forge.enqueue("mlp_block", reason="operator recompile", force=True)
        await settle(forge, task)
        compiled = {e.blueprint_id: e for e in rec.of(JobCompiled)}
        assert ids_of(rec.of(JobStarted)) == ["mlp_block"]
        assert (compiled["lowrank_adapter"].reused, compiled["lowrank_adapter"].version) == (True, 1)
        assert (compiled["mlp_block"].reused, compiled["mlp_block"].version) == (False, 2)
        assert library.current("mlp_block", MNIST1D).version == 2
        assert len(library.version_dirs()) == 3
        assert set(forge.pool.pids()) <= workers  # the recompile ran on a worker kept from before

    forge.wal.close()
    rec.clear()
    wal2, report = open_wal(state_dir)
    assert report.open == [] and len(report.committed) == 4
    second = make_forge(ids, wal=wal2, default_strategy=Strategy.FAST)
    second.recover(report)
    second.discover()
    assert rec.of(JobQueued) == [] and second.queue_depth == 0 and second.is_idle()
    # What is stored is announced, as reused, at its newest version.
    assert sorted((e.blueprint_id, e.version, e.reused) for e in rec.of(JobCompiled)) == [
        ("lowrank_adapter", 1, True),
        ("mlp_block", 2, True),
    ]


async def test_discover_requeues_a_stale_kernel(make_forge, rec, library, commit_artifact, identity):
    commit_artifact(library, "mlp_block", key_for("mlp_block", Strategy.STANDARD, identity), cpu_isa="other-isa")
    forge = make_forge(["mlp_block"])
    forge.discover()
    (queued,) = rec.of(JobQueued)
    assert queued.blueprint_id == "mlp_block" and queued.reason.startswith("stale kernel")
    assert rec.of(JobCompiled) == []


async def test_discover_reports_a_usable_kernel_without_queueing(make_forge, rec, library, commit_artifact, identity):
    meta = commit_artifact(library, "mlp_block", key_for("mlp_block", Strategy.STANDARD, identity))
    forge = make_forge(["mlp_block"])
    forge.discover()
    assert rec.of(JobQueued) == [] and forge.is_idle()
    (done,) = rec.of(JobCompiled)
    assert (done.blueprint_id, done.version, done.reused, done.artifact_id) == ("mlp_block", 1, True, meta.artifact_id)


async def test_discover_quarantines_a_tampered_kernel_and_requeues(
    make_forge, rec, library, commit_artifact, quarantined
):
    commit_artifact(library, "mlp_block")
    version_dir = library.version_dirs()[0]
    (version_dir / "weights.safetensors").write_bytes(b"tampered")
    forge = make_forge(["mlp_block"])
    forge.discover()
    assert [(bid, name) for bid, name, _ in quarantined] == [("mlp_block", version_dir.name)]
    assert "weights" in quarantined[0][2]
    assert [e.reason for e in rec.of(JobQueued)] == ["initial scan"]
    assert library.version_dirs() == []


async def test_a_quarantine_recompiles_only_the_shape_it_took_away(make_forge, rec):
    small, image = vector(12, 8), SlotShape((3, 4, 4), (4, 4, 4))
    forge = make_forge(["mlp_block", "conv2d_block"], shapes=[MNIST1D, small, image])
    assert forge.requeue_quarantined("mlp_block", "v0003-12-8-cpu-0123456789ab")  # a folder library's label
    assert forge.requeue_quarantined("conv2d_block", "v0002-3x4x4-4x4x4-0123456789ab")  # a shared catalog's
    assert [(e.blueprint_id, e.shape, e.reason) for e in rec.of(JobQueued)] == [
        ("mlp_block", small.tag, "artifact quarantined"),
        ("conv2d_block", image.tag, "artifact quarantined"),
    ]
    # a label from before shapes, or one naming a shape no slot has (a renamed folder), recompiles every shape
    forge.requeue_quarantined("mlp_block", "v0001-0123456789ab")
    assert sorted(e.shape for e in rec.of(JobQueued)[2:]) == [MNIST1D.tag]  # small is already queued
    forge.requeue_quarantined("conv2d_block", "v0004-9x9x9-1x1x1-cpu-0123456789ab")
    assert len(rec.of(JobQueued)) == 3  # its only shape, image, is already queued


# ---------------------------------------------------------------------------------- crash recovery


async def test_open_transaction_after_a_crash_is_aborted_and_requeued(make_forge, rec, library, state_dir):
    wal, _ = open_wal(state_dir)
    begin = {"blueprint_id": "lowrank_adapter", "strategy": "emergency", "attempt": 1, "key": "x", "reason": "t"}
    wal.begin("crashed-tx", json.dumps(begin).encode())
    wal.close()  # the process "dies" here: BEGIN is on disk, nothing else
    leftover = library.new_staging_dir("lowrank_adapter")
    (leftover / "train.fn").write_bytes(b"half")

    wal2, report = open_wal(state_dir)
    assert [t.txid for t in report.open] == ["crashed-tx"]
    forge = make_forge(["lowrank_adapter"], wal=wal2, default_strategy=Strategy.EMERGENCY)
    forge.recover(report)
    assert wal2.status().open_txids == []  # aborted at once
    assert [(e.blueprint_id, e.reason) for e in rec.of(JobQueued)] == [
        ("lowrank_adapter", "resumed from WAL after a crash")
    ]
    assert any(leftover.name in e.message for e in rec.of(LogLine))
    assert not leftover.exists()

    async with running(forge) as task:
        await settle(forge, task)
    (done,) = rec.of(JobCompiled)
    assert (done.blueprint_id, done.version, done.reused) == ("lowrank_adapter", 1, False)
    wal2.close()

    wal3, report3 = open_wal(state_dir)
    assert report3.open == []
    assert [(t.txid, json.loads(t.end)) for t in report3.aborted] == [("crashed-tx", {"recovered": True})]
    assert len(report3.committed) == 1
    wal3.close()


async def test_crash_after_library_commit_before_wal_commit_reuses(
    make_forge, rec, library, state_dir, commit_artifact, identity
):
    key = key_for("mlp_block", Strategy.STANDARD, identity)
    wal, _ = open_wal(state_dir)
    wal.begin(
        "tx-1",
        json.dumps(
            {"blueprint_id": "mlp_block", "strategy": "standard", "attempt": 1, "key": key, "reason": "initial scan"}
        ).encode(),
    )
    wal.data("tx-1", json.dumps({"staged": "mlp_block-abc", "worker_pid": 1}).encode())
    stored = commit_artifact(library, "mlp_block", key)  # the rename happened ...
    wal.close()  # ... and the process died before COMMIT

    wal2, report = open_wal(state_dir)
    assert [t.txid for t in report.open] == ["tx-1"]
    forge = make_forge(["mlp_block"], wal=wal2)  # Standard, like the crashed job
    forge.recover(report)
    async with running(forge) as task:
        await settle(forge, task)
        assert forge.pool.pids() == []  # nothing was compiled: no worker was even started
    (done,) = rec.of(JobCompiled)
    assert (done.reused, done.version, done.artifact_id) == (True, 1, stored.artifact_id)
    assert rec.of(JobStarted) == []
    assert len(library.version_dirs()) == 1  # not a second version
    assert wal2.status().open_txids == [] and wal2.status().commits_total == 1


# ---------------------------------------------------------------------------------- failures and modes


async def test_standard_timeout_retries_with_fast_and_feeds_the_timeout_breaker(make_forge, rec, library):
    forge = make_forge(["lowrank_adapter"], timeout_standard_s=0.5, max_attempts=3)
    rec.sample(JobFailed, lambda: forge.board.timeout.failures)
    forge.enqueue("lowrank_adapter", reason="initial scan")
    assert rec.of(JobQueued)[0].strategy is Strategy.STANDARD
    async with running(forge) as task:
        await settle(forge, task)
    (failed,) = rec.of(JobFailed)
    assert (failed.strategy, failed.attempt, failed.will_retry) == (Strategy.STANDARD, 1, True)
    assert "timeout" in failed.error
    assert rec.samples[JobFailed] == [1]  # the timeout was recorded on the breaker before the failure was reported
    started = rec.of(JobStarted)
    assert [(e.strategy, e.attempt) for e in started] == [(Strategy.STANDARD, 1), (Strategy.FAST, 2)]
    (done,) = rec.of(JobCompiled)
    assert (done.strategy, done.backend, done.version) == (Strategy.FAST, "aot_eager", 1)
    assert forge.board.timeout.failures == 0  # the successful retry reset the consecutive count
    assert library.current("lowrank_adapter", MNIST1D).strategy is Strategy.FAST
    assert forge.wal.status().open_txids == [] and forge.wal.status().aborts_total == 1


async def test_timeouts_open_the_breaker_and_enter_conservative_mode(make_forge, rec, fake_clock):
    forge = make_forge(["lowrank_adapter"], clock=fake_clock, breakers=BreakersConfig(failure_threshold=1))
    forge.board.timeout.record_slow("compile exceeded its timeout")
    (changed,) = [e for e in rec.of(BreakerChanged) if e.transition]
    assert (changed.name, changed.previous, changed.state) == ("timeout", BreakerState.CLOSED, BreakerState.OPEN)
    (mode,) = rec.of(ConservativeModeChanged)
    assert mode.active and "timeout breaker open" in mode.reason
    assert forge.conservative.active and forge.max_concurrency() == 1


async def test_memory_breaker_open_drops_the_kernel_cache(make_forge, library, monkeypatch):
    dropped = []
    monkeypatch.setattr(library, "drop_cache", lambda: dropped.append(True) or 0)
    forge = make_forge(["lowrank_adapter"])
    forge.board.memory.trip("rss over budget")
    assert dropped == [True] and forge.conservative.active


async def test_conservative_mode_runs_one_at_a_time_with_fast(make_forge, rec):
    forge = make_forge(["lowrank_adapter", "mlp_block"], max_concurrent_jobs=2, enable_aggressive_pipeline=True)
    assert forge.max_concurrency() == 2
    forge.conservative.enter("operator says so", "operator")
    assert rec.of(ConservativeModeChanged)[-1].active
    assert forge.max_concurrency() == 1
    rec.sample(JobStarted, lambda: forge.running)
    forge.enqueue("lowrank_adapter", reason="t", strategy=Strategy.AGGRESSIVE)
    forge.enqueue("mlp_block", reason="t", strategy=Strategy.STANDARD)
    assert [e.strategy for e in rec.of(JobQueued)] == [Strategy.FAST, Strategy.FAST]
    async with running(forge) as task:
        await settle(forge, task)
    assert rec.samples[JobStarted] == [1, 1]  # the job itself, never a second one beside it
    assert [e.strategy for e in rec.of(JobStarted)] == [Strategy.FAST, Strategy.FAST]
    assert sorted((e.blueprint_id, e.strategy, e.backend) for e in rec.of(JobCompiled)) == [
        ("lowrank_adapter", Strategy.FAST, "aot_eager"),
        ("mlp_block", Strategy.FAST, "aot_eager"),
    ]


async def test_wal_write_failure_makes_the_forge_fatal(make_forge, rec, monkeypatch):
    forge = make_forge(["lowrank_adapter"], default_strategy=Strategy.EMERGENCY)

    def eio(fd, data):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(wal_module, "_write_all", eio)
    forge.enqueue("lowrank_adapter", reason="t")
    with pytest.raises(ForgeFatal, match="WAL write failed"):
        await asyncio.wait_for(forge.run(), 60)
    assert forge.fatal and "Input/output error" in forge.fatal
    assert any(e.level is Level.ERROR and "WAL" in e.message for e in rec.of(LogLine))
    assert rec.of(JobStarted) == [] and forge.pool.pids() == []  # nothing ran without its BEGIN on disk
    await forge.close()


# ---------------------------------------------------------------------------------- regressions


async def test_half_open_probe_is_returned_when_a_job_needs_no_compile(
    make_forge, rec, library, commit_artifact, identity, fake_clock
):
    commit_artifact(library, "mlp_block", key_for("mlp_block", Strategy.STANDARD, identity))
    forge = make_forge(["mlp_block"], clock=fake_clock, breakers=BreakersConfig(open_seconds=10))
    forge.board.timeout.trip("test")
    forge.conservative.leave("operator", "operator")  # keep Standard, so the stored kernel matches
    fake_clock.advance(11)
    assert forge.board.timeout.state is BreakerState.HALF_OPEN
    async with running(forge) as task:
        forge.enqueue("mlp_block", reason="first")
        await settle(forge, task, within_s=30)
        forge.enqueue("mlp_block", reason="second")
        await settle(forge, task, within_s=5)
    assert [e.reused for e in rec.of(JobCompiled)] == [True, True]


async def test_unexpected_error_after_compile_is_reported_and_aborted(make_forge, rec, library, monkeypatch):
    forge = make_forge(["lowrank_adapter"], max_attempts=1)

    async def compiled(request, timeout_s):
        return CompileResponse(job_id=request.job_id, ok=True, files=[], cpu_isa="x"), 4242

    def disk_full(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(forge.pool, "compile", compiled)
    monkeypatch.setattr(library, "commit", disk_full)
    forge.enqueue("lowrank_adapter", reason="t")
    async with running(forge) as task:
        await settle(forge, task, within_s=30)
    assert [e.blueprint_id for e in rec.of(JobFailed)] == ["lowrank_adapter"]
    assert forge.wal.status().open_txids == []
