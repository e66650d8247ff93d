"""Fast / Standard / Aggressive / Emergency: real torch.compile settings per device, and the choice.

The table follows the guide's measurements on CPU (torch 2.13): `aot_eager` compiles in ~2 s and
trains at eager speed; inductor takes 4-11 s and fuses kernels; `max-autotune` helps only on GPU;
Emergency is plain eager tracing (validate + package weights). On a CUDA device every strategy builds for that
device (inductor emits Triton there; max-autotune may use CUDA graphs).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from esper_tui.engine.config import CompilationConfig
from esper_tui.engine.vocabulary import Strategy, compile_label


@dataclass(frozen=True)
class CompileSettings:
    backend: str
    mode: str | None = None
    device: str = "cpu"

    @property
    def label(self) -> str:
        return compile_label(self.backend, self.mode)


_CPU = {
    Strategy.EMERGENCY: CompileSettings("eager"),
    Strategy.FAST: CompileSettings("aot_eager"),
    Strategy.STANDARD: CompileSettings("inductor"),
    # Dynamic shapes are always on (the batch dimension); on CPU autotuning buys nothing for training.
    Strategy.AGGRESSIVE: CompileSettings("inductor", "max-autotune-no-cudagraphs"),
}
_GPU = {
    Strategy.EMERGENCY: CompileSettings("eager", device="cuda"),
    Strategy.FAST: CompileSettings("inductor", device="cuda"),
    Strategy.STANDARD: CompileSettings("inductor", device="cuda"),
    Strategy.AGGRESSIVE: CompileSettings("inductor", "max-autotune", device="cuda"),
}


def settings_for(strategy: Strategy, device: str = "cpu") -> CompileSettings:
    """The settings a strategy compiles with on a resolved device (`cpu`, `cuda:N`): the CUDA pipelines there,
    every one of them, Emergency included, building for that very device (a kernel runs where it was built)."""
    if not device.startswith("cuda"):
        return _CPU[strategy]
    return dataclasses.replace(_GPU[strategy], device=device)


def timeout_for(strategy: Strategy, config: CompilationConfig) -> float:
    return {
        Strategy.FAST: config.timeout_fast_s,
        Strategy.STANDARD: config.timeout_standard_s,
        Strategy.AGGRESSIVE: config.timeout_aggressive_s,
        Strategy.EMERGENCY: config.timeout_emergency_s,
    }[strategy]


def choose_strategy(
    *,
    requested: Strategy | None,
    priority: int,
    attempt: int,
    conservative: bool,
    config: CompilationConfig,
) -> Strategy:
    """PipelineManager: operator request, then conservative mode, then retries fall back, then priority.

    - conservative mode forces Fast (and never Aggressive), whatever was asked;
    - the last permitted attempt degrades to Emergency, which works when nothing else does;
    - a retry after a failure steps down to Fast;
    - high-priority blueprints earn Aggressive only when the operator enabled that pipeline.
    """
    if attempt >= config.max_attempts:
        return Strategy.EMERGENCY
    if conservative:
        return conservative_strategy(requested)
    if requested is not None:
        if aggressive_refusal(requested, enabled=config.enable_aggressive_pipeline):
            return config.default_strategy  # the operator's request was refused before it got here
        return requested
    if attempt > 1:
        return Strategy.FAST
    if config.enable_aggressive_pipeline and priority >= 3:
        return Strategy.AGGRESSIVE
    if config.default_strategy is Strategy.AGGRESSIVE and not config.enable_aggressive_pipeline:
        return Strategy.STANDARD
    return config.default_strategy


def conservative_strategy(requested: Strategy | None) -> Strategy:
    """What conservative mode compiles a job with: Fast, whatever was asked, unless Emergency was."""
    return Strategy.EMERGENCY if requested is Strategy.EMERGENCY else Strategy.FAST


def aggressive_refusal(requested: Strategy | None, *, enabled: bool) -> str | None:
    """Why an operator's recompile with `requested` is refused, or None: Aggressive needs its pipeline on
    (it used to be accepted, then compiled silently with the default strategy)."""
    if requested is Strategy.AGGRESSIVE and not enabled:
        return "the aggressive pipeline is off (tezzeret.compilation.enable_aggressive_pipeline = false)"
    return None


STRATEGY_USE: dict[Strategy, str] = {
    Strategy.FAST: "quick; conservative mode and retries",
    Strategy.STANDARD: "the default",
    Strategy.AGGRESSIVE: "opt-in",
    Strategy.EMERGENCY: "the last attempt; weights only",
}
"""When `choose_strategy` picks each strategy, in a few words (tests/test_pipelines.py holds each claim
against `choose_strategy` itself)."""


def strategy_help(strategy: Strategy) -> str:
    """`backend:mode · when it is used`, read from the table the forge compiles with, so the picker, the
    command palette and the help screen cannot drift from what a recompile really does."""
    return f"{settings_for(strategy).label} · {STRATEGY_USE[strategy]}"
