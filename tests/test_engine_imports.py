"""The engine is a library first: no engine module may pull in textual, rich or the widgets.

Every module file under engine/ (found on disk, so new modules are covered without editing this test)
is imported alone in a fresh interpreter. The interpreters run a few at a time in the background; each
test waits for its own.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[1] / "engine"

CHECK = (
    "import {mod}; import sys; "
    "bad = sorted(m for m in sys.modules if m == 'textual' or m.startswith(('textual.', 'rich')) "
    "or m.startswith(('esper_tui.widgets', 'esper_tui.themes'))); "
    "assert not bad, bad"
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ENGINE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["esper_tui", "engine", *parts])


MODULES = sorted(
    _module_name(p) for p in ENGINE.rglob("*.py") if "__pycache__" not in p.parts and not p.name.startswith(".")
)


def _import_alone(module: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHECK.format(mod=module)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )


@pytest.fixture(scope="module")
def imports():
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=4)
    futures = {m: pool.submit(_import_alone, m) for m in MODULES}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


def test_the_package_tree_is_found():
    assert "esper_tui.engine" in MODULES and "esper_tui.engine.runtime" in MODULES
    assert "esper_tui.engine.bus" in MODULES and "esper_tui.engine.bus.redis_streams" in MODULES
    assert len(MODULES) >= 25


@pytest.mark.parametrize("module", MODULES)
def test_engine_module_imports_without_ui(imports, module):
    proc = imports[module].result()
    assert proc.returncode == 0, f"{module}:\n{proc.stderr[-2000:]}"
