"""`esper-tui attach`: a control room for an engine elsewhere, over a RemoteLink (links/remote.py).

What the operator must fix comes first, before any connection: the engine key to check frames with, and
the operator key (without it the room is read-only). Then the engine to watch (the one asked for, else the
only live one on that Redis), and the dashboard or, with --no-ui, a line per new picture.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from esper_tui.engine import keys
from esper_tui.engine.bus import Bus, BusError, create_bus, redact_url
from esper_tui.engine.bus.auth import FrameVerifier, frame_public_key
from esper_tui.engine.codec import encode_json
from esper_tui.engine.config import EsperConfig
from esper_tui.engine.snapshot import LinkView
from esper_tui.engine.vocabulary import EngineState, LinkState
from esper_tui.links.remote import EngineEntry, RemoteLink, list_engines
from esper_tui.ui.status_line import report_line
from esper_tui.widgets.format import duration


class AttachError(Exception):
    """`esper-tui attach` cannot go on: one line for the operator, and the exit code to leave with."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- keys


def engine_public_key(config: EsperConfig, state_dir: Path | None, pinned: str | None) -> str:
    """The engine's frame public key (hex) to pin: --engine-key, then bus.engine_key, then derived from the
    engine's frame key file when this machine can read it. Raises AttachError saying how to get it."""
    key = pinned or config.bus.engine_key
    origin = "--engine-key" if pinned else "bus.engine_key"
    if not key:
        try:
            secret = keys.load_key(keys.FRAME_KEY, state_dir, config.bus.frame_key)
        except keys.KeyMissing:
            raise AttachError(
                "no engine key to check frames with: pass --engine-key HEX as the engine prints it at start "
                '("frames signed by …", on its terminal or in its log), set bus.engine_key, or run where '
                f"{keys.FRAME_KEY.path(state_dir or Path('var'))} is readable (--state-dir); never copy it from "
                "`attach --list`, which anyone who can write to the Redis can forge"
            ) from None
        except keys.BadKey as exc:
            raise AttachError(str(exc)) from None
        return frame_public_key(secret)
    try:
        FrameVerifier(key)
    except ValueError as exc:
        raise AttachError(f"{origin}: {exc}") from None
    return key.strip().lower()


def operator_key(config: EsperConfig, state_dir: Path | None, read_only: bool) -> tuple[bytes | None, str]:
    """The operator key and, without one, why the room is read-only. Never creates a key: one made here
    would match nothing the engine checks. A key that is there but broken is an error, not read-only."""
    if read_only:
        return None, "read-only: attached with --read-only"
    try:
        return keys.load_key(keys.OPERATOR_KEY, state_dir, config.bus.operator_key), ""
    except keys.KeyMissing as exc:
        return None, f"read-only: {exc}"
    except keys.BadKey as exc:
        raise AttachError(f"operator key: {exc}") from None


# --------------------------------------------------------------------------- which engine


def choose_engine(engines: Sequence[EngineEntry], run_id: str | None, where: str) -> str:
    """The run to attach to: the one asked for, else the only live one; AttachError listing them otherwise."""
    if run_id:
        return run_id
    live = [e for e in engines if e.live and e.verified is not False]
    if len(live) == 1:
        return live[0].heartbeat.run_id
    if not live:
        believed = [e for e in engines if e.verified is not False and not e.problem]
        stopped = [e for e in believed if e.heartbeat.state is EngineState.STOPPED]
        final = f" (stopped: {_names(stopped)}; --run shows a final picture)" if stopped else ""
        stale = [e for e in engines if e.problem and e.verified is not False]
        ignored = f" (stale heartbeats ignored: {_names(stale)})" if stale else ""
        raise AttachError(f"no live engine on {where}{final}{ignored}; start one with `esper-tui --redis-url URL`")
    raise AttachError(f"{len(live)} live engines on {where}: choose one with --run ({_names(live)})")


def _names(engines: Sequence[EngineEntry]) -> str:
    return ", ".join(f"{e.heartbeat.run_id} ({e.heartbeat.host} pid {e.heartbeat.pid})" for e in engines)


def engines_table(engines: Sequence[EngineEntry]) -> str:
    """`attach --list` for people: one row per engine."""
    header = ("run id", "host", "pid", "up", "state", "signature", "state dir")
    check = {True: "verified", False: "BAD", None: "unchecked"}
    rows = [header] + [
        (
            e.heartbeat.run_id,
            e.heartbeat.host,
            str(e.heartbeat.pid),
            duration(e.uptime_s),
            e.state_label,
            check[e.verified],
            e.heartbeat.state_dir,
        )
        for e in engines
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]) for row in rows)


# --------------------------------------------------------------------------- attach --no-ui


async def report_attached(
    link: RemoteLink, *, as_json: bool, interval_s: float, done: asyncio.Event, out: TextIO, err: TextIO
) -> int:
    """`attach --no-ui`: a line per new picture every `interval_s` (a picture turning SILENT counts as
    new), trouble and recovery said once each on `err`; once the engine stops, its final picture, exit 0."""
    last: tuple[int, LinkState] | None = None
    trouble = ""
    while not link.stopped.is_set() and not done.is_set():
        view = link.link_view()
        now = _trouble(view)
        if now != trouble:
            message = _news(view, now, trouble, link.problem)
            if message:
                print(f"esper-tui: {message}", file=err, flush=True)
            trouble = now
        snapshot = link.latest()
        if snapshot is not None and (snapshot.seq, snapshot.link.state) != last:
            last = (snapshot.seq, snapshot.link.state)
            print(report_line(snapshot, as_json), file=out, flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_first(link.stopped, done), interval_s)
    if link.stopped.is_set():
        final = link.latest()
        if final is not None:
            print(report_line(final, as_json), file=out, flush=True)
        missing = f" ({link.problem})" if link.problem else ""
        print(f"esper-tui: engine {link.run_id} stopped{missing}", file=err, flush=True)
    return 0


def _trouble(view: LinkView) -> str:
    """The kind of trouble the link is in: "silent", "forged" (nothing verifies yet) or "" (none)."""
    if view.state is LinkState.SILENT:
        return "silent"
    if view.state is LinkState.WAITING and view.frames_rejected:
        return "forged"
    return ""


def _news(view: LinkView, trouble: str, before: str, problem: str) -> str:
    """The line that tells the operator the link went from `before` to `trouble` ("" to say nothing)."""
    run = view.run_id
    if trouble == "silent":
        why = f" ({problem})" if problem else ""
        return f"no word from engine {run} for {view.age_s:.0f} s{why}"
    if trouble == "forged":
        return f"frames for {run} fail the signature check: is the engine key right?"
    if before == "silent" and view.state is LinkState.LIVE:
        return f"engine {run} is back"
    return ""


async def _first(*events: asyncio.Event) -> None:
    """Return as soon as any of `events` is set."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


# --------------------------------------------------------------------------- the command


@dataclass(frozen=True, slots=True)
class AttachRequest:
    """`esper-tui attach` as parsed: what to watch and how."""

    redis_url: str
    run_id: str | None
    list_only: bool
    read_only: bool
    headless: bool
    as_json: bool
    engine_key: str | None
    state_dir: Path
    interval_s: float

    @classmethod
    def from_args(cls, args: argparse.Namespace, config: EsperConfig) -> AttachRequest:
        url = args.redis_url or config.bus.redis_url
        if not url:
            raise AttachError("attach needs the engine's Redis: pass --redis-url URL (or set bus.redis_url)")
        return cls(
            redis_url=url,
            run_id=args.run,
            list_only=args.list,
            read_only=args.read_only,
            headless=args.no_ui,
            as_json=args.json,
            engine_key=args.engine_key,
            state_dir=args.state_dir,
            interval_s=config.ui.status_interval_s,
        )


def attach_main(args: argparse.Namespace, config: EsperConfig) -> int:
    """`esper-tui attach`: exit 0 when done (engine stopped, or the operator quit), 1 when Redis cannot be
    reached, 2 for what the operator must fix (no key, no engine, several engines)."""
    try:
        request = AttachRequest.from_args(args, config)
        return asyncio.run(_attach(request, config))
    except AttachError as exc:
        print(f"esper-tui: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 0


@contextlib.asynccontextmanager
async def _connected(config: EsperConfig, url: str, where: str) -> AsyncIterator[Bus]:
    """A control room's bus on `url`: started without creating any group on an engine's streams, closed after."""
    bus = create_bus(config.bus, url)
    try:
        try:
            await bus.start(create_groups=False)
        except BusError as exc:
            raise AttachError(f"cannot reach {where}: {exc}", code=1) from None
        yield bus
    finally:
        await bus.close()


async def _attach(request: AttachRequest, config: EsperConfig) -> int:
    where = f"{redact_url(request.redis_url)} (prefix {config.bus.stream_prefix})"
    if request.list_only:
        async with _connected(config, request.redis_url, where) as bus:
            return await _list(bus, request, config, where)
    # what the operator must fix comes first, before any connection
    engine_key = engine_public_key(config, request.state_dir, request.engine_key)
    op_key, why = operator_key(config, request.state_dir, request.read_only)
    async with _connected(config, request.redis_url, where) as bus:
        engines = await _engines(bus, config, FrameVerifier(engine_key), where)
        run_id = choose_engine(engines, request.run_id, where)
        if not any(e.heartbeat.run_id == run_id for e in engines):
            print(f"esper-tui: no heartbeat from engine {run_id} on {where} (yet); waiting for it", file=sys.stderr)
        link = RemoteLink(
            bus, run_id, engine_key, operator_key=op_key, read_only_reason=why, skew_s=config.bus.command_skew_s
        )
        await link.start()
        try:
            if request.headless:
                return await _headless(link, request)
            from esper_tui.ui.runner import run_remote_ui

            return await run_remote_ui(link, config, run_id)
        finally:
            await link.close()


async def _engines(bus: Bus, config: EsperConfig, verifier: FrameVerifier | None, where: str) -> list[EngineEntry]:
    try:
        return await list_engines(bus, config.bus.stream_prefix, verifier, skew_s=config.bus.command_skew_s)
    except BusError as exc:
        raise AttachError(f"cannot list engines on {where}: {exc}", code=1) from None


async def _list(bus: Bus, request: AttachRequest, config: EsperConfig, where: str) -> int:
    """`attach --list`: engines are checked against the engine key when one is at hand, else listed unchecked."""
    try:
        verifier: FrameVerifier | None = FrameVerifier(engine_public_key(config, request.state_dir, request.engine_key))
    except AttachError:
        verifier = None
    engines = await _engines(bus, config, verifier, where)
    if request.as_json:
        print(encode_json([e.to_json() for e in engines]).decode())
    elif engines:
        print(engines_table(engines))
    else:
        print(f"no engine on {where}")
    return 0


async def _headless(link: RemoteLink, request: AttachRequest) -> int:
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    try:
        return await report_attached(
            link, as_json=request.as_json, interval_s=request.interval_s, done=done, out=sys.stdout, err=sys.stderr
        )
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
