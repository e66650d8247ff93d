"""Tamiyo's side: --policy heuristic|learned|FILE, loaded between epochs, verified, or refused with a fallback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from esper_tui.commands.cli import main
from esper_tui.engine.config import LibraryConfig
from esper_tui.engine.contracts import AnyEvent, PolicyChanged
from esper_tui.engine.library.policies import open_policies
from esper_tui.engine.training.controller import EpochState
from esper_tui.engine.training.follow import LEARNED, PolicyBox, PolicyFollower
from tests.test_simic_policy_file import KEY, policy_bytes


def follower(spec: str, state_dir: Path, events: list[AnyEvent], task: str = "mnist1d") -> PolicyFollower:
    return PolicyFollower(
        spec,
        key=KEY,
        task=task,
        emit=events.append,
        policies=lambda: open_policies(LibraryConfig(), state_dir, KEY),
        reload_s=0.0,
    )


def changes(events: list[AnyEvent]) -> list[PolicyChanged]:
    return [e for e in events if isinstance(e, PolicyChanged)]


STATE = EpochState(1, 0.5, (), ())


def test_a_signed_file_is_followed_and_said_once(tmp_path: Path) -> None:
    path = tmp_path / "mine.policy"
    path.write_bytes(policy_bytes("v0007"))
    events: list[AnyEvent] = []
    f = follower(str(path), tmp_path, events)
    assert f.ready(STATE) and f.ready(STATE)
    [e] = changes(events)
    assert e.policy == "learned v0007" and not e.fallback and "signature verified" in e.reason


def test_a_tampered_file_is_refused_and_the_heuristic_decides(tmp_path: Path) -> None:
    path = tmp_path / "mine.policy"
    data = bytearray(policy_bytes("v0007"))
    data[-5] ^= 0x10
    path.write_bytes(bytes(data))
    events: list[AnyEvent] = []
    f = follower(str(path), tmp_path, events)
    assert not f.ready(STATE)
    [e] = changes(events)
    assert e.policy == "heuristic" and e.fallback and "refused" in e.reason and "heuristic decides" in e.reason


def test_learned_follows_what_is_published_as_it_is_published(tmp_path: Path) -> None:
    events: list[AnyEvent] = []
    f = follower(LEARNED, tmp_path, events)
    assert not f.ready(STATE)
    assert changes(events)[-1].policy == "heuristic" and "no learned policy published" in changes(events)[-1].reason
    policies = open_policies(LibraryConfig(), tmp_path, KEY)
    policies.store(policy_bytes("v0001"))
    policies.publish("v0001", "gate passed")
    assert f.ready(STATE) and changes(events)[-1].policy == "learned v0001"
    policies.store(policy_bytes("v0002", theta=torch.ones(len(f.current.theta) if f.current else 0)))
    policies.publish("v0002", "gate passed")
    assert f.ready(STATE) and changes(events)[-1].policy == "learned v0002"


def test_another_tasks_policy_or_a_missing_file_falls_back(tmp_path: Path) -> None:
    path = tmp_path / "mine.policy"
    path.write_bytes(policy_bytes("v0001"))
    events: list[AnyEvent] = []
    assert not follower(str(path), tmp_path, events, task="digits").ready(STATE)
    assert "trained on task mnist1d" in changes(events)[-1].reason
    assert not follower(str(tmp_path / "none.policy"), tmp_path, events).ready(STATE)
    assert changes(events)[-1].fallback and "unreadable" in changes(events)[-1].reason


def test_the_operators_choice_is_taken_before_the_next_epoch(tmp_path: Path) -> None:
    box = PolicyBox("heuristic")
    events: list[AnyEvent] = []
    f = PolicyFollower(
        box,
        key=KEY,
        task="mnist1d",
        emit=events.append,
        policies=lambda: open_policies(LibraryConfig(), tmp_path, KEY),
        reload_s=3600.0,
    )
    assert not f.ready(STATE) and not changes(events)  # the heuristic by default says nothing
    policies = open_policies(LibraryConfig(), tmp_path, KEY)
    policies.store(policy_bytes("v0001"))
    policies.publish("v0001", "gate passed")
    box.set("learned")  # the palette's SetPolicy, as the control thread hands it over
    assert f.ready(STATE) and changes(events)[-1].policy == "learned v0001"
    box.set("heuristic")
    assert not f.ready(STATE)
    assert changes(events)[-1].policy == "heuristic" and "operator" in changes(events)[-1].reason


def test_a_policy_file_that_is_not_there_at_start_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "typo.policy"
    assert main(["--no-ui", "--policy", str(missing), "--state-dir", str(tmp_path / "state")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"esper-tui: policy {missing}: no such file (give heuristic, learned or a signed *.policy file)"
    )
    assert not (tmp_path / "state").exists()  # nothing started
