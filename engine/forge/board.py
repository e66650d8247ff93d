"""The forge's three seed breakers (memory, gpu, timeout) and the policy that feeds them readings.

Kept apart from `breakers` so the state machine stays generic. Wiring in the engine: call `poll`
with fresh readings every few seconds; on a transition to OPEN enter conservative mode; pass
`any_open` to `ConservativeMode.tick` for the calm period; publish `views()` in the snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from esper_tui.engine.config import BreakersConfig, ConservativeModeConfig, MemoryManagementConfig, TezzeretConfig
from esper_tui.engine.forge.breakers import BreakerTransition, CircuitBreaker, Clock
from esper_tui.engine.forge.resources import GpuReading, MemoryReading, SustainedThreshold
from esper_tui.engine.snapshot import BreakerView
from esper_tui.engine.vocabulary import BreakerState

MB = 1024 * 1024
NAMES = ("memory", "gpu", "timeout")


class BreakerBoard:
    """Memory trips as soon as the process tree's RSS exceeds the budget; gpu trips on utilisation
    above the threshold sustained for the configured duration; timeout is fed by the forge
    (`record_slow` for a compile past its deadline, `record_success` otherwise).

    Resource breakers heal through the normal half-open path: once `open_seconds` have passed, the
    next healthy reading counts as a successful probe (the timer restarts while the pressure lasts),
    which gives hysteresis instead of flapping at the threshold.
    """

    def __init__(
        self,
        breakers: BreakersConfig,
        memory: MemoryManagementConfig,
        conservative: ConservativeModeConfig,
        *,
        clock: Clock = time.monotonic,
        listener: Callable[[BreakerTransition], None] | None = None,
    ) -> None:
        self.memory_budget_mb = memory.memory_budget_mb
        self.gpu_threshold_percent = conservative.gpu_threshold_percent
        self._failure_threshold = breakers.failure_threshold
        self.memory, self.gpu, self.timeout = (
            CircuitBreaker(
                name,
                failure_threshold=breakers.failure_threshold,
                open_seconds=breakers.open_seconds,
                half_open_probes=breakers.half_open_probes,
                clock=clock,
                listener=listener,
            )
            for name in NAMES
        )
        self._gpu_sustained = SustainedThreshold(
            conservative.gpu_threshold_percent, conservative.threshold_duration_minutes * 60.0, clock
        )
        self._sustain_text = f"{conservative.threshold_duration_minutes:g} min"
        self._rss_mb: float | None = None
        self._gpu_percent: float | None = None

    @classmethod
    def from_config(
        cls,
        config: TezzeretConfig,
        *,
        clock: Clock = time.monotonic,
        listener: Callable[[BreakerTransition], None] | None = None,
    ) -> BreakerBoard:
        return cls(
            config.breakers,
            config.memory_management,
            config.conservative_mode,
            clock=clock,
            listener=listener,
        )

    def __getitem__(self, name: str) -> CircuitBreaker:
        if name not in NAMES:
            raise KeyError(name)
        breaker: CircuitBreaker = getattr(self, name)
        return breaker

    @property
    def any_open(self) -> bool:
        """True while any breaker is OPEN or HALF_OPEN: half-open has not yet proved healthy, so the
        conservative-mode calm period must not start counting."""
        return any(self[name].state in (BreakerState.OPEN, BreakerState.HALF_OPEN) for name in NAMES)

    def poll(self, memory: MemoryReading, gpu: GpuReading) -> None:
        self._poll_memory(memory)
        self._poll_gpu(gpu)

    def view(self, name: str) -> BreakerView:
        if name == "memory":
            return self.memory.view(reading=self._rss_mb, threshold=float(self.memory_budget_mb), unit="MB")
        if name == "gpu":
            return self.gpu.view(reading=self._gpu_percent, threshold=self.gpu_threshold_percent, unit="%")
        return self.timeout.view(
            reading=float(self.timeout.failures), threshold=float(self._failure_threshold), unit="timeouts"
        )

    def views(self) -> list[BreakerView]:
        """Fixed order memory, gpu, timeout: the dashboard rows never jump around."""
        return [self.view(name) for name in NAMES]

    # ------------------------------------------------------------------ internals

    def _poll_memory(self, reading: MemoryReading) -> None:
        self._rss_mb = reading.rss_bytes / MB
        where = f"rss {self._rss_mb:.0f} MB over {reading.processes} process(es)"
        if self._rss_mb > self.memory_budget_mb:
            self.memory.trip(f"{where} > budget {self.memory_budget_mb} MB")
        else:
            _healthy(self.memory)

    def _poll_gpu(self, reading: GpuReading) -> None:
        if not reading.available or reading.utilisation_percent is None:
            self._gpu_percent = None
            self._gpu_sustained.reset()
            self.gpu.mark_unavailable(reading.detail)
            return
        if self.gpu.state is BreakerState.UNAVAILABLE:
            self.gpu.reset(f"GPU available: {reading.name}")
        percent = self._gpu_percent = reading.utilisation_percent
        if self._gpu_sustained.update(percent):
            self.gpu.trip(f"GPU {percent:.0f}% > {self.gpu_threshold_percent:g}% for {self._sustain_text}")
        elif percent <= self.gpu_threshold_percent:
            _healthy(self.gpu)
        # Above the threshold but not for long enough yet: no verdict either way.


def _healthy(breaker: CircuitBreaker) -> None:
    """A healthy reading is a successful probe once the breaker is half-open; otherwise nothing."""
    if breaker.state is BreakerState.HALF_OPEN:
        breaker.record_success()
