"""Urza shared by several machines: a PostgreSQL catalog and an S3-compatible store of artifact bytes.

The signed `ArtifactMeta` is the same document the file library writes; it lives in the catalog row, and
each file it lists lives in the object store under its sha256 (content-addressed, so an upload is
idempotent and an object never changes). Order of a commit: upload every file and let the store confirm
the bytes, then register the version in one catalog transaction, which also allocates its number and
signs the metadata. A version is therefore never visible before its bytes are stored, and a worker that
dies in between leaves only unreferenced objects behind.

Loading verifies the row's signature, that the signed blueprint/version/key are the row's, then every
file's hash (from this machine's verified blob cache, or downloaded into it), then that the kernel was
built for this process; any failure quarantines the version in the catalog, which every engine sees.
Versions are partitioned by the identity fingerprint: an engine only ever considers kernels built for
a machine like its own (the device included), so a heterogeneous fleet shares one catalog without quarantining
each other's; and by slot shape: a blueprint has one live kernel per shape (rows registered before shapes
are the 40-64 kernels they were compiled as, see migration 3).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from esper_tui.engine.kernels.catalog import BlueprintUnloadable, Catalog
from esper_tui.engine.kernels.compiled import KernelError, LoadedKernel, cpu_isa, load_kernel
from esper_tui.engine.kernels.shapes import SlotShape
from esper_tui.engine.library import ownkey, signing
from esper_tui.engine.library.base import KernelCache, LibraryStats
from esper_tui.engine.library.blobcache import BlobCache
from esper_tui.engine.library.catalog_db import CatalogError, KernelRow, PgCatalog
from esper_tui.engine.library.meta import ArtifactMeta, KernelBuild
from esper_tui.engine.library.objects import ObjectCorrupt, ObjectMissing, ObjectStore, StoreError
from esper_tui.engine.library.store import (
    ArtifactInvalid,
    Identity,
    read_regular,
    served_step_ms,
    stage_files,
    unfit_reason,
)
from esper_tui.engine.library.userbp import UserBlueprints
from esper_tui.engine.library.userbp_rows import SharedRecords
from esper_tui.engine.vocabulary import compile_label


def version_label(row: KernelRow) -> str:
    return f"{row.blueprint_id}/v{row.version:04d}-{row.shape}-{row.artifact_key[:12]}"


class SharedLibrary:
    """The `KernelLibrary` of a team: catalog rows in PostgreSQL, bytes in an object store, a local cache."""

    def __init__(
        self,
        db: PgCatalog,
        store: ObjectStore,
        cache_dir: Path,
        key: bytes,
        catalog: Catalog,
        *,
        identity: Identity | None = None,
        cache_ttl_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        on_quarantine: Callable[[str, str, str], None] | None = None,
        compiled_by: str = "",
    ) -> None:
        self.db = db
        self.store = store
        self.catalog = catalog
        self.on_quarantine = on_quarantine
        self.compiled_by = compiled_by or f"{socket.gethostname()}:{os.getpid()}"
        self.blobs = BlobCache(cache_dir / "blobs")
        self._staging = cache_dir / "staging"
        self._staging.mkdir(parents=True, exist_ok=True)
        self._key = key
        self._identity = identity
        self.stats = LibraryStats()
        self._cache = KernelCache(cache_ttl_s, clock, self.stats)
        self.blueprints = UserBlueprints(SharedRecords(db, store), key)
        db.sync_blueprints((bp.blueprint_id, bp.ir_hash(), bp.tags) for bp in catalog)

    @property
    def location(self) -> str:
        return f"catalog {self.db.url_for_display}, artifacts {self.store.url}"

    def identity(self) -> Identity:
        if self._identity is None:
            self._identity = Identity.here(cpu_isa())
        return self._identity

    def close(self) -> None:
        self.db.close()

    def adopt_key(self, claim: bool = True) -> None:
        """Check that this process's key is the library's (ownkey.adopt); raises ownkey.LibraryKeyError."""
        try:
            ownkey.adopt(
                self._key,
                where=f"catalog {self.db.url_for_display}",
                recorded=self.db.library_key,
                record=lambda fp: self.db.record_library_key(fp, self.compiled_by),
                signed=lambda: ((row.meta, row.signature) for row in self.db.versions()),
                claim=claim,
            )
        except CatalogError as exc:
            raise ownkey.LibraryKeyError(str(exc)) from None

    # ------------------------------------------------------------------ writing

    def clean_staging(self) -> list[str]:
        removed = []
        for p in self._staging.iterdir():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
        return removed

    def new_staging_dir(self, blueprint_id: str) -> Path:
        path = self._staging / f"{blueprint_id}-{os.urandom(6).hex()}"
        path.mkdir(parents=True)
        return path

    def commit(
        self, staged: Path, *, blueprint_id: str, key: str, build: KernelBuild, job_id: str = "", force: bool = False
    ) -> ArtifactMeta:
        """Upload every staged file (verified by the store), then register the version in one transaction.

        Idempotent: the same job id, or (unless forced) the same artifact key, returns the version already
        registered instead of adding one. Raises ArtifactInvalid for a bad staged tree, StoreError or
        CatalogError when the shared services fail (the staged files are removed either way).
        """
        bp = self.catalog.get(blueprint_id)
        try:
            files = stage_files(staged)
            for f in files:
                data = read_regular(staged / f.name, f"staged {f.name}")
                self.store.put(f.sha256, data)
                self.blobs.put(f.sha256, data)  # this machine may graft it next: no download for that

            def sign(version: int) -> tuple[bytes, str]:
                meta = ArtifactMeta.signed_form(
                    build,
                    artifact_id=key,
                    blueprint_id=blueprint_id,
                    version=version,
                    ir_hash=bp.ir_hash(),
                    files=files,
                    created_ts=time.time(),
                )
                raw = msgspec.json.encode(meta)
                return raw, signing.sign(self._key, raw)

            row, _created = self.db.register(
                blueprint_id=blueprint_id,
                artifact_key=key,
                job_id=job_id or os.urandom(8).hex(),
                identity=self.identity().fingerprint(),
                shape=build.shape,
                step_ms_compiled=build.step_ms_compiled,
                step_ms_eager=build.step_ms_eager,
                compiled_by=self.compiled_by,
                force=force,
                sign=sign,
            )
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        return self._verified_meta(row)

    # ------------------------------------------------------------------ reading

    def _verified_meta(self, row: KernelRow) -> ArtifactMeta:
        """The row's metadata after its signature, and its claim to be this row, are checked. A signature that
        fails with a key that is not the library's is ownkey.ForeignKey (a KernelError: nothing to quarantine)."""
        label = version_label(row)
        if not signing.verify(self._key, row.meta, row.signature):
            ownkey.guard(self._key, self.db.library_key(), label)
            raise ArtifactInvalid(f"{label}: signature mismatch (metadata altered or signed with another key)")
        try:
            meta = msgspec.json.decode(row.meta, type=ArtifactMeta)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ArtifactInvalid(f"{label}: signed metadata does not decode ({exc})") from None
        signed = (meta.blueprint_id, meta.version, meta.slot_shape.tag, meta.artifact_id)
        if signed != (row.blueprint_id, row.version, row.shape, row.artifact_key):
            raise ArtifactInvalid(
                f"{label}: signed as {meta.blueprint_id} v{meta.version} {meta.slot_shape.tag} {meta.artifact_id[:12]}"
            )
        return meta

    def files(self, row: KernelRow, meta: ArtifactMeta, *, from_store: bool = False) -> dict[str, bytes]:
        """Every file of a version, each checked against its signed hash (the cache and the store both verify).

        ArtifactInvalid when a file is corrupt or gone from the store; KernelError when the store does not
        answer (an outage here must not quarantine a kernel every other machine can load)."""
        blobs: dict[str, bytes] = {}
        for f in meta.files:
            try:
                data = self.store.get(f.sha256) if from_store else self.blobs.fetch(f.sha256, self.store)[0]
            except (ObjectCorrupt, ObjectMissing) as exc:  # the version is broken for everybody
                raise ArtifactInvalid(f"{version_label(row)}: {f.name}: {exc}") from None
            except StoreError as exc:  # this machine cannot reach the store: never a reason to quarantine
                raise KernelError(f"{version_label(row)}: {f.name}: {exc}") from None
            blobs[f.name] = data
        return blobs

    def quarantine_row(self, row: KernelRow, reason: str) -> None:
        """Hide a bad version from every engine (the catalog keeps the row, its number and the reason)."""
        if self.db.quarantine(row.blueprint_id, row.version, reason):
            self.stats.quarantined += 1
        self._cache.clear()
        if self.on_quarantine is not None:
            self.on_quarantine(row.blueprint_id, version_label(row).split("/", 1)[1], reason)

    def current(self, blueprint_id: str, shape: SlotShape, key: str | None = None) -> ArtifactMeta | None:
        """The newest version for this identity and shape whose signed metadata verifies; bad ones are
        quarantined."""
        fp = self.identity().fingerprint()
        while (row := self.db.current(blueprint_id, fp, shape.tag, key)) is not None:
            try:
                return self._verified_meta(row)
            except ArtifactInvalid as exc:
                self.quarantine_row(row, str(exc))
        return None

    def ranked(self, shape: SlotShape | None = None, tag: str | None = None) -> list[ArtifactMeta]:
        """Current kernels for this identity (of one shape, if given), fastest served step first (rows that fail
        their signature are left out here and quarantined when loaded)."""
        metas = []
        for row in self.db.all_current(self.identity().fingerprint()):
            if row.blueprint_id not in self.catalog or (shape is not None and row.shape != shape.tag):
                continue
            if tag is not None and tag not in self.catalog.get(row.blueprint_id).tags:
                continue
            try:
                metas.append(self._verified_meta(row))
            except (ArtifactInvalid, KernelError):
                continue
        return sorted(metas, key=served_step_ms)

    def _newest(self, blueprint_id: str, shape: SlotShape) -> KernelRow:
        if blueprint_id not in self.catalog:
            raise ArtifactInvalid(f"{blueprint_id}: no such blueprint in the catalog")
        try:
            row = self.db.current(blueprint_id, self.identity().fingerprint(), shape.tag)
        except CatalogError as exc:
            raise KernelError(str(exc)) from None
        if row is None:
            raise ArtifactInvalid(
                f"{blueprint_id}: no compiled kernel for {shape.tag} on this machine in the shared library"
            )
        return row

    def _checked(self, row: KernelRow) -> tuple[ArtifactMeta, dict[str, bytes]]:
        """Signature, every file (through the blob cache), built for this process; a failure is quarantined."""
        try:
            meta = self._verified_meta(row)
            blobs = self.files(row, meta)
            bp = self.catalog.get(row.blueprint_id)
            if (unfit := unfit_reason(self.identity(), bp.ir_hash(), meta)) is not None:
                raise ArtifactInvalid(f"{version_label(row)}: {unfit}")
        except ArtifactInvalid as exc:
            self.quarantine_row(row, str(exc))
            raise
        return meta, blobs

    def verified(self, blueprint_id: str, shape: SlotShape) -> ArtifactMeta:
        """The newest kernel's metadata for that shape, checked as `load` checks it, without deserialising it."""
        return self._checked(self._newest(blueprint_id, shape))[0]

    def load(self, blueprint_id: str, shape: SlotShape) -> tuple[LoadedKernel, ArtifactMeta]:
        """The newest kernel of a blueprint for this identity and shape, verified, through the TTL and blob
        caches.

        Raises ArtifactInvalid (the version is quarantined cluster-wide) or KernelError only, so the
        trainer can fall back to eager and go on; an unreachable catalog is a KernelError.
        """
        row = self._newest(blueprint_id, shape)
        cache_key = (row.blueprint_id, row.version, row.artifact_key)
        if (hit := self._cache.get(cache_key)) is not None:
            return hit
        meta, blobs = self._checked(row)
        try:
            bp = self.catalog.loaded(blueprint_id)  # a user blueprint's class loads here (the training process)
        except BlueprintUnloadable as exc:
            raise KernelError(str(exc)) from None
        kernel = self._cache.deserialised(meta, lambda: load_kernel(bp, blobs, compile_label(meta.backend, meta.mode)))
        self._cache.put(cache_key, kernel, meta)
        return kernel, meta

    def verify_all(self) -> list[tuple[str, str | None]]:
        """Every live version, signature and bytes, read from the shared store itself (not this machine's
        cache): what another machine would download. Quarantined versions are not listed."""
        out: list[tuple[str, str | None]] = []
        for row in self.db.versions():
            if row.quarantined:
                continue
            try:
                self.files(row, self._verified_meta(row), from_store=True)
            except (ArtifactInvalid, KernelError) as exc:
                out.append((version_label(row), str(exc)))
            else:
                out.append((version_label(row), None))
        return out

    def expire(self) -> int:
        return self._cache.expire()

    def drop_cache(self) -> int:
        return self._cache.clear()
