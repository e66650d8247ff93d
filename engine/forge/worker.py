"""The sandboxed compile worker: `python -m esper_tui.engine.forge.worker`, spawned by the forge's pool.

It reads CompileRequests on stdin and answers CompileResponses on the original stdout (fd 1 is then
pointed at stderr, so anything torch or g++ prints can never corrupt the protocol). Reused for several
jobs: each new process pays ~3-4 s of inductor start-up.

A user blueprint's request carries its signed source: the worker loads it, probes one eager forward
(kernels/usercode.py) and compiles it like any other; a refusal is answered in one line. The worker that ran
user code is retired after that job (the pool never reuses it): the module it imported could have changed
torch or anything else in this process for the next job.

It is untrusted (see sandbox.py): it starts with an allow-listed environment (no signing key, no
engine cache pointers), as an unprivileged account when the engine is root, and writes only under
its own scratch directory (HOME, TMPDIR and each job's out_dir). The engine copies the files it
reports out of there; it never writes into the library itself.
"""

from __future__ import annotations

import os
import struct
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import msgspec

from esper_tui.engine.forge.protocol import CompileRequest, CompileResponse

if TYPE_CHECKING:
    from esper_tui.engine.kernels.catalog import Blueprint, Catalog
    from esper_tui.engine.kernels.shapes import SlotShape

_HEADER = struct.Struct("<I")
MAX_FRAME = 64 * 1024 * 1024


def write_frame(stream: BinaryIO, payload: bytes) -> None:
    stream.write(_HEADER.pack(len(payload)) + payload)
    stream.flush()


def read_frame(stream: BinaryIO) -> bytes | None:
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        return None
    (n,) = _HEADER.unpack(head)
    if n > MAX_FRAME:
        raise ValueError(f"frame of {n} bytes exceeds the {MAX_FRAME}-byte limit")
    data = stream.read(n)
    return data if len(data) == n else None


def _blueprint(catalog: Catalog, req: CompileRequest, shape: SlotShape) -> Blueprint:
    """The catalog's blueprint, or a user blueprint loaded from the request's source and probed for the slot's
    shape (usercode.py)."""
    if not req.source:
        return catalog.get(req.blueprint_id)
    from esper_tui.engine.kernels import usercode

    bp = usercode.load(usercode.from_source(req.blueprint_id, req.source, req.class_name))
    usercode.probe(bp, shape)
    return bp


def _error(req: CompileRequest, exc: BaseException) -> str:
    """A user blueprint's refusal is one line (usercode.refusal); a catalog blueprint's error keeps its detail."""
    if req.source:
        from esper_tui.engine.kernels.usercode import refusal

        return refusal(exc)
    return f"{type(exc).__name__}: {exc}"[:2000]


def _serve(requests: BinaryIO, replies: BinaryIO) -> None:
    import torch

    from esper_tui.engine.kernels.catalog import Catalog
    from esper_tui.engine.kernels.compiled import compile_kernel, cpu_isa, kernel_threads
    from esper_tui.engine.kernels.pipelines import CompileSettings
    from esper_tui.engine.kernels.shapes import SlotShape

    torch.set_num_threads(kernel_threads())  # kernels guard on it: compile with what the trainer runs
    cpu_isa()  # probe the vector ISA once, in the shared default cache (a fresh per-job cache re-probes, ~8 s)
    catalog = Catalog()
    decoder = msgspec.msgpack.Decoder(CompileRequest)
    encoder = msgspec.msgpack.Encoder()
    while (frame := read_frame(requests)) is not None:
        req = decoder.decode(frame)
        try:
            shape = SlotShape.parse(req.shape)
            out = compile_kernel(
                _blueprint(catalog, req, shape),
                shape,
                CompileSettings(req.backend, req.mode, req.device),
                Path(req.out_dir),
            )
            resp = CompileResponse(
                job_id=req.job_id,
                ok=True,
                files=out.files,
                compile_s=out.compile_s,
                step_ms_compiled=out.step_ms_compiled,
                step_ms_eager=out.step_ms_eager,
                cpu_isa=out.cpu_isa,
                max_abs_error=out.max_abs_error,
            )
        except (Exception, SystemExit) as exc:  # SystemExit: user code calling sys.exit() is refused, not obeyed
            traceback.print_exc(file=sys.stderr)
            resp = CompileResponse(job_id=req.job_id, ok=False, error=_error(req, exc))
        write_frame(replies, encoder.encode(resp))


def main() -> None:
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints from torch/g++ go to the log, not into the protocol
    _serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
