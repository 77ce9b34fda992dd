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

import asyncio
import bisect
import time
from collections.abc import Iterator
from typing import Final

from .. import __version__
from .broker import Broker
from .durable import Durable
from .policy import DeadSet
from .recorder import FunctionStats, Histogram, Recorder

OTHER: Final = "_other"
KINDS: Final = ("foreground", "background")


def top_names(broker: Broker, stats: dict[bytes, FunctionStats], top: int) -> set[bytes]:
    """The ``top`` busiest functions: most jobs seen, then most jobs known now."""
    names = set(stats) | set(broker.functions)
    if len(names) <= top:
        return names

    def weight(name: bytes) -> tuple[int, int]:
        s = stats.get(name)
        f = broker.functions.get(name)
        return (s.activity() if s else 0, f.total + len(f.workers) if f else 0)

    return set(sorted(names, key=weight, reverse=True)[:top])


def label(name: bytes) -> str:
    return name.decode("utf-8", "replace")


class Collector:
    """A prometheus_client collector: the families above, built at each scrape."""

    def __init__(
        self,
        broker: Broker,
        recorder: Recorder,
        top: int,
        function_histograms: bool,
        dead: DeadSet | None = None,
    ) -> None:
        self.broker = broker
        self.recorder = recorder
        self.top = top
        self.function_histograms = function_histograms
        self.dead = dead

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        broker = self.broker
        recorder = self.recorder
        stats = recorder.functions  # built from the tally once per scrape
        top = top_names(broker, stats, self.top)

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
        if self.dead is not None:
            # what waits for an operator; on a shared store every server sees the whole set
            dead = GaugeMetricFamily(
                "gearmill_dead_jobs",
                "Jobs in the dead set (gearmill admin --dead-list), per function.",
                labels=["function"],
            )
            counts = self.dead.counts()
            # a function seen only in the dead set (it died on another server) is named
            # as long as the bound allows
            named = top | counts.keys() if len(top | counts.keys()) <= self.top else top
            in_dead: dict[str, int] = {}
            for name, n in counts.items():
                key = label(name) if name in named else OTHER
                in_dead[key] = in_dead.get(key, 0) + n
            for key, n in in_dead.items():
                dead.add_metric([key], n)
            yield dead

        # totals by function (bounded) from the journal
        grouped: dict[str, FunctionStats] = {}
        for name, s in stats.items():
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
            "Jobs put back in their queue for another attempt (worker lost, timed out, "
            "CANT_DO; WORK_FAIL/WORK_EXCEPTION where retry_on has them).",
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
                (
                    4,
                    "dead_lettered",
                    "Jobs out of retries: background ones go to the dead set (unless "
                    "dead = false), foreground clients get WORK_FAIL.",
                ),
                (5, "abandoned", "Foreground jobs whose clients all left before the result."),
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
            ("bytes_in", "gearmill_job_in_bytes", "Bytes of job data submitted (new jobs)."),
            (
                "bytes_out",
                "gearmill_job_out_bytes",
                "Bytes of results workers sent (WORK_DATA, WORK_WARNING, WORK_COMPLETE, "
                "WORK_EXCEPTION).",
            ),
        ):
            counter = CounterMetricFamily(metric, doc, labels=["function"])
            for key, s in grouped.items():
                counter.add_metric([key], getattr(s, attr))
            yield counter

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


# a store's commit takes from a fraction of a millisecond (SQLite, Redis) to seconds
COMMIT_BUCKETS: Final = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
COMMIT_BUCKETS_TAIL: Final = (0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
SIZE_EVERY: Final = 10.0  # seconds between two readings of the store's size
SIZE_TIMEOUT: Final = 1.0


class Buckets:
    """A histogram kept by the store's writer: one observation per commit (a
    group of jobs), so plain Python is cheap enough."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.bounds, value)
        self.counts[i] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out = []
        total = 0
        for i, n in enumerate(self.counts):
            total += n
            bound = "+Inf" if i == len(self.bounds) else repr(self.bounds[i])
            out.append((bound, float(total)))
        return out


class StoreStats:
    """A prometheus_client collector for the durable store: up or down, commit
    latency and batch size (from the writer's ``observe`` hook), committed jobs,
    and the jobs and bytes the store holds (read at most every SIZE_EVERY s)."""

    def __init__(self, durable: Durable) -> None:
        self.durable = durable
        self.latency = Buckets(COMMIT_BUCKETS + COMMIT_BUCKETS_TAIL)
        self.batch = Buckets(tuple(float(b) for b in BATCH_BUCKETS))
        durable.observe = self.observed
        self.jobs: int | None = None
        self.bytes: int | None = None
        self.read_at = 0.0
        # the HTTP listener's periodic ping (http.py): None until the first answer or failure
        self.reachable: bool | None = None

    def observed(self, seconds: float, size: int) -> None:
        self.latency.observe(seconds)
        self.batch.observe(float(size))

    async def refresh(self) -> None:
        """Read the store's size if the last reading is old (a scrape awaits it)."""
        now = time.monotonic()
        if now - self.read_at < SIZE_EVERY or self.durable.down is not None:
            return
        self.read_at = now
        store = self.durable.store
        try:
            self.jobs = await asyncio.wait_for(store.count(), SIZE_TIMEOUT)
            self.bytes = await asyncio.wait_for(store.size_bytes(), SIZE_TIMEOUT)
        except Exception:  # the writer notices and logs a store that is gone
            self.jobs = self.bytes = None

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        d = self.durable
        yield GaugeMetricFamily(
            "gearmill_store_up",
            "1 while the store takes commits; 0 while background jobs get QUEUE_ERROR.",
            value=0 if d.down is not None else 1,
        )
        if self.reachable is not None:
            yield GaugeMetricFamily(
                "gearmill_store_reachable",
                "1 while the store answers the ping sent every http.probe_every seconds.",
                value=1 if self.reachable else 0,
            )
        commits = CounterMetricFamily("gearmill_store_commits", "Groups committed to the store.")
        commits.add_metric([], d.commits)
        yield commits
        jobs = CounterMetricFamily(
            "gearmill_store_committed_jobs", "Background jobs made durable (added)."
        )
        jobs.add_metric([], d.committed_jobs)
        yield jobs
        for name, doc, hist in (
            (
                "gearmill_store_commit_seconds",
                "Time one group commit took.",
                self.latency,
            ),
            (
                "gearmill_store_commit_batch_size",
                "Jobs added and removed in one group commit.",
                self.batch,
            ),
        ):
            h = HistogramMetricFamily(name, doc)
            h.add_metric([], hist.cumulative(), hist.sum)
            yield h
        if self.jobs is not None:
            yield GaugeMetricFamily(
                "gearmill_store_jobs", "Jobs the store holds (read every 10 s).", value=self.jobs
            )
        if self.bytes is not None:
            yield GaugeMetricFamily(
                "gearmill_store_bytes",
                "Bytes the store takes, as it reports them (read every 10 s).",
                value=self.bytes,
            )
