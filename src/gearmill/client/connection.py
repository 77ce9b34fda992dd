"""One asyncio connection to a job server, shared by the client and the worker.

Requests that get exactly one reply (SUBMIT -> JOB_CREATED, GET_STATUS ->
STATUS_RES, ECHO_REQ -> ECHO_RES, OPTION_REQ -> OPTION_RES, GET_STATUS_UNIQUE
-> STATUS_RES_UNIQUE) are answered in order per connection, and an ERROR
answers the oldest outstanding one (that is how gearmand and libgearman pair
them). Everything else (WORK_*, NOOP, NO_JOB, JOB_ASSIGN*) goes to
``on_packet``.
"""

from __future__ import annotations

import asyncio
import collections
import socket
from collections.abc import Callable
from typing import cast

from ..errors import CannotConnect, ConnectionLost, ProtocolError, ServerError, connect_reason
from ..protocol.codec import MALFORMED, Decoder
from ..protocol.packets import HEADER, REQ, PacketType
from .servers import Address, TLSAddress, format_address, tls_arguments

_REPLIES = frozenset(
    {
        PacketType.JOB_CREATED,
        PacketType.STATUS_RES,
        PacketType.ECHO_RES,
        PacketType.OPTION_RES,
        PacketType.STATUS_RES_UNIQUE,
    }
)
_ERROR = int(PacketType.ERROR)

PacketHandler = Callable[["Connection", int, list[bytes]], None]
ReplyHandler = Callable[[list[bytes]], None]


class Connection(asyncio.Protocol):
    def __init__(
        self,
        address: Address,
        on_packet: PacketHandler | None = None,
        on_lost: Callable[[Connection, Exception], None] | None = None,
    ) -> None:
        self.address = address
        self.name = format_address(address)
        self.on_packet = on_packet
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.decoder = Decoder(server=False)
        self.pending: collections.deque[
            tuple[int, asyncio.Future[list[bytes]], ReplyHandler | None]
        ] = collections.deque()
        self.closed: Exception | None = None
        self._seen = False  # any bytes from the server yet
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._loop = asyncio.get_event_loop()

    @classmethod
    async def open(
        cls,
        address: Address,
        on_packet: PacketHandler | None = None,
        on_lost: Callable[[Connection, Exception], None] | None = None,
        timeout: float | None = 5.0,
    ) -> Connection:
        loop = asyncio.get_running_loop()
        host, port = address
        context, hostname = tls_arguments(address)
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(
                    lambda: cls(address, on_packet, on_lost),
                    host,
                    port,
                    ssl=context,
                    server_hostname=hostname,
                ),
                timeout,
            )
        except (TimeoutError, OSError) as e:
            raise CannotConnect(format_address(address), connect_reason(e, timeout)) from e
        return protocol

    # ----------------------------------------------------------- asyncio API

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._seen = True
        pending = self.pending
        for kind, args in self.decoder.feed(data):
            if kind in _REPLIES or (kind == _ERROR and pending):
                if not pending:
                    self._fail(ProtocolError(f"{self.name}: unexpected reply type {kind}"))
                    return
                expected, future, on_reply = pending.popleft()
                if future.done():
                    continue  # the caller gave up waiting (timeout, cancel)
                if kind == _ERROR:
                    future.set_exception(_server_error(args))
                elif kind != expected:
                    self._fail(ProtocolError(f"{self.name}: reply {kind} to request {expected}"))
                    return
                else:
                    if on_reply is not None:
                        on_reply(args)
                    future.set_result(args)
            elif kind == MALFORMED:
                # most often another service on the port (HTTP, SSH, a database)
                sent = args[0].decode()
                self._fail(
                    ProtocolError(f"{self.name}: {sent} (is that a Gearman job server?)", sent)
                )
                return
            elif self.on_packet is not None:
                self.on_packet(self, kind, args)

    def connection_lost(self, exc: Exception | None) -> None:
        why = str(exc) if exc else "closed by server"
        if isinstance(self.address, TLSAddress) and not self._seen:
            # TLS 1.3 refuses a client certificate after the client's handshake is done
            why += (
                " before answering (a TLS server that refused this client's certificate"
                " does that; see --tls-cert, GEARMILL_CLIENT_CERT or tls=client_context(cert=...))"
            )
        elif exc is None and not self._seen:
            # gearmill's TLS listener closes a plain connection without a byte
            why += f" before answering (a TLS listener does that: then use tls://{self.name})"
        self._fail(ConnectionLost(self.name, why))

    # ------------------------------------------------------------------ ours

    def _fail(self, error: Exception, abort: bool = True) -> None:
        if self.closed is not None:
            return
        self.closed = error
        if abort and self.transport is not None:
            self.transport.abort()
        while self.pending:
            _, future, _ = self.pending.popleft()
            if not future.done():
                future.set_exception(error)
        if self.on_lost is not None:
            self.on_lost(self, error)

    def send(self, ptype: int, *args: bytes) -> None:
        """Queue one packet; packets queued in one loop iteration go out in one write."""
        if self.closed is not None:
            raise self.closed
        payload = b"\x00".join(args)
        self._out.append(HEADER.pack(REQ, ptype, len(payload)))
        self._out.append(payload)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.transport is not None and self.closed is None and self._out:
            self.transport.writelines(self._out)
        self._out = []

    def request(
        self, ptype: int, expect: int, *args: bytes, on_reply: ReplyHandler | None = None
    ) -> asyncio.Future[list[bytes]]:
        """Send a request; the future gets its reply. ``on_reply`` runs as the reply is
        read, before any later packet: the client registers a job's handle there, so
        a WORK_COMPLETE in the same read as its JOB_CREATED is not dropped."""
        future: asyncio.Future[list[bytes]] = self._loop.create_future()
        self.send(ptype, *args)
        self.pending.append((expect, future, on_reply))
        return future

    def close(self) -> None:
        """Close after writing what is queued; no ``on_lost`` call for a close we asked for."""
        self.on_lost = None
        self._flush()
        if self.transport is not None:
            self.transport.close()
        self._fail(ConnectionLost(self.name, "closed"), abort=False)


def _server_error(args: list[bytes]) -> ServerError:
    return ServerError(args[0].decode(errors="replace"), args[1].decode(errors="replace"))
