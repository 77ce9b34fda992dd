"""The broker's edges in-process: the asyncio protocol and its compiled stream over a
fake transport (a real object with the transport's methods), an in-process peer
writing to a BufferSink, and the one access check every kind of peer passes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gearmill.protocol.codec import BIG, Decoder
from gearmill.protocol.packets import PacketType as T
from gearmill.protocol.packets import encode_req
from gearmill.server import admin
from gearmill.server.broker import Broker, BrokerConfig, Peer
from gearmill.server.connection import GearmanProtocol, read_in_place
from gearmill.server.model import PeerAccess
from gearmill.server.sink import BufferSink
from gearmill.server.stream import Hub


class FakeTransport:
    """What asyncio's transport offers a protocol, recording what is written."""

    def __init__(self, host: str = "127.0.0.1", port: int = 50000) -> None:
        self.peername = (host, port)
        self.written: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.protocol: Any = None
        self.switched: list[str] = []  # the protocols set after the first, by class name

    def get_protocol(self) -> Any:
        return self.protocol

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol
        self.switched.append(type(protocol).__name__)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peername if name == "peername" else default

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.written.append(bytes(data))

    def writelines(self, data: list[bytes]) -> None:
        for piece in data:
            self.write(piece)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def take(self) -> list[tuple[int, list[bytes]]]:
        events = Decoder(server=False).feed(b"".join(self.written))
        self.written.clear()
        return events


class Server:
    """A broker and its hub, wired as app.py wires them, without a loop."""

    def __init__(self, **kw: Any) -> None:
        self.broker = Broker(BrokerConfig(handle_prefix=b"H:t", **kw), time.time)
        self.after_calls = 0
        self.hub = Hub(self.broker, self._admin, self._after)
        self.hub.in_place = read_in_place

    def _admin(self, peer: Peer, line: bytes) -> bytes | None:
        return admin.run(self.broker, peer, line)

    def _after(self) -> None:
        self.after_calls += 1

    def connect(self, host: str = "127.0.0.1") -> tuple[GearmanProtocol, FakeTransport]:
        proto = GearmanProtocol(self.hub, max_packet=1 << 30)
        transport = FakeTransport(host)
        transport.protocol = proto
        proto.connection_made(transport)  # type: ignore[arg-type]
        return proto, transport


def send(proto: GearmanProtocol, data: bytes, chunk: int = 1 << 30) -> None:
    """Deliver ``data`` as the event loop would, to the transport's protocol of the
    moment: data_received, or (a buffered protocol) into get_buffer, then buffer_updated."""
    transport = proto.stream.transport
    assert isinstance(transport, FakeTransport)
    while data:
        current = transport.protocol
        if isinstance(current, asyncio.BufferedProtocol):
            buf = memoryview(current.get_buffer(-1))
            n = min(len(buf), len(data), chunk)
            buf[:n] = data[:n]
            current.buffer_updated(n)
        else:
            n = min(len(data), chunk)
            current.data_received(data[:n])
        data = data[n:]


def test_client_and_worker_over_fake_transports() -> None:
    s = Server()
    (cp, ct), (wp, wt) = s.connect(), s.connect()
    send(wp, encode_req(T.CAN_DO, b"f") + encode_req(T.PRE_SLEEP))
    send(cp, encode_req(T.SUBMIT_JOB, b"f", b"", b"data"))
    assert ct.take() == [(T.JOB_CREATED, [b"H:t:1"])]
    assert wt.take() == [(T.NOOP, [])]
    send(wp, encode_req(T.GRAB_JOB))
    assert wt.take() == [(T.JOB_ASSIGN, [b"H:t:1", b"f", b"data"])]
    # a packet split across reads
    send(wp, encode_req(T.WORK_COMPLETE, b"H:t:1", b"result"), chunk=5)
    assert ct.take() == [(T.WORK_COMPLETE, [b"H:t:1", b"result"])]


def test_admin_lines_and_workers_list_show_the_peer() -> None:
    s = Server()
    (wp, _wt), (ap, at) = s.connect(), s.connect("::1")
    send(wp, encode_req(T.CAN_DO, b"f"))
    send(ap, b"workers\n")
    lines = b"".join(at.written).split(b"\n")
    assert b"-1 127.0.0.1 - : f" in lines and b"-1 ::1 - :" in lines


def test_malformed_stream_is_answered_then_closed() -> None:
    s = Server()
    proto, t = s.connect()
    send(proto, encode_req(T.ECHO_REQ, b"hi") + b"\x00REQ\x00\x00\x00\xff\x00\x00\x00\x00")
    assert t.take() == [(T.ECHO_RES, [b"hi"])] and t.closed
    send(proto, encode_req(T.ECHO_REQ, b"ignored"))
    assert t.written == []


def test_too_many_admin_tokens_close_the_connection() -> None:
    s = Server()
    proto, t = s.connect()
    send(proto, b"a b c d e f\n")
    assert t.written == [] and t.closed


def test_disconnect_requeues_for_another_worker() -> None:
    s = Server()
    (cp, _ct), (w1, _w1t), (w2, w2t) = s.connect(), s.connect(), s.connect()
    for w in (w1, w2):
        send(w, encode_req(T.CAN_DO, b"f"))
    send(cp, encode_req(T.SUBMIT_JOB_BG, b"f", b"", b"x"))
    send(w1, encode_req(T.GRAB_JOB))
    send(w2, encode_req(T.PRE_SLEEP))
    w1.connection_lost(None)
    assert w2t.take() == [(T.NOOP, [])]
    assert s.broker.stats()["requeued"] == 1


def test_large_job_is_read_in_place_and_forwarded_in_pieces() -> None:
    s = Server()
    (cp, ct), (wp, wt) = s.connect(), s.connect()
    send(wp, encode_req(T.CAN_DO, b"big"))
    payload = bytes(range(256)) * (BIG // 256 + 3)
    send(cp, encode_req(T.SUBMIT_JOB, b"big", b"", payload), chunk=256 << 10)
    # its data went to a buffered protocol (reads into the packet's bytes), then
    # ordinary reads came back
    assert ct.switched == ["InPlace", "GearmanProtocol"]
    send(wp, encode_req(T.GRAB_JOB))
    assert wt.take() == [(T.JOB_ASSIGN, [b"H:t:1", b"big", payload])]
    assert len(wt.written) == 0 and ct.take() == [(T.JOB_CREATED, [b"H:t:1"])]
    send(cp, encode_req(T.ECHO_REQ, b"after"))
    assert ct.take() == [(T.ECHO_RES, [b"after"])] and wt.switched == []


def test_shutdown_aborts_every_connection() -> None:
    s = Server()
    (_, t1), (p2, t2) = s.connect(), s.connect()
    send(p2, b"shutdown\n")
    assert s.broker.stopping == "now" and s.after_calls >= 1
    s.broker.abort_all()
    assert t1.aborted and t2.aborted


def test_in_process_peer_round_trip_with_a_socket_worker() -> None:
    s = Server()
    local = s.broker.connect(Peer(-1, "in-process", sink=BufferSink()))
    wp, wt = s.connect()
    send(wp, encode_req(T.CAN_DO, b"f"))
    s.broker.handle(local, T.SUBMIT_JOB, [b"f", b"", b"from inside"])
    s.broker.flush()
    send(wp, encode_req(T.GRAB_JOB))
    handle = wt.take()[0][1][0]
    send(wp, encode_req(T.WORK_COMPLETE, handle, b"answer"))
    assert isinstance(local.sink, BufferSink)
    assert Decoder(server=False).feed(local.sink.take()) == [
        (T.JOB_CREATED, [handle]),
        (T.WORK_COMPLETE, [handle, b"answer"]),
    ]


class OnlyOneAddressSubmits:
    """An access list: only 127.0.0.1 may submit jobs and run admin lines."""

    def for_peer(self, peer: Peer) -> PeerAccess | None:
        return None if peer.addr == "127.0.0.1" else _ReadOnly()


class _ReadOnly:
    def allows(self, ptype: int, args: list[bytes]) -> bool:
        return ptype not in (T.TEXT, T.SUBMIT_JOB, T.SUBMIT_JOB_BG)


def test_one_access_check_for_socket_and_in_process_peers() -> None:
    s = Server()
    s.broker.access = OnlyOneAddressSubmits()
    far, far_t = s.connect("127.0.0.2")
    near, near_t = s.connect("127.0.0.1")
    inproc = s.broker.connect(Peer(-1, "gateway", sink=BufferSink()))
    send(far, encode_req(T.SUBMIT_JOB_BG, b"f", b"", b"x") + encode_req(T.ECHO_REQ, b"ok"))
    assert far_t.take() == [
        (T.ERROR, [b"INVALID_COMMAND", b"Permission denied for this connection"]),
        (T.ECHO_RES, [b"ok"]),
    ]
    send(far, b"status\n")
    assert far_t.written == [b"ERR PERMISSION_DENIED Not+allowed+for+this+connection\r\n"]
    s.broker.handle(inproc, T.SUBMIT_JOB_BG, [b"f", b"", b"x"])
    s.broker.flush()
    assert isinstance(inproc.sink, BufferSink)
    assert Decoder(server=False).feed(inproc.sink.take())[0][0] == T.ERROR
    assert s.broker.jobs == {}
    send(near, encode_req(T.SUBMIT_JOB_BG, b"f", b"", b"x"))
    assert near_t.take() == [(T.JOB_CREATED, [b"H:t:1"])]


def test_admin_maxqueue_limits_and_drop_refuses_a_busy_function() -> None:
    s = Server()
    (cp, ct), (ap, at) = s.connect(), s.connect()
    send(cp, encode_req(T.SUBMIT_JOB_BG, b"f", b"", b"1"))
    send(ap, b"maxqueue f 1\n")
    send(cp, encode_req(T.SUBMIT_JOB_BG, b"f", b"", b"2"))
    assert ct.take()[1] == (T.ERROR, [b"QUEUE_ERROR", b"Job queue is full"])
    send(ap, b"drop function F\n")
    send(ap, b"status\n")
    assert b"".join(at.written) == (
        b"OK\r\nERR there are still connected workers or executing clients\r\nf\t1\t0\t0\n.\n"
    )
