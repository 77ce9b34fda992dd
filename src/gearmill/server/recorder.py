"""What /metrics and the JSON API read of the journal's :class:`~.journal.Tally`.

The tally counts submissions and endings per function and kind and times queue
waits and runs, once per read batch and without an object per job (see
``journal.py``); :class:`Recorder` attaches it to the broker and turns its
numbers into the shapes /metrics and the API show (at scrape time, not on the
job path), and finds a finished job by its handle.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .._accel import metrics_clock
from .broker import Broker
from .journal import (
    BUCKETS,
    COMPLETED,
    OUTCOMES,
    RETRIED,
    TIMED,
    Histogram,
    Tallied,
    Tally,
)
from .model import Job

__all__ = ["BUCKETS", "Finished", "FunctionStats", "Histogram", "Recorder"]


class FunctionStats:
    """Totals of one function since the start, by kind (0 foreground, 1 background)."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "ended",
        "retried",
        "run",
        "submitted",
        "timed_out",
        "wait",
    )

    def __init__(self) -> None:
        self.submitted = [0, 0]
        # per outcome (journal.OUTCOMES), per kind
        self.ended = [[0, 0] for _ in OUTCOMES]
        self.retried = [0, 0]
        self.timed_out = [0, 0]
        self.bytes_in = 0  # job data of new jobs
        self.bytes_out = 0  # results from workers
        self.wait = Histogram()
        self.run = Histogram()

    @staticmethod
    def of(t: Tallied) -> FunctionStats:
        s = FunctionStats()
        s.submitted = [t.fg_submitted, t.bg_submitted]
        rare = t.rare
        s.ended = [[rare[o * 2], rare[o * 2 + 1]] for o in range(len(OUTCOMES))]
        s.ended[COMPLETED] = [t.fg_completed, t.bg_completed]
        s.retried = [rare[RETRIED], rare[RETRIED + 1]]
        s.timed_out = [rare[TIMED], rare[TIMED + 1]]
        s.bytes_in = t.bytes_in
        s.bytes_out = t.bytes_out
        s.wait = t.wait
        s.run = t.run
        return s

    def activity(self) -> int:
        return self.submitted[0] + self.submitted[1]

    def add(self, other: FunctionStats) -> None:
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
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

    __slots__ = ("at", "background", "function", "handle", "outcome")

    def __init__(self, handle: bytes, function: bytes, code: int, at: float) -> None:
        self.handle = handle
        self.function = function
        self.background = code % 2 == 1
        self.outcome = OUTCOMES[code // 2]
        self.at = at


class Recorder:
    """The metrics' view of the broker's journal (a :class:`Tally` on it)."""

    def __init__(
        self,
        keep_finished: float = 600.0,
        function_histograms: bool = False,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.clock = clock or metrics_clock()
        # wall time = monotonic + offset, without a second clock call per batch
        self.offset = time.time() - self.clock()
        self.tally = Tally(self.clock, function_histograms)
        self.function_histograms = function_histograms
        self.keep_finished = keep_finished

    def attach(self, broker: Broker) -> None:
        """Tally the broker's jobs from now on (beside a store's consumer, if any)."""
        journal = broker.journal
        if journal is None:
            journal = broker.attach_journal(None)
        journal.tally = self.tally

    @property
    def functions(self) -> dict[bytes, FunctionStats]:
        """Totals per function name (built when asked: a scrape, the API)."""
        return {name: FunctionStats.of(t) for name, t in self.tally.functions.items()}

    @property
    def wait(self) -> Histogram:
        return self.tally.wait

    @property
    def run(self) -> Histogram:
        return self.tally.run

    def finished_job(self, handle: bytes) -> Finished | None:
        """A job that ended within ``keep_finished`` seconds, if it is remembered."""
        t = self.tally
        oldest = self.clock() - self.keep_finished
        done = t.done
        n = len(done)
        for back in range(1, n + 1):  # newest first
            ended = done[(t.done_next - back) % n]
            if ended.handle is None:
                return None  # the ring has not come round yet: older ones are unused
            if ended.handle == handle:
                if ended.at < oldest:
                    return None
                return Finished(handle, ended.function, ended.code, ended.at + self.offset)
        return None

    def started_at(self, job: Job) -> float | None:
        """Seconds since ``job`` started running (or was queued, when not running)."""
        at = job.at
        return None if at <= 0.0 else self.clock() - at
