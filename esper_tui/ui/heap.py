"""One collection, then the heap that is alive now frozen out of the collector's sight, once a control room is up.

Everything alive once the dashboard is drawn (modules, the engine, the widgets) lives as long as the process. Left
in the collector's oldest generation, each full collection walks all of it again: on a 400-epoch run that made
one detail screen in five or so open 40-100 ms slower (benchmarks/detail.py counted the full collections during
opens). Frozen, a full collection walks only what came later. Only for a process that runs one control room: a
test process that runs hundreds would keep each one's objects for good.
"""

from __future__ import annotations

import gc


def settle_heap() -> None:
    gc.collect()
    gc.freeze()
