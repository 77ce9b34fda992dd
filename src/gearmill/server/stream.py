"""One socket connection's hot path: read -> decoder -> broker -> one write per peer.

Compiled with the broker (see ``_accel``). ``connection.py`` gives the event
loop a :class:`Stream`'s bound ``get_buffer``/``buffer_updated`` as the
protocol's own, so an ordinary read runs no interpreted code: only admin
lines, timers and shutdown call back into the edge.

A stream is also its peer's :class:`~.sink.Sink`: the broker writes the peer's
replies to it, and it hands them to the transport.

Reads go into one receive buffer shared by every connection (the loop calls
``buffer_updated`` before it reads another socket), so an idle connection
holds no read buffer; the data of a large packet is read straight into its
final place (``Decoder.payload_target``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

from ..protocol.codec import Decoder
from .broker import Broker
from .model import Peer

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

    __slots__ = ("after", "broker", "recv_view")

    def __init__(
        self,
        broker: Broker,
        on_text: Callable[[Peer, bytes], bytes | None],
        after: Callable[[], None],
    ) -> None:
        self.broker = broker
        self.recv_view = memoryview(bytearray(RECV_BUFFER))
        # an admin line -> its reply, or None to close the connection
        broker.on_text = on_text
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
        peer.sink = self

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
        self.broker.handle_events(peer, events, 0)
        flush(self.hub)

    # --------------------------------------------------------- the peer's sink

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None:
            transport.write(data)

    def writelines(self, data: list[bytes]) -> None:
        transport = self.transport
        if transport is not None:
            transport.writelines(data)

    def close(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.close()

    def abort(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.abort()


def flush(hub: Hub) -> None:
    """End of a read batch: hand the journal's entries to its consumer, write
    every peer's pending output, then let the edge arm timers or go on with a
    shutdown if the broker asks for it."""
    broker = hub.broker
    journal = broker.journal
    if journal is not None:
        journal.drain()
    broker.flush()
    if broker.timers_changed or broker.stopping is not None:
        hub.after()
