"""Flags shared by the client-side commands: where the job servers are."""

from __future__ import annotations

import argparse
import os

from ..client.servers import format_address, parse_servers


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-h", "--host", help="job server host (default 127.0.0.1)")
    p.add_argument("-p", "--port", type=int, help="job server port (default 4730)")
    p.add_argument(
        "-s",
        "--servers",
        metavar="HOST:PORT,...",
        help="job servers (default $GEARMAN_SERVERS or $GEARMAN_SERVER, else 127.0.0.1:4730)",
    )
    p.add_argument("-H", "--help", action="help", help="show this help and exit")


def server_list(args: argparse.Namespace) -> list[str]:
    """Servers from -s, or -h/-p, or the environment; raises ValueError on a bad address."""
    if args.servers:
        spec: str | None = args.servers
    elif args.host or args.port:
        host = args.host or "127.0.0.1"
        spec = f"[{host}]:{args.port or 4730}" if ":" in host else f"{host}:{args.port or 4730}"
    else:
        spec = os.environ.get("GEARMAN_SERVERS") or os.environ.get("GEARMAN_SERVER")
    return [format_address(a) for a in parse_servers(spec)]
