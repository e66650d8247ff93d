"""Conservative mode: the forge's degraded-but-safe way of working (seed 000, guide section 6).

While active: one compile at a time, the Fast pipeline, no Aggressive, longer timeouts. Entered by
a breaker opening or by the operator; left by the operator, or automatically after a calm period
with no breaker open (when one is configured). Always visible: `active`, `reason`, `since`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from esper_tui.engine.config import ConservativeModeConfig
from esper_tui.engine.forge.breakers import Clock
from esper_tui.engine.vocabulary import Strategy

Source = Literal["breaker", "operator"]

TIMEOUT_FACTOR = 2.0  # "thresholds lengthened": a loaded machine compiles slower; don't kill it for that


class ConservativeMode:
    """Idempotent switch with an operator hold.

    Decisions:
    * `enter` while active does not call the listener (nothing changed for observers) and keeps the
      original reason, which is the one worth showing ("memory breaker open"). The exception is an
      operator `enter`: it takes the hold, so the reason becomes the operator's.
    * Who holds it matters for leaving: the calm period (and any `leave(..., "breaker")`) never ends
      a mode the operator switched on; an operator `leave` always ends it.
    * `tick` only leaves, never enters: entering happens on breaker transitions, so an operator who
      switched the mode off while a breaker stays open is not overridden every tick.
    """

    def __init__(
        self,
        *,
        calm_period_s: float = 0.0,
        clock: Clock = time.monotonic,
        listener: Callable[[bool, str], None] | None = None,
    ) -> None:
        self.calm_period_s = calm_period_s  # 0: only the operator leaves
        self._clock = clock
        self._listener = listener
        self.active = False
        self.reason = ""
        self.since: float | None = None
        self.held_by: Source | None = None
        self._calm_since: float | None = None

    @classmethod
    def from_config(
        cls,
        config: ConservativeModeConfig,
        *,
        clock: Clock = time.monotonic,
        listener: Callable[[bool, str], None] | None = None,
    ) -> ConservativeMode:
        return cls(calm_period_s=config.calm_period_minutes * 60.0, clock=clock, listener=listener)

    def enter(self, reason: str, source: Source) -> bool:
        """Switch on; returns True when the state changed (and the listener was called)."""
        if self.active:
            if source == "operator" and self.held_by != "operator":
                self.held_by, self.reason = "operator", reason
            return False
        self.active, self.reason, self.held_by = True, reason, source
        self.since = self._clock()
        self._calm_since = None
        self._notify()
        return True

    def leave(self, reason: str, source: Source) -> bool:
        """Switch off; returns True when the state changed. A breaker-side leave does not end an
        operator hold."""
        if not self.active or (source == "breaker" and self.held_by == "operator"):
            return False
        self.active, self.reason, self.held_by = False, reason, None
        self.since = None
        self._calm_since = None
        self._notify()
        return True

    def tick(self, any_breaker_open: bool) -> None:
        """Call on every breaker poll: leaves after `calm_period_s` in a row with no breaker open."""
        if not self.active or self.calm_period_s <= 0 or self.held_by == "operator":
            return
        now = self._clock()
        if any_breaker_open:
            self._calm_since = None
        elif self._calm_since is None:
            self._calm_since = now
        elif now - self._calm_since >= self.calm_period_s:
            self.leave(f"calm period: no breaker open for {self.calm_period_s:g}s", "breaker")

    def calm_remaining_s(self) -> float | None:
        """Seconds until the calm period ends it (for the UI); None when it will not end by itself."""
        if not self.active or self.calm_period_s <= 0 or self.held_by == "operator":
            return None
        if self._calm_since is None:
            return self.calm_period_s
        return max(0.0, self.calm_period_s - (self._clock() - self._calm_since))

    # ------------------------------------------------------------------ the policy

    def max_concurrency(self, configured: int) -> int:
        return 1 if self.active else configured

    def allows_aggressive(self) -> bool:
        return not self.active

    def strategy(self, requested: Strategy) -> Strategy:
        """Fast while active; Emergency (CPU-only, shorter still) is kept."""
        if self.active and requested is not Strategy.EMERGENCY:
            return Strategy.FAST
        return requested

    def timeout_s(self, configured_s: float) -> float:
        return configured_s * TIMEOUT_FACTOR if self.active else configured_s

    def _notify(self) -> None:
        if self._listener is not None:
            self._listener(self.active, self.reason)
