"""One connection's hot path: read -> decoder -> broker -> one write per peer.

Compiled with the broker (see ``_accel``). ``connection.py`` gives the event
loop a :class:`Stream`'s bound ``get_buffer``/``buffer_updated`` as the
protocol's own, so an ordinary read runs no interpreted code: only admin
lines, a malformed stream, timers and shutdown call back into the edge.

Reads go into one receive buffer shared by every connection (the loop calls
``buffer_updated`` before it reads another socket), so an idle connection
holds no read buffer; the data of a large packet is read straight into its
final place (``Decoder.payload_target``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final, Protocol

from ..protocol.codec import MALFORMED, TEXT, Decoder
from ..protocol.packets import BIG_PIECE
from .broker import Broker, Peer

log = logging.getLogger("gearmill.connection")

# uvloop reads at most 256 KiB at a time
RECV_BUFFER: Final = 256 * 1024


class Transport(Protocol):
    """The part of ``asyncio.Transport`` a stream uses."""

    def write(self, data: bytes) -> None: ...
    def writelines(self, data: list[bytes]) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class Hub:
    """What the streams of one server share."""

    __slots__ = ("after", "broker", "on_text", "recv_view")

    def __init__(
        self,
        broker: Broker,
        on_text: Callable[[Peer, bytes], bytes | None],
        after: Callable[[], None],
    ) -> None:
        self.broker = broker
        self.recv_view = memoryview(bytearray(RECV_BUFFER))
        # an admin line -> its reply, or None to close the connection
        self.on_text = on_text
        # timers to arm or a shutdown to carry on: called after a flush that needs it
        self.after = after


class Stream:
    __slots__ = ("broker", "decoder", "hub", "peer", "transport")

    def __init__(self, hub: Hub, decoder: Decoder) -> None:
        self.hub = hub
        self.broker = hub.broker
        self.decoder = decoder
        self.peer: Peer | None = None
        self.transport: Transport | None = None

    def attach(self, peer: Peer, transport: Transport) -> None:
        self.peer = peer
        self.transport = transport
        peer.io = self

    def detach(self) -> None:
        """The connection is gone: requeue its jobs, tell the others."""
        peer = self.peer
        if peer is not None:
            self.peer = None
            self.broker.disconnect(peer)
            flush(self.hub)

    def get_buffer(self, sizehint: int) -> memoryview:
        target = self.decoder.payload_target()
        return self.hub.recv_view if target is None else target

    def buffer_updated(self, nbytes: int) -> None:
        decoder = self.decoder
        if decoder.payload_target() is None:
            events = decoder.feed(self.hub.recv_view[:nbytes].tobytes())
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
                reply = self.hub.on_text(peer, args[0])
                if reply is None:
                    self.close_after_flush("admin line with more than 5 tokens")
                    break
                broker._send(peer, reply)
            else:
                assert kind == MALFORMED
                self.close_after_flush(args[0].decode())
                break
            i = broker.handle_events(peer, events, i + 1)
        flush(self.hub)

    def close_after_flush(self, why: str) -> None:
        peer = self.peer
        if peer is None:
            return
        log.info("closing connection from %s: %s", peer.addr, why)
        peer.close = True
        if not peer.out:
            self.broker.dirty.append(peer)


def flush(hub: Hub) -> None:
    """Write every peer's pending output (one write each), then let the edge
    arm timers or go on with a shutdown if the broker asks for it."""
    broker = hub.broker
    dirty = broker.dirty
    if dirty:
        for peer in dirty:
            io = peer.io
            out = peer.out
            if isinstance(io, Stream):
                transport = io.transport
                if transport is not None:
                    if len(out) == 1:
                        transport.write(out[0])
                    elif out:
                        # many small packets: one joined write; a large piece is
                        # handed over as is (uvloop writes the list with writev)
                        total = 0
                        for piece in out:
                            total += len(piece)
                        if total >= BIG_PIECE:
                            transport.writelines(out)
                        else:
                            transport.write(b"".join(out))
                    if peer.close:
                        transport.close()
            out.clear()
        dirty.clear()
    if broker.timers_changed or broker.stopping is not None:
        hub.after()
