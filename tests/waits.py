"""One way for async tests to wait for what a real engine does in its own time: poll, with a deadline that only
keeps a broken build from hanging (nothing here asserts on time)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

DEADLINE_S = 120.0


async def eventually(condition: Callable[[], Any], what: str, *, poll_s: float = 0.02) -> Any:
    """Poll `condition` until it is truthy and return it; fail naming `what` if the deadline passes first."""
    try:
        async with asyncio.timeout(DEADLINE_S):
            while not (result := condition()):
                await asyncio.sleep(poll_s)
    except TimeoutError:
        raise AssertionError(f"gave up waiting for {what}") from None
    return result
