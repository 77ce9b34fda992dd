"""What /metrics and the JSON API report, from the broker's journal and its state.

:class:`Recorder` is a journal consumer: it counts submissions and endings per
function and kind, and measures queue wait and run time, from the entries the
broker appends (never by re-reading status). Gauges (queued, running, workers,
connections) are read from the broker at scrape time, as ``status`` shows them.

Series stay bounded: per-function series exist for the ``top`` busiest
functions (most jobs seen plus jobs now known), the rest are summed under
``function="_other"``. Histograms are one for all functions unless
``function_histograms`` is on (then also bounded by ``top``).
"""

from __future__ import annotations

import bisect
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Final

from .. import __version__
from .broker import Broker
from .journal import (
    COMPLETED,
    DROPPED,
    EXCEPTION,
    FAILED,
    OUTCOMES,
    TIMED_OUT,
    Entry,
    JobAccepted,
    JobFinished,
    JobRequeued,
    JobStarted,
    WorkerCame,
    WorkerLeft,
)
from .model import Job, Peer

OTHER: Final = "_other"
KINDS: Final = ("foreground", "background")
# seconds; a job server's waits and runs span milliseconds to minutes
BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# jobs whose times are kept at once; beyond it new jobs are not timed (memory stays bounded)
MAX_TIMED: Final = 1_000_000
MAX_FINISHED: Final = 10_000  # finished jobs remembered for /api/jobs/<handle>


class Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.sum += value

    def add(self, other: Histogram) -> None:
        for i, n in enumerate(other.counts):
            self.counts[i] += n
        self.sum += other.sum

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*BUCKETS, float("inf")), self.counts, strict=True):
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
    __slots__ = ("at", "background", "function", "handle", "outcome", "unique")

    def __init__(self, job: Job, outcome: int, at: float) -> None:
        self.handle = job.handle
        self.function = job.func.name
        self.unique = job.unique
        self.background = job.background
        self.outcome = OUTCOMES[outcome]
        self.at = at


class Recorder:
    """A journal consumer keeping the totals and times /metrics reports."""

    def __init__(
        self, keep_finished: float = 600.0, clock: Callable[[], float] | None = None
    ) -> None:
        self.clock = clock or time.monotonic
        self.wall = time.time
        self.functions: dict[bytes, FunctionStats] = {}
        self.wait = Histogram()
        self.run = Histogram()
        # job -> when it was accepted (queued) or started (running), by the monotonic clock
        self.accepted: dict[Job, float] = {}
        self.started: dict[Job, float] = {}
        self.keep_finished = keep_finished
        self.finished: OrderedDict[bytes, Finished] = OrderedDict()

    def stats(self, name: bytes) -> FunctionStats:
        s = self.functions.get(name)
        if s is None:
            s = self.functions[name] = FunctionStats()
        return s

    def consume(self, entries: list[Entry], held: list[Peer]) -> None:
        # one clock reading per batch: entries of a batch happened within one read
        now = self.clock()
        for entry in entries:
            if isinstance(entry, WorkerCame | WorkerLeft):
                continue
            job = entry.job
            kind = 1 if job.background else 0
            if isinstance(entry, JobAccepted):
                self.stats(job.func.name).submitted[kind] += 1
                if len(self.accepted) < MAX_TIMED:
                    self.accepted[job] = now
            elif isinstance(entry, JobStarted):
                at = self.accepted.pop(job, None)
                if at is not None:
                    waited = now - at
                    self.wait.observe(waited)
                    self.stats(job.func.name).wait.observe(waited)
                if len(self.started) < MAX_TIMED:
                    self.started[job] = now
            elif isinstance(entry, JobRequeued):
                s = self.stats(job.func.name)
                s.retried[kind] += 1
                if entry.why == TIMED_OUT:
                    s.timed_out[kind] += 1
                self.started.pop(job, None)
                if len(self.accepted) < MAX_TIMED:
                    self.accepted[job] = now
            elif isinstance(entry, JobFinished):
                s = self.stats(job.func.name)
                s.ended[entry.outcome][kind] += 1
                self.accepted.pop(job, None)
                at = self.started.pop(job, None)
                if at is not None and entry.outcome in (COMPLETED, FAILED, EXCEPTION, DROPPED):
                    ran = now - at
                    self.run.observe(ran)
                    s.run.observe(ran)
                self._remember(job, entry.outcome)

    def _remember(self, job: Job, outcome: int) -> None:
        finished = self.finished
        finished[job.handle] = Finished(job, outcome, self.wall())
        finished.move_to_end(job.handle)
        while len(finished) > MAX_FINISHED:
            finished.popitem(last=False)

    def finished_job(self, handle: bytes) -> Finished | None:
        """A job that ended within ``keep_finished`` seconds, if it is remembered."""
        done = self.finished.get(handle)
        if done is None or self.wall() - done.at > self.keep_finished:
            return None
        return done

    def started_at(self, job: Job) -> float | None:
        """Seconds since ``job`` started running (or was queued, when not running)."""
        at = self.started.get(job)
        if at is None:
            at = self.accepted.get(job)
        return None if at is None else self.clock() - at


def top_names(broker: Broker, recorder: Recorder, top: int) -> set[bytes]:
    """The ``top`` busiest functions: most jobs seen, then most jobs known now."""
    names = set(recorder.functions) | set(broker.functions)
    if len(names) <= top:
        return names

    def weight(name: bytes) -> tuple[int, int]:
        s = recorder.functions.get(name)
        f = broker.functions.get(name)
        return (s.activity() if s else 0, f.total + len(f.workers) if f else 0)

    return set(sorted(names, key=weight, reverse=True)[:top])


def label(name: bytes) -> str:
    return name.decode("utf-8", "replace")


class Collector:
    """A prometheus_client collector: the families above, built at each scrape."""

    def __init__(
        self, broker: Broker, recorder: Recorder, top: int, function_histograms: bool
    ) -> None:
        self.broker = broker
        self.recorder = recorder
        self.top = top
        self.function_histograms = function_histograms

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        broker = self.broker
        recorder = self.recorder
        top = top_names(broker, recorder, self.top)

        yield GaugeMetricFamily("gearman_up", "The job server answers.", value=1)
        version = GaugeMetricFamily(
            "gearman_version_info", "The server's version.", labels=["version"]
        )
        version.add_metric([broker.config.version.decode()], 1)
        yield version
        info = GaugeMetricFamily(
            "gearmill_build_info", "gearmill's own version.", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info

        # the exporter's gauges, as `status` shows them
        gauges: dict[str, list[int]] = {}
        for name, high, normal, low, running, workers in broker.function_rows():
            key = label(name) if name in top else OTHER
            row = gauges.setdefault(key, [0, 0, 0])
            queued = high + normal + low
            row[0] += queued + running
            row[1] += running
            row[2] += workers
        for metric, doc, i in (
            ("gearman_jobs", "Jobs queued or running, per function.", 0),
            ("gearman_jobs_running", "Jobs running, per function.", 1),
            ("gearman_workers", "Workers registered, per function.", 2),
        ):
            g = GaugeMetricFamily(metric, doc, labels=["function"])
            for key, row in gauges.items():
                g.add_metric([key], row[i])
            yield g
        waiting = GaugeMetricFamily(
            "gearman_jobs_waiting", "Jobs queued (not running), per function.", labels=["function"]
        )
        for key, row in gauges.items():
            waiting.add_metric([key], row[0] - row[1])
        yield waiting

        # totals by function (bounded) from the journal
        grouped: dict[str, FunctionStats] = {}
        for name, s in recorder.functions.items():
            key = label(name) if name in top else OTHER
            into = grouped.get(key)
            if into is None:
                into = grouped[key] = FunctionStats()
            into.add(s)
        submitted = CounterMetricFamily(
            "gearmill_jobs_submitted",
            "New jobs accepted, per function and kind.",
            labels=["function", "kind"],
        )
        retried = CounterMetricFamily(
            "gearmill_jobs_retried",
            "Running jobs put back in their queue (worker lost or timed out).",
            labels=["function", "kind"],
        )
        ended = {
            outcome: CounterMetricFamily(
                f"gearmill_jobs_{name}",
                doc,
                labels=["function", "kind"],
            )
            for outcome, name, doc in (
                (0, "completed", "Jobs completed (WORK_COMPLETE)."),
                (1, "failed", "Jobs failed (WORK_FAIL)."),
                (2, "exceptions", "Jobs ended by WORK_EXCEPTION."),
                (3, "cancelled", "Jobs cancelled by an operator."),
                (4, "dead_lettered", "Jobs dropped after running out of retries."),
                (5, "abandoned", "Foreground jobs whose clients all left before they ran."),
            )
        }
        for key, s in grouped.items():
            for k, kind in enumerate(KINDS):
                submitted.add_metric([key, kind], s.submitted[k])
                retried.add_metric([key, kind], s.retried[k])
                for outcome, family in ended.items():
                    family.add_metric([key, kind], s.ended[outcome][k])
        yield submitted
        yield from ended.values()
        yield retried

        for attr, metric, doc in (
            ("wait", "gearmill_job_queue_wait_seconds", "Time from submission to a worker."),
            ("run", "gearmill_job_run_seconds", "Time from a worker taking a job to its end."),
        ):
            if self.function_histograms:
                h = HistogramMetricFamily(metric, doc, labels=["function"])
                for key, s in grouped.items():
                    hist: Histogram = getattr(s, attr)
                    h.add_metric([key], hist.cumulative(), hist.sum)
            else:
                h = HistogramMetricFamily(metric, doc)
                hist = getattr(recorder, attr)
                h.add_metric([], hist.cumulative(), hist.sum)
            yield h

        workers = sum(1 for p in broker.peers.values() if p.abilities)
        conns = GaugeMetricFamily(
            "gearmill_connections",
            "Connected peers: workers (with a CAN_DO) and clients.",
            labels=["role"],
        )
        conns.add_metric(["worker"], workers)
        conns.add_metric(["client"], len(broker.peers) - workers)
        yield conns
        yield GaugeMetricFamily(
            "gearmill_functions", "Functions the server knows.", value=len(broker.functions)
        )
        coalesced = CounterMetricFamily(
            "gearmill_jobs_coalesced", "Submissions joined to an existing job (same unique id)."
        )
        coalesced.add_metric([], broker.counters.coalesced)
        yield coalesced
        io = _proc_io()
        if io is not None:
            for key, metric, doc in (
                ("rchar", "gearmill_read_bytes", "Bytes the process read (sockets and files)."),
                ("wchar", "gearmill_written_bytes", "Bytes the process wrote (sockets, logs)."),
            ):
                c = CounterMetricFamily(metric, doc)
                c.add_metric([], io.get(key, 0))
                yield c


def _proc_io() -> dict[str, int] | None:
    """/proc/self/io: counted by the kernel, so the job path pays nothing for it."""
    try:
        with open("/proc/self/io") as f:
            return {k: int(v) for k, _, v in (line.partition(": ") for line in f) if v}
    except (OSError, ValueError):
        return None
