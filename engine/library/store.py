"""Urza: the library of signed, versioned compiled kernels, on disk under `<state>/library`.

Layout: `artifacts/<blueprint>/v0003-<key12>/` holds the compiled functions, weights, kernels,
`meta.json` (with a sha256 of every file) and `meta.sig` (HMAC-SHA256 of meta.json). A version
becomes visible only by an atomic directory rename after everything below it is fsynced; a crash
leaves at most a directory in `staging/`, removed at start. Loading checks the signature, then
every file's hash, *then* deserialises; any mismatch moves the version to `quarantine/`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from esper_tui.engine.fsutil import fsync_dir, fsync_tree, write_durable
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.kernels.compiled import (
    KernelError,
    LoadedKernel,
    compiler_id,
    kernel_threads,
    load_kernel,
)
from esper_tui.engine.kernels.pipelines import CompileSettings
from esper_tui.engine.library import signing as signing
from esper_tui.engine.library.meta import ArtifactFile, ArtifactMeta
from esper_tui.engine.vocabulary import Strategy

_VERSION = re.compile(r"v(\d+)-")
META = "meta.json"
SIG = "meta.sig"


class ArtifactInvalid(Exception):
    """An artifact failed verification; it must never be loaded."""


@dataclass(frozen=True)
class Identity:
    """What a kernel is tied to besides its blueprint: recompile when any of it changes."""

    torch_version: str
    python_version: str
    device: str
    cpu_isa: str
    threads: int  # compiled guards pin torch.get_num_threads()
    compiler: str  # the C++ compiler's identity: the kernels' file names (cache keys) depend on it

    @classmethod
    def here(cls, cpu_isa: str, device: str = "cpu") -> Identity:
        import torch

        return cls(str(torch.__version__), platform.python_version(), device, cpu_isa, kernel_threads(), compiler_id())


def artifact_key(
    ir_hash: str, settings: CompileSettings, strategy: Strategy, identity: Identity, in_features: int, out_features: int
) -> str:
    """vLLM-style cache key: blueprint source + options + torch/system identity."""
    blob = json.dumps(
        [
            ir_hash,
            strategy.value,
            settings.backend,
            settings.mode,
            settings.device,
            identity.torch_version,
            identity.python_version,
            identity.cpu_isa,
            identity.threads,
            identity.compiler,
            in_features,
            out_features,
        ],
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class LibraryStats:
    artifacts: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    quarantined: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.cache_hits + self.cache_misses
        return self.cache_hits / total if total else 0.0


class Library:
    def __init__(
        self,
        root: Path,
        key: bytes,
        catalog: Catalog,
        *,
        cache_ttl_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        on_quarantine: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.root = root
        self.on_quarantine = on_quarantine  # (blueprint_id, version dir, reason); may run on any thread
        self._key = key
        self.catalog = catalog
        self._ttl = cache_ttl_s
        self._clock = clock
        self._lock = threading.Lock()  # the trainer thread loads while the loop commits
        self._cache: dict[str, tuple[float, LoadedKernel]] = {}
        self.stats = LibraryStats()
        for sub in ("artifacts", "staging", "quarantine"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ writing

    def clean_staging(self) -> list[str]:
        """Remove what a crashed writer left behind: staged directories never became versions."""
        removed = []
        for p in (self.root / "staging").iterdir():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
        for p in (self.root / "artifacts").glob("*/.*.tmp"):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(str(p))
        return removed

    def new_staging_dir(self, blueprint_id: str) -> Path:
        path = self.root / "staging" / f"{blueprint_id}-{os.urandom(6).hex()}"
        path.mkdir(parents=True)
        return path

    def commit(self, staged: Path, *, blueprint_id: str, key: str, fields: dict[str, Any]) -> ArtifactMeta:
        """Hash every staged file, sign, and rename the directory into place as the next version."""
        files = []
        for p in sorted(staged.rglob("*")):
            if p.is_file():
                data = p.read_bytes()
                files.append(
                    ArtifactFile(
                        name=str(p.relative_to(staged)), sha256=hashlib.sha256(data).hexdigest(), size=len(data)
                    )
                )
        bp = self.catalog.get(blueprint_id)
        with self._lock:
            version = self._next_version(blueprint_id)
            meta = ArtifactMeta(
                artifact_id=key,
                blueprint_id=blueprint_id,
                version=version,
                ir_hash=bp.ir_hash(),
                files=files,
                created_ts=time.time(),
                **fields,
            )
            raw = msgspec.json.format(msgspec.json.encode(meta))
            write_durable(staged / META, raw)
            write_durable(staged / SIG, signing.sign(self._key, raw).encode())
            fsync_tree(staged)
            parent = self.root / "artifacts" / blueprint_id
            parent.mkdir(exist_ok=True)
            os.rename(staged, parent / f"v{version:04d}-{key[:12]}")
            fsync_dir(parent)
            fsync_dir(staged.parent)
        return meta

    def _next_version(self, blueprint_id: str) -> int:
        """One more than any number this blueprint ever had, quarantined versions included: never reused."""
        names = [p.name for p in (self.root / "artifacts" / blueprint_id).glob("v*")]
        names += [p.name[len(blueprint_id) + 1 :] for p in (self.root / "quarantine").glob(f"{blueprint_id}-v*")]
        numbers = [int(m.group(1)) for n in names if (m := _VERSION.match(n))]
        return max(numbers, default=0) + 1

    # ------------------------------------------------------------------ reading

    def _scan(self, blueprint_id: str) -> list[ArtifactMeta]:
        """Unverified metadata of every version, newest first (for listing; never for loading)."""
        out = []
        for d in (self.root / "artifacts" / blueprint_id).glob("v*"):
            try:
                out.append(msgspec.json.decode((d / META).read_bytes(), type=ArtifactMeta))
            except (OSError, msgspec.DecodeError, msgspec.ValidationError):
                continue
        return sorted(out, key=lambda m: m.version, reverse=True)

    def _dir(self, meta: ArtifactMeta) -> Path:
        return self.root / "artifacts" / meta.blueprint_id / f"v{meta.version:04d}-{meta.artifact_id[:12]}"

    def version_dirs(self) -> list[Path]:
        return sorted((self.root / "artifacts").glob("*/v*"))

    def read_verified(self, path: Path) -> tuple[ArtifactMeta, dict[str, bytes]]:
        """Signature first, then each file's hash; only then is anything decoded. Raises ArtifactInvalid."""
        try:
            raw = (path / META).read_bytes()
            sig = (path / SIG).read_text()
        except OSError as exc:
            raise ArtifactInvalid(f"{path.name}: missing metadata or signature ({exc.strerror})") from None
        if not signing.verify(self._key, raw, sig):
            raise ArtifactInvalid(f"{path.name}: signature mismatch (meta.json altered or signed with another key)")
        meta = msgspec.json.decode(raw, type=ArtifactMeta)
        blobs: dict[str, bytes] = {}
        for f in meta.files:
            target = (path / f.name).resolve()
            if path.resolve() not in target.parents:
                raise ArtifactInvalid(f"{path.name}: file {f.name!r} escapes the artifact directory")
            try:
                data = target.read_bytes()
            except OSError:
                raise ArtifactInvalid(f"{path.name}: {f.name} is missing") from None
            if hashlib.sha256(data).hexdigest() != f.sha256:
                raise ArtifactInvalid(f"{path.name}: {f.name} does not match its signed checksum")
            blobs[f.name] = data
        return meta, blobs

    def verify(self, path: Path) -> str | None:
        """None when the artifact verifies, else the reason."""
        try:
            self.read_verified(path)
        except ArtifactInvalid as exc:
            return str(exc)
        return None

    def quarantine(self, path: Path, reason: str) -> Path:
        dest = self.root / "quarantine" / f"{path.parent.name}-{path.name}-{os.urandom(4).hex()}"
        os.rename(path, dest)
        (dest / "QUARANTINED").write_text(reason + "\n")
        fsync_dir(path.parent)
        with self._lock:
            self.stats.quarantined += 1
            self._cache.clear()
        if self.on_quarantine is not None:
            self.on_quarantine(path.parent.name, path.name, reason)
        return dest

    def current(self, blueprint_id: str, key: str | None = None) -> ArtifactMeta | None:
        """The newest version that verifies (optionally with a given key); bad ones are quarantined.

        Walks the version directories, not their decoded metadata, so a version whose meta.json no
        longer even decodes is found and quarantined too.
        """
        versions = sorted(
            (self.root / "artifacts" / blueprint_id).glob("v*"),
            key=lambda p: int(m.group(1)) if (m := _VERSION.match(p.name)) else -1,
            reverse=True,
        )
        for path in versions:
            try:
                meta, _ = self.read_verified(path)
            except ArtifactInvalid as exc:
                self.quarantine(path, str(exc))
                continue
            if key is None or meta.artifact_id == key:
                return meta
        return None

    def all_current(self) -> list[ArtifactMeta]:
        """Newest version per blueprint (unverified metadata; loading verifies)."""
        out = []
        for bid in self.catalog.ids():
            versions = self._scan(bid)
            if versions:
                out.append(versions[0])
        return out

    def ranked(self, tag: str | None = None) -> list[ArtifactMeta]:
        """Current kernels, fastest measured training step first; optionally only blueprints with a tag."""
        metas = [m for m in self.all_current() if tag is None or tag in self.catalog.get(m.blueprint_id).tags]
        return sorted(metas, key=lambda m: m.step_ms_compiled)

    def by_tag(self, tag: str) -> list[ArtifactMeta]:
        return self.ranked(tag)

    def load(self, blueprint_id: str) -> tuple[LoadedKernel, ArtifactMeta]:
        """The newest verified kernel of a blueprint, through a TTL cache. Raises ArtifactInvalid."""
        versions = self._scan(blueprint_id)
        if not versions:
            raise ArtifactInvalid(f"{blueprint_id}: no compiled kernel in the library")
        meta = versions[0]
        now = self._clock()
        with self._lock:
            hit = self._cache.get(meta.artifact_id + str(meta.version))
            if hit is not None and hit[0] > now:
                self.stats.cache_hits += 1
                return hit[1], meta
            self.stats.cache_misses += 1
        path = self._dir(meta)
        try:
            meta, blobs = self.read_verified(path)
        except ArtifactInvalid as exc:
            self.quarantine(path, str(exc))
            raise
        threads = meta.options.get("num_threads")
        if threads is not None and threads != kernel_threads():
            raise KernelError(
                f"{blueprint_id}: kernel compiled for {threads} threads, this process runs "
                f"{kernel_threads()} (its guards would reject every call)"
            )
        kernel = load_kernel(self.catalog.get(blueprint_id), blobs, f"{meta.backend}:{meta.mode}")
        with self._lock:
            self._cache[meta.artifact_id + str(meta.version)] = (now + self._ttl, kernel)
        return kernel, meta

    def expire(self) -> int:
        """TTL cleanup: drop cache entries past their time. Returns how many were dropped."""
        now = self._clock()
        with self._lock:
            stale = [k for k, (exp, _) in self._cache.items() if exp <= now]
            for k in stale:
                del self._cache[k]
        return len(stale)

    def drop_cache(self) -> int:
        with self._lock:
            n = len(self._cache)
            self._cache.clear()
        return n
