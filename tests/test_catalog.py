"""The blueprint catalog: ids, the slot shapes each blueprint serves, IR and its hash."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from esper_tui.engine.kernels.catalog import CATALOG, IO_DIMS, Blueprint, Catalog
from esper_tui.engine.kernels.shapes import SlotShape, vector

IDS = [b.blueprint_id for b in CATALOG]
MNIST1D = vector(40, 64)
VECTOR_IDS = [b.blueprint_id for b in CATALOG if "vector" in b.serves]
# A representative shape per kind, and one that changes size (pooled down) as a conv host's slot may.
SHAPES = {
    "vector": [MNIST1D, vector(10, 3)],
    "sequence": [SlotShape((4, 16), (6, 16)), SlotShape((3, 12), (5, 6))],
    "image": [SlotShape((8, 8, 8), (16, 8, 8)), SlotShape((3, 8, 8), (4, 4, 4))],
}


def test_at_least_six_blueprints_with_unique_ids():
    assert len(CATALOG) >= 6
    assert len(set(IDS)) == len(IDS)
    cat = Catalog()
    assert len(cat) == len(CATALOG)
    assert cat.ids() == IDS


def test_duplicate_ids_are_refused():
    with pytest.raises(ValueError, match="duplicate"):
        Catalog((CATALOG[0], CATALOG[0]))


@pytest.mark.parametrize("blueprint_id", VECTOR_IDS)
@pytest.mark.parametrize("batch", [2, 7, 100])
def test_every_vector_blueprint_builds_and_maps_40_to_64(blueprint_id, batch):
    torch.manual_seed(0)
    module = Catalog().get(blueprint_id).build(MNIST1D)
    x = torch.randn(batch, 40)
    y = module(x)
    assert y.shape == (batch, 64)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    assert any(p.grad is not None for p in module.parameters())


@pytest.mark.parametrize("blueprint_id", IDS)
def test_every_blueprint_serves_each_shape_of_its_kinds_and_refuses_the_others(blueprint_id):
    bp = Catalog().get(blueprint_id)
    assert bp.serves and set(bp.serves) <= set(SHAPES)
    for kind, shapes in SHAPES.items():
        for shape in shapes:
            if kind not in bp.serves:
                assert not bp.fits(shape)
                with pytest.raises(ValueError, match=f"not {kind}"):
                    bp.build(shape)
                continue
            assert bp.fits(shape), bp.unfit(shape)
            torch.manual_seed(0)
            module = bp.build(shape)
            x = torch.randn(3, *shape.in_shape)
            y = module(x)
            assert tuple(y.shape) == (3, *shape.out_shape), shape
            assert torch.isfinite(y).all()
            y.square().mean().backward()
            assert all(p.grad is not None for p in module.parameters()), shape


def test_every_kind_has_blueprints_and_catalog_fitting_follows_fits():
    cat = Catalog()
    for shapes in SHAPES.values():
        for shape in shapes:
            fitting = cat.fitting(shape)
            assert fitting, shape
            assert [b.blueprint_id for b in fitting] == [i for i in IDS if cat.fits(i, shape)]
    assert {"conv2d_block", "separable_conv", "channel_attention"} <= {
        b.blueprint_id for b in cat.fitting(SHAPES["image"][0])
    }
    assert "temporal_conv" in {b.blueprint_id for b in cat.fitting(SHAPES["sequence"][0])}
    assert not cat.fits("no_such_blueprint", MNIST1D)


@pytest.mark.parametrize(
    ("blueprint_id", "shape", "reason"),
    [
        ("conv2d_block", SlotShape((4, 4, 4), (4, 8, 8)), "only pools down"),
        ("temporal_conv", SlotShape((4, 8), (4, 9)), "only pools down"),
        ("attention_block", vector(3, 8), "one patch of 4"),
        ("depthwise_conv", vector(1, 8), "at least 2 features"),
        ("mlp_block", SlotShape((8, 8, 8), (16, 8, 8)), "serves vector slots, not image"),
    ],
)
def test_a_family_limit_is_a_reason_and_build_refuses_it(blueprint_id, shape, reason):
    bp = Catalog().get(blueprint_id)
    assert not bp.fits(shape) and not Catalog().fits(blueprint_id, shape)
    assert reason in (bp.unfit(shape) or "")
    assert blueprint_id not in {b.blueprint_id for b in Catalog().fitting(shape)}
    with pytest.raises(ValueError, match=reason):
        bp.build(shape)


def test_mnist1d_modules_are_unchanged_by_shapes():
    """Growth on MNIST-1D must not regress: the 40-64 modules keep their layers (and checkpoints their keys)."""
    shapes = {
        bid: {k: tuple(v.shape) for k, v in Catalog().get(bid).build(MNIST1D).state_dict().items()}
        for bid in ("conv1d_block", "depthwise_conv", "attention_block")
    }
    assert shapes["conv1d_block"] == {
        "conv1.weight": (24, 1, 5),
        "conv1.bias": (24,),
        "conv2.weight": (24, 24, 5),
        "conv2.bias": (24,),
        "conv3.weight": (24, 24, 5),
        "conv3.bias": (24,),
        "head.weight": (64, 24 * 10),
        "head.bias": (64,),
    }
    assert shapes["depthwise_conv"]["head.weight"] == (64, 16 * 20)
    assert shapes["attention_block"]["pos"] == (10, 32) and shapes["attention_block"]["out.weight"] == (64, 320)


@pytest.mark.parametrize("blueprint_id", IDS)
def test_ir_is_json_with_tags_and_risk(blueprint_id):
    bp = Catalog().get(blueprint_id)
    ir = json.loads(bp.ir_json())
    assert ir == json.loads(json.dumps(bp.ir()))  # the IR itself is plain JSON
    assert ir["blueprint_id"] == blueprint_id
    assert ir["tags"] == list(bp.tags) and ir["tags"]
    assert 0.0 <= ir["risk"] <= 1.0 and ir["risk"] == bp.risk
    assert ir["io"] == {"serves": list(bp.serves), **{kind: IO_DIMS[kind] for kind in bp.serves}}
    assert len(bp.ir_hash()) == 64 and bp.ir_hash() == bp.ir_hash()


def test_ir_hashes_differ_between_blueprints():
    hashes = {b.ir_hash() for b in CATALOG}
    assert len(hashes) == len(CATALOG)


def test_ir_hash_changes_when_options_change():
    bp = Catalog().get("mlp_block")
    wider = dataclasses.replace(bp, options={"hidden": 128})
    assert wider.ir_hash() != bp.ir_hash()
    assert wider.build(MNIST1D).fc1.out_features == 128
    again = dataclasses.replace(bp, options={"hidden": 128})
    assert again.ir_hash() == wider.ir_hash()
    # Tags, risk and the kinds served are part of the IR too.
    assert dataclasses.replace(bp, serves=("vector", "sequence")).ir_hash() != bp.ir_hash()
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
