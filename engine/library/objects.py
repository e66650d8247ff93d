"""Urza's artifact bytes in an object store: an S3-compatible bucket or a shared directory.

Objects are content-addressed, like the Hugging Face cache's `blobs/`: a blob's name is the sha256 of its
bytes, stored at `<prefix>/blobs/<digest[:2]>/<digest>`. So a blob never changes once written, putting
bytes that are already there is a no-op, and every read is checked against its name: a store is trusted
to keep blobs, never to keep them intact.

What "verified" means, per backend:

- S3Store.put sends the sha256 with the upload (`ChecksumSHA256`), which S3 itself checks before storing;
  a server that ignores it (moto does, and so may other S3-compatible ones) is detected by `check()`,
  and until a check has shown the server rejects a wrong checksum, every upload is read back and hashed.
  A blob already there with the right size (and, if the server lists one, the right checksum) is skipped.
- FileStore.put writes a temporary file beside the blob, fsyncs it, renames it into place and fsyncs the
  directory; a blob already there is read and compared first (a torn or altered one is replaced).
- Every `get` hashes the bytes it returns: ObjectCorrupt when they are not what their name says.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import SplitResult, unquote, urlsplit

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from esper_tui.engine.fsutil import NotRegularFile, fsync_dir, read_regular, write_all

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
RETRIES = 3  # botocore "standard" mode: retries after the first attempt, with jittered backoff
DUMMY_KEY = "esper-keyless"  # signs requests to a keyless endpoint (moto, a local SeaweedFS) when no credentials exist

_DIGEST = re.compile(r"[0-9a-f]{64}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")
_URL_FORMS = "artifacts URL must be s3://bucket[/prefix] or file:///absolute/dir"
_NOT_FOUND = ("404", "NoSuchKey", "NotFound")


class StoreError(Exception):
    """An object store failed or was misused; the message is one line naming the store URL (no secrets)."""


class ObjectMissing(StoreError):
    """The store does not hold the blob asked for."""


class ObjectCorrupt(StoreError):
    """Bytes whose sha256 is not their name: altered in the store, or handed to put under the wrong name."""


class ObjectStore(Protocol):
    """Where artifact blobs live, addressed by the sha256 of their bytes."""

    url: str  # for display: no credentials in it

    def put(self, digest: str, data: bytes) -> None:
        """Idempotent; returns only once the store holds exactly these bytes."""
        ...

    def get(self, digest: str) -> bytes:
        """The blob's bytes, verified against the digest (ObjectMissing, ObjectCorrupt)."""
        ...

    def has(self, digest: str) -> bool: ...

    def delete(self, digest: str) -> None:
        """Remove a blob (tests, garbage collection); a missing one is fine."""
        ...

    def check(self) -> None:
        """Raise StoreError with a clear reason unless the store can be written and read back."""
        ...


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def require_digest(where: str, digest: str) -> None:
    """A digest becomes part of a key or path: anything but 64 lowercase hex digits is refused."""
    if not (isinstance(digest, str) and _DIGEST.fullmatch(digest)):
        raise StoreError(f"{where}: not a sha256 digest (64 lowercase hex digits): {digest!r:.80}")


def corrupt_reason(digest: str, data: bytes) -> str | None:
    """Why these bytes cannot be the blob named `digest`, or None when they are."""
    actual = sha256_hex(data)
    return None if actual == digest else f"blob {digest} holds bytes that hash to {actual}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------- directories


class BlobDir:
    """A directory of blobs named by their sha256 under a two-hex fan-out: `<root>/<digest[:2]>/<digest>`.

    The storage of both a FileStore (durable=True) and the local BlobCache (durable=False). A write goes
    to a temporary file beside the blob and is renamed into place, so a reader sees a whole blob or none;
    durable writes fsync the file and the directory first. Without fsync a crash may leave a torn blob,
    which the hash check on every read catches. Reads never follow a symlink or open a FIFO or device.
    Blobs are mode 0444: they never change in place.
    """

    def __init__(self, root: Path, label: str, *, durable: bool) -> None:
        self.root = root
        self.label = label  # names the directory in every error
        self._durable = durable

    def path(self, digest: str) -> Path:
        require_digest(self.label, digest)
        return self.root / digest[:2] / digest

    def read(self, digest: str) -> bytes:
        """The blob's verified bytes: ObjectMissing, ObjectCorrupt (also for a non-regular file), StoreError."""
        path = self.path(digest)
        try:
            data = read_regular(path, f"{self.label}: blob {digest}")
        except FileNotFoundError:
            raise ObjectMissing(f"{self.label}: no blob {digest}") from None
        except NotRegularFile as exc:
            raise ObjectCorrupt(str(exc)) from None
        except OSError as exc:
            raise StoreError(f"{self.label}: cannot read blob {digest}: {exc.strerror or exc}") from None
        if (why := corrupt_reason(digest, data)) is not None:
            raise ObjectCorrupt(f"{self.label}: {why}")
        return data

    def write(self, digest: str, data: bytes) -> None:
        """Store the blob unless an intact copy is already there; ObjectCorrupt if the bytes are not `digest`."""
        path = self.path(digest)
        if (why := corrupt_reason(digest, data)) is not None:
            raise ObjectCorrupt(f"{self.label}: refusing to store {why}")
        with contextlib.suppress(OSError, NotRegularFile):
            if read_regular(path, digest) == data:
                return
        try:
            self._replace(path, data)
        except OSError as exc:
            raise StoreError(f"{self.label}: cannot write blob {digest}: {exc.strerror or exc}") from None

    def exists(self, digest: str) -> bool:
        """A regular file holds the blob's name (its bytes are checked only when read)."""
        try:
            return stat.S_ISREG(os.lstat(self.path(digest)).st_mode)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError(f"{self.label}: cannot stat blob {digest}: {exc.strerror or exc}") from None

    def remove(self, digest: str) -> None:
        """Remove whatever is at the blob's path (a directory planted there too); missing is fine."""
        path = self.path(digest)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except IsADirectoryError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError as exc:
            raise StoreError(f"{self.label}: cannot remove blob {digest}: {exc.strerror or exc}") from None
        if self._durable:
            with contextlib.suppress(OSError):
                fsync_dir(path.parent)

    def blob_paths(self) -> Iterator[Path]:
        """Every regular file named like a blob under its fan-out directory (temporary files excluded)."""
        with contextlib.suppress(FileNotFoundError):
            for fan in os.scandir(self.root):
                if len(fan.name) != 2 or not fan.is_dir(follow_symlinks=False):
                    continue
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    for entry in os.scandir(fan.path):
                        if _DIGEST.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                            yield Path(entry.path)

    def _replace(self, path: Path, data: bytes) -> None:
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")  # O_EXCL | O_NOFOLLOW
        except FileNotFoundError:
            self._make_dir(path.parent)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            try:
                write_all(fd, data)
                os.fchmod(fd, 0o444)
                if self._durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)  # replaces a torn blob, or a symlink/FIFO planted there, never writes through it
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if self._durable:
            fsync_dir(path.parent)

    def _make_dir(self, path: Path) -> None:
        """Create the blob root or a fan-out directory in it; never the root's parent (a store that is not
        there, an unmounted share say, must fail rather than be recreated empty)."""
        try:
            path.mkdir()
        except FileExistsError:
            return
        except FileNotFoundError:
            if path == self.root:
                raise
            self._make_dir(self.root)
            path.mkdir(exist_ok=True)
        if self._durable:
            fsync_dir(path.parent)


def probe_blob() -> tuple[str, bytes]:
    """A fresh random blob for `check()` to write, read back and remove."""
    data = b"esper store probe " + os.urandom(16)
    return sha256_hex(data), data


class FileStore:
    """Blobs in a directory, local or shared (NFS and the like): `<dir>/blobs/<digest[:2]>/<digest>`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()
        self._blobs = BlobDir(root / "blobs", self.url, durable=True)

    def put(self, digest: str, data: bytes) -> None:
        self._blobs.write(digest, data)

    def get(self, digest: str) -> bytes:
        return self._blobs.read(digest)

    def has(self, digest: str) -> bool:
        return self._blobs.exists(digest)

    def delete(self, digest: str) -> None:
        self._blobs.remove(digest)

    def check(self) -> None:
        try:
            mode = os.stat(self.root).st_mode  # the directory itself may be a symlink to a mount
        except OSError as exc:
            raise StoreError(f"{self.url}: {(exc.strerror or str(exc)).lower()}") from None
        if not stat.S_ISDIR(mode):
            raise StoreError(f"{self.url}: not a directory")
        digest, data = probe_blob()
        self.put(digest, data)
        self.get(digest)
        self.delete(digest)


# ---------------------------------------------------------------------------------------------- S3


def _http_status(exc: ClientError) -> int | None:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _error_code(exc: ClientError) -> str:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return {"403": "AccessDenied", "404": "NotFound", "400": "BadRequest"}.get(code, code)


def _os_reason(exc: BaseException | None) -> str | None:
    """The OS's words for a failed connection (connection refused, name not known), from the cause chain."""
    while exc is not None:
        if isinstance(exc, OSError) and (exc.strerror or exc.errno):
            text = exc.strerror or os.strerror(exc.errno or 0)
            return text[:1].lower() + text[1:]
        exc = exc.__cause__ or exc.__context__
    return None


def describe(exc: BotoCoreError | ClientError, endpoint: str) -> str:
    """One line for what went wrong talking to S3: the error code, or what happened to the connection."""
    if isinstance(exc, ClientError):
        code = _error_code(exc) or f"HTTP {_http_status(exc)}"
        message = _one_line(str(exc.response.get("Error", {}).get("Message", "")))
        same = message.replace(" ", "").lower() == code.lower()
        return code if not message or same else f"{code} ({message})"
    if isinstance(exc, ConnectTimeoutError):
        return f"cannot connect to {endpoint} (no answer within {CONNECT_TIMEOUT_S:g} s)"
    if isinstance(exc, EndpointConnectionError):
        return f"cannot connect to {endpoint} ({_os_reason(exc.kwargs.get('error')) or 'unreachable'})"
    if isinstance(exc, ReadTimeoutError):
        return f"{endpoint} did not answer within {READ_TIMEOUT_S:g} s"
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return "no usable AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
    return f"{type(exc).__name__}: {_one_line(str(exc))}"


def s3_url(bucket: str, prefix: str) -> str:
    return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"


class S3Store:
    """Blobs in an S3 bucket (AWS, or any S3-compatible server: SeaweedFS, MinIO, moto) under a key prefix.

    One boto3 client per store; boto3 clients are thread-safe, so engine and forge threads share it.
    The credentials need s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket (without the
    last, S3 reports a missing blob as AccessDenied, a StoreError, rather than ObjectMissing).
    """

    def __init__(self, client: S3Client, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.url = s3_url(bucket, prefix)
        self.endpoint = _redacted(client.meta.endpoint_url)
        self.verifies_checksums = False  # set by check(): the server rejected an upload with a wrong sha256
        self._base = f"{prefix}/" if prefix else ""

    def key(self, digest: str) -> str:
        require_digest(self.url, digest)
        return f"{self._base}blobs/{digest[:2]}/{digest}"

    @contextlib.contextmanager
    def _calls(self) -> Iterator[None]:
        """Every botocore failure inside becomes a one-line StoreError naming this store."""
        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            raise StoreError(f"{self.url}: {describe(exc, self.endpoint)}") from exc

    def _download(self, key: str) -> bytes:
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        try:
            data: bytes = body.read()
        finally:
            body.close()
        return data

    def _holds(self, key: str, size: int, checksum: str) -> bool:
        """The object is there already, with this size and (if the server keeps one) this sha256.

        AccessDenied counts as absent: without s3:ListBucket, S3 answers a missing key with 403, and an
        upload that is really denied fails on its own.
        """
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as exc:
            if _error_code(exc) in (*_NOT_FOUND, "AccessDenied"):
                return False
            raise
        return head.get("ContentLength") == size and head.get("ChecksumSHA256", checksum) == checksum

    def put(self, digest: str, data: bytes) -> None:
        key = self.key(digest)
        if (why := corrupt_reason(digest, data)) is not None:
            raise ObjectCorrupt(f"{self.url}: refusing to store {why}")
        checksum = base64.b64encode(bytes.fromhex(digest)).decode()
        with self._calls():
            if self._holds(key, len(data), checksum):
                return
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ChecksumAlgorithm="SHA256", ChecksumSHA256=checksum
            )
            if self.verifies_checksums:
                return
            stored = self._download(key)
        if (why := corrupt_reason(digest, stored)) is not None:
            raise ObjectCorrupt(f"{self.url}: read back after upload, {why}")

    def get(self, digest: str) -> bytes:
        key = self.key(digest)
        with self._calls():
            try:
                data = self._download(key)
            except ClientError as exc:
                if _error_code(exc) not in _NOT_FOUND:
                    raise
                raise ObjectMissing(f"{self.url}: no blob {digest}") from None
        if (why := corrupt_reason(digest, data)) is not None:
            raise ObjectCorrupt(f"{self.url}: {why}")
        return data

    def has(self, digest: str) -> bool:
        key = self.key(digest)
        with self._calls():
            try:
                self.client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _error_code(exc) in _NOT_FOUND:
                    return False
                raise
        return True

    def delete(self, digest: str) -> None:
        key = self.key(digest)
        with self._calls():
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def check(self) -> None:
        """The bucket exists and a probe blob can be written, read back and removed; also learns whether
        the server checks the sha256 sent with an upload (then uploads are no longer read back)."""
        with self._calls():
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if _http_status(exc) == 404:
                    raise StoreError(f"{self.url}: NoSuchBucket") from None
                raise
        digest, data = probe_blob()
        self.put(digest, data)
        self.get(digest)
        self.delete(digest)
        self.verifies_checksums = self._rejects_wrong_checksum()

    def _rejects_wrong_checksum(self) -> bool:
        """Upload a probe with the sha256 of other bytes: S3 refuses it (400), a server that ignores
        checksums stores it (and the probe is removed again)."""
        key = f"{self._base}probe/{os.urandom(8).hex()}"
        wrong = base64.b64encode(hashlib.sha256(b"not the probe").digest()).decode()
        with self._calls():
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=b"probe", ChecksumAlgorithm="SHA256", ChecksumSHA256=wrong
                )
            except ClientError as exc:
                if _http_status(exc) == 400:
                    return True
                raise
            self.client.delete_object(Bucket=self.bucket, Key=key)
        return False


def _s3_client(url: str, endpoint_url: str | None, region: str | None) -> S3Client:
    """A client with short timeouts and standard retries. Credentials come the standard AWS way; only
    for an explicit endpoint (a keyless local server) and no credentials anywhere are dummy keys used."""
    import boto3
    from botocore.config import Config

    try:
        session = boto3.session.Session()
        credentials = session.get_credentials()
    except BotoCoreError as exc:  # a profile that does not exist, a malformed config file
        raise StoreError(f"{url}: AWS configuration: {_one_line(str(exc))}") from None
    dummy = None
    if credentials is None:
        if endpoint_url is None:
            raise StoreError(f"{url}: {describe(NoCredentialsError(), '')}")
        dummy = DUMMY_KEY
    config = Config(
        region_name=region or session.region_name or "us-east-1",
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"max_attempts": RETRIES, "mode": "standard"},
        s3={"addressing_style": "path"} if endpoint_url else None,  # no bucket-name DNS on a private endpoint
    )
    try:
        return session.client(
            "s3", endpoint_url=endpoint_url, config=config, aws_access_key_id=dummy, aws_secret_access_key=dummy
        )
    except ValueError as exc:
        raise StoreError(f"{url}: bad S3 endpoint {_redacted(endpoint_url or '')!r}: {_one_line(str(exc))}") from None
    except BotoCoreError as exc:
        raise StoreError(f"{url}: {describe(exc, _redacted(endpoint_url or ''))}") from None


# ---------------------------------------------------------------------------------------------- URLs


def _redacted(url: str) -> str:
    """The URL with any user:password and query removed: fit for a message or a log."""
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        netloc = f"***@{host}" if "@" in parts.netloc else host
        return SplitResult(parts.scheme, netloc, parts.path, "***" if parts.query else "", parts.fragment).geturl()
    except ValueError:
        return "<unparsable>"


def _bad_url(url: str, why: str) -> StoreError:
    return StoreError(f"{_URL_FORMS}, got {_redacted(url)!r:.200} ({why})")


def _s3_location(url: str, parts: SplitResult) -> tuple[str, str]:
    if "@" in parts.netloc:
        raise _bad_url(url, "credentials do not belong in the URL: use the standard AWS environment")
    if parts.query or parts.fragment:
        raise _bad_url(url, "no query or fragment")
    if not _BUCKET.fullmatch(parts.netloc):
        raise _bad_url(url, "bucket: 3-63 lowercase letters, digits, dots and hyphens")
    prefix = parts.path.strip("/")
    if prefix and (not _PREFIX.fullmatch(prefix) or any(seg in (".", "..") for seg in prefix.split("/"))):
        raise _bad_url(url, "prefix: letters, digits, '.', '_', '-' in '/'-separated parts")
    return parts.netloc, prefix


def _file_root(url: str, parts: SplitResult) -> Path:
    if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise _bad_url(url, "the directory must be absolute: three slashes")
    if parts.query or parts.fragment:
        raise _bad_url(url, "no query or fragment")
    path = unquote(parts.path)
    if "\x00" in path or any(seg == ".." for seg in path.split("/")):
        raise _bad_url(url, "no '..' or NUL in the directory")
    return Path(path)


def open_store(url: str, *, endpoint_url: str | None = None, region: str | None = None) -> ObjectStore:
    """The store an artifacts URL names: `s3://bucket[/prefix]` (endpoint_url for an S3-compatible server,
    region if not the environment's) or `file:///absolute/dir` (endpoint and region do not apply).

    Opening contacts no store (finding AWS credentials may ask the instance metadata service); call
    `check()` to learn whether the store works."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise _bad_url(url, str(exc)) from None
    if parts.scheme == "s3":
        bucket, prefix = _s3_location(url, parts)
        return S3Store(_s3_client(s3_url(bucket, prefix), endpoint_url, region), bucket, prefix)
    if parts.scheme == "file":
        return FileStore(_file_root(url, parts))
    raise _bad_url(url, f"unknown scheme {parts.scheme!r}" if parts.scheme else "no scheme")
