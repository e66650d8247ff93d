"""Pytest fixtures for a real S3-compatible server: moto's, over HTTP on 127.0.0.1.

- `s3_endpoint` (session): moto's ThreadedMotoServer in this process on a free port; yields its URL.
  Server mode patches nothing: moto's botocore hook stays disabled outside `mock_aws`, so every request
  goes over a socket like it would to SeaweedFS or MinIO (the unreachable-endpoint test proves it). Its
  state lives in moto's in-process backends: they are reset when the session ends, and no test here may
  use `mock_aws` (which resets those backends, under the server's feet).
- `s3_url` (function): a fresh bucket `esper-test-<hex>` on it; yields (`s3://bucket/prefix`, endpoint).
- `s3_client` (function): a plain boto3 client on that server, to make buckets or do what a store never
  would (overwrite a blob behind its back).
- `moto_process()` (benchmarks/cluster.py, re-exported): moto as a separate process, for multi-process
  tests and benchmarks; yields the endpoint once the server answers.

Dummy AWS credentials and region are set for the session when the environment has none.
"""

from __future__ import annotations

import contextlib
import os
import urllib.error
import urllib.request
from collections.abc import Iterator

import boto3
import pytest

from benchmarks.cluster import moto_process

__all__ = ["moto_process", "raw_client", "s3_client", "s3_endpoint", "s3_url"]

PREFIX = "urza"
DUMMY_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def raw_client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        for name, value in DUMMY_ENV.items():
            if name not in os.environ:
                mp.setenv(name, value)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        try:
            yield endpoint
        finally:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=5)
            server.stop()


@pytest.fixture
def s3_url(s3_endpoint: str) -> Iterator[tuple[str, str]]:
    bucket = f"esper-test-{os.urandom(6).hex()}"
    client = raw_client(s3_endpoint)
    client.create_bucket(Bucket=bucket)
    yield f"s3://{bucket}/{PREFIX}", s3_endpoint
    with contextlib.suppress(Exception):  # leave nothing behind in the session's server
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=obj["Key"])
        client.delete_bucket(Bucket=bucket)


@pytest.fixture
def s3_client(s3_endpoint: str):
    return raw_client(s3_endpoint)
