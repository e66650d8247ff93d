"""A user blueprint end to end, as the README tells it: `esper-tui blueprint add examples/blueprints.py:GatedResidual`,
an engine whose forge compiles it in the sandboxed worker and whose Tamiyo grafts it in the training process, then
`esper-tui library verify` accepting the signed version. The engine runs in this test's own process, watched by an
audit hook: the user's source is never compiled or executed here (the worker and the training process do both).

Then hostile blueprints on the same library: an endless loop is refused at its compile timeout while the engine
goes on and exits cleanly, and nothing already in the library changes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from esper_tui.engine.config import parse_config
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.library.factory import open_library
from esper_tui.engine.library.signing import load_key
from esper_tui.engine.library.userbp import extend_catalog
from esper_tui.engine.runtime import Engine
from tests.budget import FULL

pytestmark = [pytest.mark.compile, pytest.mark.slow]

CLI = [sys.executable, "-m", "esper_tui"]
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "blueprints.py"
USER_FILE = "<user blueprint gated_residual>"  # the file name usercode.load compiles the source under
DEADLINE_S = 900.0
# The compile timeout of the hostile run: the endless loop must be refused within it. nan_out compiles before its
# output is checked (so it needs the longer timeout on a loaded machine) and the sandbox's own test refuses it too:
# it runs in the full suite only (tests/budget.py).
LOOP_TIMEOUT_S = 60 if FULL else 30


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


class UserCodeWatch:
    """An audit hook (it cannot be removed: it only records while `active`) noting every compile of source text
    that contains `marker`, and every exec of code compiled under the user blueprint's file name."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.active = True
        self.seen: list[str] = []
        sys.addaudithook(self.hook)

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active:
            return
        if event == "compile" and args:
            source = args[0]
            text = source.decode(errors="replace") if isinstance(source, bytes) else source
            if isinstance(text, str) and self.marker in text:
                self.seen.append(f"compile {args[1] if len(args) > 1 else ''}")
        elif event == "exec" and args and getattr(args[0], "co_filename", "") == USER_FILE:
            self.seen.append("exec")


async def until(condition: Callable[[], Any], what: str) -> Any:
    async with asyncio.timeout(DEADLINE_S):
        while not (result := condition()):
            await asyncio.sleep(0.2)
    return result


@pytest.fixture(scope="module")
def grafted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Add the example with the CLI, run an engine in this process until Tamiyo grafts it, stop it."""
    state = tmp_path_factory.mktemp("userbp") / "state"
    added = cli("blueprint", "add", f"{EXAMPLE}:GatedResidual", "--state-dir", str(state))
    assert added.returncode == 0, added.stderr
    watch = UserCodeWatch(marker="class GatedResidual(nn.Module):")
    config = parse_config(
        {
            "tezzeret": {"polling": {"initial_full_scan": False}},  # the user blueprint is the only job
            "training": {"plateau_epochs": 1, "early_stop_epochs": 100_000, "train_epochs": 1},
        }
    )

    async def run() -> dict[str, Any]:
        engine = Engine(config, state)
        await engine.start()
        try:
            seed = await until(
                lambda: next(
                    (s for s in engine.aggregator.snapshot().training.seeds if s.blueprint_id == "gated_residual"),
                    None,
                ),
                "Tamiyo to graft gated_residual",
            )
            jobs = {j.blueprint_id: j for j in engine.aggregator.snapshot().forge.jobs}
        finally:
            await engine.stop()
        return {"seed": seed, "jobs": jobs}

    try:
        outcome = asyncio.run(run())
    finally:
        watch.active = False
    return {
        "state": state,
        "watch": watch.seen,
        "modules": [m for m in sys.modules if m.startswith("esper_tui_user")],
        **outcome,
    }


def test_the_forge_compiles_it_in_the_worker_and_tamiyo_grafts_it(grafted: dict[str, Any]) -> None:
    assert grafted["jobs"]["gated_residual"].status == "compiled"
    assert set(grafted["jobs"]) == {"gated_residual"}  # nothing else was queued
    assert grafted["seed"].stage != "dormant"


def test_the_engine_process_never_compiled_or_ran_the_users_source(grafted: dict[str, Any]) -> None:
    assert grafted["watch"] == []
    assert grafted["modules"] == []


def test_list_shows_it_compiled_and_library_verify_accepts_its_signed_version(grafted: dict[str, Any]) -> None:
    state = grafted["state"]
    listed = cli("blueprint", "list", "--json", "--state-dir", str(state))
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (row["name"], row["status"], row["reason"]) == ("gated_residual", "compiled", "")
    verified = cli("library", "verify", "--state-dir", str(state))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    library = open_library(parse_config({}).library, state, load_key(state), Catalog(), claim_key=False)
    try:
        catalog = Catalog()
        extend_catalog(catalog, library.blueprints)
    finally:
        library.close()
    assert "gated_residual" in catalog and not set(HOSTILE) & set(catalog.ids())  # the next engine leaves them out
    assert any(line.startswith("ok   gated_residual/v0001-") for line in verified.stdout.splitlines()), verified.stdout


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


HOSTILE = {
    "forever": ("while True:\n            pass", "compile exceeded its"),
    "reads_files": ("open('/etc/hostname').read()\n        return self.fc(x)", "forward tried open '/etc/hostname'"),
    **({"nan_out": ("return self.fc(x) * float('nan')", "non-finite output")} if FULL else {}),
}


def test_hostile_blueprints_are_refused_and_nothing_already_stored_changes(
    grafted: dict[str, Any], tmp_path: Path
) -> None:
    state: Path = grafted["state"]
    for name, (body, _) in HOSTILE.items():
        path = tmp_path / f"{name}.py"
        path.write_text(
            textwrap.dedent(
                """
                import torch
                from torch import nn


                class Bp(nn.Module):
                    def __init__(self, in_shape, out_shape):
                        super().__init__()
                        self.fc = nn.Linear(in_shape[-1], out_shape[-1])

                    def forward(self, x):
                        BODY
                """
            ).replace("BODY", body)
        )
        added = cli("blueprint", "add", f"{path}:Bp", "--name", name, "--state-dir", str(state))
        assert added.returncode == 0, added.stderr
    artifacts = _tree(state / "library" / "artifacts")
    good_record = (state / "library" / "blueprints" / "gated_residual" / "record").read_bytes()
    config = tmp_path / "hostile.toml"
    config.write_text(
        "[tezzeret.polling]\ninitial_full_scan = false\n"
        f"[tezzeret.compilation]\ntimeout_standard_s = {LOOP_TIMEOUT_S}\ntimeout_fast_s = {LOOP_TIMEOUT_S}\n"
    )
    run = cli("--forge-only", "--no-ui", "--state-dir", str(state), "--config", str(config), timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]

    listed = cli("blueprint", "list", "--json", "--state-dir", str(state))
    rows = {row["name"]: row for row in map(json.loads, listed.stdout.splitlines())}
    for name, (_, reason) in HOSTILE.items():
        assert rows[name]["status"] == "refused", rows[name]
        assert reason in rows[name]["reason"] and "\n" not in rows[name]["reason"], rows[name]
    assert f"{LOOP_TIMEOUT_S} s timeout" in rows["forever"]["reason"]
    assert rows["gated_residual"]["status"] == "compiled"
    assert _tree(state / "library" / "artifacts") == artifacts  # no kernel added, changed or quarantined
    assert (state / "library" / "blueprints" / "gated_residual" / "record").read_bytes() == good_record
    verified = cli("library", "verify", "--state-dir", str(state))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    library = open_library(parse_config({}).library, state, load_key(state), Catalog(), claim_key=False)
    try:
        catalog = Catalog()
        extend_catalog(catalog, library.blueprints)
    finally:
        library.close()
    assert "gated_residual" in catalog and not set(HOSTILE) & set(catalog.ids())  # the next engine leaves them out
