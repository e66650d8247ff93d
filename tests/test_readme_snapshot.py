"""The README's list of snapshot fields people script against names fields the snapshot really has.

Each backticked item of that paragraph is a path (`forge.wal`), alternatives after the last dot
(`training.task|device`), a list (`events[]`) and/or the fields of what it leads to (`{name, state}`).
"""

from __future__ import annotations

import re
from pathlib import Path

import msgspec.inspect as mi
import pytest

from esper_tui.engine.snapshot import Snapshot

README = Path(__file__).resolve().parent.parent / "README.md"
ITEM = re.compile(r"^(?P<path>[a-z_.|]+?)(?P<list>\[\])?(?: \{(?P<fields>[a-z_, ]+)\})?$")


def listed() -> list[str]:
    text = README.read_text()
    start = text.index("Snapshot fields people script against:")
    paragraph = text[start : text.index("Every snapshot carries", start)]
    return re.findall(r"`([^`]+)`", paragraph)


def resolve(t: mi.Type, name: str) -> mi.Type:
    """The type of field `name` of struct type `t` (through an Optional); KeyError when there is none."""
    if isinstance(t, mi.UnionType):
        [t] = [u for u in t.types if not isinstance(u, mi.NoneType)]
    assert isinstance(t, mi.StructType), f"{name}: the path goes through a {type(t).__name__}"
    for f in t.fields:
        if f.name == name:
            return f.type
    raise KeyError(f"{t.cls.__name__} has no field {name!r}")


def paths(item: str) -> list[tuple[list[str], bool, list[str]]]:
    """(path, is a list, fields listed in braces) for each alternative of one README item."""
    m = ITEM.match(item)
    assert m, f"README snapshot item {item!r} is not of the form path[|alt][[]][ {{fields}}]"
    *parents, leaves = m["path"].split(".")
    fields = [f.strip() for f in (m["fields"] or "").split(",") if f.strip()]
    return [([*parents, leaf], bool(m["list"]), fields) for leaf in leaves.split("|")]


@pytest.mark.parametrize("item", listed())
def test_each_listed_field_is_in_the_snapshot(item: str) -> None:
    for path, is_list, fields in paths(item):
        t: mi.Type = mi.type_info(Snapshot)
        for name in path:
            t = resolve(t, name)
        if is_list:
            assert isinstance(t, mi.ListType), f"{'.'.join(path)} is not a list"
            t = t.item_type
        for name in fields:
            resolve(t, name)


def test_the_list_names_what_the_run_is_and_its_metric() -> None:
    named = {".".join(path) for item in listed() for path, _, _ in paths(item)}
    for field in ("training.task", "training.metric", "training.device", "training.val_metric"):
        assert field in named, f"the README's snapshot fields leave out {field}"
    assert len(listed()) >= 10
