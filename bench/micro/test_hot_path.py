"""Micro-benchmarks of the server's inner loop (pytest-benchmark; not pass/fail tests).

    python -m pytest bench/micro                          # compiled twin (default)
    GEARMILL_PURE=1 python -m pytest bench/micro          # the pure-Python reference
    python -m pytest bench/micro --benchmark-disable      # run once each: a smoke test

Each benchmark asserts what it computed, so a smoke run also checks the code
still does the work being timed.
"""

from __future__ import annotations

import time
from typing import Any

import gearmill
from gearmill.protocol.codec import Decoder
from gearmill.protocol.packets import PacketType as T
from gearmill.protocol.packets import encode_req
from gearmill.server.broker import Broker, BrokerConfig, Peer
from gearmill.server.journal import Entry
from gearmill.server.sink import BufferSink

N = 1000


def test_implementation_in_use(benchmark: Any) -> None:
    benchmark.extra_info["implementation"] = gearmill.IMPLEMENTATION
    benchmark(lambda: None)


def test_decode_submit_bg(benchmark: Any) -> None:
    stream = b"".join(
        encode_req(T.SUBMIT_JOB_BG, b"func", b"u%d" % i, b"payload-%010d" % i) for i in range(N)
    )

    def decode() -> int:
        return len(Decoder(server=True).feed(stream))

    assert benchmark(decode) == N


def test_decode_64mib_in_256kib_reads(benchmark: Any) -> None:
    payload = b"x" * (64 << 20)
    packet = encode_req(T.SUBMIT_JOB, b"big", b"", payload)
    chunks = [packet[i : i + (256 << 10)] for i in range(0, len(packet), 256 << 10)]

    def decode() -> int:
        dec = Decoder(server=True)
        events = []
        for chunk in chunks:
            events += dec.feed(chunk)
        return len(events[0][1][2])

    assert benchmark.pedantic(decode, rounds=3, iterations=1) == len(payload)


def _broker() -> tuple[Broker, Peer, Peer]:
    broker = Broker(BrokerConfig(handle_prefix=b"H:bench"), time.time)
    client = broker.connect(Peer(10, "127.0.0.1"))
    worker = broker.connect(Peer(11, "127.0.0.1"))
    return broker, client, worker


def test_broker_queue_background(benchmark: Any) -> None:
    def queue() -> int:
        broker, client, _ = _broker()
        for i in range(N):
            broker.handle(client, T.SUBMIT_JOB_BG, [b"f", b"u%d" % i, b"data"])
        return broker.functions[b"f"].total

    assert benchmark(queue) == N


def test_read_of_256_background_submissions(benchmark: Any) -> None:
    """What the server does for one read in bg_100k: decode 256 pipelined
    SUBMIT_JOB_BG, queue them, answer JOB_CREATED (1000 jobs a round)."""
    reads = [
        b"".join(
            encode_req(T.SUBMIT_JOB_BG, b"func", b"u%d" % (r * 256 + i), b"payload-%07d" % i)
            for i in range(256)
        )
        for r in range(4)
    ]

    def serve() -> int:
        broker, client, _ = _broker()
        decoder = Decoder(server=True)
        for data in reads:
            events = decoder.feed(data)
            broker.handle_events(client, events, 0)
            client.out.clear()
        broker.dirty.clear()
        return broker.functions[b"func"].total

    assert benchmark(serve) == 1024


def test_broker_round_trip(benchmark: Any) -> None:
    """Submit, grab, complete: the server-side work of one foreground job."""

    def round_trips() -> int:
        broker, client, worker = _broker()
        broker.handle(worker, T.CAN_DO, [b"f"])
        done = 0
        for _ in range(N):
            broker.handle(client, T.SUBMIT_JOB, [b"f", b"", b"data"])
            broker.handle(worker, T.GRAB_JOB, [])
            handle = next(iter(worker.assigned))
            broker.handle(worker, T.WORK_COMPLETE, [handle, b"atad"])
            done += 1
            client.out.clear()
            worker.out.clear()
        broker.dirty.clear()
        return done if not worker.assigned else -1

    assert benchmark(round_trips) == N


def test_status_requests(benchmark: Any) -> None:
    """status_20k_c1's server-side work: decode one GET_STATUS, answer it, flush."""
    packet = encode_req(T.GET_STATUS, b"H:bench:1")

    def statuses() -> int:
        broker, client, _ = _broker()
        client.sink = sink = BufferSink()
        decoder = Decoder(server=True)
        for _ in range(N):
            broker.handle_events(client, decoder.feed(packet), 0)
            broker.flush()
        return len(sink.take())

    assert benchmark(statuses) == N * 29  # STATUS_RES "not known": 29 bytes


def test_drain_queued_jobs(benchmark: Any) -> None:
    """drain_100k_w4's server-side work: 4 workers complete and grab in turn."""
    submits = b"".join(encode_req(T.SUBMIT_JOB_BG, b"f", b"", b"p%07d" % i) for i in range(N))
    grab = encode_req(T.GRAB_JOB)

    def drain() -> int:
        broker, client, _ = _broker()
        broker.handle_events(client, Decoder(server=True).feed(submits), 0)
        workers = [broker.connect(Peer(20 + i, "127.0.0.1")) for i in range(4)]
        decoders = [Decoder(server=True) for _ in workers]
        for w, d in zip(workers, decoders, strict=True):
            broker.handle_events(w, d.feed(encode_req(T.CAN_DO, b"f") + grab), 0)
        done = 0
        while done < N:
            for w, d in zip(workers, decoders, strict=True):
                handle = w.out[-1][12:].split(b"\x00", 1)[0]
                w.out.clear()
                complete = encode_req(T.WORK_COMPLETE, handle, b"")
                broker.handle_events(w, d.feed(complete + grab), 0)
                done += 1
            broker.dirty.clear()
        return broker.counters.completed

    assert benchmark(drain) == N


class _Discard:
    def consume(self, entries: list[Entry], held: list[Peer]) -> None:
        pass


def test_broker_round_trip_with_journal(benchmark: Any) -> None:
    """test_broker_round_trip with a journal consumer attached (a store's cost floor)."""

    def round_trips() -> int:
        broker, client, worker = _broker()
        broker.attach_journal(_Discard())
        broker.handle(worker, T.CAN_DO, [b"f"])
        for _ in range(N):
            broker.handle(client, T.SUBMIT_JOB, [b"f", b"", b"data"])
            broker.handle(worker, T.GRAB_JOB, [])
            broker.handle(worker, T.WORK_COMPLETE, [next(iter(worker.assigned)), b"atad"])
            client.out.clear()
            worker.out.clear()
            broker.journal.drain()  # type: ignore[union-attr]
        broker.dirty.clear()
        return broker.counters.completed

    assert benchmark(round_trips) == N
