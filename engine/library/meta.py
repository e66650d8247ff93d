"""ArtifactMeta: the signed description of one stored kernel (what it is, what it needs, how fast it is).

`KernelBuild` is what the forge knows about a finished compile; the library adds what only it knows
(key, version, files, blueprint IR hash) and signs the result as `ArtifactMeta`.
"""

from __future__ import annotations

from typing import Any

from esper_tui.engine.kernels.shapes import SlotShape, vector
from esper_tui.engine.vocabulary import Strategy, Struct

ARTIFACT_SCHEMA_VERSION = 1
"""The stored artifact's own version, apart from the wire's SCHEMA_VERSION: kernels in a library outlive
the snapshot's field names, and their signed meta must read the same to every engine that loads them."""

LEGACY_SHAPE = vector(40, 64)
"""The slot shape of a kernel stored before kernels were kept per shape: its signed metadata (or its shared
catalog row, before migration 3) names none, and every engine then compiled for the MNIST-1D host's slots,
40 input features to a 64-wide hidden layer (training.hidden's default; the width was never recorded, so a
kernel built for another width is read as 40-64 too, and a seed's probe refuses its output shape)."""


def shape_of(tag: str) -> SlotShape:
    """The shape a stored kernel was compiled for: its tag, or LEGACY_SHAPE when it has none."""
    return SlotShape.parse(tag) if tag else LEGACY_SHAPE


class ArtifactFile(Struct, kw_only=True):
    name: str
    sha256: str
    size: int


class KernelBuild(Struct, kw_only=True):
    """One compile's outcome, as `Library.commit` takes it: typed, so a misspelt field fails at the call."""

    strategy: Strategy
    backend: str
    mode: str
    device: str
    torch_version: str
    python_version: str
    cpu_isa: str  # what the worker's inductor picked: the kernels' vector instructions
    threads: int  # compiled guards pin torch.get_num_threads()
    compiler: str  # the C++ compiler's identity (compiled.compiler_id)
    shape: str  # the slot shape's tag (SlotShape.tag): what the kernel reads and writes
    in_features: int  # the first input dimension (kept: metadata has always had it)
    batch_min: int
    batch_max: int
    grad_modes: list[bool]
    compile_s: float
    step_ms_compiled: float
    step_ms_eager: float


class ArtifactMeta(Struct, kw_only=True):
    """Everything needed to decide whether a stored kernel may be loaded here, and how fast it is.

    The on-disk layout predates `KernelBuild`: threads and compiler live in `options`, so artifacts
    already stored still decode (and verify) unchanged.
    """

    schema_version: int = ARTIFACT_SCHEMA_VERSION
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
    shape: str = ""  # the slot shape's tag; "" in metadata signed before shapes: read as LEGACY_SHAPE

    @property
    def slot_shape(self) -> SlotShape:
        return shape_of(self.shape)

    @classmethod
    def signed_form(
        cls,
        build: KernelBuild,
        *,
        artifact_id: str,
        blueprint_id: str,
        version: int,
        ir_hash: str,
        files: list[ArtifactFile],
        created_ts: float,
    ) -> ArtifactMeta:
        """The metadata the library signs for a compile the forge describes."""
        return cls(
            artifact_id=artifact_id,
            blueprint_id=blueprint_id,
            version=version,
            ir_hash=ir_hash,
            strategy=build.strategy,
            backend=build.backend,
            mode=build.mode,
            options={
                "fullgraph": True,
                "dynamic_batch": True,
                "num_threads": build.threads,
                "compiler": build.compiler,
            },
            torch_version=build.torch_version,
            python_version=build.python_version,
            device=build.device,
            cpu_isa=build.cpu_isa,
            in_features=build.in_features,
            batch_min=build.batch_min,
            batch_max=build.batch_max,
            grad_modes=build.grad_modes,
            compile_s=build.compile_s,
            step_ms_compiled=build.step_ms_compiled,
            step_ms_eager=build.step_ms_eager,
            created_ts=created_ts,
            files=files,
            shape=build.shape,
        )

    def build(self) -> KernelBuild:
        """The compile this metadata describes (the inverse of `signed_form`): what copying a kernel from
        one library into another commits again."""
        return KernelBuild(
            strategy=self.strategy,
            backend=self.backend,
            mode=self.mode,
            device=self.device,
            torch_version=self.torch_version,
            python_version=self.python_version,
            cpu_isa=self.cpu_isa,
            threads=int(self.options.get("num_threads", 0)),
            compiler=str(self.options.get("compiler", "")),
            shape=self.slot_shape.tag,
            in_features=self.in_features,
            batch_min=self.batch_min,
            batch_max=self.batch_max,
            grad_modes=self.grad_modes,
            compile_s=self.compile_s,
            step_ms_compiled=self.step_ms_compiled,
            step_ms_eager=self.step_ms_eager,
        )
