"""The decoder on its own: round trips, arbitrary input, incremental feeding."""

from __future__ import annotations

import os
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from gearmill.protocol.codec import MALFORMED, TEXT, WRONG_MAGIC, Decoder
from gearmill.protocol.packets import (
    ARG_COUNT,
    ARGS,
    BIG_PIECE,
    MAX_TYPE,
    PacketType,
    encode,
    encode_pieces,
    encode_req,
)

arg = st.binary(max_size=40).filter(lambda b: b"\x00" not in b)


@st.composite
def packets(draw: st.DrawFn) -> tuple[int, list[bytes]]:
    ptype = draw(st.integers(1, MAX_TYPE))
    argc, data = ARGS[ptype]
    args = [draw(arg) for _ in range(argc)]
    if data:
        args.append(draw(st.binary(max_size=200)))
    elif args:
        args[-1] = draw(st.binary(max_size=60))  # the last argument may hold NULs
    return ptype, args


@given(st.lists(packets(), max_size=8), st.integers(1, 50))
def test_round_trip_in_any_chunking(pkts: list[tuple[int, list[bytes]]], chunk: int) -> None:
    stream = b"".join(encode_req(t, *a) for t, a in pkts)
    dec = Decoder(server=True)
    events = []
    for i in range(0, len(stream), chunk):
        events.extend(dec.feed(stream[i : i + chunk]))
    expected = []
    for t, a in pkts:
        argc, data = ARGS[t]
        if argc == 0 and not data:
            expected.append((t, []))
        elif not data and argc > 1:
            # no data argument: the payload splits into exactly argc parts
            expected.append((t, b"\x00".join(a).split(b"\x00", argc - 1)))
        else:
            expected.append((t, a))
    assert events == expected
    assert dec.buffered == 0


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    dec = Decoder(server=True)
    events = dec.feed(data)
    for kind, args in events:
        assert kind in (TEXT, WRONG_MAGIC, MALFORMED) or 1 <= kind <= MAX_TYPE
        if kind > 0:
            assert len(args) == ARG_COUNT[kind]
    assert all(k != MALFORMED for k, _ in events[:-1])


def test_text_and_binary_mixed() -> None:
    dec = Decoder(server=True)
    stream = b"status\r\n" + encode_req(16, b"hi") + b"version\n"
    assert dec.feed(stream) == [(TEXT, [b"status"]), (16, [b"hi"]), (TEXT, [b"version"])]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_huge_size_headers_cost_no_memory_until_data_comes() -> None:
    before = _rss()
    decoders = [Decoder(server=True) for _ in range(8)]
    for dec in decoders:
        # ECHO_REQ claiming 4 GiB of data, of which 3 bytes arrived
        assert dec.feed(struct.pack(">4sII", b"\x00REQ", 16, 0xFFFFFFF0) + b"abc") == []
        assert dec.buffered == 3
    assert _rss() - before < 64 << 20  # 8 x 4 GiB claimed


def test_argument_only_packet_over_8k_is_malformed() -> None:
    dec = Decoder(server=True)
    (event,) = dec.feed(struct.pack(">4sII", b"\x00REQ", 1, 9000))
    assert event[0] == MALFORMED


def test_wrong_magic_and_bad_type() -> None:
    dec = Decoder(server=True)
    assert dec.feed(encode(16, b"x")) == [(WRONG_MAGIC, [b"16"])]
    assert Decoder().feed(b"\x00REQ" + struct.pack(">II", 43, 0))[0][0] == MALFORMED
    assert Decoder().feed(b"\x00ABC" + struct.pack(">II", 1, 0))[0][0] == MALFORMED


def test_missing_separators_is_malformed_not_desync() -> None:
    dec = Decoder(server=True)
    events = dec.feed(encode_req(7, b"func-without-nuls"))
    assert events[0][0] == MALFORMED


def test_long_admin_line_is_malformed() -> None:
    dec = Decoder(server=True)
    assert dec.feed(b"x" * 8191) == []
    assert dec.feed(b"y")[0][0] == MALFORMED


def test_client_side_decoder_rejects_text() -> None:
    dec = Decoder(server=False)
    assert dec.feed(encode(8, b"H:x:1")) == [(8, [b"H:x:1"])]
    assert dec.feed(b"OK\n")[0][0] == MALFORMED


def test_large_packet_in_small_reads() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    stream = encode_req(16, payload)
    dec = Decoder(server=True)
    out = []
    for i in range(0, len(stream), 65536):
        out.extend(dec.feed(stream[i : i + 65536]))
    assert out == [(16, [payload])]


def _feed_chunked(dec: Decoder, stream: bytes, chunk: int) -> list[tuple[int, list[bytes]]]:
    events: list[tuple[int, list[bytes]]] = []
    for i in range(0, len(stream), chunk):
        events += dec.feed(stream[i : i + chunk])
    return events


def test_large_packets_in_reads_keep_every_argument() -> None:
    # large packets take a one-copy path; what comes out must be the same
    big = bytes(range(256)) * 12289  # ~3 MiB, with NULs inside the data
    stream = (
        encode_req(PacketType.SUBMIT_JOB, b"f", b"u", big)
        + encode_req(PacketType.ECHO_REQ, big)
        + encode_req(PacketType.GRAB_JOB)
        + encode_req(PacketType.WORK_DATA, b"H:x:1", big[:5])
    )
    for chunk in (65536, 262144, 1 << 20):
        events = _feed_chunked(Decoder(server=True), stream, chunk)
        assert events == [
            (PacketType.SUBMIT_JOB, [b"f", b"u", big]),
            (PacketType.ECHO_REQ, [big]),
            (PacketType.GRAB_JOB, []),
            (PacketType.WORK_DATA, [b"H:x:1", big[:5]]),
        ]


def _read_like_the_server(dec: Decoder, stream: bytes, chunk: int) -> list[tuple[int, list[bytes]]]:
    """Reads of at most ``chunk`` bytes, into the payload target when there is one."""
    events: list[tuple[int, list[bytes]]] = []
    pos = 0
    while pos < len(stream):
        target = dec.payload_target()
        if target is None:
            events += dec.feed(stream[pos : pos + chunk])
            pos += chunk
        else:
            n = min(len(target), chunk)
            target[:n] = stream[pos : pos + n]
            events += dec.payload_filled(n)
            pos += n
    return events


def test_large_packets_read_in_place_keep_every_argument() -> None:
    big = bytes(range(256)) * 8193  # just over 2 MiB, with NULs inside the data
    stream = (
        encode_req(PacketType.ECHO_REQ, b"a")
        + encode_req(PacketType.WORK_COMPLETE, b"H:x:1", big)
        + encode_req(PacketType.SUBMIT_JOB, b"f", b"u", big[::-1])
        + encode_req(PacketType.GRAB_JOB)
    )
    expected = [
        (PacketType.ECHO_REQ, [b"a"]),
        (PacketType.WORK_COMPLETE, [b"H:x:1", big]),
        (PacketType.SUBMIT_JOB, [b"f", b"u", big[::-1]]),
        (PacketType.GRAB_JOB, []),
    ]
    # 7-byte reads split headers and leading arguments across reads
    for chunk in (7, 65536, 262144):
        dec = Decoder(server=True)
        assert _read_like_the_server(dec, stream, chunk) == expected
        assert dec.buffered == 0 and dec.payload_target() is None
    events = _read_like_the_server(Decoder(server=True), stream, 262144)
    assert type(events[1][1][1]) is bytes  # a real bytes object, like any other argument


def test_large_bad_packets_are_reported_as_usual() -> None:
    big = b"x" * (2 << 20)
    wrong_magic = encode(PacketType.SUBMIT_JOB, b"f", b"u", big)  # RES magic to a server
    events = _feed_chunked(
        Decoder(server=True), wrong_magic + encode_req(PacketType.GRAB_JOB), 65536
    )
    assert events == [(WRONG_MAGIC, [b"%d" % PacketType.SUBMIT_JOB]), (PacketType.GRAB_JOB, [])]
    missing = struct.pack(">4sII", b"\x00REQ", PacketType.SUBMIT_JOB, len(big)) + big
    events = _feed_chunked(Decoder(server=True), missing, 65536)
    assert events[0][0] == MALFORMED and b"missing arguments" in events[0][1][0]
    too_big = Decoder(server=True, max_payload=1 << 20)
    events = _feed_chunked(too_big, encode_req(PacketType.ECHO_REQ, big), 65536)
    assert events[0] == (MALFORMED, [b"packet too large"])  # then the connection closes


def test_encode_pieces_is_encode_in_parts() -> None:
    for data in (b"small", b"y" * (BIG_PIECE + 7)):
        pieces = encode_pieces(PacketType.WORK_COMPLETE, b"H:x:1", data)
        assert b"".join(pieces) == encode(PacketType.WORK_COMPLETE, b"H:x:1", data)
        assert len(pieces) == (2 if len(data) >= BIG_PIECE else 1)
        if len(pieces) == 2:
            assert pieces[1] is data  # not copied
