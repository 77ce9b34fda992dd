"""The journal: what the broker decided, entry by entry, for each job's life cycle;
the counters beside it; held JOB_CREATEDs; a finished job's timers leave with it."""

from __future__ import annotations

import gc
import types

from gearmill.protocol.codec import Decoder
from gearmill.protocol.packets import PacketType as T
from gearmill.server import admin
from gearmill.server.broker import Broker, BrokerConfig, Peer
from gearmill.server.journal import (
    ABANDONED,
    CANCELLED,
    COMPLETED,
    DROPPED,
    EXCEPTION,
    FAILED,
    LOST,
    RELEASED,
    TIMED_OUT,
    Entry,
    JobAccepted,
    JobFinished,
    JobRequeued,
    JobStarted,
    WorkerCame,
    WorkerLeft,
)
from gearmill.server.sink import BufferSink


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """A consumer that keeps every batch; releases held peers at once unless told not to."""

    def __init__(self, broker: Broker, release: bool = True) -> None:
        self.broker = broker
        self.release = release
        self.batches: list[list[Entry]] = []
        self.held: list[Peer] = []

    def consume(self, entries: list[Entry], held: list[Peer]) -> None:
        self.batches.append(entries)
        if self.release:
            for e in entries:  # as a store does once its commit is done
                if isinstance(e, JobAccepted):
                    self.broker.publish(e.job)
            for p in held:
                self.broker.release(p)
        else:
            self.held += held

    def take(self) -> list[tuple[object, ...]]:
        """The entries since the last call, as comparable tuples."""
        self.broker.journal.drain()  # type: ignore[union-attr]
        out: list[tuple[object, ...]] = []
        for batch in self.batches:
            for e in batch:
                if isinstance(e, JobAccepted):
                    out.append(("accepted", e.job.handle, e.job.background, e.when))
                elif isinstance(e, JobStarted):
                    out.append(("started", e.job.handle, e.worker.fd))
                elif isinstance(e, JobFinished):
                    out.append(("finished", e.job.handle, e.outcome))
                elif isinstance(e, JobRequeued):
                    out.append(("requeued", e.job.handle, e.why))
                elif isinstance(e, WorkerCame):
                    out.append(("came", e.peer.fd, e.function))
                else:
                    assert isinstance(e, WorkerLeft)
                    out.append(("left", e.peer.fd, e.function))
        self.batches.clear()
        return out


def make(**kw: object) -> tuple[Broker, Clock, Recorder]:
    clock = Clock()
    b = Broker(BrokerConfig(handle_prefix=b"H:t", **kw), clock)  # type: ignore[arg-type]
    rec = Recorder(b)
    b.attach_journal(rec)
    return b, clock, rec


def peer(b: Broker, fd: int) -> Peer:
    return b.connect(Peer(fd, "127.0.0.1", sink=BufferSink()))


def received(p: Peer) -> list[tuple[int, list[bytes]]]:
    assert isinstance(p.sink, BufferSink)
    return Decoder(server=False).feed(p.sink.take())


def worker(b: Broker, fd: int, func: bytes = b"f", timeout: int = 0) -> Peer:
    w = peer(b, fd)
    if timeout:
        b.handle(w, T.CAN_DO_TIMEOUT, [func, b"%d" % timeout])
    else:
        b.handle(w, T.CAN_DO, [func])
    return w


def test_submit_then_complete() -> None:
    b, _, rec = make()
    c, w = peer(b, 1), worker(b, 2)
    b.handle(c, T.SUBMIT_JOB, [b"f", b"", b"x"])
    b.handle(w, T.GRAB_JOB, [])
    b.handle(w, T.WORK_COMPLETE, [b"H:t:1", b"done"])
    assert rec.take() == [
        ("came", 2, b"f"),
        ("accepted", b"H:t:1", False, 0),
        ("started", b"H:t:1", 2),
        ("finished", b"H:t:1", COMPLETED),
    ]
    b.flush()
    assert received(c)[-1] == (T.WORK_COMPLETE, [b"H:t:1", b"done"])
    assert b.counters.submitted == b.counters.started == b.counters.completed == 1


def test_fail_and_exception() -> None:
    b, _, rec = make()
    c, w = peer(b, 1), worker(b, 2)
    for _ in range(2):
        b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"", b"x"])
    b.handle(w, T.GRAB_JOB, [])
    b.handle(w, T.WORK_FAIL, [b"H:t:1"])
    b.handle(w, T.GRAB_JOB, [])
    b.handle(w, T.WORK_EXCEPTION, [b"H:t:2", b"boom"])
    entries = rec.take()
    assert ("finished", b"H:t:1", FAILED) in entries
    assert ("finished", b"H:t:2", EXCEPTION) in entries
    assert [e[0] for e in entries] == ["came"] + ["accepted"] * 2 + ["started", "finished"] * 2
    assert (b.counters.failed, b.counters.exceptions) == (1, 1)


def test_cancel_queued_and_running() -> None:
    b, _, rec = make()
    c, w = peer(b, 1), worker(b, 2)
    b.handle(c, T.SUBMIT_JOB, [b"f", b"", b"runs"])
    b.handle(c, T.SUBMIT_JOB, [b"f", b"", b"waits"])
    b.handle(w, T.GRAB_JOB, [])
    rec.take()
    assert admin.run(b, c, b"cancel job H:t:2") == b"OK\r\n"
    assert rec.take() == [("finished", b"H:t:2", CANCELLED)]
    assert b.cancel(b"H:t:1")
    # a running job ends when its worker answers; that end is the cancel
    assert rec.take() == []
    b.handle(w, T.WORK_COMPLETE, [b"H:t:1", b"late"])
    assert rec.take() == [("finished", b"H:t:1", CANCELLED)]
    assert b.counters.cancelled == 2 and b.counters.completed == 0


def test_requeue_on_disconnect_then_done_elsewhere() -> None:
    b, _, rec = make()
    c, w1 = peer(b, 1), worker(b, 2)
    b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"", b"x"])
    b.handle(w1, T.GRAB_JOB, [])
    rec.take()
    b.disconnect(w1)
    assert rec.take() == [("requeued", b"H:t:1", LOST), ("left", 2, b"f")]
    w2 = worker(b, 3)
    b.handle(w2, T.GRAB_JOB, [])
    b.handle(w2, T.WORK_COMPLETE, [b"H:t:1", b""])
    assert rec.take() == [
        ("came", 3, b"f"),
        ("started", b"H:t:1", 3),
        ("finished", b"H:t:1", COMPLETED),
    ]
    assert b.counters.requeued == 1


def test_retries_exhausted_drops_the_job() -> None:
    b, clock, rec = make(job_retries=2)
    c = peer(b, 1)
    b.handle(c, T.SUBMIT_JOB, [b"f", b"", b"x"])
    w = worker(b, 2, timeout=1000)
    b.handle(w, T.GRAB_JOB, [])
    clock.now += 1.0
    b.tick()
    b.handle(w, T.GRAB_JOB, [])
    b.disconnect(w)
    assert rec.take() == [
        ("accepted", b"H:t:1", False, 0),
        ("came", 2, b"f"),
        ("started", b"H:t:1", 2),
        ("requeued", b"H:t:1", TIMED_OUT),
        ("started", b"H:t:1", 2),
        ("finished", b"H:t:1", DROPPED),
        ("left", 2, b"f"),
    ]
    b.flush()
    assert received(c)[-1] == (T.WORK_FAIL, [b"H:t:1"])
    assert (b.counters.timed_out, b.counters.dropped) == (1, 1)


def test_abandoned_and_epoch_and_coalesced() -> None:
    b, clock, rec = make()
    c1, c2 = peer(b, 1), peer(b, 2)
    b.handle(c1, T.SUBMIT_JOB, [b"f", b"u", b"x"])
    b.handle(c2, T.SUBMIT_JOB, [b"f", b"u", b"x"])  # joins the first: no new entry
    b.handle(c1, T.SUBMIT_JOB_EPOCH, [b"f", b"", b"%d" % (clock.now + 60), b"later"])
    b.disconnect(c1)
    b.disconnect(c2)
    assert rec.take() == [
        ("accepted", b"H:t:1", False, 0),
        ("accepted", b"H:t:2", True, int(clock.now + 60)),
        ("finished", b"H:t:1", ABANDONED),
    ]
    assert (b.counters.coalesced, b.counters.abandoned) == (1, 1)


def test_without_a_consumer_nothing_is_recorded_but_counted() -> None:
    b = Broker(BrokerConfig(), Clock())
    c, w = peer(b, 1), worker(b, 2)
    b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"", b"x"])
    b.handle(w, T.GRAB_JOB, [])
    b.handle(w, T.WORK_COMPLETE, [b"H:localhost:1", b""])
    assert b.journal is None
    stats = b.stats()
    assert (stats["submitted"], stats["completed"], stats["jobs_queued"]) == (1, 1, 0)
    assert (stats["peers"], stats["workers"], stats["functions"]) == (2, 1, 1)


def test_held_job_created_waits_for_the_consumer_and_keeps_order() -> None:
    b = Broker(BrokerConfig(handle_prefix=b"H:t"), Clock())
    rec = Recorder(b, release=False)
    b.attach_journal(rec, hold_created=True)
    c, other = peer(b, 1), peer(b, 2)
    b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"", b"x"])
    b.handle(c, T.ECHO_REQ, [b"after"])
    b.handle(other, T.ECHO_REQ, [b"not held"])
    b.journal.drain()  # type: ignore[union-attr]
    b.flush()
    assert received(c) == []  # the store has not committed yet
    assert received(other) == [(T.ECHO_RES, [b"not held"])]
    assert rec.held == [c] and [type(e) for e in rec.batches[0]] == [JobAccepted]
    b.release(c)
    b.flush()
    assert received(c) == [(T.JOB_CREATED, [b"H:t:1"]), (T.ECHO_RES, [b"after"])]


def test_a_graceful_stop_waits_for_commits_in_flight() -> None:
    """A pending job runs once its store commit is done, and a JOB_CREATED held for a
    commit is owed: a graceful stop that found the server idle then would drop the
    client's JOB_CREATED of a job the store keeps (its client would submit it again)."""
    b = Broker(BrokerConfig(handle_prefix=b"H:t"), Clock())
    rec = Recorder(b, release=False)
    b.attach_journal(rec, hold_created=True)
    c, w = peer(b, 1), worker(b, 2)

    def commit() -> None:
        b.journal.drain()  # type: ignore[union-attr]
        for p in rec.held:
            b.release(p)
        rec.held = []
        b.flush()

    b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"", b"x"])
    b.handle(c, T.SUBMIT_JOB_BG, [b"nobody", b"", b"y"])
    b.journal.drain()  # type: ignore[union-attr]
    b.flush()
    assert not b.idle()  # H:t:1's commit is in flight and a worker waits for it
    b.publish(b.jobs[b"H:t:1"])
    b.handle(w, T.GRAB_JOB, [])
    b.handle(w, T.WORK_COMPLETE, [b"H:t:1", b""])
    b.flush()
    assert not b.idle()  # ran, but its JOB_CREATED still waits for the commit
    commit()
    assert [kind for kind, _ in received(c)] == [T.JOB_CREATED] * 2
    assert b.idle()  # H:t:2 is pending too, but no worker can run it
    b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"", b"z"])
    commit()
    assert not b.idle()  # H:t:3 is pending, a worker waits for it
    b.cancel(b"H:t:3")  # its commit failed: refused
    assert b.idle()


def refuse_y_publish_x(b: Broker, w: Peer) -> None:
    """H:t:2 (y)'s commit fails, H:t:1 (x)'s is done: the sleeping worker is woken for
    x alone, and y never runs (its client may be told QUEUE_ERROR)."""
    b.cancel(b"H:t:2")
    b.publish(b.jobs[b"H:t:1"])
    b.handle(w, T.PRE_SLEEP, [])
    b.flush()
    assert received(w) == [(T.NOOP, [])]
    b.handle(w, T.GRAB_JOB, [])
    b.handle(w, T.GRAB_JOB, [])
    b.flush()
    assert received(w) == [(T.JOB_ASSIGN, [b"H:t:1", b"f", b"x"]), (T.NO_JOB, [])]


def test_a_held_job_reaches_no_worker_until_it_is_published() -> None:
    """A store's commit in flight: the job is counted, but a sleeping worker is not woken
    and a grab gets NO_JOB; published, it runs; refused (cancelled) instead, it never
    runs (its client may be told QUEUE_ERROR)."""
    b = Broker(BrokerConfig(handle_prefix=b"H:t"), Clock())
    rec = Recorder(b, release=False)
    b.attach_journal(rec, hold_created=True)
    c, w = peer(b, 1), worker(b, 2)
    b.handle(w, T.PRE_SLEEP, [])
    b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"", b"x"])
    b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"", b"y"])
    b.journal.drain()  # type: ignore[union-attr]
    b.flush()
    assert received(w) == []  # no NOOP
    assert b.functions[b"f"].queued[1] == 2  # status counts them
    b.handle(w, T.GRAB_JOB, [])
    b.flush()
    assert received(w) == [(T.NO_JOB, [])]
    refuse_y_publish_x(b, w)


def test_an_epoch_job_due_before_its_commit_ends_waits_for_it() -> None:
    """An epoch job whose time comes while its store commit is still in flight (a slow
    store, a job due in a second) reaches no worker until it is published; refused
    instead, it never runs. One made durable before it is due runs at its time."""
    clock = Clock()
    b = Broker(BrokerConfig(handle_prefix=b"H:t"), clock)
    rec = Recorder(b, release=False)
    b.attach_journal(rec, hold_created=True)
    c, w = peer(b, 1), worker(b, 2)
    b.handle(w, T.PRE_SLEEP, [])
    for data in (b"x", b"y", b"z"):
        b.handle(c, T.SUBMIT_JOB_EPOCH, [b"f", b"", b"%d" % (clock.now + 1), data])
    b.journal.drain()  # type: ignore[union-attr]
    b.publish(b.jobs[b"H:t:3"])  # z: committed before it is due
    clock.now += 2
    b.tick()
    b.flush()
    assert received(w) == [(T.NOOP, [])]  # for z only
    b.handle(w, T.GRAB_JOB, [])
    b.handle(w, T.GRAB_JOB, [])
    b.flush()
    assert received(w) == [(T.JOB_ASSIGN, [b"H:t:3", b"f", b"z"]), (T.NO_JOB, [])]
    assert b.functions[b"f"].queued[1] == 2  # x and y: counted, not runnable
    refuse_y_publish_x(b, w)


def test_held_peer_leaving_is_forgotten() -> None:
    b = Broker(BrokerConfig(handle_prefix=b"H:t"), Clock())
    rec = Recorder(b, release=False)
    b.attach_journal(rec, hold_created=True)
    c = peer(b, 1)
    b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"", b"x"])
    b.journal.drain()  # type: ignore[union-attr]
    b.flush()
    b.disconnect(c)
    b.release(c)  # a late commit of a peer that left
    b.flush()
    assert b.parked == [] and b.dirty == [] and received(c) == []
    assert list(b.jobs) == [b"H:t:1"]  # the background job stays


def _referrers(obj: object) -> list[object]:
    gc.collect()
    return [r for r in gc.get_referrers(obj) if not isinstance(r, types.FrameType)]


def test_finished_job_with_a_timeout_is_released_at_once() -> None:
    b = Broker(BrokerConfig(handle_prefix=b"H:t"), Clock())
    c, w = peer(b, 1), worker(b, 2, timeout=3_600_000)
    b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"", b"x" * 4096])
    b.handle(w, T.GRAB_JOB, [])
    job = b.jobs[b"H:t:1"]
    assert _referrers(job) != []  # held by the broker while it runs
    b.handle(w, T.WORK_COMPLETE, [b"H:t:1", b""])
    assert _referrers(job) == []  # not by the hour-long timeout's heap entry
    assert b.next_deadline() is None


def test_timer_heap_does_not_grow_with_finished_jobs() -> None:
    b = Broker(BrokerConfig(handle_prefix=b"H:t"), Clock())
    c, w = peer(b, 1), worker(b, 2, timeout=3_600_000)
    for i in range(1, 1001):
        b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"", b"x"])
        b.handle(w, T.GRAB_JOB, [])
        b.handle(w, T.WORK_COMPLETE, [b"H:t:%d" % i, b""])
    assert len(b.timers) <= 130  # dead entries are swept once they are most of the heap


def test_workers_leave_by_cant_do_and_reset_and_their_jobs_requeue() -> None:
    b, _, rec = make()
    c, w = peer(b, 1), peer(b, 2)
    for name in (b"f", b"g", b"h"):
        b.handle(w, T.CAN_DO, [name])
    b.handle(c, T.SUBMIT_JOB_BG, [b"g", b"", b"x"])
    b.handle(w, T.GRAB_JOB, [])
    rec.take()
    b.handle(w, T.CANT_DO, [b"g"])
    assert rec.take() == [("left", 2, b"g"), ("requeued", b"H:t:1", RELEASED)]
    b.handle(w, T.RESET_ABILITIES, [])
    assert rec.take() == [("left", 2, b"h"), ("left", 2, b"f")]


def test_coalesced_background_submission_is_held_too() -> None:
    b = Broker(BrokerConfig(handle_prefix=b"H:t"), Clock())
    rec = Recorder(b, release=False)
    b.attach_journal(rec, hold_created=True)
    c1, c2 = peer(b, 1), peer(b, 2)
    b.handle(c1, T.SUBMIT_JOB_BG, [b"f", b"same", b"x"])
    b.handle(c2, T.SUBMIT_JOB_BG, [b"f", b"same", b"x"])
    b.journal.drain()  # type: ignore[union-attr]
    b.flush()
    assert received(c1) == received(c2) == []
    assert rec.held == [c1, c2]
    for p in rec.held:
        b.release(p)
    b.flush()
    assert received(c1) == received(c2) == [(T.JOB_CREATED, [b"H:t:1"])]
