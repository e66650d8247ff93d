"""What keeps an idle run small: torch's inductor (about 80 MB resident) stays out of the engine, which only needs
to know what kernels here are built for (asked of a child process), and out of a training process whose seeds run
eager by choice (their kernels are verified, never deserialised). Each claim is checked in a fresh process: this
test process may have loaded inductor already."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest

from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.kernels.probe import KernelTarget, ProbeFailed, cache_file, known_target, probe_child, probe_here
from esper_tui.engine.kernels.shapes import vector
from esper_tui.engine.library.store import ArtifactInvalid, Library
from esper_tui.engine.training.kernel_source import KernelUnavailable
from esper_tui.engine.training.library_source import LibraryKernelSource

MNIST1D = vector(40, 64)  # the shape the session kernel was compiled for

KEY = bytes(range(32))


def run_child(script: str, *args: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True, timeout=600, env=env
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


def test_the_child_probe_answers_what_inductor_here_answers() -> None:
    assert asyncio.run(probe_child()) == probe_here()


def test_a_child_probe_that_fails_says_why() -> None:
    with pytest.raises(ProbeFailed, match="exit 3: broken"):
        asyncio.run(probe_child((sys.executable, "-c", "import sys; print('broken', file=sys.stderr); sys.exit(3)")))
    with pytest.raises(ProbeFailed, match="unreadable answer"):
        asyncio.run(probe_child((sys.executable, "-c", "print('not json')")))


BROKEN = (sys.executable, "-c", "import sys; sys.exit(3)")


def test_the_answer_is_kept_for_the_next_start_and_only_this_users_file_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = cache_file()
    assert path.parent == tmp_path / "esper-tui" and not path.exists()
    first, why = asyncio.run(known_target())
    assert first == probe_here() and why == "" and path.exists()
    assert path.stat().st_mode & 0o777 == 0o600
    assert asyncio.run(known_target(BROKEN)) == (first, "")  # no child asked: it would have failed
    fake = KernelTarget(cpu_isa="avx512", compiler="g++ 0")
    path.write_bytes(msgspec.json.encode(fake))
    assert asyncio.run(known_target(BROKEN))[0] == fake  # (what it reads is this user's own file)
    path.chmod(0o620)  # a file another user could have written is never read
    target, why = asyncio.run(known_target(BROKEN))
    assert target == first and "probed in the engine instead" in why
    path.chmod(0o600)
    path.write_bytes(b"{not json")
    assert asyncio.run(known_target())[0] == first  # an unreadable answer is asked again, and replaced
    assert msgspec.json.decode(path.read_bytes(), type=KernelTarget) == first


def test_another_compiler_names_another_answer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    here = cache_file()
    monkeypatch.setenv("CXX", "clang++")
    assert cache_file() != here


ENGINE = """
    import asyncio, json, sys
    from pathlib import Path
    from esper_tui.engine.config import parse_config
    from esper_tui.engine.runtime import Engine

    async def main():
        config = {
            "tezzeret": {"polling": {"initial_full_scan": False}, "compilation": {"max_concurrent_jobs": 1}},
            "training": {"enabled": False},
        }
        engine = Engine(parse_config(config), Path(sys.argv[1]))
        await engine.start()
        try:
            target = engine.kernel_target
            assert engine.library.identity().cpu_isa == target.cpu_isa  # the library's identity is the probe's
            loaded = "torch._inductor" in sys.modules
            print("RESULT " + json.dumps({"inductor": loaded, "cpu_isa": target.cpu_isa, "compiler": target.compiler}))
        finally:
            await engine.stop()

    asyncio.run(main())
"""


def test_the_engine_never_loads_inductor_yet_knows_what_kernels_here_are_built_for(tmp_path: Path) -> None:
    out = run_child(ENGINE, str(tmp_path / "state"))
    assert out["inductor"] is False
    assert KernelTarget(cpu_isa=str(out["cpu_isa"]), compiler=str(out["compiler"])) == probe_here()


SOURCE = """
    import json, sys
    from pathlib import Path
    from esper_tui.engine.kernels.catalog import Catalog
    from esper_tui.engine.kernels.shapes import vector
    from esper_tui.engine.library.store import Identity, Library
    from esper_tui.engine.training.library_source import LibraryKernelSource

    identity = Identity(**json.loads(sys.argv[2]))
    library = Library(Path(sys.argv[1]), bytes(range(32)), Catalog(), identity=identity)
    kernel, offer = LibraryKernelSource(library, "inductor", "default").load("mlp_block", vector(40, 64))
    print("RESULT " + json.dumps({"label": offer.label, "inductor": "torch._inductor" in sys.modules}))
"""


def test_a_seed_served_eager_by_choice_never_loads_inductor(tmp_path: Path, commit_artifact, identity) -> None:
    lib = Library(tmp_path / "library", KEY, Catalog(), identity=identity)
    commit_artifact(lib, "mlp_block", "a" * 64, step_ms_compiled=2.39, step_ms_eager=2.06)
    out = run_child(SOURCE, str(lib.root), json.dumps(dataclasses.asdict(identity)))
    assert out == {"label": "eager", "inductor": False}


def test_a_seed_served_eager_by_choice_is_still_verified(tmp_path: Path, commit_artifact, identity) -> None:
    quarantined: list[tuple[str, str, str]] = []
    lib = Library(
        tmp_path / "library", KEY, Catalog(), identity=identity, on_quarantine=lambda *a: quarantined.append(a)
    )
    meta = commit_artifact(lib, "mlp_block", "a" * 64, step_ms_compiled=2.39, step_ms_eager=2.06)
    version = next((lib.root / "artifacts" / "mlp_block").glob("v*"))
    weights = version / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(KernelUnavailable, match="does not match its signed checksum"):
        LibraryKernelSource(lib, "inductor", "default").load("mlp_block", MNIST1D)
    assert [q[1] for q in quarantined] == [version.name] and meta.version == 1
    with pytest.raises(ArtifactInvalid, match="no compiled kernel"):
        lib.verified("mlp_block", MNIST1D)
