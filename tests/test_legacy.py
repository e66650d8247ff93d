"""What a version 1 engine left on disk (every run measured accuracy then) still opens under today's names.

tests/data/schema-v1 was written by the engine as it was before the metric became the task's (commit 8477f5f,
`esper-tui --no-ui --eager --epochs 6` with hidden = 8, slots = 1, checkpoints every 2 epochs, reports after 1):
its recording (one snapshot per epoch kept, rewritten by that version's RecordingWriter), the checkpoint of
epoch 2 (a conv1d seed just germinated, its germinate decision pending) with the key that signed it, and the
field reports.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from esper_tui.engine.config import TrainingConfig
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.recorder import Recording, summarize
from esper_tui.engine.training import checkpoint as ckpt
from esper_tui.engine.training.kernel_source import EagerKernelSource
from esper_tui.engine.training.loop import Trainer
from esper_tui.engine.training.reports import read, reports_path
from esper_tui.engine.vocabulary import ACCURACY, SCHEMA_VERSION, SeedStage

V1 = Path(__file__).parent / "data" / "schema-v1"
RECORDING = next((V1 / "runs").glob("*.esrec"))
KEY = bytes.fromhex((V1 / "signing.key").read_text().strip())
VAL = [0.166, 0.22, 0.254, 0.274, 0.292, 0.308]  # the run's validation accuracy, epochs 1-6


def test_an_old_recording_replays_under_the_new_names() -> None:
    with Recording(RECORDING) as rec:
        snaps = list(rec.frames())
    assert len(snaps) == 7 and {s.schema_version for s in snaps} == {SCHEMA_VERSION}
    assert [s.training.val_metric for s in snaps] == [None, *VAL]
    last = snaps[-1].training
    assert last.metric == ACCURACY and last.val_metric_history == VAL and last.best_val_metric == 0.308
    assert last.test_metric == pytest.approx(0.315)
    [s0] = last.seeds
    assert s0.stage is SeedStage.BLENDING and s0.gain is not None  # was acc_delta
    summary = summarize(RECORDING)
    assert (summary.epochs, summary.val_metric, summary.metric) == (6, 0.308, ACCURACY)


def test_esper_tui_replay_prints_an_old_recording() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "esper_tui", "replay", str(RECORDING), "--no-ui"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 7 and "val accuracy 30.8 % test accuracy 31.5 %" in lines[-1]


def test_an_old_checkpoint_loads_and_a_run_resumes_from_it(tmp_path: Path) -> None:
    shutil.copytree(V1, tmp_path, dirs_exist_ok=True)
    found, skipped = ckpt.latest_valid(ckpt.checkpoints_dir(tmp_path), KEY)
    assert found is not None and not skipped
    saved, state = found
    assert (saved.epoch, saved.val_metric, saved.metric) == (2, 0.22, ACCURACY)
    assert state.best_val_metric == 0.22
    assert state.slots[0].blueprint_id == "conv1d_block" and state.slots[0].metric_at_germination == 0.22
    assert [p.val_metric for p in state.pending_reports] == [0.22]

    catalog = Catalog()
    cfg = TrainingConfig(hidden=8, slots=1, report_after_epochs=1)
    trainer = Trainer(cfg, catalog, EagerKernelSource(catalog), lambda _e: None, state_dir=tmp_path, signing_key=KEY)
    trainer._resume()
    assert (trainer.resumed_from_epoch, trainer.val_metric, trainer.best_val_metric) == (2, 0.22, 0.22)
    assert trainer.host.seed_slots()[0].stage is SeedStage.GERMINATED

    # a new checkpoint beside the old one: retention ranks both
    ckpt.write(ckpt.checkpoints_dir(tmp_path), trainer.capture(), KEY, 0.25)
    assert ckpt.prune(ckpt.checkpoints_dir(tmp_path), KEY, keep=1) == []  # the newest, which is also the best
    found, _ = ckpt.latest_valid(ckpt.checkpoints_dir(tmp_path), KEY)
    assert found is not None and found[0].val_metric == 0.25


def test_old_field_reports_read_as_accuracys() -> None:
    reports = read(reports_path(V1))
    assert [(r.epoch, r.val_metric, r.val_metric_after) for r in reports] == [
        (2, 0.22, 0.254),
        (3, 0.254, 0.274),
        (5, 0.292, 0.308),
    ]
    assert all(r.metric == ACCURACY for r in reports)
    assert reports[0].gain == pytest.approx(0.034)
    assert reports[0].outcome() == "+3.4 pts after 1 ep, in flight (germinated)"
    assert "metric" in msgspec.json.decode(msgspec.json.encode(reports[0]))
