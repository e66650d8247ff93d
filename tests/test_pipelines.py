"""PipelineManager: which strategy a job gets, and what each strategy means to torch.compile."""

from __future__ import annotations

import pytest

from esper_tui.engine.config import CompilationConfig
from esper_tui.engine.kernels.pipelines import (
    STRATEGY_USE,
    CompileSettings,
    choose_strategy,
    settings_for,
    strategy_help,
    timeout_for,
)
from esper_tui.engine.vocabulary import Strategy, compile_label

S = Strategy
ALL = list(Strategy)


def choose(*, requested=None, priority=1, attempt=1, conservative=False, **config):
    return choose_strategy(
        requested=requested,
        priority=priority,
        attempt=attempt,
        conservative=conservative,
        config=CompilationConfig(**config),
    )


def test_default_is_the_configured_strategy():
    assert choose() is S.STANDARD
    assert choose(default_strategy=S.FAST) is S.FAST
    assert choose(default_strategy=S.EMERGENCY) is S.EMERGENCY


@pytest.mark.parametrize("requested", [None, *ALL])
@pytest.mark.parametrize("priority", [1, 3, 10])
@pytest.mark.parametrize("aggressive_enabled", [False, True])
def test_conservative_gives_fast_and_never_aggressive(requested, priority, aggressive_enabled):
    got = choose(
        requested=requested,
        priority=priority,
        conservative=True,
        enable_aggressive_pipeline=aggressive_enabled,
        default_strategy=S.AGGRESSIVE,
    )
    assert got is not S.AGGRESSIVE
    assert got is (S.EMERGENCY if requested is S.EMERGENCY else S.FAST)


def test_aggressive_only_when_enabled():
    assert choose(priority=3) is S.STANDARD
    assert choose(priority=3, enable_aggressive_pipeline=True) is S.AGGRESSIVE
    assert choose(priority=1, enable_aggressive_pipeline=True) is S.STANDARD  # priority not high enough
    # Asked for explicitly, or as the default, it still needs the switch.
    assert choose(requested=S.AGGRESSIVE) is S.STANDARD
    assert choose(requested=S.AGGRESSIVE, enable_aggressive_pipeline=True) is S.AGGRESSIVE
    assert choose(default_strategy=S.AGGRESSIVE) is S.STANDARD
    assert choose(default_strategy=S.AGGRESSIVE, enable_aggressive_pipeline=True) is S.AGGRESSIVE


@pytest.mark.parametrize("requested", [None, *ALL])
@pytest.mark.parametrize("conservative", [False, True])
def test_last_attempt_is_emergency(requested, conservative):
    assert (
        choose(
            requested=requested, attempt=3, max_attempts=3, conservative=conservative, enable_aggressive_pipeline=True
        )
        is S.EMERGENCY
    )
    assert choose(requested=requested, attempt=5, max_attempts=5, conservative=conservative) is S.EMERGENCY
    assert choose(attempt=1, max_attempts=1) is S.EMERGENCY  # a single permitted attempt is the last one


@pytest.mark.parametrize("requested", [S.FAST, S.STANDARD, S.EMERGENCY])
def test_operator_request_is_honoured(requested):
    assert choose(requested=requested) is requested
    assert choose(requested=requested, priority=5, enable_aggressive_pipeline=True) is requested


def test_retry_steps_down_to_fast():
    assert choose(attempt=2, max_attempts=3) is S.FAST
    assert choose(attempt=2, max_attempts=3, priority=9, enable_aggressive_pipeline=True) is S.FAST
    assert choose(attempt=3, max_attempts=5) is S.FAST
    assert choose(attempt=3, max_attempts=3) is S.EMERGENCY


def test_cpu_settings_per_strategy():
    assert settings_for(S.EMERGENCY) == CompileSettings("eager", None, "cpu")
    assert settings_for(S.FAST) == CompileSettings("aot_eager", None, "cpu")
    assert settings_for(S.STANDARD) == CompileSettings("inductor", None, "cpu")
    aggressive = settings_for(S.AGGRESSIVE)
    assert aggressive.backend == "inductor" and aggressive.mode and aggressive.device == "cpu"
    assert "cudagraphs" not in aggressive.mode.replace("no-cudagraphs", "")  # no CUDA graphs on CPU
    assert settings_for(S.STANDARD).label == "inductor:default"
    assert settings_for(S.FAST).label == "aot_eager:default"


def test_gpu_settings_build_every_strategy_for_that_device():
    """Emergency too: a kernel serves where it was built (the library keeps devices apart), so an eager-traced
    kernel for a CUDA run is traced on that device, not on the CPU."""
    for strategy in ALL:
        assert settings_for(strategy, "cuda:0").device == "cuda:0"
    assert settings_for(S.EMERGENCY, "cuda").backend == "eager"
    assert settings_for(S.AGGRESSIVE, "cuda").mode == "max-autotune"


def test_timeouts_per_strategy():
    c = CompilationConfig(timeout_fast_s=1, timeout_standard_s=2, timeout_aggressive_s=3, timeout_emergency_s=4)
    assert [timeout_for(s, c) for s in (S.FAST, S.STANDARD, S.AGGRESSIVE, S.EMERGENCY)] == [1, 2, 3, 4]
    d = CompilationConfig()
    assert (
        timeout_for(S.EMERGENCY, d) < timeout_for(S.FAST, d) < timeout_for(S.STANDARD, d) < timeout_for(S.AGGRESSIVE, d)
    )


# ---------------------------------------------------------------------------------- labels and help


def test_compile_label_is_backend_colon_mode():
    assert compile_label("inductor", None) == compile_label("inductor", "default") == "inductor:default"
    assert compile_label("inductor", "max-autotune") == "inductor:max-autotune"
    assert compile_label(None, None) == "?:default"
    for strategy in ALL:
        s = settings_for(strategy)
        assert s.label == compile_label(s.backend, s.mode)


@pytest.mark.parametrize("strategy", ALL)
def test_strategy_help_names_the_settings_the_forge_compiles_with(strategy):
    """The help starts with the real backend:mode of the settings the forge uses (`settings_for(strategy)`,
    CPU table): the hand-written text it replaces said "inductor dynamic shapes" for Aggressive, which
    compiles with max-autotune-no-cudagraphs."""
    label, _, use = strategy_help(strategy).partition(" · ")
    assert label == settings_for(strategy).label
    assert use == STRATEGY_USE[strategy]


def test_strategy_use_claims_match_choose_strategy():
    """Each "when it is used" claim, held against the chooser itself."""
    default = CompilationConfig()
    assert "conservative mode" in STRATEGY_USE[S.FAST] and choose(conservative=True) is S.FAST
    assert "retries" in STRATEGY_USE[S.FAST] and choose(attempt=2, max_attempts=3) is S.FAST
    assert STRATEGY_USE[S.STANDARD] == "the default" and choose() is default.default_strategy is S.STANDARD
    assert STRATEGY_USE[S.AGGRESSIVE] == "opt-in" and not default.enable_aggressive_pipeline
    assert choose(requested=S.AGGRESSIVE) is not S.AGGRESSIVE
    assert choose(requested=S.AGGRESSIVE, enable_aggressive_pipeline=True) is S.AGGRESSIVE
    assert "last attempt" in STRATEGY_USE[S.EMERGENCY] and choose(attempt=default.max_attempts) is S.EMERGENCY
    assert set(STRATEGY_USE) == set(Strategy)
