"""Where every benchmark's figures go besides its printed table: one JSON file, named on the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: Path | None, result: Any) -> None:
    """Write `result` as indented JSON to `path` (nothing when no --json was given) and say where."""
    if path is None:
        return
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
