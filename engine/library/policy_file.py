"""A learned Tamiyo policy as a file: safetensors weights and msgpack metadata, versioned and signed.

Layout: `MAGIC`, then one msgpack map {meta, signature, tensors}. `meta` is the msgpack of `PolicyMeta` (version,
a unique id and the creation time: a signed thing carries its freshness), which names the sha256 of `tensors`, the
safetensors bytes; `signature` is HMAC-SHA256 over `meta` with the engine's signing key (library/signing.py, the
key kernels are signed with). Reading checks the signature first, then the metadata, then the tensors' hash, and
only then parses the tensors (safetensors: no pickle, nothing executes). Any failure is `PolicyInvalid`, one line.
"""

from __future__ import annotations

import hashlib
import time
from typing import Annotated

import msgspec
import torch
from msgspec import Meta
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from esper_tui.engine.library import signing
from esper_tui.engine.vocabulary import Struct, new_id

MAGIC = b"ESPER-POLICY\x01\n"
POLICY_FORMAT = 1
VERSION_PATTERN = r"^v[0-9]{4,9}$"
MAX_POLICY_BYTES = 16 << 20  # a linear policy is a few KB; anything this large is not one

Version = Annotated[str, Meta(pattern=VERSION_PATTERN, description="v0001, v0002, ...")]


class PolicyInvalid(Exception):
    """A policy file that must not be used: unsigned, altered, signed with another key, or malformed."""


class PolicyMeta(Struct, kw_only=True):
    """What a policy is and what it was trained on; signed together with its tensors' hash."""

    format: int = POLICY_FORMAT
    version: Version
    policy_id: str = msgspec.field(default_factory=new_id)
    created_ts: float = msgspec.field(default_factory=time.time)
    kind: str  # "linear-bandit": one linear score per (state, arm) feature vector
    task: str  # the task it was trained on (mnist1d)
    features: list[str]  # the state features, in order (training/learned.py)
    blueprints: list[str]  # the blueprints it knows by name, in the order of its one-hot block
    slots: list[str]
    episodes: int  # training episodes behind it
    parent: str = ""  # the version it was trained on top of, if any
    note: str = ""
    tensors_sha256: str = ""


class PolicyFile(msgspec.Struct, frozen=True):
    meta: bytes
    signature: str
    tensors: bytes


def encode(meta: PolicyMeta, tensors: dict[str, torch.Tensor], key: bytes) -> bytes:
    """The signed file's bytes (the tensors' hash is written into the metadata here)."""
    raw = st_save({name: t.detach().to("cpu").contiguous() for name, t in tensors.items()})
    meta = msgspec.structs.replace(meta, tensors_sha256=hashlib.sha256(raw).hexdigest())
    doc = msgspec.msgpack.encode(meta)
    return MAGIC + msgspec.msgpack.encode(PolicyFile(meta=doc, signature=signing.sign(key, doc), tensors=raw))


def decode(data: bytes, key: bytes, *, where: str = "policy") -> tuple[PolicyMeta, dict[str, torch.Tensor]]:
    """Verify and read a policy file's bytes; PolicyInvalid (one line) on anything wrong."""
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyInvalid(f"{where}: {len(data)} bytes is not a policy file")
    if not data.startswith(MAGIC):
        raise PolicyInvalid(f"{where}: not a policy file (no {MAGIC[:-2].decode()} header)")
    try:
        envelope = msgspec.msgpack.decode(data[len(MAGIC) :], type=PolicyFile)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PolicyInvalid(f"{where}: malformed ({exc})") from None
    if not signing.verify(key, envelope.meta, envelope.signature):
        raise PolicyInvalid(f"{where}: signature mismatch (altered, unsigned or signed with another key)")
    try:
        meta = msgspec.msgpack.decode(envelope.meta, type=PolicyMeta)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PolicyInvalid(f"{where}: signed metadata does not decode ({exc})") from None
    if meta.format != POLICY_FORMAT:
        raise PolicyInvalid(f"{where}: format {meta.format}, this engine reads {POLICY_FORMAT}")
    if hashlib.sha256(envelope.tensors).hexdigest() != meta.tensors_sha256:
        raise PolicyInvalid(f"{where}: weights altered (sha256 differs from the signed one)")
    try:
        tensors = st_load(envelope.tensors)
    except Exception as exc:  # safetensors raises its own error types for malformed bytes
        raise PolicyInvalid(f"{where}: weights do not parse ({type(exc).__name__})") from None
    return meta, tensors
