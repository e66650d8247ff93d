"""Shared fixtures for the engine tests.

- `compiled_kernel` (session): ONE real inductor compile of a cheap blueprint (mlp_block, which gets
  real C++ kernels, unlike lowrank_adapter whose two matmuls are all extern calls). It runs in a
  subprocess, like a forge worker (same thread count), so this process keeps no inductor state or
  environment from it; kernel, library and forge tests reuse its files instead of compiling again.
- `kernel_threads` (function scope): runs the test at the thread count kernels are compiled for
  (compiled functions guard on torch.get_num_threads()) and restores the previous count.
- `state_dir`: a fresh engine state directory.
- `fake_clock`: a settable clock for everything that takes `clock=`.
- `redis_url` (session): the real redis-server the Redis tests use (ESPER_TEST_REDIS_URL, default db 15
  on localhost); fails, never skips, when none answers.

Nothing here asserts on wall-clock time: the machine is shared with other test runs.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.kernels.compiled import CompiledKernel
from esper_tui.engine.kernels.shapes import vector
from esper_tui.engine.library.meta import KernelBuild
from esper_tui.engine.library.store import Identity

IN_FEATURES = 40
OUT_FEATURES = 64
KERNEL_BLUEPRINT = "mlp_block"
MNIST1D_BLUEPRINTS = [b.blueprint_id for b in Catalog().fitting(vector(IN_FEATURES, OUT_FEATURES))]
"""What an engine on the default MLP host compiles: the blueprints that fit its 40-64 slots."""
COMPILE_TIMEOUT_S = 420
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"

# Real PostgreSQL (a fresh database per test) and a real S3-compatible server (moto) for the shared library.
pytest_plugins = ["tests.pg", "tests.s3"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Whatever uses the session's real compile is a compile test, wherever it lives."""
    for item in items:
        if "compiled_kernel" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.compile)


class FakeClock:
    """A clock that moves only when told to: `clock()` reads it, `advance(s)` moves it."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def kernel_threads():
    import torch

    from esper_tui.engine.kernels.compiled import kernel_threads as threads

    previous = torch.get_num_threads()
    torch.set_num_threads(threads())
    yield threads()
    torch.set_num_threads(previous)


@dataclass(frozen=True, kw_only=True)
class SessionKernel(CompiledKernel):
    """The files of one real inductor compile, and what compile_kernel reported about it."""

    blueprint_id: str
    strategy: str  # contracts.Strategy value
    backend: str
    mode: str | None
    directory: Path

    def read_files(self) -> dict[str, bytes]:
        return {name: (self.directory / name).read_bytes() for name in self.files}

    def copy_to(self, target: Path) -> Path:
        """Copy exactly the artifact's files (a staging directory for Library.commit)."""
        target.mkdir(parents=True, exist_ok=True)
        for name in self.files:
            dest = target / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.directory / name, dest)
        return target


_COMPILE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from esper_tui.engine.kernels.catalog import Catalog
    from esper_tui.engine.vocabulary import Strategy
    import torch
    from esper_tui.engine.kernels.compiled import compile_kernel, kernel_threads
    from esper_tui.engine.kernels.pipelines import settings_for
    from esper_tui.engine.kernels.shapes import vector

    torch.set_num_threads(kernel_threads())  # as the worker does: compiled guards pin the thread count

    blueprint_id, out_dir, in_f, out_f = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    s = settings_for(Strategy.STANDARD)
    r = compile_kernel(Catalog().get(blueprint_id), vector(in_f, out_f), s, out_dir)
    print("RESULT " + json.dumps({
        "backend": s.backend, "mode": s.mode, "files": r.files, "compile_s": r.compile_s,
        "step_ms_compiled": r.step_ms_compiled, "step_ms_eager": r.step_ms_eager, "cpu_isa": r.cpu_isa,
        "max_abs_error": r.max_abs_error,
    }))
    """
)


@pytest.fixture(scope="session")
def compiled_kernel(tmp_path_factory: pytest.TempPathFactory) -> SessionKernel:
    """The one inductor (Standard) compile of the test session."""
    out_dir = tmp_path_factory.mktemp("session-kernel") / KERNEL_BLUEPRINT
    proc = subprocess.run(
        [sys.executable, "-c", _COMPILE_SCRIPT, KERNEL_BLUEPRINT, str(out_dir), str(IN_FEATURES), str(OUT_FEATURES)],
        capture_output=True,
        text=True,
        timeout=COMPILE_TIMEOUT_S,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"session compile failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    r = json.loads(lines[-1][len("RESULT ") :])
    return SessionKernel(blueprint_id=KERNEL_BLUEPRINT, strategy="standard", directory=out_dir, **r)


@pytest.fixture
def identity(compiled_kernel: SessionKernel) -> Identity:
    """This process, as the engine describes it; the ISA is the one the session's compile (in a fresh
    process, like a worker) reported, on this same machine."""
    return Identity.here(compiled_kernel.cpu_isa)


def kernel_build(kernel: SessionKernel, **overrides: object) -> KernelBuild:
    """The KernelBuild the forge passes to Library.commit, for the session kernel's files."""
    import platform

    import torch

    from esper_tui.engine.kernels.compiled import compiler_id, kernel_threads
    from esper_tui.engine.vocabulary import Strategy

    build = KernelBuild(
        strategy=Strategy(kernel.strategy),
        backend=kernel.backend,
        mode=kernel.mode or "default",
        threads=kernel_threads(),
        compiler=compiler_id(),
        torch_version=str(torch.__version__),
        python_version=platform.python_version(),
        device="cpu",
        cpu_isa=kernel.cpu_isa,
        shape=vector(IN_FEATURES, OUT_FEATURES).tag,
        in_features=IN_FEATURES,
        batch_min=2,
        batch_max=65536,
        grad_modes=[True, False],
        compile_s=kernel.compile_s,
        step_ms_compiled=kernel.step_ms_compiled,
        step_ms_eager=kernel.step_ms_eager,
    )
    return msgspec.structs.replace(build, **overrides)


@pytest.fixture
def commit_artifact(compiled_kernel: SessionKernel):
    """commit_artifact(library, blueprint_id, key, **field_overrides) -> ArtifactMeta.

    Stores a copy of the session kernel's files as the next version (what the forge does after a
    compile), so library and forge tests get real artifacts without compiling again.
    """

    def commit(library, blueprint_id: str = KERNEL_BLUEPRINT, key: str = "k" * 64, **overrides: object):
        staged = compiled_kernel.copy_to(library.new_staging_dir(blueprint_id))
        return library.commit(
            staged, blueprint_id=blueprint_id, key=key, build=kernel_build(compiled_kernel, **overrides)
        )

    return commit


# ----------------------------------------------------------------------------- Redis availability


@functools.cache
def _probe(url: str) -> str | None:
    """Why Redis at `url` cannot be used, or None if it answers; asked once per run."""
    client = redis.Redis.from_url(
        url, socket_connect_timeout=1.0, socket_timeout=1.0, retry=Retry(NoBackoff(), retries=0)
    )
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return f"no Redis answers at {url} ({exc}); start redis-server or set ESPER_TEST_REDIS_URL"
    finally:
        client.close()
    return None


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test server's URL. Tests that claim Redis behaviour never pass by being skipped: when nothing
    answers they fail with what to do (`make test` starts a redis-server itself)."""
    url = os.environ.get("ESPER_TEST_REDIS_URL") or DEFAULT_REDIS_URL
    problem = _probe(url)
    if problem is not None:
        pytest.fail(problem)
    return url
