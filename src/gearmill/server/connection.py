"""asyncio edge: bytes in -> decoder -> broker -> one write per peer per batch.

Reads go into one receive buffer shared by every connection (the loop reads
and calls ``buffer_updated`` before it reads another socket), so an idle
connection holds no read buffer; the data of a large packet is read straight
into its final place (``Decoder.payload_target``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import TYPE_CHECKING, cast

from ..protocol.codec import MALFORMED, TEXT, Decoder
from . import admin
from .broker import Peer

if TYPE_CHECKING:
    from .app import Server

log = logging.getLogger("gearmill.connection")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return host == "" or host.startswith("/")  # unix sockets are local


class GearmanProtocol(asyncio.BufferedProtocol):
    __slots__ = ("broker", "decoder", "peer", "server", "transport")

    def __init__(self, server: Server) -> None:
        self.server = server
        self.broker = server.broker
        self.decoder = Decoder(server=True, max_payload=server.config.max_packet)
        self.transport: asyncio.Transport | None = None
        self.peer: Peer | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        peername = transport.get_extra_info("peername")
        host = peername[0] if isinstance(peername, tuple) else ""
        fd = -1
        if sock is not None:
            fd = sock.fileno()
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                self.server.tune_socket(sock)
        self.peer = self.broker.connect(Peer(fd, host or "-", _is_loopback(host)))
        self.peer.io = self

    def get_buffer(self, sizehint: int) -> memoryview:
        target = self.decoder.payload_target()
        return self.server.recv_view if target is None else target

    def buffer_updated(self, nbytes: int) -> None:
        decoder = self.decoder
        if decoder.payload_target() is None:
            events = decoder.feed(self.server.recv_view[:nbytes].tobytes())
        else:
            events = decoder.payload_filled(nbytes)
        peer = self.peer
        if peer is None or peer.close:
            return
        broker = self.broker
        n = len(events)
        i = broker.handle_events(peer, events, 0)
        while i < n:  # the broker stopped at an admin line or a malformed stream
            kind, args = events[i]
            if kind == TEXT:
                reply = admin.run(broker, peer, args[0])
                if reply is None:
                    self._close_after_flush(peer, "admin line with more than 5 tokens")
                    break
                broker._send(peer, reply)
            else:
                assert kind == MALFORMED
                self._close_after_flush(peer, args[0].decode())
                break
            i = broker.handle_events(peer, events, i + 1)
        self.server.flush()

    def _close_after_flush(self, peer: Peer, why: str) -> None:
        log.info("closing connection from %s: %s", peer.addr, why)
        peer.close = True
        if not peer.out:
            self.broker.dirty.append(peer)

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer
        if peer is not None:
            self.broker.disconnect(peer)
            self.peer = None
            self.server.flush()

    def eof_received(self) -> bool:
        # gearmand treats a half-close as a disconnect; so do we, after
        # answering what was already received.
        return False
