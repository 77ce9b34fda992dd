"""The journal consumer behind /metrics: totals per function and kind, and times.

:class:`Recorder` counts submissions and endings per function and kind and
measures queue wait and run time from the entries the broker journals (never by
re-reading status), and remembers finished jobs for a bounded time. It runs
after every read batch while ``--http`` is on, so it is compiled with the hot
path (``_accel.HOT_MODULES``) and kept free of imports beyond the broker's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from .journal import (
    ABANDONED,
    CANCELLED,
    OUTCOMES,
    TIMED_OUT,
    Entry,
    JobAccepted,
    JobFinished,
    JobRequeued,
    JobStarted,
)
from .model import RUNNING, Job, Peer

# seconds; a job server's waits and runs span milliseconds to minutes
# (a list: compiled code indexes it without boxing)
BUCKETS: Final[list[float]] = [
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
]
# jobs whose times are kept at once; beyond it new jobs are not timed (memory stays bounded)
MAX_TIMED: Final = 1_000_000
MAX_FINISHED: Final = 10_000  # finished jobs remembered for /api/jobs/<handle>


class Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        bounds = BUCKETS
        i = 0
        n = len(bounds)
        while i < n and value > bounds[i]:
            i += 1
        self.counts[i] += 1
        self.sum += value

    def add(self, other: Histogram) -> None:
        for i, n in enumerate(other.counts):
            self.counts[i] += n
        self.sum += other.sum

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip([*BUCKETS, float("inf")], self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        return out


class FunctionStats:
    """Totals of one function since the start, by kind (0 foreground, 1 background)."""

    __slots__ = ("ended", "retried", "run", "submitted", "timed_out", "wait")

    def __init__(self) -> None:
        self.submitted = [0, 0]
        # per outcome (journal.OUTCOMES), per kind
        self.ended = [[0, 0] for _ in OUTCOMES]
        self.retried = [0, 0]
        self.timed_out = [0, 0]
        self.wait = Histogram()
        self.run = Histogram()

    def activity(self) -> int:
        return self.submitted[0] + self.submitted[1]

    def add(self, other: FunctionStats) -> None:
        for k in (0, 1):
            self.submitted[k] += other.submitted[k]
            self.retried[k] += other.retried[k]
            self.timed_out[k] += other.timed_out[k]
            for o in range(len(OUTCOMES)):
                self.ended[o][k] += other.ended[o][k]
        self.wait.add(other.wait)
        self.run.add(other.run)


class Finished:
    """A job that ended, as /api/jobs/<handle> shows it."""

    __slots__ = ("at", "background", "function", "handle", "outcome", "unique")

    def __init__(self, handle: bytes, row: tuple[bytes, bytes, bool, int, float]) -> None:
        self.handle = handle
        self.function, self.unique, self.background, outcome, self.at = row
        self.outcome = OUTCOMES[outcome]


class Recorder:
    """A journal consumer keeping the totals and times /metrics reports.

    It runs after every read batch while --http is on: one clock reading per
    batch, locals for everything touched per entry.
    """

    def __init__(
        self,
        keep_finished: float = 600.0,
        function_histograms: bool = False,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.clock = clock or time.monotonic
        # wall time = monotonic + offset, without a second clock call per job
        self.offset = time.time() - self.clock()
        self.functions: dict[bytes, FunctionStats] = {}
        self.function_histograms = function_histograms
        self.wait = Histogram()
        self.run = Histogram()
        # job -> when it was queued (accepted or requeued) or, once running, started;
        # by the monotonic clock
        self.since: dict[Job, float] = {}
        self.keep_finished = keep_finished
        # finished jobs, oldest at ``ring_at`` once full: (handle, function, unique,
        # background, outcome, when); looked up by a scan (rare: the API asks)
        self.ring: list[tuple[bytes, bytes, bytes, bool, int, float]] = []
        self.ring_at = 0

    def stats(self, name: bytes) -> FunctionStats:
        s = self.functions.get(name)
        if s is None:
            s = self.functions[name] = FunctionStats()
        return s

    def consume(self, entries: list[Entry], held: list[Peer]) -> None:
        # one clock reading per batch: entries of a batch happened within one read
        now = self.clock()
        functions = self.functions
        since = self.since
        per_function = self.function_histograms
        for entry in entries:
            if isinstance(entry, JobStarted):
                job = entry.job
                at = since.get(job)
                if at is not None:
                    self.wait.observe(now - at)
                    if per_function:
                        self.stats(job.func.name).wait.observe(now - at)
                    since[job] = now
            elif isinstance(entry, JobFinished):
                job = entry.job
                outcome = entry.outcome
                name = job.func.name
                s = functions.get(name)
                if s is None:
                    s = self.stats(name)
                s.ended[outcome][1 if job.background else 0] += 1
                at = since.pop(job, None)
                # a job that ends while running is still RUNNING here
                if (
                    at is not None
                    and job.state == RUNNING
                    and outcome != CANCELLED
                    and outcome != ABANDONED
                ):
                    self.run.observe(now - at)
                    if per_function:
                        s.run.observe(now - at)
                row = (job.handle, name, job.unique, job.background, outcome, now)
                ring = self.ring
                if len(ring) < MAX_FINISHED:
                    ring.append(row)
                else:
                    i = self.ring_at
                    ring[i] = row
                    self.ring_at = i + 1 if i + 1 < MAX_FINISHED else 0
            elif isinstance(entry, JobAccepted):
                job = entry.job
                name = job.func.name
                s = functions.get(name)
                if s is None:
                    s = self.stats(name)
                s.submitted[1 if job.background else 0] += 1
                if len(since) < MAX_TIMED:
                    since[job] = now
            elif isinstance(entry, JobRequeued):
                job = entry.job
                s = self.stats(job.func.name)
                k = 1 if job.background else 0
                s.retried[k] += 1
                if entry.why == TIMED_OUT:
                    s.timed_out[k] += 1
                if job in since or len(since) < MAX_TIMED:
                    since[job] = now
            # WorkerCame / WorkerLeft: the gauges read the broker itself

    def finished_job(self, handle: bytes) -> Finished | None:
        """A job that ended within ``keep_finished`` seconds, if it is remembered."""
        oldest = self.clock() - self.keep_finished
        for row in self.ring:
            if row[0] == handle and row[5] >= oldest:
                h, function, unique, background, outcome, at = row
                return Finished(h, (function, unique, background, outcome, at + self.offset))
        return None

    def started_at(self, job: Job) -> float | None:
        """Seconds since ``job`` started running (or was queued, when not running)."""
        at = self.since.get(job)
        return None if at is None else self.clock() - at
