"""What the broker decided, for whoever needs to know: a store, metrics, a log.

The broker appends typed entries and never acts on them. The edge drains the
journal once per read batch, right before it writes the replies
(``stream.flush``), and hands the entries to the journal's consumer. The
journal exists only while a consumer or a :class:`Tally` is attached
(``Broker.attach_journal``); without one the broker skips every entry at the
cost of one ``is None`` test.

Metrics (``--http``) do not take entries: a :class:`Tally` is told of each
job as it is accepted, started and finished, and counts and times it at once,
with one clock reading per batch. Entry objects are built only while a
consumer (a store) wants them, so metrics alone allocate nothing per job
(issue 14: the listener must not cost the job path).

A store that must make background jobs durable before their submitters learn
the handle asks for ``hold_created``: each background submission then holds
the submitter's output (its JOB_CREATED and anything after it, in order) until
the consumer, having committed that batch, calls ``Broker.release(peer)`` for
each peer in ``held``. Such a job is PENDING until then: counted, but on no queue,
so that no worker runs a job its client may yet be told QUEUE_ERROR about; the
consumer calls ``Broker.publish(job)`` for each job it made durable.

:class:`Counters` are plain integers the broker keeps for the hot events,
journal or not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

from mypy_extensions import i64

from .model import RUNNING, Function, Job, Peer

# how a job ended
COMPLETED: Final = 0
FAILED: Final = 1
EXCEPTION: Final = 2
CANCELLED: Final = 3  # admin "cancel job"
DROPPED: Final = 4  # it ran out of retries (--job-retries)
ABANDONED: Final = 5  # its last foreground client left before it ran
OUTCOMES: Final = ("completed", "failed", "exception", "cancelled", "dropped", "abandoned")

# why a running job went back to its queue
LOST: Final = 0  # its worker left
TIMED_OUT: Final = 1  # the worker's CAN_DO_TIMEOUT ran out
RELEASED: Final = 2  # its worker said CANT_DO / RESET_ABILITIES
RETRY_FAILED: Final = 3  # WORK_FAIL of a background job whose retry policy retries failures
RETRY_EXCEPTION: Final = 4  # the same for WORK_EXCEPTION
REASONS: Final = ("lost", "timeout", "cant_do", "fail", "exception")


class JobAccepted:
    """A new job: queued, or scheduled for ``when`` (epoch seconds, else 0).
    ``peer`` submitted it (None when the broker itself made it)."""

    __slots__ = ("job", "peer", "when")

    def __init__(self, job: Job, peer: Peer | None, when: int) -> None:
        self.job = job
        self.peer = peer
        self.when = when


class JobStarted:
    __slots__ = ("job", "worker")

    def __init__(self, job: Job, worker: Peer) -> None:
        self.job = job
        self.worker = worker


class JobFinished:
    """The job left the broker; ``outcome`` is one of COMPLETED .. ABANDONED."""

    __slots__ = ("job", "outcome")

    def __init__(self, job: Job, outcome: int) -> None:
        self.job = job
        self.outcome = outcome


class JobRequeued:
    """The job went back to its queue (``why``: LOST .. RETRY_EXCEPTION); it is
    queued again, with one more retry counted, or scheduled for ``when`` (epoch
    seconds, a retry policy's backoff; else 0)."""

    __slots__ = ("job", "when", "why", "worker")

    def __init__(self, job: Job, worker: Peer | None, why: int, when: float = 0.0) -> None:
        self.job = job
        self.worker = worker
        self.why = why
        self.when = when


class WorkerCame:
    """``peer`` can now do ``function`` (CAN_DO, CAN_DO_TIMEOUT)."""

    __slots__ = ("function", "peer")

    def __init__(self, peer: Peer, function: bytes) -> None:
        self.peer = peer
        self.function = function


class WorkerLeft:
    """``peer`` no longer does ``function`` (CANT_DO, RESET_ABILITIES, gone)."""

    __slots__ = ("function", "peer")

    def __init__(self, peer: Peer, function: bytes) -> None:
        self.peer = peer
        self.function = function


Entry = JobAccepted | JobStarted | JobFinished | JobRequeued | WorkerCame | WorkerLeft


class Consumer(Protocol):
    def consume(self, entries: list[Entry], held: list[Peer]) -> None:
        """Handle one batch. With ``hold_created``, call ``Broker.release(p)``
        for each peer in ``held`` once the batch is durable (now or later)."""


class Journal:
    __slots__ = ("consumer", "entries", "held", "hold_created", "tally")

    def __init__(self, consumer: Consumer | None, hold_created: bool = False) -> None:
        self.consumer = consumer  # None: only a tally listens (entries are not built)
        self.hold_created = hold_created
        self.entries: list[Entry] = []
        self.held: list[Peer] = []
        self.tally: Tally | None = None  # metrics, when --http is on

    # The broker's three per-job events, as entries for a consumer: the broker calls
    # these only while there is one, and tells a tally (``self.tally``) itself (a
    # call less per event: metrics are to cost the job path nothing measurable).

    def accepted(self, job: Job, peer: Peer | None, when: int) -> None:
        self.entries.append(JobAccepted(job, peer, when))

    def started(self, job: Job, worker: Peer) -> None:
        self.entries.append(JobStarted(job, worker))

    def finished(self, job: Job, outcome: int) -> None:
        self.entries.append(JobFinished(job, outcome))

    def drain(self) -> None:
        """End of a batch: hand the entries so far to the consumer (the edge
        calls this before a flush). The rarer entries (requeues, workers) are
        appended to ``entries`` even without a consumer: the tally reads them."""
        tally = self.tally
        if tally is not None:
            tally.fresh = False  # the next batch reads the clock again
        if self.entries or self.held:  # (most batches, with metrics alone, have none)
            self._hand_over()

    def _hand_over(self) -> None:
        entries = self.entries
        tally = self.tally
        if tally is not None and entries:
            tally.rare(entries)
        consumer = self.consumer
        if consumer is None:
            entries.clear()
            return
        held = self.held
        self.entries = []
        self.held = []
        consumer.consume(entries, held)


# seconds; a job server's waits and runs span milliseconds to minutes
# (Histogram.observe has them written out)
BUCKETS: Final = (
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


def bucket(v: float) -> int:
    """The index of the first bound of BUCKETS at or above ``v`` (14: +Inf)."""
    i = 0
    for bound in BUCKETS:
        if v <= bound:
            return i
        i += 1
    return i


class Histogram:
    """Counts per bucket of BUCKETS (and +Inf) and their sum.

    The counts are plain integer fields, found by comparisons written out:
    compiled, an observation is a few double comparisons and one addition,
    where a list of counts would box a new integer object per observation
    once a count passes 256 (``i64``: a machine addition, no tag checks).
    """

    __slots__ = (
        "b0",
        "b1",
        "b2",
        "b3",
        "b4",
        "b5",
        "b6",
        "b7",
        "b8",
        "b9",
        "b10",
        "b11",
        "b12",
        "b13",
        "b14",
        "sum",
    )

    def __init__(self) -> None:
        self.b0: i64 = 0
        self.b1: i64 = 0
        self.b2: i64 = 0
        self.b3: i64 = 0
        self.b4: i64 = 0
        self.b5: i64 = 0
        self.b6: i64 = 0
        self.b7: i64 = 0
        self.b8: i64 = 0
        self.b9: i64 = 0
        self.b10: i64 = 0
        self.b11: i64 = 0
        self.b12: i64 = 0
        self.b13: i64 = 0
        self.b14: i64 = 0
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self.sum += v
        if v <= 0.1:
            if v <= 0.005:
                if v <= 0.001:
                    self.b0 += 1
                else:
                    self.b1 += 1
            elif v <= 0.01:
                self.b2 += 1
            elif v <= 0.05:
                self.b3 += 1
            else:
                self.b4 += 1
        elif v <= 2.5:
            if v <= 0.25:
                self.b5 += 1
            elif v <= 0.5:
                self.b6 += 1
            elif v <= 1.0:
                self.b7 += 1
            else:
                self.b8 += 1
        elif v <= 10.0:
            if v <= 5.0:
                self.b9 += 1
            else:
                self.b10 += 1
        elif v <= 30.0:
            self.b11 += 1
        elif v <= 60.0:
            self.b12 += 1
        elif v <= 300.0:
            self.b13 += 1
        else:
            self.b14 += 1

    @property
    def counts(self) -> list[int]:
        """Per bucket (not cumulative), +Inf last."""
        return [
            self.b0,
            self.b1,
            self.b2,
            self.b3,
            self.b4,
            self.b5,
            self.b6,
            self.b7,
            self.b8,
            self.b9,
            self.b10,
            self.b11,
            self.b12,
            self.b13,
            self.b14,
        ]

    def add(self, other: Histogram) -> None:
        self.b0 += other.b0
        self.b1 += other.b1
        self.b2 += other.b2
        self.b3 += other.b3
        self.b4 += other.b4
        self.b5 += other.b5
        self.b6 += other.b6
        self.b7 += other.b7
        self.b8 += other.b8
        self.b9 += other.b9
        self.b10 += other.b10
        self.b11 += other.b11
        self.b12 += other.b12
        self.b13 += other.b13
        self.b14 += other.b14
        self.sum += other.sum

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip([*BUCKETS, float("inf")], self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        return out


# Tallied.rare: [outcome * 2 + kind] for the endings other than COMPLETED, then
# retried and timed out by kind
RETRIED: Final = 12
TIMED: Final = 14


class Tallied:
    """One function's totals since the start (kind 0 foreground, 1 background);
    the hot ones are plain integers."""

    __slots__ = (
        "bg_completed",
        "bg_submitted",
        "bytes_in",
        "bytes_out",
        "fg_completed",
        "fg_submitted",
        "rare",
        "run",
        "wait",
    )

    def __init__(self) -> None:
        self.fg_submitted: i64 = 0
        self.bg_submitted: i64 = 0
        self.fg_completed: i64 = 0
        self.bg_completed: i64 = 0
        # job data of new jobs, and results from workers (WORK_DATA, WORK_WARNING,
        # WORK_COMPLETE, WORK_EXCEPTION): payload bytes, not packet headers
        self.bytes_in: i64 = 0
        self.bytes_out: i64 = 0
        self.rare = [0] * 16
        self.wait = Histogram()  # per-function histograms are opt-in
        self.run = Histogram()


# finished jobs remembered for /api/jobs/<handle>: the newest this many, on a ring
# (field stores per job: no list growth, copying or trimming on the job path)
MAX_FINISHED: Final = 20_000


class Ended:
    """One slot of the finished-jobs ring, made once and written over: plain
    fields, so a job's end is four stores and its time is not boxed."""

    __slots__ = ("at", "code", "function", "handle")

    def __init__(self) -> None:
        self.handle: bytes | None = None  # None: the ring has not come round to it
        self.function = b""
        self.code: i64 = 0  # outcome * 2 + kind (1: background)
        self.at = 0.0  # the tally's clock


class Tally:
    """What /metrics counts and times, fed by the journal (see the module's doc).

    The clock is read once per batch, at its first job event (``fresh`` until
    the batch is drained); per job: a few integer additions, the job's ``at``
    (when it was queued or started) and two histogram observations. Finished
    jobs are remembered on a ring of :class:`Ended` made at the start (no object
    per job): handle, function and ending, and when.
    """

    def __init__(self, clock: Callable[[], float], function_histograms: bool = False) -> None:
        self.clock = clock
        self.per_function = function_histograms
        self.fresh = False  # ``now`` was read in this batch
        self.now = 0.0
        self.functions: dict[bytes, Tallied] = {}
        # the last function counted (batches are mostly one function's)
        self.last_func: Function | None = None
        self.last = Tallied()
        self.wait = Histogram()
        self.run = Histogram()
        # finished jobs, the next to write over at done_next
        self.done = [Ended() for _ in range(MAX_FINISHED)]
        self.done_next: i64 = 0

    def tick(self) -> float:
        """Read the clock: the batch's first job event (callers test ``fresh``)."""
        now = self.clock()
        self.now = now
        self.fresh = True
        return now

    def stats(self, func: Function) -> Tallied:
        if func is self.last_func:
            return self.last
        name = func.name
        s = self.functions.get(name)
        if s is None:
            s = self.functions[name] = Tallied()
        self.last_func = func
        self.last = s
        return s

    def accepted(self, job: Job) -> None:
        job.at = self.now if self.fresh else self.tick()
        func = job.func
        s = self.last if func is self.last_func else self.stats(func)
        s.bytes_in += len(job.data)
        if job.background:
            s.bg_submitted += 1
        else:
            s.fg_submitted += 1

    def result(self, job: Job, size: int) -> None:
        """A worker sent ``size`` bytes of result for ``job`` (data, warning, the end)."""
        func = job.func
        s = self.last if func is self.last_func else self.stats(func)
        s.bytes_out += size

    def started(self, job: Job) -> None:
        now = self.now if self.fresh else self.tick()
        at = job.at
        if at > 0.0:  # 0: queued before metrics came (a replayed job)
            self.wait.observe(now - at)
            if self.per_function:
                self.stats(job.func).wait.observe(now - at)
        job.at = now

    def finished(self, job: Job, outcome: int, out: int = 0) -> None:
        """``job`` ended; ``out``: bytes of result sent with the ending (WORK_COMPLETE)."""
        now = self.now if self.fresh else self.tick()
        func = job.func
        s = self.last if func is self.last_func else self.stats(func)
        if out:
            s.bytes_out += out
        kind = 1 if job.background else 0
        if outcome == COMPLETED:
            if kind:
                s.bg_completed += 1
            else:
                s.fg_completed += 1
        else:
            s.rare[outcome * 2 + kind] += 1
        at = job.at
        # a job that ends while running is still RUNNING here
        if at > 0.0 and job.state == RUNNING and outcome != CANCELLED and outcome != ABANDONED:
            self.run.observe(now - at)
            if self.per_function:
                s.run.observe(now - at)
        i = self.done_next
        ended = self.done[i]
        ended.handle = job.handle
        ended.function = func.name
        ended.code = outcome * 2 + kind
        ended.at = now
        i += 1
        if i == MAX_FINISHED:  # (compiled: "0 if ... else i" would box i)
            i = 0
        self.done_next = i

    def rare(self, entries: list[Entry]) -> None:
        """The batch's requeues (retries, timeouts); workers coming and going are
        read from the broker at scrape time."""
        for entry in entries:
            if isinstance(entry, JobRequeued):
                job = entry.job
                s = self.stats(job.func)
                k = 1 if job.background else 0
                s.rare[RETRIED + k] += 1
                if entry.why == TIMED_OUT:
                    s.rare[TIMED + k] += 1
                job.at = self.now if self.fresh else self.tick()


class Counters:
    """Totals since the start, for metrics."""

    __slots__ = (
        "abandoned",
        "cancelled",
        "coalesced",
        "completed",
        "dropped",
        "exceptions",
        "failed",
        "requeued",
        "started",
        "submitted",
        "timed_out",
    )

    def __init__(self) -> None:
        self.submitted = 0  # new jobs accepted
        self.coalesced = 0  # submissions joined to an existing job (same unique)
        self.started = 0
        self.completed = 0
        self.failed = 0
        self.exceptions = 0
        self.cancelled = 0
        self.dropped = 0
        self.abandoned = 0
        self.requeued = 0
        self.timed_out = 0  # of the requeued, by CAN_DO_TIMEOUT

    def snapshot(self) -> dict[str, int]:
        return {
            "submitted": self.submitted,
            "coalesced": self.coalesced,
            "started": self.started,
            "completed": self.completed,
            "failed": self.failed,
            "exceptions": self.exceptions,
            "cancelled": self.cancelled,
            "dropped": self.dropped,
            "abandoned": self.abandoned,
            "requeued": self.requeued,
            "timed_out": self.timed_out,
        }
