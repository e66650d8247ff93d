"""`esper-tui forge-worker`: compile capacity on another machine for a shared library.

Needs the same three things as the engine it serves: its Redis (the job queue), the shared library's
catalog and artifact store, and the library's signing key (ESPER_SIGNING_KEY, or `keys/signing.key` in
its own state directory, copied from the engine's). It never makes a key: one made on the spot would
sign kernels no engine accepts.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

from esper_tui.commands.fail import fail
from esper_tui.commands.flags import add_library_flags, redis_url_problem, with_flags
from esper_tui.engine.config import ConfigError, EsperConfig, load_config


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="esper-tui forge-worker",
        description="Take compile jobs from an engine's Redis and publish kernels to the shared library.",
    )
    p.add_argument("--redis-url", required=True, metavar="URL", help="the engine's Redis (the Oona job stream)")
    add_library_flags(p)
    p.add_argument(
        "--concurrency", type=int, metavar="N", help="compiles at once (default forge_worker.concurrency, 1-64)"
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path("var-worker"),
        metavar="DIR",
        help="this worker's own directory: keys/, logs, the verified kernel cache (default ./var-worker)",
    )
    p.add_argument(
        "--device",
        metavar="DEV",
        help="the device its kernels are for: auto, cpu, cuda or cuda:N (default training.device); "
        "a worker serves only the engines whose kernels share it",
    )
    p.add_argument("--config", type=Path, metavar="FILE", help="TOML config ([forge_worker], [library], [bus])")
    return p


def _say(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} forge-worker: {line}", file=sys.stderr, flush=True)


async def _serve(config: EsperConfig, state_dir: Path, redis_url: str, key: bytes, device: str) -> int:
    from esper_tui.engine.forge.builders import LocalBuilder
    from esper_tui.engine.forge.forge import worker_pool
    from esper_tui.engine.forge.jobqueue import QueueError, open_channel
    from esper_tui.engine.forge.sandbox import reap_stale
    from esper_tui.engine.forge.service import ForgeWorkerService, WorkerSettings
    from esper_tui.engine.kernels.catalog import Catalog
    from esper_tui.engine.kernels.compiled import cpu_isa, private_cache_dir
    from esper_tui.engine.library.factory import LibraryUnavailable, open_library
    from esper_tui.engine.library.store import Identity

    isa = await asyncio.to_thread(cpu_isa)
    private_cache_dir()
    identity = Identity.here(isa, device=device)  # the job channel is per identity: only same-device engines
    catalog = Catalog()
    try:
        library = await asyncio.to_thread(open_library, config.library, state_dir, key, catalog, identity=identity)
    except LibraryUnavailable as exc:
        _say(f"library: {exc}")
        return 1
    channel = open_channel(redis_url, config, key, identity.fingerprint())
    try:
        await channel.ensure_group()
    except QueueError as exc:
        _say(str(exc))
        library.close()
        await channel.close()
        return 1
    for pgid in reap_stale(state_dir / "workers"):
        _say(f"killed stale compile worker group {pgid} from a previous run")
    pool = worker_pool(config.tezzeret, state_dir)  # a weakened sandbox is logged (to stderr, see main)
    w = config.forge_worker
    service = ForgeWorkerService(
        channel,
        LocalBuilder(library, pool, identity),
        catalog,
        identity,
        WorkerSettings(
            concurrency=w.concurrency,
            claim_idle_s=w.claim_idle_s,
            keepalive_s=w.keepalive_s,
            beat_s=w.heartbeat_s,
            beat_ttl_s=w.heartbeat_ttl_s,
            max_deliveries=w.max_deliveries,
        ),
        _say,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stop_by(sig: signal.Signals) -> None:
        service.stopped_by = sig.name  # the engine's event log says who stopped it
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_by, sig)
    _say(
        f"{service.name} taking jobs from {channel.jobs} (identity {identity.fingerprint()}), "
        f"concurrency {w.concurrency}; device {device}; library {library.location}"
    )
    try:
        await service.run(stop)
    finally:
        await pool.close()
        await channel.close()
        library.close()
    _say(f"stopped: {service.done} done, {service.failed} failed")
    return 0


def forge_worker_main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s forge-worker: %(message)s", datefmt="%H:%M:%S", level=logging.WARNING)
    if (problem := redis_url_problem(args.redis_url)) is not None:
        return fail(problem, 2)
    try:
        config = with_flags(load_config(args.config), args)
    except ConfigError as exc:
        return fail(f"config error: {exc}", 2)
    if not (config.library.catalog_url and config.library.artifacts_url):
        return fail("forge-worker needs a shared library: --library postgresql://… and --artifacts s3://…", 2)
    from esper_tui.engine.fsutil import StateDirError, lock_state_dir
    from esper_tui.engine.kernels.device import DeviceError, resolve_device
    from esper_tui.engine.library.signing import SigningKeyError, load_key

    try:  # before the lock and the key: a device this machine lacks is the user's to fix, exit 2
        device = resolve_device(config.training.device)
    except DeviceError as exc:
        return fail(f"--device: {exc}", 2)

    state_dir = args.state_dir.resolve()
    try:
        lock = lock_state_dir(state_dir)
    except StateDirError as exc:
        return fail(str(exc), 1)
    try:
        key = load_key(state_dir, config.library.signing_key)
    except SigningKeyError as exc:
        return fail(f"{exc} (a worker signs with the engine's library key: set ESPER_SIGNING_KEY)", 1)
    try:
        return asyncio.run(_serve(config, state_dir, args.redis_url, key, device))
    except KeyboardInterrupt:
        return 0
    finally:
        os.close(lock)
