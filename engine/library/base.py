"""What the forge, the trainer and the operator tools need of a library, whichever backend holds it.

Two backends: `store.Library` (a folder under the state directory, the embedded default) and
`shared.SharedLibrary` (a PostgreSQL catalog plus an S3-compatible object store, shared by several
engines and forge workers). Both sign the same `ArtifactMeta`, verify it before anything is deserialised,
and quarantine what fails.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.kernels.compiled import LoadedKernel
from esper_tui.engine.kernels.shapes import ShapeError, SlotShape
from esper_tui.engine.library.meta import ArtifactMeta, KernelBuild
from esper_tui.engine.library.userbp import UserBlueprints


def version_shape(label: str) -> SlotShape | None:
    """The slot shape a version's label names, in either backend (`v0003-8x8x8-16x8x8-cpu-ab12…` in a folder,
    `v0003-40-64-ab12…` in a shared catalog); None for a label from before shapes (`v0001-ab12…`), whose kernels
    served the 40-64 vector slot."""
    parts = label.split("-")
    if len(parts) < 4:
        return None
    try:
        return SlotShape.parse(f"{parts[1]}-{parts[2]}")
    except ShapeError:
        return None


@dataclass
class LibraryStats:
    artifacts: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    quarantined: int = 0
    reused: int = 0  # misses served by a kernel already deserialised from the same verified bytes

    @property
    def hit_rate(self) -> float:
        total = self.cache_hits + self.cache_misses
        return self.cache_hits / total if total else 0.0


class KernelLibrary(Protocol):
    """Commit staged compiles as signed versions; serve verified kernels; quarantine bad ones."""

    catalog: Catalog
    stats: LibraryStats
    on_quarantine: Callable[[str, str, str], None] | None  # (blueprint_id, version label, reason)
    blueprints: UserBlueprints  # user blueprints: signed records and their sources (library/userbp.py)

    @property
    def location(self) -> str:
        """Where the library lives, for the operator (a path, or catalog + artifacts URLs)."""
        ...

    def adopt_key(self, claim: bool = True) -> None:
        """Check that this process's key is the library's, recording it first on a library that records none
        when `claim` (ownkey.adopt); raises ownkey.LibraryKeyError."""
        ...

    def clean_staging(self) -> list[str]: ...

    def new_staging_dir(self, blueprint_id: str) -> Path: ...

    def commit(
        self, staged: Path, *, blueprint_id: str, key: str, build: KernelBuild, job_id: str = "", force: bool = False
    ) -> ArtifactMeta:
        """Store a staged compile as the next version. With a job id, committing the same job twice
        (a reclaimed job) returns the first version; unless forced, so does an already stored key."""
        ...

    def current(self, blueprint_id: str, shape: SlotShape, key: str | None = None) -> ArtifactMeta | None:
        """The newest verified kernel of a blueprint for that slot shape on this process's device (and with that
        key, if given); kernels of other shapes and devices are kept apart, never considered."""
        ...

    def ranked(self, shape: SlotShape | None = None, tag: str | None = None) -> list[ArtifactMeta]:
        """The current kernel of every blueprint and shape for this device (only one shape's, if given),
        fastest served step first."""
        ...

    def load(self, blueprint_id: str, shape: SlotShape) -> tuple[LoadedKernel, ArtifactMeta]: ...

    def verified(self, blueprint_id: str, shape: SlotShape) -> ArtifactMeta:
        """What `load` checks (signature, every file's hash, built for this process, quarantined if not), without
        deserialising: a seed served eagerly by choice needs no compiled function, nor torch's inductor."""
        ...

    def verify_all(self) -> list[tuple[str, str | None]]:
        """Every stored version checked in full: (label, None when it verifies, else the reason)."""
        ...

    def expire(self) -> int: ...

    def drop_cache(self) -> int: ...

    def close(self) -> None: ...


class _Cached(NamedTuple):
    expires: float
    kernel: LoadedKernel
    meta: ArtifactMeta  # verified when the kernel was loaded


DESERIALISED_KEPT = 64
"""Deserialised kernels a library keeps for reuse (least recently used go first): the catalog's blueprints for
several shapes and strategies, a few MB each."""


def content_key(meta: ArtifactMeta) -> Hashable:
    """What a kernel's verified bytes are: the signed key and every file's signed digest. Two versions with equal
    content keys deserialise to the same function."""
    return meta.blueprint_id, meta.artifact_id, tuple((f.name, f.sha256) for f in meta.files)


class KernelCache:
    """Loaded kernels kept for a TTL, keyed by the stored version they came from; counts hits and misses.

    Below the TTL entries, the deserialised kernels themselves, keyed by `content_key`: a load that misses the TTL
    cache still checks the signature and every file's hash, but deserialising (20-30 ms of torch's work per
    kernel, benchmarks.forge) happens once per content in this process. `clear` (the memory breaker) drops both.
    Thread-safe: the trainer thread loads while the event loop's threads commit and quarantine.
    """

    def __init__(
        self, ttl_s: float, clock: Callable[[], float], stats: LibraryStats, *, keep: int = DESERIALISED_KEPT
    ) -> None:
        self._ttl = ttl_s
        self._clock = clock
        self._stats = stats
        self._keep = keep
        self._lock = threading.Lock()
        self._entries: dict[Hashable, _Cached] = {}
        self._loaded: OrderedDict[Hashable, LoadedKernel] = OrderedDict()

    def get(self, key: Hashable) -> tuple[LoadedKernel, ArtifactMeta] | None:
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit.expires > self._clock():
                self._stats.cache_hits += 1
                return hit.kernel, hit.meta
            self._stats.cache_misses += 1
            return None

    def put(self, key: Hashable, kernel: LoadedKernel, meta: ArtifactMeta) -> None:
        with self._lock:
            self._entries[key] = _Cached(self._clock() + self._ttl, kernel, meta)

    def deserialised(self, meta: ArtifactMeta, load: Callable[[], LoadedKernel]) -> LoadedKernel:
        """The kernel for bytes the caller has just verified against `meta`: reused when this process has
        deserialised the same content before, else `load()` (outside the lock: it takes milliseconds)."""
        key = content_key(meta)
        with self._lock:
            kernel = self._loaded.get(key)
            if kernel is not None:
                self._loaded.move_to_end(key)
                self._stats.reused += 1
                return kernel
        kernel = load()
        with self._lock:
            self._loaded[key] = kernel
            self._loaded.move_to_end(key)
            while len(self._loaded) > self._keep:
                self._loaded.popitem(last=False)
        return kernel

    def expire(self) -> int:
        """TTL cleanup: drop entries past their time. Returns how many were dropped."""
        now = self._clock()
        with self._lock:
            stale = [k for k, entry in self._entries.items() if entry.expires <= now]
            for k in stale:
                del self._entries[k]
        return len(stale)

    def clear(self) -> int:
        """Drop every entry and every deserialised kernel; returns how many TTL entries there were."""
        with self._lock:
            n = len(self._entries)
            self._entries.clear()
            self._loaded.clear()
        return n
