"""`esper-tui serve` in a real browser: Debian's chromium, headless, driven by selenium.

The page loads, the banner's text is read from the page's DOM, `c` typed into the page turns conservative mode
on in the engine behind it (the banner says so), and SIGTERM stops the server and every process it started.

xterm.js, which draws the terminal in textual-serve's page, paints on a canvas; its screen-reader mode (a
supported xterm option, off in that page) mirrors every row into the DOM as text. The page does not expose its
terminal, so a script run before the page's own notes each xterm options object as xterm defines it, and the
test sets `screenReaderMode` on them: the rows are then read from `.xterm-accessibility-tree`.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

CLI = [sys.executable, "-m", "esper_tui"]
DEADLINE_S = 60.0
TAP = """
(() => {
  const define = Object.defineProperty;
  window.__xtermOptions = [];
  Object.defineProperty = function (target, key, descriptor) {
    if (key === "screenReaderMode" && descriptor && typeof descriptor.set === "function") {
      window.__xtermOptions.push(target);
    }
    return define.call(this, target, key, descriptor);
  };
})();
"""
SCREEN_TEXT = """
const tree = document.querySelector(".xterm-accessibility-tree");
return tree === null ? "" : Array.from(tree.children, (row) => row.textContent).join("\\n");
"""
LIGHT = "[tezzeret.polling]\ninitial_full_scan = false\n[training]\nenabled = false\n"
"""An engine with nothing to compile and no training: it starts and stops quickly, and its forge still obeys `c`."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver_path, "Debian's chromium and chromium-driver (scripts/ensure-chromium.sh)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1600,1000",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": TAP})
        yield driver
    finally:
        driver.quit()


def screen_text(driver: webdriver.Chrome) -> str:
    driver.execute_script("for (const o of window.__xtermOptions || []) { o.screenReaderMode = true; }")
    return str(driver.execute_script(SCREEN_TEXT))


def showing(driver: webdriver.Chrome, words: str) -> str | None:
    """The page's screen text once it shows `words`, else None."""
    text = screen_text(driver)
    return text if words in text else None


def test_the_control_room_in_chromium(browser: webdriver.Chrome, tmp_path: Path) -> None:
    config = tmp_path / "light.toml"
    config.write_text(LIGHT)
    port = free_port()
    server = subprocess.Popen(
        [*CLI, "serve", "--port", str(port), "--", "--config", str(config), "--state-dir", str(tmp_path / "state")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    rooms: list[psutil.Process] = []
    try:
        browser.get(wait_for(lambda: _answers(port), "the server to answer"))
        text = wait_for(lambda: showing(browser, "conservative off"), "the banner")
        assert "TAMIYO" in text and "training " in text and "run " in text, text
        rooms = psutil.Process(server.pid).children(recursive=True)
        assert any("esper_tui" in " ".join(p.cmdline()) for p in rooms), "one room process per connection"
        browser.find_element(By.CSS_SELECTOR, ".xterm-helper-textarea").send_keys("c")
        text = wait_for(lambda: showing(browser, "CONSERVATIVE ON"), "conservative mode on")
        assert "conservative off" not in text
        rooms = psutil.Process(server.pid).children(recursive=True)  # the engine's own processes by now too
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            out, err = server.communicate(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            server.kill()
            out, err = server.communicate()
    assert server.returncode == 0, err
    _, alive = psutil.wait_procs(rooms, timeout=10)
    assert not alive, f"left running: {[p.pid for p in alive]}"
    assert "Traceback" not in out + err


def _answers(port: int) -> str | None:
    url = f"http://127.0.0.1:{port}/"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return url
    except OSError:
        return None
