"""Urza: the library of signed, versioned compiled kernels, on disk under `<state>/library`.

Layout: `blueprints/<name>/` holds a user blueprint's signed record and source (library/userbp_files.py);
`artifacts/<blueprint>/v0003-<shape>-<device>-<key12>/` (e.g. `v0003-8x8x8-16x8x8-cpu-1f2e...`)
holds the compiled functions, weights, kernels, `meta.json` (with a sha256 of every file) and `meta.sig`
(HMAC-SHA256 of meta.json). A version stored before kernels were kept per shape and device is named
`v0003-<key12>`: it is the LEGACY_SHAPE (40-64) kernel of a CPU, which its metadata confirms. Version numbers
count per blueprint, across shapes and devices. A version
becomes visible only by an atomic directory rename after everything below it is fsynced; a crash
leaves at most a directory in `staging/`, removed at start. Loading picks a version by its directory,
checks the signature, that the signed blueprint/version/shape/device/key are the directory's, every file's
hash and
that the kernel was built for this process (torch, Python, CPU ISA, compiler, threads), *then*
deserialises; any mismatch moves the version to `quarantine/`, and the forge recompiles it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import msgspec

from esper_tui.engine import fsutil
from esper_tui.engine.fsutil import fsync_dir, kind_of, write_all
from esper_tui.engine.kernels.catalog import BlueprintUnloadable, Catalog
from esper_tui.engine.kernels.compiled import (
    KernelError,
    LoadedKernel,
    compiler_id,
    cpu_isa,
    kernel_threads,
    load_kernel,
)
from esper_tui.engine.kernels.pipelines import CompileSettings
from esper_tui.engine.kernels.shapes import SlotShape
from esper_tui.engine.library import ownkey
from esper_tui.engine.library import signing as signing
from esper_tui.engine.library.base import KernelCache, LibraryStats
from esper_tui.engine.library.meta import LEGACY_SHAPE, ArtifactFile, ArtifactMeta, KernelBuild
from esper_tui.engine.library.userbp import UserBlueprints
from esper_tui.engine.library.userbp_files import FileRecords
from esper_tui.engine.vocabulary import Strategy, compile_label

_VERSION = re.compile(r"v(\d+)-")
_VERSION_DIR = re.compile(r"v(\d+)-(?:(\d+(?:x\d+)*-\d+(?:x\d+)*)-([a-z0-9]+)-)?[^-]+")
"""vNNNN-<shape>-<device>-<key12>, or a legacy vNNNN-<key12> (the LEGACY_SHAPE kernel of a CPU)."""
META = "meta.json"
SIG = "meta.sig"
QUARANTINE_NOTE = "QUARANTINED"
KEY_RECORD = "signing-key.fingerprint"  # the fingerprint of the key this library is signed with (ownkey)


class ArtifactInvalid(Exception):
    """An artifact failed verification (or staging); it must never be loaded."""


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
    def here(cls, cpu_isa: str, device: str = "cpu", compiler: str | None = None) -> Identity:
        """This process's identity for kernels built for `cpu_isa` (and `compiler`: asked of inductor if None)."""
        import torch

        compiler = compiler_id() if compiler is None else compiler
        return cls(str(torch.__version__), platform.python_version(), device, cpu_isa, kernel_threads(), compiler)

    def mismatch(self, meta: ArtifactMeta) -> str | None:
        """What in a kernel's signed metadata this process cannot run, or None.

        A kernel built for another ISA may execute instructions this CPU lacks; another torch, Python or
        compiler may not deserialise it, and another thread count fails every guard.
        """
        pairs: dict[str, tuple[object, object]] = {
            "torch": (meta.torch_version, self.torch_version),
            "Python": (meta.python_version, self.python_version),
            "device": (meta.device, self.device),
            "CPU ISA": (meta.cpu_isa, self.cpu_isa),
            "threads": (meta.options.get("num_threads"), self.threads),
            "compiler": (meta.options.get("compiler"), self.compiler),
        }
        diffs = [f"{what} {built!r} (here {here!r})" for what, (built, here) in pairs.items() if built != here]
        return "built for " + ", ".join(diffs) if diffs else None

    def fingerprint(self) -> str:
        """A short name for everything a kernel is tied to: machines with equal fingerprints can share
        kernels, so a shared library and the forge's job streams are partitioned by it."""
        blob = json.dumps(
            [self.torch_version, self.python_version, self.device, self.cpu_isa, self.threads, self.compiler],
            separators=(",", ":"),
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def artifact_key(
    ir_hash: str, settings: CompileSettings, strategy: Strategy, identity: Identity, shape: SlotShape
) -> str:
    """vLLM-style cache key: blueprint source + options + torch/system identity + slot shape.

    The shape's dimensions end the hashed list, so a vector shape hashes exactly as the (in_features,
    out_features) pair of the keys stored before shapes did."""
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
            *shape.in_shape,
            *shape.out_shape,
        ],
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def eager_is_faster(meta: ArtifactMeta) -> bool:
    """The forge timed both variants of this kernel's training step on this machine: eager won."""
    return meta.step_ms_eager < meta.step_ms_compiled


def served_step_ms(meta: ArtifactMeta) -> float:
    """The step time a seed of this kernel runs at: the faster verified variant, eager included."""
    return min(meta.step_ms_compiled, meta.step_ms_eager)


def unfit_reason(identity: Identity, blueprint_ir_hash: str, meta: ArtifactMeta) -> str | None:
    """Why a verified kernel must not run in this process (built elsewhere, or from other source), or None."""
    unfit = identity.mismatch(meta)
    if unfit is None and meta.ir_hash != blueprint_ir_hash:
        unfit = "built from another version of the blueprint's source"
    return unfit


def device_tag(device: str) -> str:
    """A device as a path-safe word: `cpu`, `cuda`, `cuda0`."""
    return re.sub(r"[^a-z0-9]", "", device.lower()) or "cpu"


def version_dir_name(meta: ArtifactMeta) -> str:
    if not meta.shape:  # signed before shapes: the legacy name
        return f"v{meta.version:04d}-{meta.artifact_id[:12]}"
    return f"v{meta.version:04d}-{meta.shape}-{device_tag(meta.device)}-{meta.artifact_id[:12]}"


def dir_kernel(name: str) -> tuple[int, str, str] | None:
    """(version, shape tag, device tag) a version directory's name claims, or None when it names no version."""
    m = _VERSION_DIR.fullmatch(name)
    if m is None:
        return None
    return int(m.group(1)), m.group(2) or LEGACY_SHAPE.tag, m.group(3) or "cpu"


def _misplaced(meta: ArtifactMeta, path: Path) -> str | None:
    """Why signed metadata does not belong where it was found (copied to another blueprint, renamed), or None."""
    here = f"{path.parent.name}/{path.name}"
    signed = f"{meta.blueprint_id}/{version_dir_name(meta)}"
    return None if here == signed else f"{here}: signed as {signed} (copied or renamed)"


def read_regular(path: Path, label: str, *, sync: bool = False) -> bytes:
    """fsutil.read_regular, with anything but a regular file refused as ArtifactInvalid (never opened or
    waited on). OSError (missing, unreadable) is the caller's to report."""
    try:
        return fsutil.read_regular(path, label, sync=sync)
    except fsutil.NotRegularFile as exc:
        raise ArtifactInvalid(str(exc)) from None


def _write_file(path: Path, data: bytes) -> None:
    """Create or replace a file and fsync it, refusing (not blocking on) a FIFO or symlink put in its place."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _raise(exc: OSError) -> NoReturn:
    raise exc


def stage_files(staged: Path) -> list[ArtifactFile]:
    """Hash and fsync every staged file, refusing anything but directories and regular files.

    Runs before the library lock: a FIFO named like a kernel would otherwise block the fsync with the lock
    held, and every later commit, load and quarantine with it. meta.json and meta.sig are the library's.
    """
    if not stat.S_ISDIR(os.lstat(staged).st_mode):
        raise ArtifactInvalid(f"staged {staged.name}: not a directory")
    files: list[ArtifactFile] = []
    for dirpath, dirnames, filenames in os.walk(staged, onerror=_raise):
        base = Path(dirpath)
        for name in dirnames:  # a symlink to a directory is listed here (and never descended)
            mode = os.lstat(base / name).st_mode
            if not stat.S_ISDIR(mode):
                raise ArtifactInvalid(
                    f"staged {(base / name).relative_to(staged)} is a {kind_of(mode)}, not a directory"
                )
        for name in filenames:
            rel = str((base / name).relative_to(staged))
            if rel in (META, SIG):
                raise ArtifactInvalid(f"staged {rel}: the name is reserved for the library's signed metadata")
            data = read_regular(base / name, f"staged {rel}", sync=True)
            files.append(ArtifactFile(name=rel, sha256=hashlib.sha256(data).hexdigest(), size=len(data)))
        fsync_dir(base)
    return sorted(files, key=lambda f: f.name)


class Library:
    """The store: commit staged compiles as signed versions, serve verified kernels, quarantine bad ones."""

    def __init__(
        self,
        root: Path,
        key: bytes,
        catalog: Catalog,
        *,
        identity: Identity | None = None,
        cache_ttl_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        on_quarantine: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.root = root
        self.on_quarantine = on_quarantine  # (blueprint_id, version dir, reason); may run on any thread
        self._key = key
        self.catalog = catalog
        self._identity = identity
        self._lock = threading.Lock()  # the trainer thread loads while the loop commits
        self.stats = LibraryStats()
        self._cache = KernelCache(cache_ttl_s, clock, self.stats)
        self.blueprints = UserBlueprints(FileRecords(root / "blueprints"), key)
        for sub in ("artifacts", "staging", "quarantine"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    @property
    def location(self) -> str:
        return str(self.root)

    def close(self) -> None:
        """Nothing to release: every operation opens and closes its own files."""

    def adopt_key(self, claim: bool = True) -> None:
        """Check that this process's key is the library's (ownkey.adopt); raises ownkey.LibraryKeyError."""
        try:
            ownkey.adopt(
                self._key,
                where=f"library {self.root}",
                recorded=self._recorded_key,
                record=self._record_key,
                signed=self._signed_documents,
                claim=claim,
                remedy=f", or move {self.root} aside to start a new library",
            )
        except (OSError, ArtifactInvalid) as exc:  # the record unreadable (a directory, a FIFO), or not writable
            raise ownkey.LibraryKeyError(f"{self.root / KEY_RECORD}: {exc}") from None

    def _recorded_key(self) -> str | None:
        try:
            text = read_regular(self.root / KEY_RECORD, KEY_RECORD).decode(errors="replace").strip()
        except FileNotFoundError:
            return None
        return text or None

    def _record_key(self, fingerprint: str) -> str:
        """Write the record atomically (one engine holds this directory: no race to lose)."""
        tmp = self.root / f".{KEY_RECORD}.{os.getpid()}.tmp"
        _write_file(tmp, (fingerprint + "\n").encode())
        os.replace(tmp, self.root / KEY_RECORD)
        fsync_dir(self.root)
        return fingerprint

    def _signed_documents(self) -> list[tuple[bytes, str]]:
        """(meta.json, meta.sig) of every stored version that has both (for adopting an unrecorded library)."""
        documents = []
        for path in self.version_dirs():
            with contextlib.suppress(OSError, ArtifactInvalid):
                raw = read_regular(path / META, META)
                documents.append((raw, read_regular(path / SIG, SIG).decode(errors="replace")))
        return documents

    def identity(self) -> Identity:
        """What a kernel must have been built for to load in this process (probed on first use unless given;
        the engine probes the CPU ISA at start, so the probe here is its in-process cached answer)."""
        if self._identity is None:
            self._identity = Identity.here(cpu_isa())
        return self._identity

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

    def commit(
        self, staged: Path, *, blueprint_id: str, key: str, build: KernelBuild, job_id: str = "", force: bool = False
    ) -> ArtifactMeta:
        """Hash every staged file, sign, and rename the directory into place as the next version.

        One engine owns this folder and its forge asks `current` before compiling, so `job_id` and
        `force` (which a shared library needs for reclaimed jobs) change nothing here. A staged tree
        holding anything but directories and regular files is refused (ArtifactInvalid)
        and removed, before the lock is taken.
        """
        bp = self.catalog.get(blueprint_id)
        try:
            files = stage_files(staged)
        except ArtifactInvalid:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        with self._lock:
            version = self._next_version(blueprint_id)
            meta = ArtifactMeta.signed_form(
                build,
                artifact_id=key,
                blueprint_id=blueprint_id,
                version=version,
                ir_hash=bp.ir_hash(),
                files=files,
                created_ts=time.time(),
            )
            raw = msgspec.json.format(msgspec.json.encode(meta))
            _write_file(staged / META, raw)
            _write_file(staged / SIG, signing.sign(self._key, raw).encode())
            fsync_dir(staged)
            parent = self.root / "artifacts" / blueprint_id
            parent.mkdir(exist_ok=True)
            os.rename(staged, parent / version_dir_name(meta))
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

    def _versions(self, blueprint_id: str, shape: SlotShape | None = None) -> list[Path]:
        """A blueprint's version directories, highest number first; with a shape, only that shape's kernels
        for this process's device.

        Chosen by directory name, never by the unverified meta.json inside (whose signed shape and device
        must then agree with the name); anything but a real directory named vNNNN-... is no version.
        """
        want = None if shape is None else (shape.tag, device_tag(self.identity().device))
        found = []
        for p in (self.root / "artifacts" / blueprint_id).glob("v*"):
            with contextlib.suppress(OSError):  # gone since the listing: quarantined by another thread
                claim = dir_kernel(p.name)
                if claim and (want is None or claim[1:] == want) and stat.S_ISDIR(p.lstat().st_mode):
                    found.append((claim[0], p))
        return [p for _, p in sorted(found, reverse=True)]

    def _scan(self, blueprint_id: str) -> list[ArtifactMeta]:
        """Unverified metadata of every version that claims its own place, newest first (for listing;
        never for loading)."""
        out = []
        for d in self._versions(blueprint_id):
            try:
                meta = msgspec.json.decode(read_regular(d / META, META), type=ArtifactMeta)
            except (OSError, ArtifactInvalid, msgspec.DecodeError, msgspec.ValidationError):
                continue
            if _misplaced(meta, d) is None:
                out.append(meta)
        return out

    def version_dirs(self) -> list[Path]:
        return sorted((self.root / "artifacts").glob("*/v*"))

    def read_verified(self, path: Path) -> tuple[ArtifactMeta, dict[str, bytes]]:
        """Signature first, then that the signed blueprint/version/key are this directory's, then each
        file's hash; only then is anything decoded beyond the metadata. Raises ArtifactInvalid, or
        ownkey.ForeignKey (a KernelError: nothing to quarantine) when the signature fails with a key that is
        not the library's."""
        try:
            raw = read_regular(path / META, f"{path.name}: {META}")
            sig = read_regular(path / SIG, f"{path.name}: {SIG}").decode(errors="replace")
        except OSError as exc:
            raise ArtifactInvalid(f"{path.name}: missing metadata or signature ({exc.strerror})") from None
        if not signing.verify(self._key, raw, sig):
            ownkey.guard(self._key, self._recorded_key(), f"{path.parent.name}/{path.name}")
            raise ArtifactInvalid(f"{path.name}: signature mismatch (meta.json altered or signed with another key)")
        try:
            meta = msgspec.json.decode(raw, type=ArtifactMeta)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ArtifactInvalid(f"{path.name}: signed metadata does not decode ({exc})") from None
        if (where := _misplaced(meta, path)) is not None:
            raise ArtifactInvalid(where)
        blobs: dict[str, bytes] = {}
        for f in meta.files:
            target = (path / f.name).resolve()
            if path.resolve() not in target.parents:
                raise ArtifactInvalid(f"{path.name}: file {f.name!r} escapes the artifact directory")
            try:
                data = read_regular(target, f"{path.name}: {f.name}")
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
        except (ArtifactInvalid, KernelError) as exc:
            return str(exc)
        return None

    def verify_all(self) -> list[tuple[str, str | None]]:
        return [(f"{p.parent.name}/{p.name}", self.verify(p)) for p in self.version_dirs()]

    def quarantine(self, path: Path, reason: str) -> Path | None:
        """Move a bad version out of reach (kept whole for inspection, with the reason beside it).

        None when it could not be moved, typically because another thread quarantined it first: a loader
        must never die of that.
        """
        dest = self.root / "quarantine" / f"{path.parent.name}-{path.name}-{os.urandom(4).hex()}"
        with self._lock:
            try:
                os.rename(path, dest)
            except OSError:
                return None
            self.stats.quarantined += 1
        self._cache.clear()
        # The move is what protects; the note and the fsync are best effort, never a loader's crash.
        with contextlib.suppress(OSError):
            _write_file(dest / QUARANTINE_NOTE, (reason + "\n").encode())
        with contextlib.suppress(OSError):
            fsync_dir(path.parent)
        if self.on_quarantine is not None:
            self.on_quarantine(path.parent.name, path.name, reason)
        return dest

    def current(self, blueprint_id: str, shape: SlotShape, key: str | None = None) -> ArtifactMeta | None:
        """The newest version of that shape for this device that verifies (optionally with a given key); bad
        ones are quarantined.

        Walks the version directories, not their decoded metadata, so a version whose meta.json no
        longer even decodes is found and quarantined too.
        """
        for path in self._versions(blueprint_id, shape):
            try:
                meta, _ = self.read_verified(path)
            except ArtifactInvalid as exc:
                self.quarantine(path, str(exc))
                continue
            if key is None or meta.artifact_id == key:
                return meta
        return None

    def all_current(self) -> list[ArtifactMeta]:
        """Newest version per blueprint and shape for this device (unverified metadata; loading verifies)."""
        device = device_tag(self.identity().device)
        newest: dict[tuple[str, str], ArtifactMeta] = {}
        for bid in self.catalog.ids():
            for meta in self._scan(bid):  # newest first
                if device_tag(meta.device) == device:
                    newest.setdefault((bid, meta.slot_shape.tag), meta)
        return list(newest.values())

    def ranked(self, shape: SlotShape | None = None, tag: str | None = None) -> list[ArtifactMeta]:
        """Current kernels, fastest served training step first (compiled or eager, whichever was measured
        faster); optionally only those of one shape, and of blueprints with a tag."""
        metas = [
            m
            for m in self.all_current()
            if (shape is None or m.slot_shape == shape)
            and (tag is None or tag in self.catalog.get(m.blueprint_id).tags)
        ]
        return sorted(metas, key=served_step_ms)

    def by_tag(self, tag: str) -> list[ArtifactMeta]:
        return self.ranked(tag=tag)

    def _newest(self, blueprint_id: str, shape: SlotShape) -> Path:
        if blueprint_id not in self.catalog:
            raise ArtifactInvalid(f"{blueprint_id}: no such blueprint in the catalog")
        versions = self._versions(blueprint_id, shape)
        if not versions:
            raise ArtifactInvalid(f"{blueprint_id}: no compiled kernel for {shape.tag} in the library")
        return versions[0]

    def _checked(self, blueprint_id: str, path: Path) -> tuple[ArtifactMeta, dict[str, bytes]]:
        """read_verified, and built for this process from the blueprint's source; a failure is quarantined."""
        try:
            meta, blobs = self.read_verified(path)
            if (unfit := unfit_reason(self.identity(), self.catalog.get(blueprint_id).ir_hash(), meta)) is not None:
                raise ArtifactInvalid(f"{blueprint_id}/{path.name}: {unfit}")
        except ArtifactInvalid as exc:
            self.quarantine(path, str(exc))
            raise
        return meta, blobs

    def verified(self, blueprint_id: str, shape: SlotShape) -> ArtifactMeta:
        """The newest kernel's metadata for that shape, checked as `load` checks it, without deserialising it."""
        return self._checked(blueprint_id, self._newest(blueprint_id, shape))[0]

    def load(self, blueprint_id: str, shape: SlotShape) -> tuple[LoadedKernel, ArtifactMeta]:
        """The newest kernel of a blueprint for that slot shape, verified and built for this process, through a
        TTL cache.

        Raises ArtifactInvalid (the version is quarantined, so the forge recompiles it) or KernelError;
        nothing else, so the trainer can fall back to eager and go on.
        """
        path = self._newest(blueprint_id, shape)
        if (hit := self._cache.get(path)) is not None:
            return hit
        meta, blobs = self._checked(blueprint_id, path)
        try:
            bp = self.catalog.loaded(blueprint_id)  # a user blueprint's class loads here (the training process)
        except BlueprintUnloadable as exc:
            raise KernelError(str(exc)) from None
        kernel = self._cache.deserialised(meta, lambda: load_kernel(bp, blobs, compile_label(meta.backend, meta.mode)))
        self._cache.put(path, kernel, meta)
        return kernel, meta

    def expire(self) -> int:
        """TTL cleanup: drop cache entries past their time. Returns how many were dropped."""
        return self._cache.expire()

    def drop_cache(self) -> int:
        return self._cache.clear()
