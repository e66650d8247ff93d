"""The shared library and forge workers from the command line: migrations, and every bad start answered
with one line and an exit code (2 for arguments, 1 for a service that does not answer), never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from esper_tui.engine.library.migrations import LATEST, MIGRATIONS

CLI = [sys.executable, "-m", "esper_tui"]
UNREACHABLE_PG = "postgresql://postgres@127.0.0.1:1/esper"


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "ESPER_SIGNING_KEY"}
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, env={**base, **(env or {})}, check=False
    )


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--forge-workers", "0"], "--forge-workers 0 needs a shared library"),
        (["--library", "postgresql://db/esper"], "needs both --library"),
        (["--artifacts", "s3://bucket/esper"], "needs both --library"),
        (["--library", "mysql://db/esper", "--artifacts", "s3://b/p"], "library.catalog_url"),
        (["--library", "postgresql://db/e", "--artifacts", "ftp://x"], "library.artifacts_url"),
        (["--forge-workers", "65"], "tezzeret.compilation.max_concurrent_jobs"),
    ],
)
def test_bad_shared_library_arguments_are_one_line_and_exit_2(tmp_path: Path, args: list[str], expected: str) -> None:
    state = tmp_path / "state"
    proc = run("--no-ui", "--state-dir", str(state), *args)
    assert proc.returncode == 2
    assert expected in one_line(proc)
    assert not state.exists()  # refused before anything was created


def test_migrate_applies_once_and_says_so(pg_url: str) -> None:
    applied = ", ".join(f"{m.version:04d}" for m in MIGRATIONS)
    first = run("library", "migrate", "--library", pg_url)
    assert first.returncode == 0, first.stderr
    assert f"schema version {LATEST} (applied {applied})" in first.stdout
    again = run("library", "migrate", "--library", pg_url)
    assert again.returncode == 0 and f"schema version {LATEST} (nothing to apply)" in again.stdout


def test_migrate_of_a_server_that_does_not_answer_is_one_line() -> None:
    proc = run("library", "migrate", "--library", UNREACHABLE_PG)
    assert proc.returncode == 1
    assert "127.0.0.1:1" in one_line(proc)


def test_an_engine_on_an_unmigrated_catalog_names_the_command(tmp_path: Path, pg_url: str) -> None:
    (tmp_path / "blobs").mkdir()
    proc = run(
        "--no-ui",
        "--forge-only",
        "--state-dir",
        str(tmp_path / "state"),
        "--library",
        pg_url,
        "--artifacts",
        f"file://{tmp_path / 'blobs'}",
        env={"ESPER_SIGNING_KEY": "ab" * 32},  # a shared library's key is never made up by an engine
    )
    assert proc.returncode == 1
    assert "esper-tui library migrate" in proc.stderr and "Traceback" not in proc.stderr


def test_forge_worker_needs_a_shared_library_and_a_redis_url(tmp_path: Path) -> None:
    no_library = run("forge-worker", "--redis-url", "redis://127.0.0.1:6379/0", "--state-dir", str(tmp_path))
    assert no_library.returncode == 2 and "needs a shared library" in one_line(no_library)
    bad_url = run("forge-worker", "--redis-url", "http://x", "--library", "postgresql://db/e", "--artifacts", "s3://b")
    assert bad_url.returncode == 2 and "--redis-url" in one_line(bad_url)


def test_forge_worker_refuses_a_device_this_machine_lacks_in_one_line(tmp_path: Path) -> None:
    import torch

    shared = ["--library", "postgresql://db/e", "--artifacts", "s3://b", "--state-dir", str(tmp_path / "w")]
    not_a_device = run("forge-worker", "--redis-url", "redis://127.0.0.1:6379/0", "--device", "gpu", *shared)
    assert not_a_device.returncode == 2 and "--device" in one_line(not_a_device)
    if torch.cuda.is_available():
        return  # the CPU-only refusal below needs a machine without CUDA
    no_cuda = run("forge-worker", "--redis-url", "redis://127.0.0.1:6379/0", "--device", "cuda:0", *shared)
    assert no_cuda.returncode == 2 and "sees no CUDA device" in one_line(no_cuda)
    assert not (tmp_path / "w").exists()  # refused before it locked a state directory


def test_forge_worker_never_makes_a_signing_key(tmp_path: Path, pg_url: str) -> None:
    state = tmp_path / "worker"
    proc = run(
        "forge-worker",
        "--redis-url",
        "redis://127.0.0.1:6379/15",
        "--library",
        pg_url,
        "--artifacts",
        f"file://{tmp_path}",
        "--state-dir",
        str(state),
    )
    assert proc.returncode == 1
    assert "ESPER_SIGNING_KEY" in one_line(proc)
    assert not (state / "keys").exists()


def test_forge_worker_without_redis_is_one_line(tmp_path: Path, pg_url: str) -> None:
    assert run("library", "migrate", "--library", pg_url).returncode == 0
    proc = run(
        "forge-worker",
        "--redis-url",
        "redis://127.0.0.1:1/0",
        "--library",
        pg_url,
        "--artifacts",
        f"file://{tmp_path}",
        "--state-dir",
        str(tmp_path / "worker"),
        env={"ESPER_SIGNING_KEY": "ab" * 32},
    )
    assert proc.returncode == 1
    assert "forge queue at redis://127.0.0.1:1/0" in proc.stderr and "Traceback" not in proc.stderr


def test_an_engine_without_a_signing_key_on_a_shared_library_refuses_in_one_line(
    tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    """Issue 18, finding 1: an engine started without ESPER_SIGNING_KEY on a shared library (`--library …
    --artifacts … --forge-workers 0`) silently created its own keys/signing.key, then quarantined every
    version for every machine. It must refuse to start instead (exit 1, like a forge worker without the key:
    the process lacks a secret, its arguments are fine) and create no key."""
    assert run("library", "migrate", "--library", pg_url).returncode == 0
    state = tmp_path / "state"
    (tmp_path / "blobs").mkdir()
    args = ["--library", pg_url, "--artifacts", f"file://{tmp_path / 'blobs'}", "--forge-workers", "0"]
    proc = run("--no-ui", "--epochs", "1", "--redis-url", redis_url, "--state-dir", str(state), *args, timeout=90)
    assert proc.returncode == 1, proc.stderr[-2000:]
    line = one_line(proc)
    assert "no signing key for the shared library" in line and "ESPER_SIGNING_KEY" in line, line
    assert not (state / "keys" / "signing.key").exists()


def test_library_verify_that_checked_nothing_exits_1(tmp_path: Path, pg_url: str) -> None:
    """Issue 18: after the keyless engine's quarantine, `library verify` with the real key said "0 of 0
    artifacts verify" and exit 0. Checking nothing is not a pass."""
    assert run("library", "migrate", "--library", pg_url).returncode == 0
    proc = run(
        "library",
        "verify",
        "--state-dir",
        str(tmp_path / "ops"),
        "--library",
        pg_url,
        "--artifacts",
        f"file://{tmp_path}",
        env={"ESPER_SIGNING_KEY": "ab" * 32},
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "checked nothing" in one_line(proc)
