"""Flags shared by the client-side commands: where the job servers are."""

from __future__ import annotations

import argparse
import os
import ssl

from ..client.servers import format_address, parse_servers

# how to fix an address where something other than a job server answers (its HTTP port)
WRONG_PORT_HINT = "give the job server's port with -p PORT (or its address with -s HOST:PORT)"


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-h", "--host", help="job server host (default 127.0.0.1)")
    p.add_argument("-p", "--port", type=int, help="job server port (default 4730)")
    p.add_argument(
        "-s",
        "--servers",
        metavar="HOST:PORT,...",
        help="job servers (default $GEARMAN_SERVERS or $GEARMAN_SERVER, else 127.0.0.1:4730);"
        " tls://HOST:PORT for TLS",
    )
    p.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="PEM CA that signs the tls:// servers' certificates"
        " (default $GEARMILL_CLIENT_CA, else the system's)",
    )
    p.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="PEM client certificate for tls:// servers (default $GEARMILL_CLIENT_CERT)",
    )
    p.add_argument(
        "--tls-key",
        metavar="FILE",
        help="PEM key of --tls-cert (default $GEARMILL_CLIENT_KEY, else in that file)",
    )
    p.add_argument("-H", "--help", action="help", help="show this help and exit")


def server_list(args: argparse.Namespace) -> list[str]:
    """Servers from -s, or -h/-p, or the environment; raises ValueError on a bad address."""
    if args.servers:
        spec: str | None = args.servers
        source = "-s"
    elif args.host or args.port:
        host = args.host or "127.0.0.1"
        spec = f"[{host}]:{args.port or 4730}" if ":" in host else f"{host}:{args.port or 4730}"
        source = "-h/-p"
    else:
        # a bad address must name the variable: nothing on the command line shows it
        source = "$GEARMAN_SERVERS" if os.environ.get("GEARMAN_SERVERS") else "$GEARMAN_SERVER"
        spec = os.environ.get(source[1:])
    try:
        return [format_address(a) for a in parse_servers(spec)]
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The SSL context for tls:// servers from --tls-*, or None (the environment's);
    raises ValueError on a file that cannot be loaded."""
    if not (args.tls_ca or args.tls_cert or args.tls_key):
        return None
    from ..client.tls import client_context

    env = os.environ
    return client_context(
        args.tls_ca or env.get("GEARMILL_CLIENT_CA") or None,
        args.tls_cert or env.get("GEARMILL_CLIENT_CERT") or None,
        args.tls_key or env.get("GEARMILL_CLIENT_KEY") or None,
    )
