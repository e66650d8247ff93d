"""User blueprints in the library: `esper-tui blueprint add|list|show|remove` as an operator runs them (real
subprocesses), on the file library and on the shared one (real PostgreSQL and a real S3 server), and the signed
records underneath: an unsigned or altered record, or a source that is not the signed one, is never used."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from esper_tui.engine.config import LibraryConfig
from esper_tui.engine.kernels.catalog import Catalog, UserCodeNotLoaded
from esper_tui.engine.kernels.usercode import UserCodeRefused, describe
from esper_tui.engine.library.base import KernelLibrary
from esper_tui.engine.library.catalog_db import PgCatalog
from esper_tui.engine.library.factory import open_library
from esper_tui.engine.library.signing import load_or_create_key
from esper_tui.engine.library.userbp import UserBlueprintError, UserBlueprintInvalid, UserStatus
from esper_tui.engine.library.userbp_files import RECORD, SOURCE

CLI = [sys.executable, "-m", "esper_tui", "blueprint"]
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "blueprints.py"
KEY = bytes(range(32))

GOOD = textwrap.dedent(
    '''
    import torch
    from torch import nn

    class TinyDense(nn.Module):
        """One dense layer."""

        serves = ("vector", "sequence")

        def __init__(self, in_shape, out_shape):
            super().__init__()
            self.fc = nn.Linear(in_shape[-1], out_shape[-1])

        def forward(self, x):
            return self.fc(x)
    '''
)


@dataclass(frozen=True)
class Backend:
    """How the CLI and the tests reach one library: flags, environment, and the config the engine would use."""

    state: Path
    flags: list[str]
    env: dict[str, str]
    config: LibraryConfig

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args, "--state-dir", str(self.state), *self.flags],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **self.env},
        )

    def library(self) -> KernelLibrary:
        key = KEY if self.env else load_or_create_key(self.state)
        return open_library(self.config, self.state, key, Catalog(), claim_key=False)


@pytest.fixture(params=["files", "shared"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "files":
        return Backend(tmp_path / "state", [], {}, LibraryConfig())
    return _shared(request, tmp_path)


def write(tmp_path: Path, text: str, name: str = "bp.py") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------- reading the source


def test_describe_reads_the_class_and_its_serves_without_running_the_module(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    source = f"open({str(marker)!r}, 'w').close()\n" + GOOD
    facts = describe(source, "TinyDense")
    assert facts.serves == ("vector", "sequence") and facts.doc == "One dense layer."
    assert not marker.exists()


def test_describe_defaults_serves_to_vector() -> None:
    assert describe("class A:\n    pass\n", "A").serves == ("vector",)


@pytest.mark.parametrize(
    ("source", "cls", "reason"),
    [
        ("class A(:\n", "A", "syntax error"),
        ("class A:\n    pass\n", "B", "no top-level class 'B' (classes: A)"),
        ("def f():\n    class A: pass\n", "A", "no top-level class 'A'"),
        ("class A:\n    serves = ('volume',)\n", "A", "serves must be a literal tuple"),
        ("class A:\n    serves = KINDS\n", "A", "serves must be a literal tuple"),
    ],
)
def test_describe_refuses_in_one_line(source: str, cls: str, reason: str) -> None:
    with pytest.raises(UserCodeRefused, match=reason.replace("(", r"\(").replace(")", r"\)")) as info:
        describe(source, cls, "bp.py")
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------- the CLI


def test_add_list_show_remove(backend: Backend, tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    added = backend.run("add", f"{path}:TinyDense", "--tags", "dense,tiny", "--risk", "0.25")
    assert added.returncode == 0, added.stderr
    assert "added tiny_dense" in added.stdout and "unvalidated" in added.stdout

    listed = backend.run("list", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert row["name"] == "tiny_dense" and row["status"] == "unvalidated" and row["reason"] == ""
    assert row["class"] == "TinyDense" and row["serves"] == ["vector", "sequence"]
    assert row["tags"] == ["dense", "tiny"] and row["risk"] == 0.25
    assert row["submitted_by"]  # the OS user
    table = backend.run("list")
    assert "tiny_dense" in table.stdout and "unvalidated" in table.stdout

    shown = backend.run("show", "tiny_dense")
    assert shown.returncode == 0, shown.stderr
    assert "class TinyDense(nn.Module):" in shown.stdout and "submitted_by:" in shown.stdout

    library = backend.library()
    try:
        record, source = library.blueprints.get("tiny_dense")
        assert source == GOOD and record.status is UserStatus.UNVALIDATED
        ((_, bp),) = library.blueprints.usable()
        assert bp.blueprint_id == "tiny_dense" and bp.source == GOOD and bp.module is None
        with pytest.raises(UserCodeNotLoaded):
            bp.module_class()
        assert bp.ir()["module"] == "user.TinyDense" and len(bp.ir_hash()) == 64
    finally:
        library.close()

    removed = backend.run("remove", "tiny_dense")
    assert removed.returncode == 0, removed.stderr
    assert backend.run("list", "--json").stdout == ""
    again = backend.run("remove", "tiny_dense")
    assert again.returncode == 2 and "no user blueprint 'tiny_dense'" in again.stderr


def test_the_example_is_added_under_its_snake_case_name(backend: Backend) -> None:
    added = backend.run("add", f"{EXAMPLE}:GatedResidual")
    assert added.returncode == 0, added.stderr
    assert "added gated_residual (GatedResidual" in added.stdout


@pytest.mark.parametrize(
    ("target", "extra", "message"),
    [
        ("{path}", [], "expected FILE.py:CLASS"),
        ("{missing}:TinyDense", [], "No such file or directory"),
        ("{path}:Nope", [], "no top-level class 'Nope'"),
        ("{broken}:TinyDense", [], "syntax error"),
        ("{path}:TinyDense", ["--risk", "1.5"], "--risk: expected `float` <= 1"),
        ("{path}:TinyDense", ["--risk", "nan"], "--risk: expected `float` >= 0"),
        ("{path}:TinyDense", ["--name", "Bad Name"], "--name: expected `str` matching regex"),
        ("{path}:TinyDense", ["--tags", "ok,NOT OK"], "--tags: expected `str` matching regex"),
        ("{path}:TinyDense", ["--name", "mlp_block"], "'mlp_block' is a built-in blueprint"),
    ],
)
def test_add_refuses_bad_input_in_one_line_with_exit_2(
    tmp_path: Path, target: str, extra: list[str], message: str
) -> None:
    backend = Backend(tmp_path / "state", [], {}, LibraryConfig())
    path = write(tmp_path, GOOD)
    broken = write(tmp_path, "class TinyDense(:\n", "broken.py")
    spec = target.format(path=path, missing=tmp_path / "missing.py", broken=broken)
    proc = backend.run("add", spec, *extra)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_name_is_added_once(backend: Backend, tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    assert backend.run("add", f"{path}:TinyDense").returncode == 0
    again = backend.run("add", f"{path}:TinyDense")
    assert again.returncode == 2 and "exists (blueprint remove it first)" in again.stderr


def test_reading_an_absent_library_makes_no_key_and_says_so(tmp_path: Path) -> None:
    backend = Backend(tmp_path / "state", [], {}, LibraryConfig())
    proc = backend.run("list")
    assert proc.returncode == 1 and "no library under" in proc.stderr
    assert not (tmp_path / "state" / "keys").exists()


# ---------------------------------------------------------------------------------------------- signed records


def _added(backend: Backend, tmp_path: Path) -> KernelLibrary:
    assert backend.run("add", f"{write(tmp_path, GOOD)}:TinyDense").returncode == 0
    return backend.library()


def test_a_status_change_is_signed_again_and_read_back(backend: Backend, tmp_path: Path) -> None:
    library = _added(backend, tmp_path)
    try:
        changed = library.blueprints.set_status("tiny_dense", UserStatus.REFUSED, "graph break under fullgraph=True")
        assert changed is not None and changed.status is UserStatus.REFUSED
        assert (
            library.blueprints.set_status("tiny_dense", UserStatus.REFUSED, "graph break under fullgraph=True") is None
        )
        record = library.blueprints.record("tiny_dense")
        assert record is not None and record.reason == "graph break under fullgraph=True"
        assert library.blueprints.set_status("tiny_dense", UserStatus.COMPILED) is None  # another shape compiled
        assert library.blueprints.usable() == []  # refused: out of the engine's catalog
    finally:
        library.close()
    listed = backend.run("list")
    assert "refused" in listed.stdout and "graph break under fullgraph=True" in listed.stdout


def test_an_altered_file_record_is_listed_invalid_and_never_used(tmp_path: Path) -> None:
    backend = Backend(tmp_path / "state", [], {}, LibraryConfig())
    library = _added(backend, tmp_path)
    record_file = tmp_path / "state" / "library" / "blueprints" / "tiny_dense" / RECORD
    signature, _, document = record_file.read_bytes().partition(b"\n")
    record_file.write_bytes(signature + b"\n" + document.replace(b'"unvalidated"', b'"compiled"'))
    try:
        assert library.blueprints.usable() == []
        with pytest.raises(UserBlueprintInvalid, match="signature mismatch"):
            library.blueprints.get("tiny_dense")
        assert library.blueprints.set_status("tiny_dense", UserStatus.COMPILED) is None  # never re-signs a forgery
    finally:
        library.close()
    listed = backend.run("list")
    assert listed.returncode == 0 and "INVALID" in listed.stdout and "signature mismatch" in listed.stdout
    shown = backend.run("show", "tiny_dense")
    assert shown.returncode == 1 and "signature mismatch" in shown.stderr


def test_an_unsigned_file_record_is_never_used(tmp_path: Path) -> None:
    backend = Backend(tmp_path / "state", [], {}, LibraryConfig())
    library = _added(backend, tmp_path)
    record_file = tmp_path / "state" / "library" / "blueprints" / "tiny_dense" / RECORD
    record_file.write_bytes(b"\n" + record_file.read_bytes().partition(b"\n")[2])
    try:
        assert library.blueprints.usable() == []
        assert [e.problem for e in library.blueprints.entries()] != [""]
    finally:
        library.close()


def test_a_swapped_file_source_is_never_used(tmp_path: Path) -> None:
    backend = Backend(tmp_path / "state", [], {}, LibraryConfig())
    library = _added(backend, tmp_path)
    source = tmp_path / "state" / "library" / "blueprints" / "tiny_dense" / SOURCE
    source.write_text(GOOD.replace("self.fc(x)", "self.fc(x) * 0"))
    try:
        with pytest.raises(UserBlueprintInvalid, match="does not match its signed sha256"):
            library.blueprints.get("tiny_dense")
        assert library.blueprints.usable() == []
    finally:
        library.close()


def test_a_shared_record_altered_in_the_catalog_is_never_used(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    backend = _shared(request, tmp_path)
    library = _added(backend, tmp_path)
    import psycopg

    with psycopg.connect(backend.config.catalog_url, autocommit=True) as conn:
        flipped = conn.execute(
            """UPDATE user_blueprints
               SET record = convert_to(replace(convert_from(record, 'UTF8'), '"unvalidated"', '"compiled"'), 'UTF8')"""
        )
        assert flipped.rowcount == 1
    try:
        assert library.blueprints.usable() == []
        with pytest.raises(UserBlueprintInvalid):
            library.blueprints.get("tiny_dense")
    finally:
        library.close()


def test_a_shared_source_altered_in_the_store_is_never_used(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    backend = _shared(request, tmp_path)
    library = _added(backend, tmp_path)
    try:
        record = library.blueprints.record("tiny_dense")
        assert record is not None
        store = library.blueprints.backend.store  # type: ignore[attr-defined]
        store.delete(record.source_sha256)
        with pytest.raises(UserBlueprintError):
            library.blueprints.get("tiny_dense")
        assert library.blueprints.usable() == []
    finally:
        library.close()


def _shared(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """A migrated catalog and a bucket of their own, the key in the environment (a shared library's is never made)."""
    pg_url: str = request.getfixturevalue("pg_url")
    artifacts, endpoint = request.getfixturevalue("s3_url")
    db = PgCatalog(pg_url)
    try:
        db.migrate()
    finally:
        db.close()
    flags = ["--library", pg_url, "--artifacts", artifacts, "--artifacts-endpoint", endpoint]
    config = LibraryConfig(catalog_url=pg_url, artifacts_url=artifacts, artifacts_endpoint=endpoint)
    return Backend(tmp_path / "state", flags, {"ESPER_SIGNING_KEY": KEY.hex()}, config)


# ---------------------------------------------------------------------------------------------- rescans


def test_the_training_process_picks_up_blueprints_added_since_it_started(tmp_path: Path) -> None:
    from esper_tui.engine.kernels.shapes import vector
    from esper_tui.engine.training.library_source import LibraryKernelSource
    from esper_tui.engine.training.process import _add_user_blueprints
    from tests.conftest import FakeClock

    backend = Backend(tmp_path / "state", [], {}, LibraryConfig())
    library = backend.library()
    clock = FakeClock()
    catalog = library.catalog
    source = LibraryKernelSource(
        library,
        "inductor",
        "default",
        refresh=lambda: _add_user_blueprints(catalog, library),
        refresh_s=60,
        clock=clock,
    )
    try:
        assert backend.run("add", f"{write(tmp_path, GOOD)}:TinyDense").returncode == 0
        source.offers(vector(40, 64))
        assert "tiny_dense" not in catalog  # not yet: the next look is a minute after the last
        clock.advance(60)
        source.offers(vector(40, 64))
        assert "tiny_dense" in catalog and catalog.get("tiny_dense").module is None  # known, its code not loaded
    finally:
        library.close()


async def test_a_running_engine_queues_a_blueprint_added_after_it_started(tmp_path: Path) -> None:
    from esper_tui.engine.config import parse_config
    from esper_tui.engine.runtime import Engine
    from tests.waits import eventually

    config = parse_config(
        {
            "tezzeret": {"polling": {"initial_full_scan": False, "refresh_interval_minutes": 0.01}},
            "training": {"enabled": False},
        }
    )
    engine = Engine(config, tmp_path / "state")
    await engine.start()
    try:
        assert "tiny_dense" not in engine.catalog
        backend = Backend(tmp_path / "state", [], {}, LibraryConfig())
        added = await asyncio.to_thread(backend.run, "add", f"{write(tmp_path, GOOD)}:TinyDense")
        assert added.returncode == 0, added.stderr
        await eventually(
            lambda: any(j.blueprint_id == "tiny_dense" for j in engine.aggregator.snapshot().forge.jobs),
            "the forge to queue tiny_dense",
        )
        assert engine.catalog.get("tiny_dense").module is None  # the engine knows it, never its class
    finally:
        await engine.stop()
