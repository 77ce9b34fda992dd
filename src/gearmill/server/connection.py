"""asyncio edge: a protocol per connection whose reads run in a compiled Stream."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import TYPE_CHECKING, cast

from ..protocol.codec import Decoder
from .broker import Peer
from .stream import Stream

if TYPE_CHECKING:
    from .app import Server


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return host == "" or host.startswith("/")  # unix sockets are local


class GearmanProtocol(asyncio.BufferedProtocol):
    # get_buffer and buffer_updated are instance attributes: the Stream's
    # (compiled) bound methods, which the event loop then calls directly
    __slots__ = ("buffer_updated", "get_buffer", "server", "stream")

    def __init__(self, server: Server) -> None:
        self.server = server
        self.stream = Stream(server.hub, Decoder(server=True, max_payload=server.config.max_packet))
        self.get_buffer = self.stream.get_buffer  # type: ignore[method-assign]
        self.buffer_updated = self.stream.buffer_updated  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        peername = transport.get_extra_info("peername")
        host = peername[0] if isinstance(peername, tuple) else ""
        fd = -1
        if sock is not None:
            fd = sock.fileno()
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                self.server.tune_socket(sock)
        peer = self.server.broker.connect(Peer(fd, host or "-", _is_loopback(host)))
        self.stream.attach(peer, cast(asyncio.Transport, transport))

    def connection_lost(self, exc: Exception | None) -> None:
        self.stream.detach()

    def eof_received(self) -> bool:
        # gearmand treats a half-close as a disconnect; so do we, after
        # answering what was already received.
        return False
