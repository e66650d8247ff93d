"""Recordings: a real engine run recorded and read back, torn tails, retention, `runs`, `replay --no-ui`, `plot`."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import zstandard

from esper_tui.engine.config import parse_config
from esper_tui.engine.recorder import (
    EXTENSION,
    MAGIC,
    MAX_SNAPSHOT_BYTES,
    BadRecording,
    Recording,
    RecordingWriter,
    apply_retention,
    list_recordings,
    recording_path,
    summarize,
)
from esper_tui.engine.runtime import Engine
from esper_tui.engine.snapshot import Snapshot, TrainingView

CLI = [sys.executable, "-m", "esper_tui"]
EPOCHS = 4


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, check=False)


async def _run(engine: Engine) -> None:
    await engine.start()
    try:
        await engine.run_until_done(EPOCHS)
    finally:
        await engine.stop()


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, Path]:
    """A real engine: eager, a few epochs, nothing to compile; stopped, so its recording is complete."""
    state = tmp_path_factory.mktemp("run") / "state"
    config = parse_config(
        {
            "tezzeret": {"polling": {"initial_full_scan": False}},
            "training": {"compile": False, "epochs": EPOCHS},
            "ui": {"refresh_hz": 20},
        }
    )
    engine = Engine(config, state)
    asyncio.run(_run(engine))
    return engine, recording_path(state, engine.run_id)


def snapshots(count: int, start_ts: float = 1000.0) -> list[Snapshot]:
    return [
        Snapshot(seq=i + 1, ts=start_ts + i, run_id="r1", training=TrainingView(epoch=i, loss_history=[1.0] * i))
        for i in range(count)
    ]


def write(path: Path, items: list[Snapshot], *, close: bool = True) -> RecordingWriter:
    writer = RecordingWriter(path)
    for snapshot in items:
        writer.write(snapshot)
    if close:
        writer.close()
    return writer


# ------------------------------------------------------------------------------ a real run


def test_record_then_replay_gives_the_runs_final_snapshot(recorded_run) -> None:
    engine, path = recorded_run
    final = engine.latest()
    assert final is not None and final.training.epoch == EPOCHS
    with Recording(path) as rec:
        assert not rec.torn and rec.ignored_bytes == 0
        last = rec.snapshot(-1)
        seqs = [entry.seq for entry in rec.entries]
        assert len(rec) >= 2
    assert last.seq == final.seq
    assert last == final
    assert seqs == sorted(set(seqs)), "each snapshot recorded once, in order"


def test_runs_lists_the_recording(recorded_run) -> None:
    engine, path = recorded_run
    summary = summarize(path)
    assert (summary.run_id, summary.epochs, summary.complete) == (engine.run_id, EPOCHS, True)
    proc = run_cli("runs", "--state-dir", str(path.parent.parent))
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.splitlines()[:2]
    assert header.split()[4:8] == ["TASK", "METRIC", "VAL", "TEST"]
    assert engine.run_id in row and " mnist1d  accuracy " in row
    proc = run_cli("runs", "--state-dir", str(path.parent.parent), "--json")
    row = json.loads(proc.stdout.splitlines()[0])
    assert row["run_id"] == engine.run_id and row["epochs"] == EPOCHS and row["test_metric"] is not None


def test_replay_and_plot_take_a_run_id_with_the_state_dir(recorded_run, tmp_path: Path) -> None:
    """`replay` took a path only: what `runs` lists (the id, or its start) now works with --state-dir."""
    engine, path = recorded_run
    state = str(path.parent.parent)
    by_path = run_cli("replay", str(path), "--no-ui", "--json")
    by_id = run_cli("replay", engine.run_id, "--state-dir", state, "--no-ui", "--json")
    assert by_id.returncode == 0 and by_id.stdout == by_path.stdout != "", by_id.stderr
    assert run_cli("replay", engine.run_id[:6], "--state-dir", state, "--no-ui", "--json").stdout == by_path.stdout
    plotted = run_cli("plot", engine.run_id, "--state-dir", state, "--out", str(tmp_path / "run.svg"))
    assert plotted.returncode == 0 and (tmp_path / "run.svg").stat().st_size > 0, plotted.stderr
    unknown = run_cli("replay", "nosuchrun", "--state-dir", state, "--no-ui")
    assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1
    assert "no run 'nosuchrun' in" in unknown.stderr and "Traceback" not in unknown.stderr


def test_replay_no_ui_json_prints_every_frame(recorded_run) -> None:
    engine, path = recorded_run
    proc = run_cli("replay", str(path), "--no-ui", "--json")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    with Recording(path) as rec:
        assert len(lines) == len(rec)
    assert lines[-1]["seq"] == engine.latest().seq


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_plot_writes_an_image(recorded_run, tmp_path: Path, suffix: str) -> None:
    _, path = recorded_run
    out = tmp_path / f"run{suffix}"
    proc = run_cli("plot", str(path), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    head = out.read_bytes()[:200]
    assert head.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in out.read_bytes()


# ------------------------------------------------------------------------------ torn and bad files


def test_a_recording_cut_mid_frame_replays_up_to_the_cut(tmp_path: Path) -> None:
    path = tmp_path / f"r1{EXTENSION}"
    write(path, snapshots(5), close=False)  # a crash: no index footer
    with Recording(path) as whole:
        assert whole.torn and len(whole) == 5
        cut_at = whole.entries[3].offset + 30  # inside the 4th record's payload
    os.truncate(path, cut_at)
    with Recording(path) as rec:
        assert rec.torn and len(rec) == 3 and rec.ignored_bytes == 30
        assert [s.seq for s in rec.frames()] == [1, 2, 3]
    proc = run_cli("replay", str(path), "--no-ui", "--json")
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 3
    assert "torn tail ignored" in proc.stderr


def test_a_corrupt_record_ends_the_readable_part(tmp_path: Path) -> None:
    path = tmp_path / f"r1{EXTENSION}"
    write(path, snapshots(4))
    with Recording(path) as rec:
        third = rec.entries[2].offset
    data = bytearray(path.read_bytes())
    data[third + 30] ^= 0xFF  # a flipped bit inside the third payload; the footer's CRC still holds
    data[-15] ^= 0xFF  # and the footer's too, so the reader must scan
    path.write_bytes(bytes(data))
    with Recording(path) as rec:
        assert rec.torn and [s.seq for s in rec.frames()] == [1, 2]


def test_the_index_seeks_by_position_and_time(tmp_path: Path) -> None:
    path = tmp_path / f"r1{EXTENSION}"
    write(path, snapshots(10))
    with Recording(path) as rec:
        assert not rec.torn and len(rec) == 10
        assert rec.snapshot(7).seq == 8
        assert rec.position_at(1004.5) == 4 and rec.position_at(0) == 0
        assert rec.duration_s == 9.0


@pytest.mark.parametrize(
    ("content", "why"),
    [(b"", "bad magic"), (b"not a recording at all", "bad magic"), (MAGIC, "no complete snapshot")],
)
def test_bad_files_are_one_line_and_exit_1(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "bad.esrec"
    path.write_bytes(content)
    with pytest.raises(BadRecording, match=why):
        Recording(path)
    for args in (["replay", str(path), "--no-ui"], ["plot", str(path), "--out", str(tmp_path / "x.png")]):
        proc = run_cli(*args)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and why in proc.stderr
    missing = run_cli("replay", str(tmp_path / "missing.esrec"), "--no-ui")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr


# ------------------------------------------------------------------------------ decompression bombs


def record(seq: int, ts: float, payload: bytes) -> bytes:
    """One record as the format says: <I length><I crc32 of (seq, ts, payload)><Q seq><d ts> payload."""
    head = struct.pack("<Qd", seq, ts)
    return struct.pack("<II", len(payload), zlib.crc32(payload, zlib.crc32(head))) + head + payload


def declaring(size: int) -> bytes:
    """A 16-byte zstd frame whose header declares `size` decompressed bytes and holds none."""
    return struct.pack("<IBQ", 0xFD2FB528, 0xE0, size) + b"\x01\x00\x00"  # single segment, 8-byte size; empty block


def zeros_over_the_bound(*, declared: bool) -> bytes:
    """A real frame of zeros one byte over the bound: a few kB that would inflate to 16 MiB."""
    compressor = zstandard.ZstdCompressor(level=3, write_content_size=declared)
    return compressor.compress(bytes(MAX_SNAPSHOT_BYTES + 1))


def bomb_after_good_frames(path: Path, payload: bytes) -> None:
    """Three good snapshots, then one record whose payload is the bomb (no footer: read by scanning)."""
    write(path, snapshots(3), close=False)
    with path.open("ab") as f:
        f.write(record(4, 1003.0, payload))


@pytest.mark.parametrize(
    "payload",
    [declaring(64 << 30), zeros_over_the_bound(declared=True), zeros_over_the_bound(declared=False)],
    ids=["declares-64-GiB", "inflates-past-the-bound", "inflates-past-the-bound-undeclared"],
)
def test_a_snapshot_inflating_past_the_bound_is_refused(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / f"r1{EXTENSION}"
    bomb_after_good_frames(path, payload)
    with Recording(path) as rec:
        assert len(rec) == 4 and rec.snapshot(2).seq == 3
        with pytest.raises(BadRecording, match="over the 16 MiB a snapshot may take"):
            rec.snapshot(3)
    proc = run_cli("replay", str(path), "--no-ui", "--json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stdout.splitlines()) == 3  # the good frames before it
    assert proc.stderr.splitlines()[-1].startswith("esper-tui: ") and "16 MiB" in proc.stderr


def test_a_48_byte_file_declaring_64_gib_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / f"r1{EXTENSION}"
    path.write_bytes(MAGIC + record(1, 1000.0, declaring(64 << 30)))
    assert path.stat().st_size == 48
    plot = run_cli("plot", str(path), "--out", str(tmp_path / "x.png"))
    assert plot.returncode == 1 and plot.stderr.count("\n") == 1 and "declares 64 GiB" in plot.stderr, plot.stderr
    replay = run_cli("replay", str(path), "--no-ui")  # after its note that the file has no index
    assert replay.returncode == 1 and "Traceback" not in replay.stderr, replay.stderr
    assert replay.stderr.splitlines()[-1].startswith("esper-tui: ") and "declares 64 GiB" in replay.stderr


def test_runs_and_reports_agree_on_what_nothing_found_means(tmp_path: Path) -> None:
    """`runs` on a missing directory exited 0 and `reports` 1: a missing state directory is exit 1 for both,
    an existing one with nothing in it yet exit 0 for both."""
    for command in ("runs", "reports"):
        missing = run_cli(command, "--state-dir", str(tmp_path / "nowhere"))
        assert (missing.returncode, missing.stdout) == (1, ""), (command, missing.stderr)
        assert missing.stderr.startswith("esper-tui: no state directory at") and missing.stderr.count("\n") == 1
    (tmp_path / "fresh").mkdir()
    for command in ("runs", "reports"):
        fresh = run_cli(command, "--state-dir", str(tmp_path / "fresh"))
        assert fresh.returncode == 0 and fresh.stdout.startswith("no "), (command, fresh.stderr)


def test_forge_only_runs_do_not_clutter_runs(recorded_run, tmp_path: Path) -> None:
    """`--forge-only` runs were listed among the trained ones as "waiting"; now counted, and listed with --all."""
    _engine, path = recorded_run
    state = tmp_path / "state"
    (state / "runs").mkdir(parents=True)
    shutil.copy(path, state / "runs" / path.name)  # one run that trained
    cfg = tmp_path / "quiet.toml"
    cfg.write_text("[tezzeret.polling]\ninitial_full_scan = false\n")
    forge = run_cli("--no-ui", "--forge-only", "--config", str(cfg), "--state-dir", str(state))
    assert forge.returncode == 0, forge.stderr
    assert len(list((state / "runs").glob("*.esrec"))) == 2
    listed = run_cli("runs", "--state-dir", str(state))
    assert listed.returncode == 0 and "waiting" not in listed.stdout and path.stem in listed.stdout
    assert listed.stdout.rstrip().endswith("(1 forge-only run not listed: --all lists them)")
    every = run_cli("runs", "--state-dir", str(state), "--all", "--json")
    rows = [json.loads(line) for line in every.stdout.splitlines()]
    assert sorted((row["trained"], row["status"]) for row in rows) == [(False, "forge only"), (True, "finished")]


def test_runs_lists_the_rest_and_marks_the_bad_file(tmp_path: Path) -> None:
    runs = tmp_path / "state" / "runs"
    runs.mkdir(parents=True)
    write(runs / f"good{EXTENSION}", snapshots(3))
    (runs / f"bomb{EXTENSION}").write_bytes(MAGIC + record(1, 1000.0, declaring(64 << 30)))
    proc = run_cli("runs", "--state-dir", str(tmp_path / "state"))
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()[1:]}
    assert set(rows) == {"r1", "bomb"}, proc.stdout  # the good run by its id, the bad file by its name
    assert "unreadable" in rows["bomb"] and "unreadable" not in rows["r1"]
    assert proc.stderr.count("\n") == 1 and "bomb.esrec" in proc.stderr and "declares 64 GiB" in proc.stderr
    listed = [
        json.loads(line)
        for line in run_cli("runs", "--state-dir", str(tmp_path / "state"), "--json").stdout.splitlines()
    ]
    problems = {row["run_id"]: row["problem"] for row in listed}
    assert problems["r1"] is None and "declares 64 GiB" in problems["bomb"]


def test_plot_refuses_an_unknown_image_type(tmp_path: Path) -> None:
    proc = run_cli("plot", str(tmp_path / "r.esrec"), "--out", str(tmp_path / "run.gif"))
    assert proc.returncode == 2 and ".png or .svg" in proc.stderr


# ------------------------------------------------------------------------------ retention


def test_retention_keeps_the_newest_by_count_and_bytes(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    paths = []
    for i in range(5):
        path = recording_path(tmp_path, f"run{i}")
        write(path, snapshots(3))
        os.utime(path, (1000 + i, 1000 + i))
        paths.append(path)
    current = paths[-1]
    deleted = apply_retention(runs, keep=3, max_bytes=10**9, spare=current)
    assert deleted == paths[:2] and list_recordings(runs) == paths[2:]
    size = current.stat().st_size
    deleted = apply_retention(runs, keep=10, max_bytes=2 * size, spare=current)
    assert deleted == [paths[2]] and list_recordings(runs) == paths[3:]
    apply_retention(runs, keep=1, max_bytes=1, spare=current)
    assert list_recordings(runs) == [current], "the recording being written is never deleted"


async def test_the_engine_applies_retention_when_a_run_starts(tmp_path: Path) -> None:
    state = tmp_path / "state"
    for i in range(3):
        old = recording_path(state, f"old{i}")
        old.parent.mkdir(parents=True, exist_ok=True)
        write(old, snapshots(2))
        os.utime(old, (1000 + i, 1000 + i))
    config = parse_config(
        {
            "tezzeret": {"polling": {"initial_full_scan": False}},
            "training": {"enabled": False},
            "recording": {"keep_runs": 2},
        }
    )
    engine = Engine(config, state)
    await engine.start()
    await engine.stop()
    names = [p.stem for p in list_recordings(state / "runs")]
    assert names == ["old2", engine.run_id]
