"""Recordings: every run's snapshot stream in `<state>/runs/<run_id>.esrec`, for replay, `runs` and plots.

Format (after Meta's `below` and TensorBoard's record files: each entry framed and checked on its own):

    header   b"ESREC\\x00\\x01\\n"                                  8 bytes
    record   <I length><I crc32><Q seq><d ts> zstd(msgpack(Snapshot))   24 + length bytes, repeated
    footer   <Q seq><d ts><Q offset> per record, then <Q index offset><I crc32 of the index>b"ESRECEND"

Each snapshot is its own zstd frame, so any one can be read without the others; the footer is the index
(seq, ts, offset) that makes seeking by position or time one read. The footer is written only by a clean
stop: a recording whose writer died has none, and the reader rebuilds the index by walking the record
headers (no decompression), stopping at the first record that is cut short or fails its CRC. That is how
a torn tail is ignored: everything before it replays.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import io
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

import msgspec
import zstandard

from esper_tui.engine.codec import SchemaMismatch, checked
from esper_tui.engine.legacy import LEGACY_SCHEMA_VERSION, upgraded
from esper_tui.engine.snapshot import Snapshot
from esper_tui.engine.vocabulary import ACCURACY, SCHEMA_VERSION, MetricInfo

EXTENSION = ".esrec"
MAGIC = b"ESREC\x00\x01\n"
TRAILER_MAGIC = b"ESRECEND"
_RECORD = struct.Struct("<IIQd")  # payload length, crc32 of (seq, ts, payload), seq, ts
_ENTRY = struct.Struct("<QdQ")  # seq, ts, offset of the record
_TRAILER = struct.Struct("<QI8s")  # index offset, crc32 of the index, TRAILER_MAGIC
MAX_SNAPSHOT_BYTES = 16 * 2**20
"""What one snapshot may take decompressed. Real ones are 5-50 kB (bounded histories and event log); the bound
is what keeps a hostile file from inflating: zstd allocates whatever size a frame header declares, and a
65 kB frame of zeros inflates to 2 GB."""
MAX_PAYLOAD = MAX_SNAPSHOT_BYTES  # compressed; zstd never makes data bigger by more than a few bytes per block
_CHUNK = 2**20

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Snapshot)


class BadRecording(ValueError):
    """The file is not a readable recording (not one at all, empty, another schema); the message says which."""


def runs_directory(state_dir: Path) -> Path:
    return state_dir / "runs"


def recording_path(state_dir: Path, run_id: str) -> Path:
    return runs_directory(state_dir) / f"{run_id}{EXTENSION}"


def list_recordings(runs_dir: Path) -> list[Path]:
    """The recordings in `runs_dir`, oldest first (by modification time, then name)."""
    if not runs_dir.is_dir():
        return []
    found = [p for p in runs_dir.iterdir() if p.suffix == EXTENSION and p.is_file()]
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))


def apply_retention(runs_dir: Path, *, keep: int, max_bytes: int, spare: Path | None = None) -> list[Path]:
    """Delete the oldest recordings until at most `keep` remain and together they fit in `max_bytes`.

    `spare` (the recording being written) is never deleted and counts towards both limits, so a new run
    makes room for itself. Returns the deleted paths.
    """
    files = [p for p in list_recordings(runs_dir) if p != spare]
    sizes = {p: p.stat().st_size for p in files}
    count = len(files) + (spare is not None)
    total = sum(sizes.values()) + (spare.stat().st_size if spare is not None and spare.exists() else 0)
    deleted: list[Path] = []
    for path in files:  # oldest first
        if count <= keep and total <= max_bytes:
            break
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        deleted.append(path)
        count -= 1
        total -= sizes[path]
    return deleted


# --------------------------------------------------------------------------- writing


class RecordingWriter:
    """Appends snapshots to one recording file; blocking calls, run in a worker thread by `Recorder`."""

    def __init__(self, path: Path, *, level: int = 3) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close(), kept open across writes
        self._file.write(MAGIC)
        self._file.flush()
        self._compressor = zstandard.ZstdCompressor(level=level)
        # The footer's index, packed as it is written: 24 bytes a snapshot, not a tuple of three objects
        # (a day at 4 Hz is 8 MB here; the file itself grows by far more).
        self._index = bytearray()
        self.snapshots = 0
        self.payload_bytes = 0  # compressed snapshot bytes, without framing
        self.closed = False

    def write(self, snapshot: Snapshot) -> None:
        """Append one snapshot as its own framed, checked zstd frame; flushed so a crash loses at most it."""
        payload = self._compressor.compress(_encoder.encode(snapshot))
        head = struct.pack("<Qd", snapshot.seq, snapshot.ts)
        crc = zlib.crc32(payload, zlib.crc32(head))
        offset = self._file.tell()
        self._file.write(_RECORD.pack(len(payload), crc, snapshot.seq, snapshot.ts) + payload)
        self._file.flush()
        self._index += _ENTRY.pack(snapshot.seq, snapshot.ts, offset)
        self.snapshots += 1
        self.payload_bytes += len(payload)

    def close(self) -> None:
        """Write the index footer and close; a file without it (a crash) is still readable."""
        if self.closed:
            return
        self.closed = True
        index = bytes(self._index)
        at = self._file.tell()
        self._file.write(index + _TRAILER.pack(at, zlib.crc32(index), TRAILER_MAGIC))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


class Recorder:
    """The engine's recorder: each new snapshot (a new seq), at most `hz` times a second, then the final one.

    Encoding, compressing and writing happen in a worker thread (asyncio.to_thread), one at a time, so the
    event loop never waits on the disk and snapshots reach the file in order. Not aiofiles (which the headless
    output uses): zstd compression is CPU work too, and aiofiles would move only the write off the loop.
    """

    def __init__(
        self,
        path: Path,
        latest: Callable[[], Snapshot | None],
        *,
        hz: float,
        level: int = 3,
        keep: int = 50,
        max_bytes: int = 2**30,
        on_error: Callable[[str], None] = lambda why: None,
    ) -> None:
        self.path = path
        self._latest = latest
        self._period = 1.0 / hz
        self._level = level
        self._keep = keep
        self._max_bytes = max_bytes
        self._on_error = on_error
        self.failed = False
        self._writer: RecordingWriter | None = None
        self._last_seq: int | None = None
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()

    async def open(self) -> list[Path]:
        """Create the file and apply retention (the new file counts); returns the recordings deleted.

        A file that cannot be created is reported through `on_error` and the run goes on unrecorded."""
        try:
            self._writer = await asyncio.to_thread(RecordingWriter, self.path, level=self._level)
            return await asyncio.to_thread(
                apply_retention, self.path.parent, keep=self._keep, max_bytes=self._max_bytes, spare=self.path
            )
        except OSError as exc:
            self._give_up(f"cannot record to {self.path}: {exc.strerror or exc}")
            return []

    @property
    def writer(self) -> RecordingWriter | None:
        return self._writer

    async def record(self, snapshot: Snapshot) -> bool:
        """Write `snapshot` unless its seq was already written; False when skipped."""
        async with self._lock:
            writer = self._writer
            if writer is None or writer.closed or snapshot.seq == self._last_seq:
                return False
            self._last_seq = snapshot.seq
            try:
                await asyncio.to_thread(writer.write, snapshot)
            except OSError as exc:  # a full disk ends the recording, never the run
                self._give_up(f"recording {self.path} stopped: {exc.strerror or exc}")
                return False
            return True

    def _give_up(self, why: str) -> None:
        self.failed = True
        self._writer = None
        self._on_error(why)

    async def run(self) -> None:
        """Record the newest snapshot each period until `close`.

        It ends on its own rather than by cancellation: a cancelled to_thread write would go on in its thread
        while the index is written behind it."""
        while not self._stop.is_set():
            snapshot = self._latest()
            if snapshot is not None:
                await self.record(snapshot)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._period)

    async def close(self, final: Snapshot | None) -> None:
        """Record the final snapshot (if new), then write the index; `run` ends."""
        self._stop.set()
        if final is not None:
            await self.record(final)
        async with self._lock:
            if self._writer is not None:
                try:
                    await asyncio.to_thread(self._writer.close)
                except OSError as exc:  # the records stay readable without the index
                    self._give_up(f"recording {self.path}: index not written: {exc.strerror or exc}")


# --------------------------------------------------------------------------- reading


class IndexEntry(msgspec.Struct, frozen=True):
    seq: int
    ts: float
    offset: int
    length: int


class Recording:
    """A recording opened for reading: `len()`, `snapshot(i)`, `frames()`, `position_at(ts)`.

    `torn` says the file had no valid footer (the writer did not stop cleanly); `ignored_bytes` how much
    of its tail could not be read as whole records and was left out.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._file: io.BufferedReader = open(path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise BadRecording(f"{path}: {exc.strerror or exc}") from None
        try:
            self.size = os.fstat(self._file.fileno()).st_size
            if self._file.read(len(MAGIC)) != MAGIC:
                raise BadRecording(f"{path}: not an esper-tui recording (bad magic)")
            footer = self._read_footer()
            self.torn = footer is None
            self.entries, self.ignored_bytes = (footer, 0) if footer is not None else self._scan()
            if not self.entries:
                raise BadRecording(f"{path}: the recording holds no complete snapshot")
        except BaseException:
            self._file.close()
            raise
        self._decompressor = zstandard.ZstdDecompressor()
        self._ts = [entry.ts for entry in self.entries]

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def __len__(self) -> int:
        return len(self.entries)

    def _read_footer(self) -> list[IndexEntry] | None:
        if self.size < len(MAGIC) + _TRAILER.size:
            return None
        self._file.seek(self.size - _TRAILER.size)
        at, crc, magic = _TRAILER.unpack(self._file.read(_TRAILER.size))
        end = self.size - _TRAILER.size
        if magic != TRAILER_MAGIC or not len(MAGIC) <= at <= end or (end - at) % _ENTRY.size:
            return None
        self._file.seek(at)
        index = self._file.read(end - at)
        if zlib.crc32(index) != crc:
            return None
        raw = [_ENTRY.unpack_from(index, i) for i in range(0, len(index), _ENTRY.size)]
        ends = [offset for _, _, offset in raw[1:]] + [at]
        return [
            IndexEntry(seq, ts, offset, end_ - offset - _RECORD.size)
            for (seq, ts, offset), end_ in zip(raw, ends, strict=True)
        ]

    def _scan(self) -> tuple[list[IndexEntry], int]:
        """Walk the records from the start; stop at the first cut or corrupt one (a torn tail)."""
        entries: list[IndexEntry] = []
        offset = len(MAGIC)
        self._file.seek(offset)
        while offset + _RECORD.size <= self.size:
            length, crc, seq, ts = _RECORD.unpack(self._file.read(_RECORD.size))
            if length > MAX_PAYLOAD or offset + _RECORD.size + length > self.size:
                break
            payload = self._file.read(length)
            if zlib.crc32(payload, zlib.crc32(struct.pack("<Qd", seq, ts))) != crc:
                break
            entries.append(IndexEntry(seq, ts, offset, length))
            offset += _RECORD.size + length
        return entries, self.size - offset

    def snapshot(self, position: int) -> Snapshot:
        """The snapshot at `position` (0-based, negative counts from the end)."""
        entry = self.entries[position]
        self._file.seek(entry.offset + _RECORD.size)
        payload = self._file.read(entry.length)
        try:
            data = self._inflate(payload, position)
            snapshot = _decoder.decode(data)
            if snapshot.schema_version == LEGACY_SCHEMA_VERSION:  # recorded before the metric was the task's
                return upgraded(msgspec.msgpack.decode(data), Snapshot, schema_version=SCHEMA_VERSION)
            return checked(snapshot)
        except SchemaMismatch as exc:
            raise BadRecording(f"{self.path}: recorded by another version ({exc})") from None
        except (zstandard.ZstdError, msgspec.DecodeError) as exc:
            raise BadRecording(f"{self.path}: snapshot {position} cannot be decoded: {exc}") from None

    def _inflate(self, payload: bytes, position: int) -> bytes:
        """The snapshot's msgpack bytes, never more than MAX_SNAPSHOT_BYTES whatever the frame declares: a size
        over the bound is refused before anything is allocated, and a frame that does not declare one is read
        a chunk at a time until it ends or passes the bound."""
        declared = zstandard.frame_content_size(payload)
        if declared > MAX_SNAPSHOT_BYTES:
            raise self._too_big(position, f"declares {_size(declared)}")
        out = bytearray()
        with self._decompressor.stream_reader(payload) as reader:
            while chunk := reader.read(_CHUNK):
                out += chunk
                if len(out) > MAX_SNAPSHOT_BYTES:
                    raise self._too_big(position, "inflates")
        return bytes(out)

    def _too_big(self, position: int, how: str) -> BadRecording:
        bound = _size(MAX_SNAPSHOT_BYTES)
        return BadRecording(f"{self.path}: snapshot {position} {how} over the {bound} a snapshot may take")

    def frames(self) -> Iterator[Snapshot]:
        for position in range(len(self.entries)):
            yield self.snapshot(position)

    def position_at(self, ts: float) -> int:
        """The last position recorded at or before `ts` (0 before the first)."""
        return max(0, bisect.bisect_right(self._ts, ts) - 1)

    @property
    def start_ts(self) -> float:
        return self.entries[0].ts

    @property
    def duration_s(self) -> float:
        return self.entries[-1].ts - self.entries[0].ts


def _size(n: int) -> str:
    """Bytes as an operator reads them: 64 GiB, 16 MiB, 812 bytes."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


class RunSummary(msgspec.Struct, kw_only=True):
    """One line of `esper-tui runs`."""

    path: str
    run_id: str
    start_ts: float
    duration_s: float
    snapshots: int
    epochs: int
    task: str
    metric: MetricInfo
    val_metric: float | None
    best_val_metric: float | None
    test_metric: float | None
    status: str
    complete: bool  # the footer was there: the run stopped cleanly
    problem: str | None = None  # why the file could not be read; then only `path` and `run_id` mean anything
    trained: bool = True  # False: the run only compiled (--forge-only), `runs` lists it only with --all

    @classmethod
    def unreadable(cls, path: Path, problem: str) -> RunSummary:
        """The line for a file `runs` could not read: named, marked, and not in the way of the others."""
        return cls(
            path=str(path),
            run_id=path.stem,
            start_ts=0.0,
            duration_s=0.0,
            snapshots=0,
            epochs=0,
            task="",
            metric=ACCURACY,
            val_metric=None,
            best_val_metric=None,
            test_metric=None,
            status="unreadable",
            complete=False,
            problem=problem,
        )


def summarize(path: Path) -> RunSummary:
    """What `esper-tui runs` shows of one recording (reads the index and the last snapshot only)."""
    with Recording(path) as rec:
        last = rec.snapshot(-1)
        first_ts = rec.start_ts
        return RunSummary(
            path=str(path),
            run_id=last.run_id or path.stem,
            start_ts=first_ts,
            duration_s=rec.duration_s,
            snapshots=len(rec),
            epochs=last.training.epoch,
            task=last.training.task,
            metric=last.training.metric,
            val_metric=last.training.val_metric,
            best_val_metric=last.training.best_val_metric,
            test_metric=last.training.test_metric,
            status=str(last.training.status) if last.infrastructure.training else "forge only",
            complete=not rec.torn,
            trained=last.infrastructure.training,
        )


def format_start(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
