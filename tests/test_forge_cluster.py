"""One engine and two `esper-tui forge-worker` processes over a real PostgreSQL, S3 server and Redis.

The engine compiles nothing itself (`--forge-workers 0`); worker A is SIGKILLed mid-compile, and worker B,
started after, must take over A's job (XAUTOCLAIM) as well as the rest. The outcome is checked where it
lives: the catalog (one live version per blueprint, no duplicates), the job stream (nothing pending), the
shared store (`library verify`) and the engine's own snapshots.

CI compiles with the Fast pipeline throughout (aot_eager through torch.compile): the queue, the claim and the
library are under test, not inductor, and worker A is still killed inside its first job (its sandbox is starting
torch). `ESPER_FULL_TESTS=1` compiles the first pass with the Standard pipeline (inductor), as an operator's would.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks.cluster import Proc, cluster
from tests.budget import FULL
from tests.conftest import MNIST1D_BLUEPRINTS

DEADLINE_S = 300.0
pytestmark = [pytest.mark.redis, pytest.mark.compile]


def wait_for(condition: Callable[[], Any], what: str, *alive: Proc) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if result := condition():
            return result
        for p in alive:
            assert p.alive(), f"{p.name} exited while waiting for {what}: {p.stderr()[-2000:]}"
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def snapshots(engine: Proc) -> list[dict[str, Any]]:
    lines = engine.out.read_text().splitlines(keepends=True)
    return [json.loads(x) for x in lines if x.startswith("{") and x.endswith("\n")]


def test_a_worker_killed_mid_compile_loses_nothing_and_compiles_nothing_twice(
    tmp_path: Path, redis_url: str, pg_admin_url: str
) -> None:
    with cluster(tmp_path, redis_url, pg_admin_url, claim_idle_s=4.0) as c:
        fast = tmp_path / "fast.toml"
        fast.write_text(c.config.read_text() + '\n[tezzeret.compilation]\ndefault_strategy = "fast"\n')
        a = c.worker("worker-a")
        wait_for(lambda: "taking jobs" in a.stderr(), "worker A to start", a)
        engine = c.engine("--forge-only", *([] if FULL else ["--config", str(fast)]))
        found = wait_for(lambda: re.search(r"compiling (\w+) ", a.stderr()), "worker A's first compile", a, engine)
        victim = found.group(1)
        a.kill()
        assert f"{victim}: v" not in a.stderr(), "the job finished before the kill: the test proves nothing"

        b = c.worker("worker-b")
        assert engine.proc.wait(timeout=DEADLINE_S) == 0, engine.stderr()[-3000:]

        rows = c.rows()
        blueprints = sorted(MNIST1D_BLUEPRINTS)
        assert sorted(r[0] for r in rows) == blueprints  # one version each: none lost, none registered twice
        assert not any(r[4] for r in rows)  # none quarantined
        assert c.queue() == (0, 0)  # nothing pending in the group, nothing left on the stream
        assert f"{victim}: v1 registered" in b.stderr()  # A's job, reclaimed by B

        verify = c.tool("library", "verify", "--state-dir", str(tmp_path / "engine"), *c.library_args())
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert f"{len(blueprints)} of {len(blueprints)} artifacts verify" in verify.stdout

        seen = snapshots(engine)
        final = seen[-1]["forge"]["jobs"]
        assert sorted(j["blueprint_id"] for j in final if j["status"] == "compiled") == blueprints
        by_bp = {j["blueprint_id"]: j for j in final}
        assert by_bp[victim]["worker"].endswith(f":{b.proc.pid}")  # the queue showed where it ran
        listed = {w["pid"] for s in seen for w in s["forge"]["workers"]}
        assert b.proc.pid in listed  # the forge panel listed worker B from its heartbeats

        # What `R` does (every blueprint compiled again, forced), through the queue: one new version each.
        # With the Fast pipeline (aot_eager, under a second each): the queue is under test here, not inductor.
        again = c.engine("--forge-only", "--recompile-all", "--config", str(fast))
        assert again.proc.wait(timeout=DEADLINE_S) == 0, again.stderr()[-3000:]
        versions = sorted((r[0], r[1]) for r in c.rows() if not r[4])
        assert versions == sorted((bp, v) for bp in blueprints for v in (1, 2))
        assert c.queue() == (0, 0)
        assert b.stop() == 0
