"""The forge worker protocol: CompileRequest and CompileResponse over a pipe, length-prefixed msgpack."""

from __future__ import annotations

import msgspec

from esper_tui.engine.vocabulary import Strategy, Struct


class CompileRequest(Struct, kw_only=True):
    job_id: str
    blueprint_id: str
    in_features: int
    out_features: int
    strategy: Strategy
    backend: str
    mode: str | None
    device: str
    out_dir: str


class CompileResponse(Struct, kw_only=True):
    job_id: str
    ok: bool
    error: str = ""
    files: list[str] = msgspec.field(default_factory=list)
    compile_s: float = 0.0
    step_ms_compiled: float = 0.0
    step_ms_eager: float = 0.0
    cpu_isa: str = ""
    max_abs_error: float = 0.0
