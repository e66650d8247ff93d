"""Policies in both library backends: the file library and the shared one (real PostgreSQL and a real S3 server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from esper_tui.engine.config import LibraryConfig
from esper_tui.engine.library.catalog_db import PgCatalog
from esper_tui.engine.library.policies import open_policies
from esper_tui.engine.library.policy_file import PolicyInvalid
from tests.test_simic_policy_file import KEY, policy_bytes


@pytest.fixture(params=["files", "shared"])
def config(request: pytest.FixtureRequest) -> LibraryConfig:
    if request.param == "files":
        return LibraryConfig()
    pg_url: str = request.getfixturevalue("pg_url")
    artifacts, endpoint = request.getfixturevalue("s3_url")
    db = PgCatalog(pg_url)
    try:
        db.migrate()  # migration 5 makes the policies tables
    finally:
        db.close()
    return LibraryConfig(catalog_url=pg_url, artifacts_url=artifacts, artifacts_endpoint=endpoint)


def test_versions_are_stored_published_and_read_by_another_process(config: LibraryConfig, tmp_path: Path) -> None:
    mine = open_policies(config, tmp_path / "a", KEY)
    mine.store(policy_bytes("v0001"))
    mine.store(policy_bytes("v0002"))
    with pytest.raises(PolicyInvalid, match="exists"):
        mine.store(policy_bytes("v0002"))
    mine.publish("v0002", "gate passed")
    theirs = open_policies(config, tmp_path / "b", KEY)  # another state directory: the files backend has its own
    if config.catalog_url:
        pointer = theirs.published()
        assert pointer is not None and pointer.version == "v0002" and theirs.versions() == ["v0001", "v0002"]
        meta, _ = theirs.load("v0002")
        assert meta.version == "v0002"
    else:
        assert theirs.published() is None


def test_tampered_versions_and_pointers_are_refused(config: LibraryConfig, tmp_path: Path) -> None:
    policies = open_policies(config, tmp_path, KEY)
    policies.store(policy_bytes("v0001"))
    policies.publish("v0001", "ok")
    data = bytearray(policy_bytes("v0003"))
    data[-6] ^= 0x01
    assert policies.backend.put("v0003", bytes(data))  # written past the checks, as an attacker would
    with pytest.raises(PolicyInvalid, match="altered"):
        policies.load("v0003")
    stored = policies.backend.pointer()
    assert stored is not None
    document, signature = stored
    policies.backend.set_pointer(document.replace(b"v0001", b"v0003"), signature)
    with pytest.raises(PolicyInvalid, match="signature"):
        policies.published()
