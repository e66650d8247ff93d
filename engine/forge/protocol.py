"""The forge worker protocol: CompileRequest and CompileResponse over a pipe, length-prefixed msgpack."""

from __future__ import annotations

import msgspec

from esper_tui.engine.vocabulary import Strategy, Struct


class CompileRequest(Struct, kw_only=True):
    """One compile. `out_dir` given to the pool is where the files end up (the library's staging
    directory); the worker itself is sent a fresh directory in its own scratch instead, and the pool
    copies what it reports from there (sandbox.take_files). The reply must carry the same job_id."""

    job_id: str
    blueprint_id: str
    shape: str  # the slot shape's tag (SlotShape.tag)
    strategy: Strategy
    backend: str
    mode: str | None
    device: str
    out_dir: str
    # A user blueprint's signed source and class (the engine verified both): the worker loads and probes it before
    # compiling. "" for the built-in catalog. A worker that ran user code is never given another job.
    source: str = ""
    class_name: str = ""


class CompileResponse(Struct, kw_only=True):
    job_id: str
    ok: bool
    error: str = ""
    files: list[str] = msgspec.field(default_factory=list)  # relative to out_dir; regular files only
    compile_s: float = 0.0
    step_ms_compiled: float = 0.0
    step_ms_eager: float = 0.0
    cpu_isa: str = ""
    max_abs_error: float = 0.0
