"""Flags several commands take alike: the three that name a shared library (the engine, `forge-worker` and
`library …`) and the check of `--redis-url` (the engine, `attach` and `forge-worker`)."""

from __future__ import annotations

import argparse


def add_library_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--library", metavar="URL", help="a shared catalog, postgresql://… (default: library.catalog_url)")
    p.add_argument(
        "--artifacts",
        metavar="URL",
        help="the shared library's bytes: s3://bucket/prefix or file:///dir (library.artifacts_url)",
    )
    p.add_argument("--artifacts-endpoint", metavar="URL", help="an S3-compatible server's endpoint (MinIO, moto)")


def library_flags(args: argparse.Namespace) -> dict[str, object]:
    """The library flags given, as config keys for `config.override` (validated like the file's values)."""
    given = {
        "library.catalog_url": getattr(args, "library", None),
        "library.artifacts_url": getattr(args, "artifacts", None),
        "library.artifacts_endpoint": getattr(args, "artifacts_endpoint", None),
    }
    return {k: v for k, v in given.items() if v is not None}


def redis_url_problem(url: str | None) -> str | None:
    if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
        return f"--redis-url: must start with redis://, rediss:// or unix:// (got {url!r})"
    return None
