"""Schema 1's names, from when every run measured accuracy, and how they read today.

Version 2 made the metric the task's (issue 15): `val_accuracy` became `val_metric`, a seed's `acc_delta` its
`gain`, and so on. What a run leaves on disk outlives the code that wrote it (recordings, checkpoints, field
reports), so a reader of a version 1 document renames its fields on the way in and decodes the result as
today's type. The old names are unique to those fields, so renaming every key they appear as is exact;
every version 1 run measured accuracy, which is what a decoded document's absent `metric` defaults to.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

LEGACY_SCHEMA_VERSION = 1

RENAMED = {
    "val_accuracy": "val_metric",
    "best_val_accuracy": "best_val_metric",
    "test_accuracy": "test_metric",
    "val_accuracy_history": "val_metric_history",
    "val_accuracy_after": "val_metric_after",
    "val_delta": "gain",
    "acc_delta": "gain",
    "acc_at_germination": "metric_at_germination",
}
"""Version 1 field -> version 2 field."""

T = TypeVar("T")


def renamed(raw: Any) -> Any:
    """`raw` (msgpack or JSON decoded to plain data) with every version 1 key renamed, at any depth."""
    if isinstance(raw, dict):
        return {RENAMED.get(k, k) if isinstance(k, str) else k: renamed(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [renamed(v) for v in raw]
    return raw


def upgraded(raw: Any, type: type[T], **fields: Any) -> T:
    """A version 1 document (plain data) as today's `type`, with `fields` set over it (a new schema_version)."""
    doc = renamed(raw)
    if fields and isinstance(doc, dict):
        doc.update(fields)
    return msgspec.convert(doc, type)
