"""asyncio edge: a protocol per connection whose reads run in a compiled Stream."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import cast

from ..protocol.codec import Decoder
from .debuglog import who
from .guard import Guard
from .model import Peer
from .stream import Hub, Stream

log = logging.getLogger("gearmill.server")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return host == "" or host.startswith("/")  # unix sockets are local


def _address(host: str, port: object) -> str:
    if port == "":
        return host or "a unix socket"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GearmanProtocol(asyncio.Protocol):
    # data_received is an instance attribute: the Stream's (compiled) bound
    # method, which the event loop then calls directly
    __slots__ = (
        "addr",
        "data_received",
        "guard",
        "hub",
        "idle",
        "max_owed",
        "stream",
        "tune_socket",
    )

    def __init__(
        self,
        hub: Hub,
        max_packet: int,
        tune_socket: Callable[[socket.socket], None] | None = None,
        max_owed: int = 0,
        guard: Guard | None = None,
    ) -> None:
        self.hub = hub
        self.guard = guard
        self.addr: str | None = None  # counted by the guard while set
        self.idle: asyncio.TimerHandle | None = None
        self.tune_socket = tune_socket
        # bytes owed to the peer above which it is read no more (0: asyncio's default)
        self.max_owed = max_owed
        self.stream = stream = Stream(hub, Decoder(server=True, max_payload=max_packet))
        self.data_received = stream.data_received  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        peername = transport.get_extra_info("peername")
        host = peername[0] if isinstance(peername, tuple) else ""
        guard = self.guard
        if guard is not None:
            if not guard.admit(host):
                # gearmand has no ERROR for this: the peer sees a reset
                cast(asyncio.Transport, transport).abort()
                return
            self.addr = host
            if guard.idle_timeout:
                self.idle = asyncio.get_running_loop().call_later(
                    guard.idle_timeout, self._idle, transport
                )
        fd = -1
        if sock is not None:
            fd = sock.fileno()
            if self.tune_socket is not None and sock.family in (
                socket.AF_INET,
                socket.AF_INET6,
            ):
                self.tune_socket(sock)
        peer = Peer(fd, host or "-", is_loopback(host))
        if self.max_owed > 0:
            # resume once half is written: fewer pause/resume flips than at 0
            cast(asyncio.WriteTransport, transport).set_write_buffer_limits(
                high=self.max_owed, low=self.max_owed // 2
            )
        self.identify(peer, transport)
        self.stream.attach(peer, cast(asyncio.Transport, transport))
        self.hub.broker.connect(peer)
        if log.isEnabledFor(logging.DEBUG):  # once per connection, never per packet
            port = peername[1] if isinstance(peername, tuple) else ""
            log.debug("connection %d opened from %s", fd, _address(host, port))

    # The transport calls these when the bytes owed to the peer cross the marks; methods
    # rather than bound methods kept per connection (as data_received above is,
    # being called for every read): two fewer objects, 130 B, per idle connection.
    def pause_writing(self) -> None:
        self.stream.pause_writing()

    def resume_writing(self) -> None:
        self.stream.resume_writing()

    def identify(self, peer: Peer, transport: asyncio.BaseTransport) -> None:
        """Set what the access list knows of the peer beyond its address (TLS: its subject)."""

    def _idle(self, transport: asyncio.BaseTransport) -> None:
        self.idle = None
        if not self.stream.spoke and self.guard is not None:
            self.guard.once(
                "idle_timeout",
                f"a connection sent nothing for {self.guard.idle_timeout} s (--idle-timeout); "
                "closed",
            )
            cast(asyncio.Transport, transport).abort()

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.stream.peer
        if peer is not None and log.isEnabledFor(logging.DEBUG):
            log.debug("%s closed%s", who(peer), f": {exc}" if exc else "")
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        if self.addr is not None and self.guard is not None:
            self.guard.leave(self.addr)
            self.addr = None
        self.stream.detach()

    def eof_received(self) -> bool:
        # gearmand treats a half-close as a disconnect; so do we, after
        # answering what was already received.
        return False


class InPlace(asyncio.BufferedProtocol):
    """The transport's protocol while a large packet's data arrives: reads go straight
    into the packet's final ``bytes``; the rest is the connection's own protocol's."""

    __slots__ = ("buffer_updated", "get_buffer", "main")

    def __init__(self, main: GearmanProtocol) -> None:
        self.main = main
        self.get_buffer = main.stream.get_buffer  # type: ignore[method-assign]
        self.buffer_updated = main.stream.buffer_updated  # type: ignore[method-assign]

    def connection_lost(self, exc: Exception | None) -> None:
        self.main.connection_lost(exc)

    def pause_writing(self) -> None:
        self.main.pause_writing()

    def resume_writing(self) -> None:
        self.main.resume_writing()

    def eof_received(self) -> bool:
        return self.main.eof_received()


def read_in_place(stream: Stream, on: bool) -> None:
    """``Hub.in_place`` for asyncio transports (plain and TLS alike: both switch
    between a protocol's two ways of reading on ``set_protocol``)."""
    transport = cast(asyncio.Transport | None, stream.transport)
    if transport is None:
        return
    current = transport.get_protocol()
    if on and isinstance(current, GearmanProtocol):
        transport.set_protocol(InPlace(current))
    elif not on and isinstance(current, InPlace):
        transport.set_protocol(current.main)
