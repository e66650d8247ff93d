"""Policy files and the library's policy store: signed, versioned, and refused when anything was altered."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from esper_tui.engine.config import LibraryConfig
from esper_tui.engine.library.policies import Policies, open_policies
from esper_tui.engine.library.policy_file import MAGIC, PolicyInvalid, PolicyMeta, decode, encode
from esper_tui.engine.training.learned import KIND, STATE_FEATURES, Layout

KEY = b"k" * 32
OTHER = b"o" * 32


def policy_bytes(version: str = "v0001", key: bytes = KEY, theta: torch.Tensor | None = None) -> bytes:
    layout = Layout(["conv1d_block", "mlp_block"], ["s0", "s1"])
    meta = PolicyMeta(
        version=version,
        kind=KIND,
        task="mnist1d",
        features=list(STATE_FEATURES),
        blueprints=layout.blueprints,
        slots=layout.slots,
        episodes=3,
    )
    return encode(meta, {"theta": theta if theta is not None else torch.arange(layout.dim, dtype=torch.float32)}, key)


def test_a_policy_file_round_trips_its_metadata_and_weights() -> None:
    meta, tensors = decode(policy_bytes(), KEY)
    assert meta.version == "v0001" and meta.kind == KIND and meta.policy_id and meta.created_ts > 0
    assert torch.equal(tensors["theta"], torch.arange(len(tensors["theta"]), dtype=torch.float32))


@pytest.mark.parametrize("where", ["meta", "weights", "header"])
def test_a_flipped_byte_anywhere_is_refused(where: str) -> None:
    data = bytearray(policy_bytes())
    at = {"header": 2, "meta": len(MAGIC) + 40, "weights": len(data) - 3}[where]
    data[at] ^= 0x01
    with pytest.raises(PolicyInvalid):
        decode(bytes(data), KEY)


def test_a_policy_signed_with_another_key_is_refused() -> None:
    with pytest.raises(PolicyInvalid, match="signature mismatch"):
        decode(policy_bytes(key=OTHER), KEY)


def test_the_store_versions_publishes_and_never_overwrites(tmp_path: Path) -> None:
    policies = open_policies(LibraryConfig(), tmp_path, KEY)
    assert policies.next_version() == "v0001" and policies.published() is None
    policies.store(policy_bytes("v0001"))
    assert policies.next_version() == "v0002"
    with pytest.raises(PolicyInvalid, match="exists"):
        policies.store(policy_bytes("v0001"))
    policies.store(policy_bytes("v0002"))
    pointer = policies.publish("v0002", "gate passed")
    again = open_policies(LibraryConfig(), tmp_path, KEY).published()
    assert again is not None and again.version == "v0002" and again.pointer_id == pointer.pointer_id
    assert policies.versions() == ["v0001", "v0002"]


def test_an_altered_pointer_or_a_renamed_file_is_refused(tmp_path: Path) -> None:
    policies: Policies = open_policies(LibraryConfig(), tmp_path, KEY)
    policies.store(policy_bytes("v0001"))
    policies.publish("v0001", "ok")
    root = tmp_path / "library" / "policies"
    (root / "published").write_bytes((root / "published").read_bytes().replace(b"v0001", b"v0009"))
    with pytest.raises(PolicyInvalid, match="pointer fails its signature"):
        policies.published()
    (root / "v0001.policy").rename(root / "v0003.policy")
    with pytest.raises(PolicyInvalid, match="signed as v0001"):
        policies.load("v0003")
