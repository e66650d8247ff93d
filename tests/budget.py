"""How much of a long test runs: CI's smaller count by default, the full count with `ESPER_FULL_TESTS=1` (README,
"Tests and benchmarks"). Only cases that repeat a mechanism another test already proves are left to the full run."""

from __future__ import annotations

import os

FULL = os.environ.get("ESPER_FULL_TESTS", "") == "1"
