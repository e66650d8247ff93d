"""The blob cache every engine and forge worker keeps: artifact blobs already downloaded, verified on every read.

Layout `<root>/<digest[:2]>/<digest>`, the store's own (objects.BlobDir), without fsync: a crash may tear
a cached blob, and the hash check on the next read evicts it, so it is fetched again. Safe across threads
and processes sharing the directory: two fetches of one blob may both download it, and the rename makes
the second write harmless.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from esper_tui.engine.library.objects import (
    BlobDir,
    ObjectCorrupt,
    ObjectMissing,
    ObjectStore,
    StoreError,
    corrupt_reason,
    require_digest,
)


class BlobCache:
    """Local verified copies of blobs: a hit costs one read and one sha256, never a request."""

    def __init__(self, root: Path) -> None:
        label = f"blob cache {root}"
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{label}: cannot create the directory: {exc.strerror or exc}") from None
        self.root = root
        self.last_error: str | None = None  # the latest failure to keep a fetched blob (fetch still returned it)
        self._blobs = BlobDir(root, label, durable=False)

    def get(self, digest: str) -> bytes | None:
        """The cached blob, verified; None when absent. A corrupt entry, or anything but a regular file at
        its path, is evicted (None). StoreError for a bad digest or an unreadable cache."""
        try:
            return self._blobs.read(digest)
        except ObjectMissing:
            return None
        except ObjectCorrupt:
            self._blobs.remove(digest)
            return None

    def put(self, digest: str, data: bytes) -> None:
        """Keep a blob; ObjectCorrupt if the bytes are not `digest`, StoreError if the disk refuses."""
        self._blobs.write(digest, data)

    def fetch(self, digest: str, store: ObjectStore) -> tuple[bytes, bool]:
        """The blob from the cache or else from the store (verified, then kept); the flag is True for a hit.

        The cache only saves downloads: an unreadable cache or a failure to keep the blob (a full disk)
        is recorded in `last_error` and the blob is still returned. Errors of the store propagate.
        """
        require_digest(self._blobs.label, digest)
        try:
            hit = self.get(digest)
        except StoreError as exc:
            self.last_error, hit = str(exc), None
        if hit is not None:
            return hit, True
        data = store.get(digest)
        if (why := corrupt_reason(digest, data)) is not None:  # the protocol says get verifies: do not rely on it
            raise ObjectCorrupt(f"{store.url}: {why}")
        try:
            self._blobs.write(digest, data)
        except StoreError as exc:
            self.last_error = str(exc)
        return data, False

    def has(self, digest: str) -> bool:
        return self._blobs.exists(digest)

    def size_bytes(self) -> int:
        """Bytes held by cached blobs (what eviction would free)."""
        total = 0
        for path in self._blobs.blob_paths():
            with contextlib.suppress(FileNotFoundError):  # evicted or cleared meanwhile
                total += path.lstat().st_size
        return total

    def clear(self) -> int:
        """Remove every cached blob and leftover temporary file; returns how many blobs there were."""
        count = sum(1 for _ in self._blobs.blob_paths())
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
        return count
