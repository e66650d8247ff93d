"""ArtifactMeta: the signed description of one stored kernel (what it is, what it needs, how fast it is)."""

from __future__ import annotations

from typing import Any

from esper_tui.engine.vocabulary import SCHEMA_VERSION, Strategy, Struct


class ArtifactFile(Struct, kw_only=True):
    name: str
    sha256: str
    size: int


class ArtifactMeta(Struct, kw_only=True):
    """Everything needed to decide whether a stored kernel may be loaded here, and how fast it is."""

    schema_version: int = SCHEMA_VERSION
    artifact_id: str  # the key: hash of blueprint IR, options and torch/system identity
    blueprint_id: str
    version: int
    ir_hash: str
    strategy: Strategy
    backend: str
    mode: str
    options: dict[str, Any]
    torch_version: str
    python_version: str
    device: str
    cpu_isa: str
    in_features: int
    batch_min: int
    batch_max: int
    grad_modes: list[bool]
    compile_s: float
    step_ms_compiled: float
    step_ms_eager: float
    created_ts: float
    files: list[ArtifactFile]
