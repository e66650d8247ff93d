"""The compiled-kernel source: seeds germinate with signed kernels from the library (Urza -> Kasmina)."""

from __future__ import annotations

from esper_tui.engine.kernels.compiled import KernelError
from esper_tui.engine.library.meta import ArtifactMeta
from esper_tui.engine.library.store import ArtifactInvalid, Library
from esper_tui.engine.training.kernel_source import Kernel, KernelOffer, KernelUnavailable
from esper_tui.engine.vocabulary import compile_label


class LibraryKernelSource:
    """Offers every blueprint with a stored kernel, fastest measured step first."""

    compile_enabled = True

    def __init__(self, library: Library, backend: str, mode: str) -> None:
        self._library = library
        self.backend: str | None = backend
        self.mode: str | None = mode

    def _offer(self, meta: ArtifactMeta) -> KernelOffer:
        bp = self._library.catalog.get(meta.blueprint_id)
        return KernelOffer(
            blueprint_id=meta.blueprint_id,
            artifact_id=meta.artifact_id,
            tags=bp.tags,
            risk=bp.risk,
            label=compile_label(meta.backend, meta.mode),
            step_ms_compiled=meta.step_ms_compiled,
            step_ms_eager=meta.step_ms_eager,
        )

    def offers(self) -> list[KernelOffer]:
        return [self._offer(m) for m in self._library.ranked()]

    def load(self, blueprint_id: str) -> tuple[Kernel, KernelOffer]:
        """A verified kernel or KernelUnavailable (the trainer then runs the blueprint eager); never a crash."""
        try:
            kernel, meta = self._library.load(blueprint_id)
        except (ArtifactInvalid, KernelError) as exc:  # all Library.load raises
            raise KernelUnavailable(str(exc)) from exc
        return kernel, self._offer(meta)
