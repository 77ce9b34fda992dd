"""Several journal consumers on one broker: each sees every batch; only the one
that asked for held JOB_CREATEDs releases them; the metrics recorder times jobs."""

from __future__ import annotations

from gearmill.protocol.codec import Decoder
from gearmill.protocol.packets import PacketType as T
from gearmill.server import fanout
from gearmill.server.broker import Broker, BrokerConfig, Peer
from gearmill.server.journal import (
    BUCKETS,
    MAX_FINISHED,
    Entry,
    Histogram,
    JobAccepted,
    JobFinished,
    JobStarted,
    bucket,
)
from gearmill.server.model import Job
from gearmill.server.recorder import Recorder
from gearmill.server.sink import BufferSink


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Store:
    """Releases the held peers only when told (as a store does after a commit)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.kinds: list[str] = []
        self.held: list[Peer] = []
        self.jobs: list[Job] = []

    def consume(self, entries: list[Entry], held: list[Peer]) -> None:
        self.kinds += [type(e).__name__ for e in entries]
        self.jobs += [e.job for e in entries if isinstance(e, JobAccepted)]
        self.held += held

    def commit(self) -> None:
        for job in self.jobs:  # durable now: workers may have them
            self.broker.publish(job)
        for peer in self.held:
            self.broker.release(peer)
        self.held, self.jobs = [], []


def broker() -> Broker:
    return Broker(BrokerConfig(handle_prefix=b"H:t"), Clock())


def peer(b: Broker, fd: int) -> tuple[Peer, BufferSink]:
    sink = BufferSink()
    return b.connect(Peer(fd, "127.0.0.1", True, sink)), sink


def packets(sink: BufferSink) -> list[int]:
    return [ptype for ptype, _ in Decoder(server=False).feed(sink.take())]


def step(b: Broker) -> None:
    assert b.journal is not None
    b.journal.drain()
    b.flush()


def test_two_consumers_see_every_batch_and_the_store_alone_releases() -> None:
    b = broker()
    clock = Clock()
    recorder = Recorder(600.0, clock=clock)
    recorder.attach(b)  # metrics first: a tally, not a consumer
    store = Store(b)
    fanout.attach(b, store, hold_created=True)  # then a store that holds
    client, client_out = peer(b, 1)
    worker, worker_out = peer(b, 2)
    b.handle(worker, T.CAN_DO, [b"f"])
    b.handle(client, T.SUBMIT_JOB_BG, [b"f", b"", b"x"])
    step(b)
    assert packets(client_out) == []  # held until the store commits
    assert recorder.functions[b"f"].submitted == [0, 1]
    store.commit()
    b.flush()
    assert packets(client_out) == [T.JOB_CREATED]
    clock.now += 2.0
    b.handle(worker, T.GRAB_JOB, [])
    step(b)
    handle = b"H:t:1"
    clock.now += 0.5
    b.handle(worker, T.WORK_COMPLETE, [handle, b"ok"])
    step(b)
    assert store.kinds == [
        "WorkerCame",
        JobAccepted.__name__,
        JobStarted.__name__,
        JobFinished.__name__,
    ]
    assert recorder.wait.sum == 2.0 and recorder.run.sum == 0.5
    assert recorder.wait.counts[recorder.wait.counts.index(1)] == 1
    done = recorder.finished_job(handle)
    assert done is not None and (done.outcome, done.function) == ("completed", b"f")
    clock.now += 601
    assert recorder.finished_job(handle) is None  # kept for a bounded time
    assert packets(worker_out)


def test_a_time_lands_in_the_first_bucket_at_or_above_it() -> None:
    assert bucket(0.0) == 0
    for i, bound in enumerate(BUCKETS):
        assert bucket(bound) == i  # Prometheus buckets are "less or equal"
        assert bucket(bound * 1.001) == i + 1
    assert bucket(1e9) == len(BUCKETS)  # +Inf


def test_observations_are_counted_in_their_buckets() -> None:
    h = Histogram()
    values = [0.0, *BUCKETS, *(b * 1.001 for b in BUCKETS)]
    for v in values:
        h.observe(v)
    want = [0] * (len(BUCKETS) + 1)
    for v in values:
        want[bucket(v)] += 1
    assert h.counts == want and h.sum == sum(values)
    assert h.cumulative()[-1] == ("+Inf", float(len(values)))


def test_finished_jobs_are_remembered_on_a_bounded_ring_newest_first() -> None:
    b = broker()
    recorder = Recorder(600.0, clock=Clock())
    recorder.attach(b)
    client, _ = peer(b, 1)
    worker, _ = peer(b, 2)
    b.handle(worker, T.CAN_DO, [b"f"])
    extra = 5
    for _ in range(MAX_FINISHED + extra):
        b.handle(client, T.SUBMIT_JOB_BG, [b"f", b"", b"x"])
        b.handle(worker, T.GRAB_JOB, [])
        b.handle(worker, T.WORK_COMPLETE, [b"H:t:%d" % b.counters.submitted, b""])
        step(b)
    for n in range(1, extra + 1):
        assert recorder.finished_job(b"H:t:%d" % n) is None  # overwritten by newer ones
    for n in (extra + 1, MAX_FINISHED + extra):
        done = recorder.finished_job(b"H:t:%d" % n)
        assert done is not None and done.outcome == "completed"
    assert len(recorder.tally.done) == MAX_FINISHED  # the ring never grows
