"""Job server addresses: ``host[:port][,host[:port]]…``, IPv6 in brackets."""

from __future__ import annotations

import os
from collections.abc import Iterable

from ..protocol.packets import DEFAULT_PORT

Address = tuple[str, int]


def parse_server(text: str) -> Address:
    text = text.strip()
    if not text:
        raise ValueError("empty server address")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: missing ']' after an IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected ':port' after ']'")
        port_text = rest[1:]
    elif text.count(":") > 1:
        host, port_text = text, ""  # a bare IPv6 address
    else:
        host, _, port_text = text.partition(":")
    try:
        port = int(port_text) if port_text else DEFAULT_PORT
    except ValueError:
        raise ValueError(f"{text!r}: port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: port {port} is out of range")
    return host or "localhost", port


def parse_servers(spec: str | Iterable[str] | None) -> list[Address]:
    """Servers from an argument, else ``GEARMAN_SERVERS``/``GEARMAN_SERVER``, else 127.0.0.1."""
    if spec is None:
        spec = os.environ.get("GEARMAN_SERVERS") or os.environ.get("GEARMAN_SERVER") or ""
    items = spec.split(",") if isinstance(spec, str) else [s for x in spec for s in x.split(",")]
    servers = [parse_server(s) for s in items if s.strip()]
    return servers or [("127.0.0.1", DEFAULT_PORT)]


def format_address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
