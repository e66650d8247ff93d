"""The CLI as an operator uses it: real subprocesses, real compiles, real exit codes."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from esper_tui.engine.kernels.catalog import Catalog

CLI = [sys.executable, "-m", "esper_tui"]


def run_cli(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The issue's acceptance run: 30 epochs, headless, JSON, every catalog blueprint compiled."""
    state = tmp_path_factory.mktemp("state")
    proc = run_cli("--no-ui", "--epochs", "30", "--json", "--interval", "2", "--state-dir", str(state))
    return state, proc


@pytest.mark.compile
def test_headless_run_compiles_everything_and_grows_a_seed(full_run) -> None:
    _state, proc = full_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout
    last = lines[-1]
    assert last["infrastructure"]["compile_enabled"] is True
    assert last["infrastructure"]["compile_backend"] == "inductor"
    jobs = {j["blueprint_id"]: j for j in last["forge"]["jobs"]}
    assert set(jobs) == set(Catalog().ids())
    assert all(j["status"] == "compiled" for j in jobs.values()), jobs
    assert last["training"]["epoch"] == 30
    assert last["training"]["accuracy"] > 0.3
    assert any(s["stage"] != "dormant" for s in last["training"]["seeds"]), last["training"]["seeds"]
    assert {b["name"] for b in last["forge"]["breakers"]} == {"memory", "gpu", "timeout"}
    assert last["forge"]["wal"]["open_transactions"] == []
    assert isinstance(last["forge"]["conservative_mode"], bool)


@pytest.mark.compile
def test_library_verify_and_wal_inspect_after_a_run(full_run) -> None:
    state, _ = full_run
    verify = run_cli("library", "verify", "--state-dir", str(state))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert f"{len(Catalog())} of {len(Catalog())} artifacts verify" in verify.stdout
    inspect = run_cli("wal", "inspect", "--json", "--state-dir", str(state))
    assert inspect.returncode == 0, inspect.stderr
    assert json.loads(inspect.stdout)["open_transactions"] == []


@pytest.mark.compile
def test_restart_redoes_nothing_and_tampering_is_caught(full_run, tmp_path: Path) -> None:
    state, _ = full_run
    again = run_cli("--no-ui", "--forge-only", "--json", "--state-dir", str(state), timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    last = json.loads(again.stdout.splitlines()[-1])
    jobs = last["forge"]["jobs"]  # nothing recompiled: every kernel was already in the library
    assert len(jobs) == len(Catalog()) and all(j["status"] == "compiled" and j["reused"] for j in jobs), jobs
    victim = next((state / "library" / "artifacts" / "mlp_block").glob("v*")) / "weights.safetensors"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0x01
    victim.write_bytes(bytes(data))
    verify = run_cli("library", "verify", "--state-dir", str(state))
    assert verify.returncode == 1
    assert "FAIL mlp_block/" in verify.stdout and "weights.safetensors" in verify.stdout


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[tezzeret.compilation]\nmax_concurrent_jobs = 'two'\n")
    proc = run_cli("--no-ui", "--config", str(cfg), "--state-dir", str(tmp_path / "s"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "tezzeret.compilation.max_concurrent_jobs" in proc.stderr
    assert "Traceback" not in proc.stderr
    cfg.write_text("[tezzeret.compilation]\nturbo = true\n")
    proc = run_cli("--no-ui", "--config", str(cfg), "--state-dir", str(tmp_path / "s"))
    assert proc.returncode == 2 and "tezzeret.compilation.turbo: unknown key" in proc.stderr
    cfg.write_text("this is [ not toml")
    proc = run_cli("--no-ui", "--config", str(cfg))
    assert proc.returncode == 2 and "not valid TOML" in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--epochs", "0"],
        ["--epochs", "x"],
        ["--json"],
        ["--bogus"],
        ["--redis-url", "http://x"],
        ["--config", "/nonexistent.toml"],
    ],
)
def test_usage_errors_exit_2(args: list[str], tmp_path: Path) -> None:
    proc = run_cli(*args, "--state-dir", str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr


def test_state_dir_problems_are_one_line_and_exit_1(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    proc = run_cli("--no-ui", "--epochs", "1", "--state-dir", str(a_file))
    assert proc.returncode == 1 and "is not a directory" in proc.stderr and "Traceback" not in proc.stderr
    state = tmp_path / "busy"
    state.mkdir()
    with open(state / "engine.lock", "w") as lock:  # another engine holds this state directory
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = run_cli("--no-ui", "--epochs", "1", "--state-dir", str(state))
    assert proc.returncode == 1 and "another esper-tui engine is using" in proc.stderr, proc.stderr


def test_tools_on_a_missing_state_dir_exit_1(tmp_path: Path) -> None:
    assert run_cli("library", "verify", "--state-dir", str(tmp_path / "none")).returncode == 1
    proc = run_cli("wal", "inspect", "--state-dir", str(tmp_path / "none"))
    assert proc.returncode == 1 and "no WAL" in proc.stderr


@pytest.mark.compile
def test_sigterm_stops_cleanly_and_the_next_run_finishes(tmp_path: Path) -> None:
    fast = tmp_path / "fast.toml"
    fast.write_text('[tezzeret.compilation]\ndefault_strategy = "fast"\n')
    # Standard (inductor) compiles take seconds each, so the stop lands on work in flight.
    proc = subprocess.Popen(
        [*CLI, "--no-ui", "--json", "--interval", "0.5", "--state-dir", str(tmp_path / "s")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    for line in proc.stdout:  # wait until a compile is in flight: the stop must interrupt real work
        snap = json.loads(line)
        if any(j["status"] == "compiling" for j in snap["forge"]["jobs"]) or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    inspect = run_cli("wal", "inspect", "--json", "--state-dir", str(tmp_path / "s"))
    assert inspect.returncode == 0, inspect.stderr
    assert json.loads(inspect.stdout)["open_transactions"] == []  # interrupted compiles were aborted, not left open
    finish = run_cli("--no-ui", "--forge-only", "--json", "--config", str(fast), "--state-dir", str(tmp_path / "s"))
    assert finish.returncode == 0, finish.stderr[-2000:]
    verify = run_cli("library", "verify", "--state-dir", str(tmp_path / "s"))
    assert verify.returncode == 0 and f"{len(Catalog())} of {len(Catalog())}" in verify.stdout, verify.stdout


@pytest.mark.redis
@pytest.mark.compile
def test_headless_over_redis_streams(tmp_path: Path, redis_url: str) -> None:
    fast = tmp_path / "fast.toml"
    fast.write_text(
        '[tezzeret.compilation]\ndefault_strategy = "fast"\n'
        f'[bus]\nstream_prefix = "e2e-{os.getpid()}-{time.time_ns()}"\n'
    )
    proc = run_cli(
        "--no-ui",
        "--epochs",
        "12",
        "--json",
        "--config",
        str(fast),
        "--redis-url",
        redis_url,
        "--state-dir",
        str(tmp_path / "s"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = json.loads(proc.stdout.splitlines()[-1])
    assert last["infrastructure"]["bus"].startswith("redis://")
    assert last["training"]["epoch"] == 12
    assert all(j["status"] == "compiled" for j in last["forge"]["jobs"])
