"""Object stores (S3 on a real moto server, a real directory) and the local verified blob cache."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from esper_tui.engine.library.blobcache import BlobCache
from esper_tui.engine.library.objects import (
    FileStore,
    ObjectCorrupt,
    ObjectMissing,
    ObjectStore,
    S3Store,
    StoreError,
    open_store,
)

BAD_DIGESTS = ["", "ab", "A" * 64, "g" * 64, "../" + "a" * 61, "a" * 63 + "\n", "a" * 65]


def blob(n: int = 1000, seed: bytes = b"") -> tuple[str, bytes]:
    data = hashlib.sha256(seed).digest() * (n // 32 + 1)
    data = data[:n]
    return hashlib.sha256(data).hexdigest(), data


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text and text.strip() == text, text
    return text


@pytest.fixture(params=["s3", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "s3":
        url, endpoint = request.getfixturevalue("s3_url")
        return open_store(url, endpoint_url=endpoint)
    return open_store(f"file://{tmp_path}")


def tamper(request: pytest.FixtureRequest, store: ObjectStore, digest: str, data: bytes) -> None:
    """Overwrite a stored blob with other bytes, behind the store's back."""
    if isinstance(store, S3Store):
        client = request.getfixturevalue("s3_client")
        client.put_object(Bucket=store.bucket, Key=store.key(digest), Body=data)
    else:
        assert isinstance(store, FileStore)
        path = store.root / "blobs" / digest[:2] / digest
        path.chmod(0o644)
        path.write_bytes(data)


# ------------------------------------------------------------------------------------------ both stores


def test_round_trip_has_and_delete(store: ObjectStore) -> None:
    digest, data = blob(100_000)
    assert not store.has(digest)
    store.put(digest, data)
    assert store.has(digest)
    assert store.get(digest) == data
    store.delete(digest)
    assert not store.has(digest)
    store.delete(digest)  # missing is fine
    with pytest.raises(ObjectMissing) as exc:
        store.get(digest)
    assert store.url in one_line(exc) and digest in str(exc.value)


def test_empty_blob(store: ObjectStore) -> None:
    digest, data = blob(0)
    store.put(digest, data)
    assert store.get(digest) == b""


def test_check_passes_and_leaves_nothing(store: ObjectStore, request: pytest.FixtureRequest) -> None:
    store.check()
    if isinstance(store, S3Store):
        assert store.verifies_checksums is False  # moto stores an upload whatever its checksum: read back
        listed = request.getfixturevalue("s3_client").list_objects_v2(Bucket=store.bucket)
        assert listed.get("KeyCount") == 0
    else:
        assert isinstance(store, FileStore)
        assert [p for p in (store.root / "blobs").rglob("*") if p.is_file()] == []


def test_altered_blob_is_corrupt_and_put_repairs_it(store: ObjectStore, request: pytest.FixtureRequest) -> None:
    digest, data = blob(5000)
    store.put(digest, data)
    tamper(request, store, digest, b"evil" + data)
    with pytest.raises(ObjectCorrupt) as exc:
        store.get(digest)
    assert store.url in one_line(exc) and digest in str(exc.value)
    store.put(digest, data)  # a different size (S3) or different bytes (file): written again
    assert store.get(digest) == data


def test_put_of_wrong_bytes_is_refused(store: ObjectStore) -> None:
    digest, _ = blob(100)
    with pytest.raises(ObjectCorrupt) as exc:
        store.put(digest, b"not those bytes")
    assert "refusing" in one_line(exc)
    assert not store.has(digest)


@pytest.mark.parametrize("bad", BAD_DIGESTS)
def test_bad_digest_is_refused(store: ObjectStore, bad: str) -> None:
    for call in (store.get, store.has, store.delete, lambda d: store.put(d, b"x")):
        with pytest.raises(StoreError) as exc:
            call(bad)
        assert not isinstance(exc.value, ObjectMissing | ObjectCorrupt)
        assert "not a sha256 digest" in one_line(exc)


def test_concurrent_puts_of_one_blob(store: ObjectStore) -> None:
    digest, data = blob(50_000, b"race")
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def put() -> None:
        barrier.wait()
        try:
            store.put(digest, data)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=put) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.get(digest) == data


# ------------------------------------------------------------------------------------------ S3


def test_s3_layout_and_a_second_put_does_not_upload(s3_url: tuple[str, str], s3_client) -> None:
    url, endpoint = s3_url
    store = open_store(url, endpoint_url=endpoint)
    assert isinstance(store, S3Store) and store.url == url
    uploads: list[str] = []
    store.client.meta.events.register(
        "before-parameter-build.s3.PutObject", lambda params, **_: uploads.append(params["Key"])
    )
    digest, data = blob(20_000)
    store.put(digest, data)
    store.put(digest, data)
    assert uploads == [f"{store.prefix}/blobs/{digest[:2]}/{digest}"] and store.prefix
    head = s3_client.head_object(Bucket=store.bucket, Key=uploads[0], ChecksumMode="ENABLED")
    assert head["ContentLength"] == len(data)
    assert head["ChecksumSHA256"]  # sent with the upload


def test_s3_same_size_tamper_with_its_own_checksum_is_repaired(s3_url: tuple[str, str], s3_client) -> None:
    url, endpoint = s3_url
    store = open_store(url, endpoint_url=endpoint)
    assert isinstance(store, S3Store)
    digest, data = blob(3000)
    store.put(digest, data)
    evil = bytes(reversed(data))
    s3_client.put_object(
        Bucket=store.bucket, Key=store.key(digest), Body=evil, ChecksumAlgorithm="SHA256"
    )  # same size, but the server lists the sha256 of the other bytes
    with pytest.raises(ObjectCorrupt):
        store.get(digest)
    store.put(digest, data)
    assert store.get(digest) == data


def test_s3_missing_bucket(s3_url: tuple[str, str]) -> None:
    _, endpoint = s3_url
    store = open_store(f"s3://esper-test-no-such-{os.urandom(4).hex()}/p", endpoint_url=endpoint)
    with pytest.raises(StoreError) as exc:
        store.check()
    assert one_line(exc) == f"{store.url}: NoSuchBucket"
    digest, data = blob()
    for call in (lambda: store.put(digest, data), lambda: store.get(digest)):
        with pytest.raises(StoreError) as exc:
            call()
        assert not isinstance(exc.value, ObjectMissing)
        assert one_line(exc).startswith(f"{store.url}: NoSuchBucket")


def test_s3_unreachable_endpoint_fails_fast_in_one_line(s3_endpoint: str) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    store = open_store("s3://some-bucket/p", endpoint_url=f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(StoreError) as exc:
        store.check()
    assert time.monotonic() - start < 10
    assert one_line(exc) == f"s3://some-bucket/p: cannot connect to http://127.0.0.1:{port} (connection refused)"
    with pytest.raises(StoreError, match="connection refused"):
        store.get(blob()[0])


def test_s3_keyless_endpoint_gets_dummy_credentials(
    s3_url: tuple[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url, endpoint = s3_url
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = open_store(url, endpoint_url=endpoint)
    store.check()
    with pytest.raises(StoreError) as exc:
        open_store(url)  # real AWS without credentials: refused at once, not at the first request
    assert one_line(exc).startswith(f"{url}: no usable AWS credentials")
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(StoreError) as exc:
        open_store(url, endpoint_url=endpoint)
    assert one_line(exc).startswith(f"{url}: AWS configuration: ") and "no-such-profile" in str(exc.value)


def test_s3_bad_endpoint(s3_url: tuple[str, str]) -> None:
    url, _ = s3_url
    with pytest.raises(StoreError) as exc:
        open_store(url, endpoint_url="not a url")
    assert one_line(exc).startswith(f"{url}: bad S3 endpoint")


# ------------------------------------------------------------------------------------------ URLs


@pytest.mark.parametrize(
    "url",
    [
        "",
        "bucket/prefix",
        "/abs/dir",
        "http://example.com/x",
        "s3://",
        "s3://ab",
        "s3://Upper_Case",
        "s3://bucket/../x",
        "s3://bucket/a//b",
        "s3://bucket/p?versionId=1",
        "s3://bucket:9000/p",
        "file://relative/dir",
        "file:relative",
        "file:///tmp/x#frag",
        "file:///tmp/../etc",
        "s3://[bad",
    ],
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(StoreError) as exc:
        open_store(url)
    assert one_line(exc).startswith("artifacts URL must be s3://bucket[/prefix] or file:///absolute/dir, got ")


def test_bad_url_error_hides_credentials() -> None:
    with pytest.raises(StoreError) as exc:
        open_store("s3://AKIAEXAMPLE:hunter2@bucket/p")
    assert "hunter2" not in one_line(exc) and "AKIAEXAMPLE" not in str(exc.value)
    assert "credentials do not belong in the URL" in str(exc.value)


def test_url_forms(tmp_path: Path) -> None:
    assert open_store(f"file://{tmp_path}/a%20b").root == tmp_path / "a b"  # type: ignore[attr-defined]
    assert open_store(f"file://localhost{tmp_path}").url == tmp_path.as_uri()
    s3 = open_store("s3://my.bucket-1/a/b/", endpoint_url="http://127.0.0.1:9")
    assert isinstance(s3, S3Store) and s3.url == "s3://my.bucket-1/a/b" and s3.key("0" * 64).startswith("a/b/blobs/00/")
    bare = open_store("s3://my-bucket", endpoint_url="http://127.0.0.1:9")
    assert bare.url == "s3://my-bucket" and bare.key("0" * 64) == "blobs/00/" + "0" * 64  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------ FileStore


def file_store(tmp_path: Path) -> tuple[FileStore, str, bytes, Path]:
    store = open_store(tmp_path.as_uri())
    assert isinstance(store, FileStore)
    digest, data = blob(4096)
    return store, digest, data, tmp_path / "blobs" / digest[:2] / digest


def test_file_layout_and_a_second_put_does_not_rewrite(tmp_path: Path) -> None:
    store, digest, data, path = file_store(tmp_path)
    store.put(digest, data)
    before = path.stat()
    assert stat.S_IMODE(before.st_mode) == 0o444
    store.put(digest, data)
    assert path.stat().st_ino == before.st_ino
    assert [p.name for p in path.parent.iterdir()] == [digest]  # no temporary file left


def test_file_symlink_at_a_blob_path_is_refused_not_followed(tmp_path: Path) -> None:
    store, digest, data, path = file_store(tmp_path)
    target = tmp_path / "elsewhere"
    target.write_bytes(data)  # even the right bytes: a link is not a blob
    path.parent.mkdir(parents=True)
    path.symlink_to(target)
    assert not store.has(digest)
    with pytest.raises(ObjectCorrupt) as exc:
        store.get(digest)
    assert "is a symlink, not a regular file" in one_line(exc)
    store.put(digest, data)  # replaces the link, never writes through it
    assert not path.is_symlink() and store.get(digest) == data
    assert target.read_bytes() == data and stat.S_IMODE(target.stat().st_mode) != 0o444


@pytest.mark.timeout(30)
def test_file_fifo_at_a_blob_path_is_refused_not_blocked_on(tmp_path: Path) -> None:
    store, digest, data, path = file_store(tmp_path)
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    with pytest.raises(ObjectCorrupt) as exc:
        store.get(digest)
    assert "is a FIFO, not a regular file" in one_line(exc)
    store.put(digest, data)
    assert store.get(digest) == data


def test_file_store_directory_must_exist(tmp_path: Path) -> None:
    store, digest, data, _ = file_store(tmp_path / "not-mounted")
    with pytest.raises(StoreError) as exc:
        store.check()
    assert one_line(exc) == f"{store.url}: no such file or directory"
    with pytest.raises(StoreError) as exc:
        store.put(digest, data)
    assert one_line(exc).startswith(f"{store.url}: cannot write blob {digest}")
    assert not (tmp_path / "not-mounted").exists()  # never created: an unmounted share stays visible
    (tmp_path / "a-file").write_bytes(b"")
    with pytest.raises(StoreError, match="not a directory"):
        open_store((tmp_path / "a-file").as_uri()).check()


def test_file_store_creates_blobs_dir(tmp_path: Path) -> None:
    store, digest, data, path = file_store(tmp_path)
    store.check()
    store.put(digest, data)
    assert path.is_file()


# ------------------------------------------------------------------------------------------ BlobCache


@pytest.fixture
def remote(tmp_path: Path) -> FileStore:
    (tmp_path / "remote").mkdir()
    store = open_store((tmp_path / "remote").as_uri())
    assert isinstance(store, FileStore)
    return store


def test_cache_hit_never_asks_the_store(tmp_path: Path, remote: FileStore) -> None:
    cache = BlobCache(tmp_path / "cache")
    digest, data = blob(100_000)
    assert cache.get(digest) is None
    cache.put(digest, data)
    assert cache.get(digest) == data
    assert cache.fetch(digest, remote) == (data, True)  # the remote does not even hold it
    assert cache.size_bytes() == len(data)


def test_cache_miss_fetches_keeps_and_then_hits(s3_url: tuple[str, str], tmp_path: Path) -> None:
    url, endpoint = s3_url
    store = open_store(url, endpoint_url=endpoint)
    cache = BlobCache(tmp_path / "cache")
    digest, data = blob(70_000)
    store.put(digest, data)
    assert cache.fetch(digest, store) == (data, False)
    assert cache.fetch(digest, store) == (data, True)
    store.delete(digest)
    assert cache.fetch(digest, store) == (data, True)
    other, _ = blob(10, b"other")
    with pytest.raises(ObjectMissing):
        cache.fetch(other, store)
    assert cache.get(other) is None


def test_cache_corrupt_entry_is_evicted_and_fetched_again(tmp_path: Path, remote: FileStore) -> None:
    cache = BlobCache(tmp_path / "cache")
    digest, data = blob(9000)
    remote.put(digest, data)
    cache.put(digest, data)
    path = tmp_path / "cache" / digest[:2] / digest
    path.chmod(0o644)
    path.write_bytes(data[:-1])  # torn, as after a crash
    assert cache.get(digest) is None
    assert not path.exists()
    assert cache.fetch(digest, remote) == (data, False)
    assert path.read_bytes() == data


@pytest.mark.timeout(30)
def test_cache_non_regular_entries_are_evicted(tmp_path: Path, remote: FileStore) -> None:
    cache = BlobCache(tmp_path / "cache")
    digest, data = blob(100, b"x")
    remote.put(digest, data)
    path = tmp_path / "cache" / digest[:2] / digest
    path.parent.mkdir(parents=True)
    target = tmp_path / "target"
    target.write_bytes(data)
    for plant in (lambda: path.symlink_to(target), lambda: os.mkfifo(path), lambda: path.mkdir()):
        plant()
        assert cache.get(digest) is None
        assert not path.exists() and not path.is_symlink()
    assert target.read_bytes() == data
    assert cache.fetch(digest, remote) == (data, False)


def test_cache_concurrent_fetch_of_one_blob(s3_url: tuple[str, str], tmp_path: Path) -> None:
    url, endpoint = s3_url
    store = open_store(url, endpoint_url=endpoint)
    cache = BlobCache(tmp_path / "cache")
    digest, data = blob(200_000, b"concurrent")
    store.put(digest, data)
    barrier = threading.Barrier(4)
    results: list[tuple[bytes, bool]] = []
    errors: list[BaseException] = []

    def fetch() -> None:
        barrier.wait()
        try:
            results.append(cache.fetch(digest, store))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [r[0] == data for r in results] == [True] * 4
    assert [p.name for p in (tmp_path / "cache" / digest[:2]).iterdir()] == [digest]  # no temporary file left
    assert cache.get(digest) == data


def test_cache_keeps_serving_when_it_cannot_keep(tmp_path: Path, remote: FileStore) -> None:
    cache = BlobCache(tmp_path / "cache")
    digest, data = blob(500, b"full")
    remote.put(digest, data)
    (tmp_path / "cache" / digest[:2]).write_bytes(b"")  # a file where the fan-out directory belongs
    assert cache.fetch(digest, remote) == (data, False)
    assert cache.last_error is not None and "cannot write blob" in cache.last_error
    with pytest.raises(StoreError, match="cannot write blob"):
        cache.put(digest, data)


def test_cache_refuses_wrong_bytes_and_bad_digests(tmp_path: Path, remote: FileStore) -> None:
    cache = BlobCache(tmp_path / "cache")
    digest, _ = blob(10)
    with pytest.raises(ObjectCorrupt):
        cache.put(digest, b"other")
    assert cache.get(digest) is None
    for bad in BAD_DIGESTS:
        for call in (cache.get, lambda d: cache.put(d, b""), lambda d: cache.fetch(d, remote)):
            with pytest.raises(StoreError, match="not a sha256 digest"):
                call(bad)


def test_cache_size_and_clear(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache")
    blobs = [blob(1000 * (i + 1), bytes([i])) for i in range(5)]
    for digest, data in blobs:
        cache.put(digest, data)
    (tmp_path / "cache" / ".tmp-leftover").write_bytes(b"xx")
    assert cache.size_bytes() == sum(len(d) for _, d in blobs)
    assert cache.clear() == 5
    assert cache.size_bytes() == 0 and list((tmp_path / "cache").iterdir()) == []
    assert all(cache.get(d) is None for d, _ in blobs)


def test_moto_as_a_separate_process(tmp_path: Path) -> None:
    from s3 import moto_process, raw_client  # imported by pytest as a plugin already

    with moto_process() as endpoint:
        raw_client(endpoint).create_bucket(Bucket="esper-proc")
        store = open_store("s3://esper-proc/x", endpoint_url=endpoint)
        store.check()
        digest, data = blob(1234)
        store.put(digest, data)
        assert BlobCache(tmp_path / "cache").fetch(digest, store) == (data, False)
    with pytest.raises(StoreError, match="connection refused"):
        store.get(digest)  # the process is gone
