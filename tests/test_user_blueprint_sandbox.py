"""Broken and hostile user blueprints in the real sandbox: real `python -m esper_tui.engine.forge.worker` processes
(as the unprivileged worker account, memory-capped), real torch.compile. Each is refused with one reason, and the
pool goes on compiling afterwards; a worker that ran user code is never given another job.

Every case needs a fresh worker (the one that ran user code is retired), so each costs a worker start-up (torch,
~4 s here); the refusals themselves come before any inductor compile except the graph break, which dynamo finds.
"""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from esper_tui.engine.forge.protocol import CompileRequest
from esper_tui.engine.forge.sandbox import CompileTimeout, WorkerPool
from esper_tui.engine.kernels.pipelines import settings_for
from esper_tui.engine.vocabulary import Strategy

pytestmark = [pytest.mark.compile, pytest.mark.slow]

MEMORY_MB = 3072
JOB_TIMEOUT_S = 240.0
LOOP_TIMEOUT_S = 15.0  # a loop never ends, so any timeout proves the kill; short, for the suite's sake
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "blueprints.py"

HEADER = textwrap.dedent(
    """
    import sys
    import torch
    from torch import nn

    """
)


def blueprint(init: str = "", forward: str = "return self.fc(x)", top: str = "") -> str:
    """A module whose class `Bp` builds a dense layer, with `init` and `forward` bodies swapped in."""
    body = textwrap.indent(textwrap.dedent(forward).strip(), " " * 8)
    return (
        HEADER
        + textwrap.dedent(top)
        + textwrap.dedent(
            f"""
            class Bp(nn.Module):
                def __init__(self, in_shape, out_shape):
                    super().__init__()
                    self.fc = nn.Linear(in_shape[-1], out_shape[-1])
                    {init or "pass"}

                def forward(self, x):
            """
        )
        + body
        + "\n"
    )


OPENS = """
    open('/etc/hostname').read()
    return self.fc(x)
"""
SWALLOWS = """
    try:
        open('/etc/hostname')
    except OSError:
        pass
    return self.fc(x)
"""
BRANCHES = """
    if x.sum().item() > 0:
        return self.fc(x)
    return -self.fc(x)
"""
LOOPS = """
    while True:
        pass
"""


def request(out_dir: Path, source: str, class_name: str = "Bp", strategy: Strategy = Strategy.FAST) -> CompileRequest:
    s = settings_for(strategy)
    return CompileRequest(
        job_id=uuid.uuid4().hex,
        blueprint_id="user_bp",
        shape="40-64",
        strategy=strategy,
        backend=s.backend,
        mode=s.mode,
        device=s.device,
        out_dir=str(out_dir),
        source=source,
        class_name=class_name,
    )


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[WorkerPool]:
    p = WorkerPool(tmp_path / "logs", memory_limit_mb=MEMORY_MB, jobs_per_worker=10)
    yield p
    await p.close()


REFUSALS = {
    "import-raises": (blueprint(top="raise RuntimeError('no such device')\n"), "import failed: RuntimeError: no such"),
    "import-exits": (blueprint(top="sys.exit(3)\n"), "import failed: SystemExit: 3"),
    "build-raises": (blueprint(init="raise ValueError('bad options')"), "build failed: ValueError: bad options"),
    "huge-allocation": (
        blueprint(init="self.table = torch.empty(1 << 40)"),
        f"build failed: memory: more than the sandbox's limit ({MEMORY_MB} MiB)",
    ),
    "wrong-shape": (
        blueprint(forward="return self.fc(x)[:, :3]"),
        "wrong output shape: [8, 3] for input [8, 40], expected [8, 64]",
    ),
    "nan-output": (blueprint(forward="return self.fc(x) * float('nan')"), "non-finite output (NaN or infinity)"),
    "opens-a-file": (blueprint(forward=OPENS), "forward tried open '/etc/hostname'"),
    "opens-and-swallows": (blueprint(forward=SWALLOWS), "forward tried open '/etc/hostname'"),
    "graph-break": (blueprint(forward=BRANCHES), "graph break under fullgraph=True"),
    "not-a-module": (HEADER + "class Bp:\n    pass\n", "Bp is not an nn.Module class"),
    "serves-images-only": (
        HEADER + "class Bp(nn.Module):\n    serves = ('image',)\n",
        "serves image slots, not vector",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
async def test_a_broken_or_hostile_blueprint_is_refused_in_one_line(
    pool: WorkerPool, tmp_path: Path, case: str
) -> None:
    source, reason = REFUSALS[case]
    response, pid = await pool.compile(request(tmp_path / "out", source), JOB_TIMEOUT_S)
    assert not response.ok
    assert reason in response.error, response.error
    assert "\n" not in response.error and len(response.error) <= 300
    assert pid not in pool.pids()  # the worker that ran user code is gone, not kept for the next job


async def test_an_endless_loop_is_refused_at_the_timeout_and_the_pool_goes_on(pool: WorkerPool, tmp_path: Path) -> None:
    looping = blueprint(forward=LOOPS)
    with pytest.raises(CompileTimeout):
        await pool.compile(request(tmp_path / "loop", looping), LOOP_TIMEOUT_S)
    assert pool.pids() == []  # killed with its group
    # the pool goes on: the next job gets a fresh worker and its answer (one that needs no compile, for speed:
    # test_the_example_compiles_and_validates_against_eager compiles in a pool)
    source, reason = REFUSALS["wrong-shape"]
    response, _ = await pool.compile(request(tmp_path / "next", source), JOB_TIMEOUT_S)
    assert not response.ok and reason in response.error, response.error


async def test_the_example_compiles_and_validates_against_eager(pool: WorkerPool, tmp_path: Path) -> None:
    source = EXAMPLE.read_text()
    response, pid = await pool.compile(
        request(tmp_path / "out", source, "GatedResidual", Strategy.STANDARD), JOB_TIMEOUT_S
    )
    assert response.ok, response.error
    assert response.max_abs_error < 1e-3 and response.step_ms_compiled > 0 and response.step_ms_eager > 0
    assert {"train.fn", "infer.fn", "weights.safetensors"} <= set(response.files)
    assert all((tmp_path / "out" / name).is_file() for name in response.files)
    assert pid not in pool.pids()


async def test_a_shared_library_keeps_the_record_the_source_and_the_compiled_kernel(
    pg_url: str, s3_url: tuple[str, str], tmp_path: Path
) -> None:
    """What a forge worker does with a user blueprint of a shared library: read the signed record (PostgreSQL) and
    source (the object store), compile in its sandbox, register the kernel; another machine verifies all three."""
    from esper_tui.engine.config import LibraryConfig
    from esper_tui.engine.forge.builders import BuildSpec, LocalBuilder
    from esper_tui.engine.kernels.catalog import Catalog
    from esper_tui.engine.kernels.shapes import vector
    from esper_tui.engine.library.catalog_db import PgCatalog
    from esper_tui.engine.library.factory import open_library
    from esper_tui.engine.library.store import artifact_key
    from esper_tui.engine.library.userbp import as_blueprint, new_record

    db = PgCatalog(pg_url)
    try:
        db.migrate()
    finally:
        db.close()
    artifacts, endpoint = s3_url
    config = LibraryConfig(catalog_url=pg_url, artifacts_url=artifacts, artifacts_endpoint=endpoint)
    key = bytes(range(32))
    source = EXAMPLE.read_bytes()
    record = new_record(
        name="gated_residual",
        class_name="GatedResidual",
        source=source,
        source_file=str(EXAMPLE),
        description="",
        serves=("vector",),
        tags=[],
        risk=0.2,
    )
    adder = open_library(config, tmp_path / "adder", key, Catalog())
    adder.blueprints.add(record, source)
    adder.close()

    worker_side = open_library(config, tmp_path / "worker", key, Catalog())  # a forge worker knows the built-ins only
    pool = WorkerPool(tmp_path / "logs", memory_limit_mb=MEMORY_MB, jobs_per_worker=10)
    try:
        identity = worker_side.identity()  # the SharedLibrary probes this machine
        strategy = Strategy.FAST
        bp = as_blueprint(record, source.decode())
        spec = BuildSpec(
            job_id=uuid.uuid4().hex,
            blueprint_id="gated_residual",
            strategy=strategy,
            key=artifact_key(bp.ir_hash(), settings_for(strategy), strategy, identity, vector(40, 64)),
            shape="40-64",
            timeout_s=JOB_TIMEOUT_S,
        )

        async def staged(_record: object) -> None:
            return None

        built = await LocalBuilder(worker_side, pool, identity).build(spec, started=lambda _: None, staged=staged)
    finally:
        await pool.close()
        worker_side.close()
    assert built.meta.blueprint_id == "gated_residual" and built.meta.ir_hash == bp.ir_hash()

    elsewhere = open_library(config, tmp_path / "elsewhere", key, Catalog())
    try:
        got_record, got_source = elsewhere.blueprints.get("gated_residual")
        assert got_source.encode() == source and got_record.submitted_by == record.submitted_by
        results = dict(elsewhere.verify_all())
        (label,) = [name for name in results if name.startswith("gated_residual/")]
        assert results[label] is None  # its kernel verifies, bytes read back from the store
    finally:
        elsewhere.close()
