"""One socket connection's hot path: read -> decoder -> broker -> one write per peer.

Compiled with the broker (see ``_accel``). ``connection.py`` gives the event
loop a :class:`Stream`'s bound ``data_received`` as the protocol's own, so an
ordinary read runs no interpreted code: only admin lines, timers and shutdown
call back into the edge.

The peer's :class:`~.sink.Sink` is the transport itself: the broker's flush
calls the transport's ``write`` with no stream method in between (a call
through a compiled wrapper and a second method lookup per write).

An ordinary read arrives as ``bytes`` from the event loop's own receive buffer
(shared by every connection), so an idle connection holds no read buffer. The
data of a large packet is read straight into its final place
(``Decoder.payload_target``): while one arrives, the edge's ``Hub.in_place``
puts a buffered protocol (``get_buffer``/``buffer_updated``) in front of the
transport, and takes it away when the packet is complete. Reading every packet
that way cost about 1,600 instructions a read more (a Python-level
``get_buffer`` call, a memoryview slice and its copy): a sixth of a GET_STATUS
round trip (bench/micro/icount.py ping 8,329 -> 6,696, drain 20,308 -> 18,743).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

from ..protocol.codec import Decoder, Event
from .broker import Broker
from .core import TURN_BUDGET
from .model import Peer

# uvloop reads at most 256 KiB at a time
RECV_BUFFER: Final = 256 * 1024
# called unbound: compiled, a method call looks the name up on every read
_tobytes: Final = memoryview.tobytes


class Transport(Protocol):
    """The part of ``asyncio.Transport`` a stream uses (and, as its peer's sink, the broker)."""

    def write(self, data: bytes) -> None: ...
    def writelines(self, data: list[bytes]) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class Hub:
    """What the streams of one server share."""

    __slots__ = ("after", "broker", "defer", "in_place", "recv_view")

    def __init__(
        self,
        broker: Broker,
        on_text: Callable[[Peer, bytes], bytes | None],
        after: Callable[[], None],
        defer: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        self.broker = broker
        # runs a callable on a later turn of the event loop (loop.call_soon)
        self.defer = defer
        self.recv_view = memoryview(bytearray(RECV_BUFFER))
        # an admin line -> its reply, or None to close the connection
        broker.on_text = on_text
        # timers to arm or a shutdown to carry on: called after a flush that needs it
        self.after = after
        # (stream, True): a large packet's data is arriving, have the transport call
        # the stream's get_buffer/buffer_updated; (stream, False): data_received again.
        # None (an edge without a loop): data_received copies into the packet instead.
        self.in_place: Callable[[Stream, bool], None] | None = None


class Stream:
    """Flow control: reading from the peer stops while more than the
    transport's high-water mark is owed to it (``pause_writing``) and while
    events of an earlier read wait for their turn (``backlog``)."""

    __slots__ = (
        "backlog",
        "broker",
        "decoder",
        "deferred",
        "hub",
        "next",
        "peer",
        "reading",
        "spoke",
        "transport",
        "write_paused",
    )

    def __init__(self, hub: Hub, decoder: Decoder) -> None:
        self.hub = hub
        self.broker = hub.broker
        self.decoder = decoder
        self.peer: Peer | None = None
        self.transport: Transport | None = None
        # events of a read not handled yet (the turn's budget ran out), from ``next``
        self.backlog: list[Event] | None = None
        self.next = 0
        self.deferred = False  # a carry_on is scheduled
        self.write_paused = False
        self.reading = True
        self.spoke = False  # a byte was read (the idle timeout's question)

    def attach(self, peer: Peer, transport: Transport) -> None:
        self.peer = peer
        self.transport = transport
        peer.sink = transport

    def detach(self) -> None:
        """The connection is gone: requeue its jobs, tell the others."""
        peer = self.peer
        if peer is not None:
            self.peer = None
            self.broker.disconnect(peer)
            flush(self.hub)

    def data_received(self, data: bytes) -> None:
        """An ordinary read."""
        self.spoke = True
        decoder = self.decoder
        events = decoder.feed(data)
        if decoder.payload_target() is not None:
            in_place = self.hub.in_place
            if in_place is not None:
                in_place(self, True)
        self._handle(events)

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the read of a large packet's data goes (while ``in_place`` is on)."""
        target = self.decoder.payload_target()
        return self.hub.recv_view if target is None else target

    def buffer_updated(self, nbytes: int) -> None:
        self.spoke = True
        decoder = self.decoder
        if decoder.payload_target() is None:
            events = decoder.feed(_tobytes(self.hub.recv_view[:nbytes]))
        else:
            events = decoder.payload_filled(nbytes)
            if decoder.payload_target() is None:
                in_place = self.hub.in_place
                if in_place is not None:
                    in_place(self, False)  # the packet is complete
        self._handle(events)

    def _handle(self, events: list[Event]) -> None:
        peer = self.peer
        if peer is None or peer.close:
            return
        done = self.broker.handle_events(peer, events, 0, TURN_BUDGET)
        if done < len(events) and not peer.close:
            self._keep(events, done)
        flush(self.hub)

    # ---------------------------------------------------------- flow control

    def _keep(self, events: list[Event], start: int) -> None:
        """The turn's budget ran out: stop reading, go on later."""
        peer = self.peer
        if self.hub.defer is None and peer is not None:
            # no event loop to come back on (an edge without one): all at once
            self.broker.handle_events(peer, events, start)
            return
        self.backlog = events
        self.next = start
        self._update_reading()
        self._schedule()

    def _schedule(self) -> None:
        defer = self.hub.defer
        if not self.deferred and not self.write_paused and defer is not None:
            self.deferred = True
            defer(self.carry_on)

    def carry_on(self) -> None:
        """The next part of a backlog, one budget's worth per turn."""
        self.deferred = False
        events = self.backlog
        peer = self.peer
        if events is None:
            return
        if peer is None or peer.close:
            self.backlog = None
            return
        if self.write_paused:
            return  # resume_writing schedules the rest
        done = self.broker.handle_events(peer, events, self.next, TURN_BUDGET)
        if done < len(events) and not peer.close:
            self.next = done
            self._schedule()
        else:
            self.backlog = None
            self._update_reading()
        flush(self.hub)

    def pause_writing(self) -> None:
        """More than the high-water mark is owed to the peer: read no more from it."""
        self.write_paused = True
        self._update_reading()
        peer = self.peer
        if peer is not None:
            self.broker.pause(peer)

    def resume_writing(self) -> None:
        self.write_paused = False
        # the transport may call this while the broker writes: the broker
        # hears of it on the next turn
        defer = self.hub.defer
        if defer is not None:
            defer(self.resumed)
        else:
            self.resumed()
        if self.backlog is not None:
            self._schedule()
        else:
            self._update_reading()

    def resumed(self) -> None:
        """The peer read its replies down: its parked jobs may run again."""
        peer = self.peer
        if peer is not None and not self.write_paused:
            self.broker.resume(peer)
            flush(self.hub)  # the NOOPs for its jobs

    def _update_reading(self) -> None:
        transport = self.transport
        want = not self.write_paused and self.backlog is None
        if transport is not None and want != self.reading:
            self.reading = want
            if want:
                transport.resume_reading()
            else:
                transport.pause_reading()


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
