"""`esper-tui serve [--host H] [--port P] [--public-url URL] [-- ESPER ARGS]`: the control room in a browser.

textual-serve answers HTTP and a websocket; every browser connection starts its own `esper-tui ESPER ARGS`
process, driven over that websocket, and ends it when the page closes. So a viewer can do whatever the keys
of that process allow: the dashboard of a local engine steers it, `attach --read-only` only watches. It listens
on 127.0.0.1 unless told otherwise, with no authentication of its own: anything wider belongs behind a proxy
that authenticates (README: "A browser door").
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import shlex
import socket
import sys
from urllib.parse import urlsplit

from esper_tui.commands.fail import fail

SERVED = ("attach", "replay", "compare")
"""Sub-commands with a screen to serve; no sub-command at all serves the dashboard of a local engine."""
NOT_SERVED = (
    "runs",
    "plot",
    "reports",
    "library",
    "wal",
    "config",
    "bus",
    "blueprint",
    "forge-worker",
    "serve",
)
LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){LABEL}(?:\.{LABEL})*$")
"""A host name as RFC 1123 allows it: dot-separated labels of letters, digits and inner hyphens."""


def split_esper_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(serve's own flags, the ESPER ARGS after `--`)."""
    if "--" in argv:
        at = argv.index("--")
        return argv[:at], argv[at + 1 :]
    return argv, []


def serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="esper-tui serve",
        usage="esper-tui serve [--host HOST] [--port PORT] [--public-url URL] [-- ESPER ARGS]",
        description="Serve the control room to browsers (textual-serve). Each browser connection runs its own "
        "`esper-tui ESPER ARGS` (default: the dashboard of a local engine; or attach, replay, compare).",
        epilog="examples:\n"
        "  esper-tui serve                                        the dashboard on http://127.0.0.1:8000\n"
        "  esper-tui serve --port 8080 -- --epochs 30 --eager     a local engine's dashboard, flags passed on\n"
        "  esper-tui serve -- attach --redis-url URL --engine-key HEX --read-only   watch an engine, never steer\n"
        "  esper-tui serve -- replay RUN --state-dir var          a recording\n"
        "  esper-tui serve --public-url https://esper.example.org   behind a proxy (README: A browser door)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this machine)")
    p.add_argument("--port", default="8000", help="the TCP port, 1-65535 (default 8000)")
    p.add_argument(
        "--public-url",
        metavar="URL",
        help="the address browsers reach the page at, when it is not http://HOST:PORT (a proxy)",
    )
    return p


def port_problem(text: str) -> str | None:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        return f"--port: expected a TCP port 1-65535, got {text!r}"
    return None


def is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine only: a loopback address, or a name that resolves only to such."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return all(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]).is_loopback for info in found)


def host_problem(host: str) -> str | None:
    """Why `host` cannot be listened on (not an address or a host name, or one that does not resolve)."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if not HOSTNAME.match(host):
        return f"--host: expected an IP address or a host name, got {host!r}"
    try:
        socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        return f"--host {host}: does not resolve ({exc.strerror or exc})"
    return None


def public_url_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        return f"--public-url: expected http(s)://host[:port][/path], got {url!r}"
    return None


def base_url(host: str, port: int) -> str:
    """http://HOST:PORT, an IPv6 address in brackets (textual-serve leaves them out)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def served_problem(esper_args: list[str]) -> str | None:
    """Why ESPER ARGS have no screen to serve (a sub-command without one, or a headless run), or None."""
    first = esper_args[0] if esper_args else ""
    if first in NOT_SERVED:
        return f"`esper-tui {first}` has no screen to serve: serve runs the dashboard, {', '.join(SERVED)}"
    if "--no-ui" in esper_args:
        return "--no-ui: a headless run has no screen to serve (drop it)"
    return None


def served_command(esper_args: list[str]) -> str:
    """The shell command textual-serve runs per connection: this Python, this package, the ESPER ARGS."""
    return shlex.join([sys.executable, "-m", "esper_tui", *esper_args])


def serve_main(args: argparse.Namespace, esper_args: list[str]) -> int:
    """Check the flags (one line and exit 2 for each kind of nonsense), then serve until SIGINT or SIGTERM."""
    if (problem := port_problem(args.port) or host_problem(args.host)) is not None:
        return fail(problem, 2)
    if args.public_url is not None and (problem := public_url_problem(args.public_url)) is not None:
        return fail(problem, 2)
    if is_wildcard(args.host) and args.public_url is None:
        return fail(
            f"--host {args.host}: browsers are sent the page's own address for the websocket, and {args.host} is "
            "none; give --public-url (the address they reach it at)",
            2,
        )
    port = int(args.port)
    if not is_loopback(args.host):
        print(
            f"esper-tui: serving on {args.host}: anyone who reaches that port gets a control room, with no "
            "password (README: A browser door)",
            file=sys.stderr,
        )
    from esper_tui.ui.web import EsperServer

    server = EsperServer(
        served_command(esper_args), args.host, port, public_url=(args.public_url or base_url(args.host, port))
    )
    try:
        server.serve()
    except OSError as exc:  # the port is taken, or the address is not this machine's
        return fail(f"cannot listen on {base_url(args.host, port)}: {exc.strerror or exc}", 1)
    return 0
