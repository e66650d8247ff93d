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
LOOP_TIMEOUT_S = 45.0  # long enough for a loaded machine to start the worker, short for a test
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
    good = EXAMPLE.read_text()
    response, _ = await pool.compile(request(tmp_path / "good", good, "GatedResidual"), JOB_TIMEOUT_S)
    assert response.ok, response.error


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
