"""The compiled-kernel source: seeds germinate with signed kernels from the library (Urza -> Kasmina).

Compiled seeds must pay for themselves: the forge times a training step of every kernel against the same
module run eagerly on this machine, and the source serves whichever variant was faster, eager included,
saying why ("eager: 2.06 ms < compiled 2.39 ms per step").
"""

from __future__ import annotations

import time
from collections.abc import Callable

from esper_tui.engine.kernels.compiled import KernelError
from esper_tui.engine.kernels.shapes import SlotShape
from esper_tui.engine.library.base import KernelLibrary
from esper_tui.engine.library.meta import ArtifactMeta
from esper_tui.engine.library.store import ArtifactInvalid, eager_is_faster
from esper_tui.engine.training.kernel_source import EAGER_LABEL, Kernel, KernelOffer, KernelUnavailable, eager_kernel
from esper_tui.engine.vocabulary import compile_label


def variant_reason(meta: ArtifactMeta) -> str:
    """Which variant runs and the measurement that chose it, in one phrase."""
    c, e = meta.step_ms_compiled, meta.step_ms_eager
    if eager_is_faster(meta):
        return f"eager: {e:.2f} ms < compiled {c:.2f} ms per step"
    return f"compiled: {c:.2f} ms <= eager {e:.2f} ms per step"


class LibraryKernelSource:
    """Offers every blueprint with a stored kernel, each as its faster verified variant on this machine."""

    compile_enabled = True

    def __init__(
        self,
        library: KernelLibrary,
        backend: str,
        mode: str,
        *,
        fastest: bool = True,
        refresh: Callable[[], object] | None = None,
        refresh_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._library = library
        self.backend: str | None = backend
        self.mode: str | None = mode
        self.fastest = fastest  # False: always the compiled kernel (benchmarks compare the two)
        # Every refresh_s (0: never), before offering: the library's user blueprints added since this process
        # started join its catalog (the training process passes that step in; tezzeret.polling).
        self._refresh = refresh if refresh_s > 0 else None
        self._refresh_s = refresh_s
        self._clock = clock
        self._refreshed = clock()

    def _offer(self, meta: ArtifactMeta, shape: SlotShape) -> KernelOffer:
        bp = self._library.catalog.get(meta.blueprint_id)
        eager = self.fastest and eager_is_faster(meta)
        return KernelOffer(
            blueprint_id=meta.blueprint_id,
            artifact_id=meta.artifact_id,
            tags=bp.tags,
            risk=bp.risk,
            label=EAGER_LABEL if eager else compile_label(meta.backend, meta.mode),
            step_ms_compiled=meta.step_ms_compiled,
            step_ms_eager=meta.step_ms_eager,
            why=variant_reason(meta) if self.fastest else "compiled: always served (fastest off)",
            eager_by_choice=eager,
            shape=shape.tag,
        )

    def offers(self, shape: SlotShape) -> list[KernelOffer]:
        """The blueprints with a kernel stored for that shape (which fit it: the forge compiles nothing else)."""
        if self._refresh is not None and self._clock() - self._refreshed >= self._refresh_s:
            self._refreshed = self._clock()
            self._refresh()
        catalog = self._library.catalog
        return [self._offer(m, shape) for m in self._library.ranked(shape) if catalog.fits(m.blueprint_id, shape)]

    def load(self, blueprint_id: str, shape: SlotShape) -> tuple[Kernel, KernelOffer]:
        """A verified kernel or KernelUnavailable (the trainer then runs the blueprint eager); never a crash.

        An eager-by-choice offer still verifies the stored artifact first: eager is served because it was
        measured faster than a kernel that exists and is sound, not instead of a broken one. It is not
        deserialised, so a process whose seeds all run eager never loads torch's inductor."""
        if blueprint_id in self._library.catalog and (unfit := self._library.catalog.get(blueprint_id).unfit(shape)):
            raise KernelUnavailable(unfit)
        try:
            meta = self._library.verified(blueprint_id, shape)
            offer = self._offer(meta, shape)
            if not offer.compiled:
                return eager_kernel, offer
            kernel, meta = self._library.load(blueprint_id, shape)
        except (ArtifactInvalid, KernelError) as exc:  # all Library.verified and load raise
            raise KernelUnavailable(str(exc)) from exc
        return kernel, self._offer(meta, shape)
