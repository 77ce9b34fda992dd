"""Job server addresses: ``host[:port][,host[:port]]…``, IPv6 in brackets;
``tls://host[:port]`` for a server spoken to over TLS (a :class:`TLSAddress`)."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable

from ..protocol.packets import DEFAULT_PORT

Address = tuple[str, int]


class TLSAddress(tuple[str, int]):
    """A server reached over TLS; unpacks as ``(host, port)`` like any address.
    ``context``: the client's SSL context (None: :func:`gearmill.client.tls.default_context`)."""

    context: ssl.SSLContext | None

    def __new__(cls, host: str, port: int, context: ssl.SSLContext | None = None) -> TLSAddress:
        self = super().__new__(cls, (host, port))
        self.context = context
        return self


def tls_arguments(address: Address) -> tuple[ssl.SSLContext | None, str | None]:
    """``ssl`` and ``server_hostname`` for opening a connection to ``address``."""
    if not isinstance(address, TLSAddress):
        return None, None
    from .tls import default_context  # reads the client's environment once, when needed

    return address.context or default_context(), address[0]


def with_context(addresses: list[Address], context: ssl.SSLContext | None) -> list[Address]:
    """The TLS addresses among ``addresses`` given ``context`` (None leaves them as they are)."""
    if context is None:
        return addresses
    return [TLSAddress(a[0], a[1], context) if isinstance(a, TLSAddress) else a for a in addresses]


def parse_server(text: str) -> Address:
    text = text.strip()
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme.lower() not in ("tcp", "tls"):
            raise ValueError(
                f"{text!r}: unknown scheme {scheme!r}; use tls://host:port or host:port"
            )
        host, port = parse_server(rest)
        return TLSAddress(host, port) if scheme.lower() == "tls" else (host, port)
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
        name = "GEARMAN_SERVERS" if os.environ.get("GEARMAN_SERVERS") else "GEARMAN_SERVER"
        try:
            return parse_servers(os.environ.get(name) or "")
        except ValueError as e:  # nothing in the caller's code shows where it came from
            raise ValueError(f"${name}: {e}") from None
    items = spec.split(",") if isinstance(spec, str) else [s for x in spec for s in x.split(",")]
    servers = [parse_server(s) for s in items if s.strip()]
    return servers or [("127.0.0.1", DEFAULT_PORT)]


def format_address(address: Address) -> str:
    host, port = address
    scheme = "tls://" if isinstance(address, TLSAddress) else ""
    return f"{scheme}[{host}]:{port}" if ":" in host else f"{scheme}{host}:{port}"
