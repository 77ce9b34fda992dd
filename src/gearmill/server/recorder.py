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
from .model import Job, Peer

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
        # job -> when it was accepted (queued) or started (running), by the monotonic clock
        self.accepted: dict[Job, float] = {}
        self.started: dict[Job, float] = {}
        self.keep_finished = keep_finished
        # handle -> (function, unique, background, outcome, when); ``ring`` holds the
        # handles, the oldest at ``ring_at`` once it is full
        self.finished: dict[bytes, tuple[bytes, bytes, bool, int, float]] = {}
        self.ring: list[bytes] = []
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
        accepted = self.accepted
        started = self.started
        per_function = self.function_histograms
        for entry in entries:
            if isinstance(entry, JobStarted):
                job = entry.job
                at = accepted.pop(job, None)
                if at is not None:
                    self.wait.observe(now - at)
                    if per_function:
                        self.stats(job.func.name).wait.observe(now - at)
                if len(started) < MAX_TIMED:
                    started[job] = now
            elif isinstance(entry, JobFinished):
                job = entry.job
                outcome = entry.outcome
                name = job.func.name
                s = functions.get(name)
                if s is None:
                    s = self.stats(name)
                s.ended[outcome][1 if job.background else 0] += 1
                at = started.pop(job, None)
                if at is None:
                    accepted.pop(job, None)
                elif outcome != CANCELLED and outcome != ABANDONED:
                    self.run.observe(now - at)
                    if per_function:
                        s.run.observe(now - at)
                handle = job.handle
                ring = self.ring
                if len(ring) < MAX_FINISHED:
                    ring.append(handle)
                else:
                    at_ = self.ring_at
                    self.finished.pop(ring[at_], None)
                    ring[at_] = handle
                    self.ring_at = at_ + 1 if at_ + 1 < MAX_FINISHED else 0
                self.finished[handle] = (name, job.unique, job.background, outcome, now)
            elif isinstance(entry, JobAccepted):
                job = entry.job
                name = job.func.name
                s = functions.get(name)
                if s is None:
                    s = self.stats(name)
                s.submitted[1 if job.background else 0] += 1
                if len(accepted) < MAX_TIMED:
                    accepted[job] = now
            elif isinstance(entry, JobRequeued):
                job = entry.job
                s = self.stats(job.func.name)
                k = 1 if job.background else 0
                s.retried[k] += 1
                if entry.why == TIMED_OUT:
                    s.timed_out[k] += 1
                started.pop(job, None)
                if len(accepted) < MAX_TIMED:
                    accepted[job] = now
            # WorkerCame / WorkerLeft: the gauges read the broker itself

    def finished_job(self, handle: bytes) -> Finished | None:
        """A job that ended within ``keep_finished`` seconds, if it is remembered."""
        row = self.finished.get(handle)
        if row is None or self.clock() - row[4] > self.keep_finished:
            return None
        function, unique, background, outcome, at = row
        return Finished(handle, (function, unique, background, outcome, at + self.offset))

    def started_at(self, job: Job) -> float | None:
        """Seconds since ``job`` started running (or was queued, when not running)."""
        at = self.started.get(job)
        if at is None:
            at = self.accepted.get(job)
        return None if at is None else self.clock() - at
