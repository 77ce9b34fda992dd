"""asyncio edge: a protocol per connection whose reads run in a compiled Stream."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable
from typing import cast

from ..protocol.codec import Decoder
from .model import Peer
from .stream import Hub, Stream


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return host == "" or host.startswith("/")  # unix sockets are local


class GearmanProtocol(asyncio.BufferedProtocol):
    # get_buffer and buffer_updated are instance attributes: the Stream's
    # (compiled) bound methods, which the event loop then calls directly
    __slots__ = ("buffer_updated", "get_buffer", "hub", "stream", "tune_socket")

    def __init__(
        self,
        hub: Hub,
        max_packet: int,
        tune_socket: Callable[[socket.socket], None] | None = None,
    ) -> None:
        self.hub = hub
        self.tune_socket = tune_socket
        self.stream = Stream(hub, Decoder(server=True, max_payload=max_packet))
        self.get_buffer = self.stream.get_buffer  # type: ignore[method-assign]
        self.buffer_updated = self.stream.buffer_updated  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        peername = transport.get_extra_info("peername")
        host = peername[0] if isinstance(peername, tuple) else ""
        fd = -1
        if sock is not None:
            fd = sock.fileno()
            if self.tune_socket is not None and sock.family in (
                socket.AF_INET,
                socket.AF_INET6,
            ):
                self.tune_socket(sock)
        peer = Peer(fd, host or "-", is_loopback(host))
        self.identify(peer, transport)
        self.stream.attach(peer, cast(asyncio.Transport, transport))
        self.hub.broker.connect(peer)

    def identify(self, peer: Peer, transport: asyncio.BaseTransport) -> None:
        """Set what the access list knows of the peer beyond its address (TLS: its subject)."""

    def connection_lost(self, exc: Exception | None) -> None:
        self.stream.detach()

    def eof_received(self) -> bool:
        # gearmand treats a half-close as a disconnect; so do we, after
        # answering what was already received.
        return False
