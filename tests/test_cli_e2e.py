"""The CLI as an operator uses it: real subprocesses, real compiles, real exit codes."""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from headless_engine import HeadlessEngine

from esper_tui.engine.bus import StreamNames
from esper_tui.engine.bus.auth import sign_command
from esper_tui.engine.bus.types import PAYLOAD
from esper_tui.engine.codec import encode_msgpack
from esper_tui.engine.contracts import AnyCommand, LogLine, PauseTraining, Shutdown
from esper_tui.engine.keys import OPERATOR_KEY, load_key
from esper_tui.engine.vocabulary import Level
from tests.conftest import MNIST1D_BLUEPRINTS

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
    assert set(jobs) == set(MNIST1D_BLUEPRINTS)
    assert all(j["status"] == "compiled" for j in jobs.values()), jobs
    assert last["training"]["epoch"] == 30
    assert last["training"]["val_metric"] > 0.3 and last["training"]["test_metric"] > 0.3
    assert any(s["stage"] != "dormant" for s in last["training"]["seeds"]), last["training"]["seeds"]
    assert {b["name"] for b in last["forge"]["breakers"]} == {"memory", "gpu", "timeout"}
    assert last["forge"]["wal"]["open_transactions"] == []
    assert isinstance(last["forge"]["conservative_mode"], bool)


@pytest.mark.compile
def test_library_verify_and_wal_inspect_after_a_run(full_run) -> None:
    state, _ = full_run
    verify = run_cli("library", "verify", "--state-dir", str(state))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert f"{len(MNIST1D_BLUEPRINTS)} of {len(MNIST1D_BLUEPRINTS)} artifacts verify" in verify.stdout
    listing = run_cli("library", "list", "--state-dir", str(state))
    assert listing.returncode == 0, listing.stderr
    rows = [line.split() for line in listing.stdout.splitlines()[1:-1]]
    assert sorted((r[0], r[1], r[2]) for r in rows) == sorted((b, "40-64", "cpu") for b in MNIST1D_BLUEPRINTS)
    assert listing.stdout.splitlines()[0].split()[:3] == ["blueprint", "shape", "device"]
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
    assert len(jobs) == len(MNIST1D_BLUEPRINTS) and all(j["status"] == "compiled" and j["reused"] for j in jobs), jobs
    victim = next((state / "library" / "artifacts" / "mlp_block").glob("v*")) / "weights.safetensors"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0x01
    victim.write_bytes(bytes(data))
    verify = run_cli("library", "verify", "--state-dir", str(state))
    assert verify.returncode == 1
    assert "FAIL mlp_block/" in verify.stdout and "weights.safetensors" in verify.stdout


def test_an_eager_run_ends_with_its_training_and_never_repeats_a_line(tmp_path: Path) -> None:
    """`--eager --epochs 12` compiled all 7 kernels after training ended (its seeds need none) and printed
    about 19 identical `[finished]` lines meanwhile."""
    state = tmp_path / "s"
    proc = run_cli("--no-ui", "--eager", "--epochs", "3", "--interval", "0.2", "--state-dir", str(state))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines and lines[-1].startswith("[finished] epoch 3/3"), lines[-3:]
    repeats = [a for a, b in itertools.pairwise(lines[:-1]) if a == b]  # the final line is always printed
    assert repeats == [], repeats[:2]
    (recording,) = (state / "runs").glob("*.esrec")
    frames = run_cli("replay", str(recording), "--no-ui", "--json").stdout.splitlines()
    texts = [event["text"] for event in json.loads(frames[-1])["events"]]
    ended = next(i for i, text in enumerate(texts) if text.startswith("training finished"))
    assert not [t for t in texts[ended:] if " compiled (" in t], "no compile finished after training did"
    assert any(job["status"] != "compiled" for job in json.loads(frames[-1])["forge"]["jobs"])


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
    assert proc.returncode == 1 and "another esper-tui engine or forge worker is using" in proc.stderr, proc.stderr


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
    assert verify.returncode == 0 and f"{len(MNIST1D_BLUEPRINTS)} of {len(MNIST1D_BLUEPRINTS)}" in verify.stdout, (
        verify.stdout
    )


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


@pytest.mark.redis
def test_forged_commands_are_refused_and_a_signed_shutdown_is_obeyed(tmp_path: Path, redis_url: str) -> None:
    """Anyone who can reach the Redis can write to an engine's command streams: only operator-signed, fresh,
    never-seen commands for this run are obeyed; the rest are dead-lettered, counted and shown."""
    prefix = f"forged-{os.getpid()}-{time.time_ns()}"
    config = tmp_path / "run.toml"  # eager training and nothing to compile: the engine runs light until stopped
    config.write_text(
        "[tezzeret.polling]\ninitial_full_scan = false\n[training]\ncompile = false\nepoch_delay_s = 0.5\n"
        f'[bus]\nstream_prefix = "{prefix}"\n'
    )
    state = tmp_path / "state"
    client = redis.Redis.from_url(redis_url)
    args = ["--interval", "0.3", "--config", str(config), "--redis-url", redis_url, "--state-dir", str(state)]
    try:
        with HeadlessEngine(tmp_path, *args) as engine:
            run_id, _public = engine.identity()
            key = load_key(OPERATOR_KEY, state)
            streams = StreamNames.for_prefix(prefix, run_id)

            def xadd(command: AnyCommand) -> None:  # a plain Redis client, straight onto the engine's stream
                client.xadd(streams.emergency, {PAYLOAD: encode_msgpack(command)})

            def training(status: str) -> bool:
                return engine.snapshots()[-1]["training"]["status"] == status if engine.snapshots() else False

            engine.wait_for(lambda: training("running"), "training to run")
            pause = sign_command(key, PauseTraining(paused=True, target=run_id, issued_by="ops@here"))
            xadd(pause)
            engine.wait_for(lambda: training("paused"), "the signed pause obeyed")
            xadd(sign_command(key, PauseTraining(paused=False, target=run_id, issued_by="ops@here")))
            engine.wait_for(lambda: training("running"), "the signed resume obeyed")

            def shutdown(**fields: Any) -> Shutdown:
                return Shutdown(**{"issued_by": "mallory@nowhere", "target": run_id, **fields})

            forged = [  # (the reason the engine gives, the command)
                ("unsigned", shutdown()),
                ("bad signature", sign_command(b"\x07" * 32, shutdown())),
                ("stale: issued ", sign_command(key, shutdown(ts=time.time() - 120))),
                (f"meant for run elsewhere, this is {run_id}", sign_command(key, shutdown(target="elsewhere"))),
            ]
            for _reason, command in forged:
                xadd(command)
            xadd(pause)  # a replay of a command the engine obeyed: it must not pause again
            forged.append(("replayed", pause))
            fake = LogLine(level=Level.ERROR, message="forged: reactor on fire")  # telemetry never feeds the engine
            client.xadd(streams.telemetry, {PAYLOAD: encode_msgpack(fake)})

            def refusals() -> list[str]:
                events = engine.snapshots()[-1]["events"] if engine.snapshots() else []
                return [e["text"] for e in events if e["text"].startswith("rejected ")]

            engine.wait_for(lambda: len(refusals()) == len(forged), "every forged command refused")
            for text, (reason, command) in zip(refusals(), forged, strict=True):
                signed = bool(command.signature) and reason != "bad signature"
                sender = command.issued_by if signed else f'"{command.issued_by}" (unverified)'
                assert text.startswith(f"rejected {type(command).__name__} from {sender}: {reason}"), text
            letters = [fields[b"reason"].decode() for _id, fields in client.xrange(streams.deadletter)]
            assert len(letters) == len(forged), letters
            for letter, (reason, _command) in zip(letters, forged, strict=True):
                assert letter.startswith(f"rejected: {reason}"), letter
            engine.wait_for(lambda: engine.snapshots()[-1]["bus"]["rejected"] == len(forged), "rejections counted")
            shown = engine.snapshots()[-1]["bus"]["rejections"]
            assert [n["reason"] for n in shown][:2] == ["rejected: unsigned", "rejected: bad signature"]
            assert engine.alive() and training("running")  # not stopped, and the replayed pause did nothing

            xadd(sign_command(key, Shutdown(target=run_id, issued_by="ops@here", reason="test over")))
            assert engine.finish() == 0, engine.stderr()[-3000:]
        final = engine.snapshots()[-1]
        texts = [e["text"] for e in final["events"]]
        assert "Shutdown from ops@here" in texts
        assert texts[-1] == "engine stopping: shutdown command (test over)"
        assert sum(t == "PauseTraining from ops@here" for t in texts) == 2  # pause and resume, never the replay
        assert not any("reactor on fire" in e["text"] for snap in engine.snapshots() for e in snap["events"])
    finally:
        keys = list(client.scan_iter(match=f"{prefix}.*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_a_key_file_of_another_user_stops_the_engine_in_one_line(tmp_path: Path) -> None:
    """Issue 18, finding 3: a keys/operator.key owned by another account (here `nobody`), mode 0600, was
    accepted by a root engine, and commands signed with it obeyed. Now the engine refuses to start."""
    if os.geteuid() != 0:
        pytest.skip("only root can plant a file owned by another account")
    state = tmp_path / "state"
    planted = OPERATOR_KEY.path(state)
    planted.parent.mkdir(parents=True, mode=0o700)
    planted.write_text("ab" * 32)
    os.chmod(planted, 0o600)
    os.chown(planted, 65534, -1)
    config = tmp_path / "light.toml"
    config.write_text("[tezzeret.polling]\ninitial_full_scan = false\n[training]\ncompile = false\n")
    env = {k: "" for k in ("ESPER_OPERATOR_KEY", "ESPER_SIGNING_KEY", "ESPER_FRAME_KEY")}
    proc = run_cli("--no-ui", "--epochs", "1", "--config", str(config), "--state-dir", str(state), env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line == (
        f"esper-tui: {planted}: key file belongs to uid 65534, not to this engine's user (uid 0); "
        "keys must be the engine user's own"
    )
