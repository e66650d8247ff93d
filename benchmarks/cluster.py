"""A real shared-library cluster on this machine, for the multi-process test and `benchmarks.forge --workers`.

Everything is the real part: a fresh PostgreSQL database migrated with `esper-tui library migrate`, moto's
S3 server as its own process with a fresh bucket, the Redis the tests use (under a stream prefix of its
own), and the engine and forge workers as `esper-tui` subprocesses sharing one signing key through
ESPER_SIGNING_KEY, as machines of a team would. Output goes to files, never pipes (a full pipe would
block a process nobody reads).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import redis
from psycopg import sql

CLI = [sys.executable, "-m", "esper_tui"]
MOTO_READY_S = 30.0
DUMMY_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=1) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def moto_process() -> Iterator[str]:
    """moto's server as its own process on a free port; yields the endpoint once it answers, kills it after."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + MOTO_READY_S
            while not _answers(endpoint):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read()[-2000:].decode(errors="replace")
                    why = f"exited with {proc.returncode}" if proc.returncode is not None else "did not answer"
                    raise RuntimeError(f"moto server on {endpoint} {why}: {tail}")
                time.sleep(0.1)
            yield endpoint
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class Proc:
    """An esper-tui subprocess with its output in files."""

    name: str
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as a machine that loses power: no cleanup, no acknowledgement."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 30.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9


@dataclass
class Cluster:
    workdir: Path
    redis_url: str
    catalog_url: str
    artifacts_url: str
    endpoint: str
    prefix: str
    key_hex: str
    config: Path
    procs: list[Proc] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {**DUMMY_AWS, **os.environ, "ESPER_SIGNING_KEY": self.key_hex, "PYTHONUNBUFFERED": "1"}

    def library_args(self) -> list[str]:
        return ["--library", self.catalog_url, "--artifacts", self.artifacts_url, "--artifacts-endpoint", self.endpoint]

    def spawn(self, name: str, *args: str) -> Proc:
        out, err = self.workdir / f"{name}.out", self.workdir / f"{name}.err"
        with out.open("w") as stdout, err.open("w") as stderr:
            proc = subprocess.Popen(
                [*CLI, *args], stdout=stdout, stderr=stderr, env=self.env(), stdin=subprocess.DEVNULL
            )
        p = Proc(name, proc, out, err)
        self.procs.append(p)
        return p

    def engine(self, *args: str) -> Proc:
        """A headless engine with no compile workers of its own, queueing every job for forge workers."""
        return self.spawn(
            "engine",
            "--no-ui",
            "--json",
            "--redis-url",
            self.redis_url,
            "--forge-workers",
            "0",
            "--config",
            str(self.config),
            "--state-dir",
            str(self.workdir / "engine"),
            *self.library_args(),
            *args,
        )

    def worker(self, name: str, *args: str) -> Proc:
        return self.spawn(
            name,
            "forge-worker",
            "--redis-url",
            self.redis_url,
            "--config",
            str(self.config),
            "--state-dir",
            str(self.workdir / name),
            *self.library_args(),
            *args,
        )

    def tool(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args], capture_output=True, text=True, env=self.env(), timeout=timeout, check=False
        )

    def rows(self) -> list[tuple[str, int, str, str, bool]]:
        """(blueprint, version, artifact key, job id, quarantined) of every registered version."""
        with psycopg.connect(self.catalog_url, autocommit=True) as conn:
            cur = conn.execute(
                "SELECT blueprint_id, version, artifact_key, job_id, quarantined FROM kernel_versions "
                "ORDER BY blueprint_id, version"
            )
            return [(str(a), int(b), str(c), str(d), bool(e)) for a, b, c, d, e in cur.fetchall()]

    def queue(self) -> tuple[int, int]:
        """(jobs pending in the workers' group, entries left in the job streams) under this prefix."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            pending = backlog = 0
            for key in client.scan_iter(match=f"{self.prefix}.forge.jobs.*"):
                backlog += int(client.xlen(key))
                with contextlib.suppress(redis.ResponseError):
                    pending += int(client.xpending(key, "forge-workers")["pending"])
            return pending, backlog
        finally:
            client.close()

    def reap(self) -> None:
        """Kill every process this cluster started, and the compile workers of killed forge workers."""
        for p in self.procs:
            p.kill()
        from esper_tui.engine.forge.sandbox import reap_stale

        for d in self.workdir.iterdir():
            if (d / "workers").is_dir():
                reap_stale(d / "workers")


def _admin(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(url, autocommit=True, connect_timeout=3)


@contextlib.contextmanager
def cluster(
    workdir: Path, redis_url: str, pg_admin_url: str, *, claim_idle_s: float = 4.0, concurrency: int = 1
) -> Iterator[Cluster]:
    """A fresh database (migrated through the CLI), a moto process with a fresh bucket, a Redis prefix."""
    import boto3

    tag = os.urandom(4).hex()
    name = f"esper_cluster_{tag}"
    with _admin(pg_admin_url) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    catalog_url = urlsplit(pg_admin_url)._replace(path=f"/{name}").geturl()
    prefix = f"cl{tag}"
    config = workdir / "cluster.toml"
    config.write_text(
        f'[bus]\nstream_prefix = "{prefix}"\n\n'
        f"[forge_worker]\nconcurrency = {concurrency}\nclaim_idle_s = {claim_idle_s}\n"
        f"keepalive_s = {claim_idle_s / 4}\n"
    )
    try:
        with moto_process() as endpoint:
            bucket = f"esper-{tag}"
            boto3.client("s3", endpoint_url=endpoint, **_boto_args()).create_bucket(Bucket=bucket)
            c = Cluster(
                workdir, redis_url, catalog_url, f"s3://{bucket}/urza", endpoint, prefix, os.urandom(32).hex(), config
            )
            migrated = c.tool("library", "migrate", "--library", catalog_url)
            if migrated.returncode != 0:
                raise RuntimeError(f"library migrate failed: {migrated.stderr}")
            try:
                yield c
            finally:
                c.reap()
    finally:
        with _admin(pg_admin_url) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        client = redis.Redis.from_url(redis_url)
        with contextlib.suppress(redis.RedisError):
            keys = list(client.scan_iter(match=f"{prefix}.*"))
            if keys:
                client.delete(*keys)
        client.close()


def _boto_args() -> dict[str, str]:
    return {
        "region_name": "us-east-1",
        "aws_access_key_id": os.environ.get("AWS_ACCESS_KEY_ID", DUMMY_AWS["AWS_ACCESS_KEY_ID"]),
        "aws_secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY", DUMMY_AWS["AWS_SECRET_ACCESS_KEY"]),
    }
