"""The blueprint catalog: ids, shapes, IR and its hash."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from esper_tui.engine.kernels.catalog import CATALOG, Blueprint, Catalog

IDS = [b.blueprint_id for b in CATALOG]


def test_at_least_six_blueprints_with_unique_ids():
    assert len(CATALOG) >= 6
    assert len(set(IDS)) == len(IDS)
    cat = Catalog()
    assert len(cat) == len(CATALOG)
    assert cat.ids() == IDS


def test_duplicate_ids_are_refused():
    with pytest.raises(ValueError, match="duplicate"):
        Catalog((CATALOG[0], CATALOG[0]))


@pytest.mark.parametrize("blueprint_id", IDS)
@pytest.mark.parametrize("batch", [2, 7, 100])
def test_every_blueprint_builds_and_maps_40_to_64(blueprint_id, batch):
    torch.manual_seed(0)
    module = Catalog().get(blueprint_id).build(40, 64)
    x = torch.randn(batch, 40)
    y = module(x)
    assert y.shape == (batch, 64)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    assert any(p.grad is not None for p in module.parameters())


@pytest.mark.parametrize("blueprint_id", IDS)
def test_ir_is_json_with_tags_and_risk(blueprint_id):
    bp = Catalog().get(blueprint_id)
    ir = json.loads(bp.ir_json())
    assert ir == json.loads(json.dumps(bp.ir()))  # the IR itself is plain JSON
    assert ir["blueprint_id"] == blueprint_id
    assert ir["tags"] == list(bp.tags) and ir["tags"]
    assert 0.0 <= ir["risk"] <= 1.0 and ir["risk"] == bp.risk
    assert ir["io"] == {"input": ["batch", "in_features"], "output": ["batch", "out_features"]}
    assert len(bp.ir_hash()) == 64 and bp.ir_hash() == bp.ir_hash()


def test_ir_hashes_differ_between_blueprints():
    hashes = {b.ir_hash() for b in CATALOG}
    assert len(hashes) == len(CATALOG)


def test_ir_hash_changes_when_options_change():
    bp = Catalog().get("mlp_block")
    wider = dataclasses.replace(bp, options={"hidden": 128})
    assert wider.ir_hash() != bp.ir_hash()
    assert wider.build(40, 64).fc1.out_features == 128
    again = dataclasses.replace(bp, options={"hidden": 128})
    assert again.ir_hash() == wider.ir_hash()
    # Tags and risk are part of the IR too.
    assert dataclasses.replace(bp, risk=0.9).ir_hash() != bp.ir_hash()
    assert dataclasses.replace(bp, tags=("other",)).ir_hash() != bp.ir_hash()


def test_ir_hash_reads_a_module_source_once_per_process(monkeypatch):
    """The source is hashed as imported: reading it on every kernel load cost 1-2 ms each time."""
    import inspect

    from esper_tui.engine.kernels import catalog as catalog_mod

    class Wider(CATALOG[0].module):  # a class no earlier test has hashed
        pass

    read: list[type] = []
    real = inspect.getsource
    monkeypatch.setattr(catalog_mod.inspect, "getsource", lambda obj: read.append(obj) or real(obj))
    bp = dataclasses.replace(CATALOG[0], module=Wider)
    first = bp.ir_hash()
    assert bp.ir_hash() == first and dataclasses.replace(bp, risk=0.5).ir_hash() != first
    assert read == [Wider] and first != CATALOG[0].ir_hash()


def test_get_unknown_names_the_known_ids():
    with pytest.raises(KeyError, match="mlp_block"):
        Catalog().get("nope")


def test_contains_iter_and_by_tag():
    cat = Catalog()
    assert "mlp_block" in cat and "nope" not in cat
    assert [b.blueprint_id for b in cat] == IDS
    cheap = cat.by_tag("cheap")
    assert cheap and all("cheap" in b.tags for b in cheap)
    assert {b.blueprint_id for b in cheap} == {b.blueprint_id for b in CATALOG if "cheap" in b.tags}
    assert cat.by_tag("no-such-tag") == []


def test_subset_keeps_order_given_and_refuses_unknown():
    sub = Catalog().subset(["lowrank_adapter", "mlp_block"])
    assert sub.ids() == ["lowrank_adapter", "mlp_block"]
    assert isinstance(sub.get("mlp_block"), Blueprint)
    with pytest.raises(KeyError):
        Catalog().subset(["mlp_block", "nope"])
