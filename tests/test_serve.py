"""`esper-tui serve`: refusals in one line (exit 2), and a real server answering HTTP on localhost, stopped by
SIGTERM. The browser itself is driven in tests/test_browser.py."""

from __future__ import annotations

import asyncio
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import psutil
import pytest

from esper_tui.commands.cli import main
from esper_tui.commands.serve import base_url, served_command
from tests.recorded_runs import two_runs

CLI = [sys.executable, "-m", "esper_tui"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--port", "0"], "--port: expected a TCP port 1-65535, got '0'"),
        (["--port", "70000"], "--port: expected a TCP port 1-65535, got '70000'"),
        (["--port", "http"], "--port: expected a TCP port 1-65535, got 'http'"),
        (["--host", "not a host"], "--host: expected an IP address or a host name, got 'not a host'"),
        (["--host", "nowhere.invalid"], "--host nowhere.invalid: does not resolve"),
        (["--host", "0.0.0.0"], "--host 0.0.0.0: browsers are sent the page's own address"),
        (["--public-url", "ftp://x"], "--public-url: expected http(s)://host[:port][/path], got 'ftp://x'"),
        (["--", "runs"], "`esper-tui runs` has no screen to serve"),
        (["--", "--no-ui", "--epochs", "3"], "--no-ui: a headless run has no screen to serve"),
    ],
)
def test_nonsense_is_refused_in_one_line(args: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("esper-tui: ") and says in err


def test_esper_args_are_checked_before_serving(capsys: pytest.CaptureFixture[str]) -> None:
    """A mistyped flag after `--` is refused now, not in every browser that connects."""
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--port", "8000", "--", "--epochs", "many"])
    assert exit_.value.code == 2
    assert "--epochs: invalid int value: 'many'" in capsys.readouterr().err


def test_the_served_command_is_this_python_and_the_args_quoted() -> None:
    assert served_command(["replay", "a b.esrec"]) == f"{sys.executable} -m esper_tui replay 'a b.esrec'"
    assert base_url("::1", 8000) == "http://[::1]:8000"


def serve(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*CLI, "serve", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_it_answers_over_http_on_localhost_and_stops_on_sigterm(tmp_path: Path) -> None:
    a, _ = two_runs(tmp_path / "runs")
    port = free_port()
    proc = serve("--port", str(port), "--", "replay", str(a))
    try:
        deadline = time.monotonic() + 60
        page = ""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    assert response.status == 200
                    page = response.read().decode()
                    break
            except OSError:
                time.sleep(0.2)
        assert f'data-session-websocket-url="ws://127.0.0.1:{port}/ws"' in page
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert f"esper-tui: serving http://127.0.0.1:{port} (listening on 127.0.0.1:{port})" in err
    assert "Traceback" not in err


def test_a_port_in_use_is_one_line_and_exit_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = serve("--port", str(port))
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    lines = [line for line in err.splitlines() if not line.startswith("esper-tui: serving")]
    assert len(lines) == 1 and lines[0].startswith(f"esper-tui: cannot listen on http://127.0.0.1:{port}: "), err


def test_a_recording_that_is_not_there_is_refused_before_serving(tmp_path: Path, capsys) -> None:
    assert main(["serve", "--", "replay", str(tmp_path / "nope.esrec")]) == 1
    assert capsys.readouterr().err == f"esper-tui: {tmp_path / 'nope.esrec'}: no such recording\n"


SLOW_ROOM = """
import os, sys, time
sys.stdout.write("__GANGLION__\\n"); sys.stdout.flush()
sys.stdin.buffer.read(1)  # textual-serve's quit, when the server stops
os.close(1)  # the session ends here (exec: no shell holds stdout), before the room has exited
time.sleep(2)
"""


def test_sigterm_waits_for_a_room_that_is_slow_to_exit(tmp_path: Path) -> None:
    """A room still stopping its engine when the server stops: the server waits for it (and reaps it) before its
    loop closes, so nothing is left running and asyncio prints no "Event loop is closed" traceback."""
    room = tmp_path / "room.py"
    room.write_text(SLOW_ROOM)
    port = free_port()
    script = (
        "from esper_tui.ui.web import EsperServer; "
        f"EsperServer({'exec ' + shlex.join([sys.executable, str(room)])!r}, '127.0.0.1', {port}, "
        f"public_url='http://127.0.0.1:{port}').serve()"
    )
    server = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    async def drain(socket_: aiohttp.ClientWebSocketResponse) -> None:
        async for _ in socket_:
            pass

    async def connect_then_stop() -> list[psutil.Process]:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket_ = await session.ws_connect(f"http://127.0.0.1:{port}/ws")
                    break
                except aiohttp.ClientError:
                    assert time.monotonic() < deadline and server.poll() is None, "the server never answered"
                    await asyncio.sleep(0.1)
            reading = asyncio.create_task(drain(socket_))  # the server's close handshake is answered at once
            while not (rooms := psutil.Process(server.pid).children(recursive=True)):
                await asyncio.sleep(0.05)
            server.send_signal(signal.SIGTERM)
            await asyncio.to_thread(server.wait, 30)
            await reading
            return rooms

    try:
        rooms = asyncio.run(connect_then_stop())
        _, err = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode == 0, err
    assert not [room for room in rooms if room.is_running()], "a room outlived the server"
    assert "Traceback" not in err
