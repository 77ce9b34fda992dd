"""The job broker: every Gearman semantic of the server, with no I/O.

The broker is built in three layers, by temperature (all compiled together):

* ``core.py``: the hot path (dispatch and the one access check, submit, grab,
  complete, wake-ups, status, flush to the peers' sinks);
* ``handlers.py``: the rest of the packet table and peers leaving;
* this module: what runs on a timer or an operator's request (timers, cancel,
  queries, statistics, shutdown, attaching a journal), as public methods.

Data (peers, functions, jobs, timers) is in ``model.py``; the record of what
the broker decided in ``journal.py``; where bytes go in ``sink.py``. See
docs/architecture.md for the picture.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable

from ..protocol.packets import PacketType, encode
from .core import NOOP_ANSWER_TIME, Handler
from .handlers import Handlers
from .journal import CANCELLED, TIMED_OUT, Consumer, Journal
from .model import (
    LEVELS,
    PENDING,
    QUEUED,
    RUNNING,
    SCHEDULED,
    TIMER_CALL,
    TIMER_DEAD,
    TIMER_EPOCH,
    TIMER_NOOPS,
    BrokerConfig,
    Function,
    Job,
    Peer,
    forget_unique,
    unique_key,
)
from .replies import NOOP

__all__ = ["LEVELS", "Broker", "BrokerConfig", "Function", "Job", "Peer"]

log = logging.getLogger("gearmill.broker")


class Broker(Handlers):
    def __init__(self, config: BrokerConfig, clock: Callable[[], float]) -> None:
        super().__init__(config, clock)
        # queued background jobs a store keeps beyond the memory budget, per
        # function name and priority (server/durable.py pages them in): counted
        # by status and the metrics, unknown to GET_STATUS and "show jobs"
        self.stored: dict[bytes, list[int]] = {}

    # ----------------------------------------------------------------- timers

    def call_at(self, when: float) -> None:
        """Run ``timer_hook`` at ``when`` (on the same heap as the jobs' timers)."""
        self._push_timer(when, TIMER_CALL, None, None)

    def next_deadline(self) -> float | None:
        """When ``tick`` has something to do next, or None."""
        timers = self.timers
        while timers and timers[0][2].kind == TIMER_DEAD:
            heapq.heappop(timers)
            self.dead_timers -= 1
        return timers[0][0] if timers else None

    def tick(self) -> None:
        """Run every timer that is due: epoch jobs become runnable, timeouts requeue."""
        now = self.clock()
        timers = self.timers
        while timers and timers[0][0] <= now:
            timer = heapq.heappop(timers)[2]
            kind = timer.kind
            if kind == TIMER_DEAD:
                self.dead_timers -= 1
                continue
            if kind == TIMER_NOOPS:
                self._check_noops(now)
                continue
            if kind == TIMER_CALL:
                hook = self.timer_hook
                if hook is not None:
                    hook(now)
                continue
            job = timer.job
            assert job is not None
            job.more.timer = None  # popped: nothing left to cancel
            if kind == TIMER_EPOCH:
                if job.state == SCHEDULED and not job.ignore:
                    if job.more.held:  # due, but its commit is still in flight
                        job.more.held = False
                        job.state = PENDING
                        continue
                    job.state = QUEUED
                    job.func.own_queues()[job.priority].append(job)
                    if not job.func.ready:
                        self.make_ready(job.func)
                    self._wake(job.func)
            elif job.worker is timer.worker:
                log.warning(
                    "Worker timeout reached on job, requeueing: %s %s",
                    job.handle.decode(errors="replace"),
                    job.unique.decode(errors="replace"),
                )
                self._requeue(job, TIMED_OUT)

    def _check_noops(self, now: float) -> None:
        """A worker NOOPed more than NOOP_ANSWER_TIME ago that has not answered
        (stopped, hung) no longer holds its job back: wake another."""
        self._check_due = 0.0
        late = now - NOOP_ANSWER_TIME
        pending = False
        for peer in list(self.peers.values()):
            func = peer.woken_for
            if func is None:
                continue
            if peer.woken_at <= late:
                self._answered(peer)  # noop_sent stays: it is not NOOPed twice
                self._wake_all(func)
            else:
                pending = True
        if pending and not self._check_due:
            self._check_due = now + NOOP_ANSWER_TIME
            self._push_timer(self._check_due, TIMER_NOOPS, None, None)

    def _wake_all(self, func: Function) -> None:
        """A woken worker of ``func`` did not answer in time (frozen, hung):
        NOOP every other sleeper of ``func`` at once, as gearmand does for
        every job, so that however many froze a job waits one
        NOOP_ANSWER_TIME at most. The silent ones keep ``noop_sent`` and are
        not woken again until they speak."""
        queued = func.queued
        if not (queued[0] or queued[1] or queued[2]):
            return  # the job was taken meanwhile
        now = self.clock()
        woke = False
        for peer in func.workers:
            if peer.sleeping and not peer.noop_sent:
                peer.noop_sent = True
                peer.woken_for = func
                peer.woken_at = now
                func.woken += 1
                self.reply(peer, NOOP)
                woke = True
        if woke and not self._check_due:
            self._check_due = now + NOOP_ANSWER_TIME
            self._push_timer(self._check_due, TIMER_NOOPS, None, None)

    # ---------------------------------------------------------------- queries

    def function_rows(self) -> list[tuple[bytes, int, int, int, int, int]]:
        """Per function: name, queued high, normal, low (scheduled included),
        running, registered workers; in the order functions were first seen."""
        stored = self.stored
        rows = []
        for f in self.functions.values():
            queued = f.queued
            more = stored.get(f.name)
            if more is None:
                rows.append((f.name, queued[0], queued[1], queued[2], f.running, len(f.workers)))
            else:
                rows.append(
                    (
                        f.name,
                        queued[0] + more[0],
                        queued[1] + more[1],
                        queued[2] + more[2],
                        f.running,
                        len(f.workers),
                    )
                )
        return rows

    def peer_rows(self) -> list[tuple[int, str, bytes, list[bytes]]]:
        """Per peer: connection number, address, client id, abilities (latest first)."""
        return [
            (p.fd, p.addr, p.client_id, [a.func.name for a in p.abilities])
            for p in self.peers.values()
        ]

    def job_rows(self) -> list[tuple[bytes, bytes, int, bool, bool]]:
        """Per job still known: handle, unique id, retries, ignored, background."""
        return [
            (j.handle, j.unique, j.more.retries, j.ignore, j.background) for j in self.jobs.values()
        ]

    # ---------------------------------------------------------------- extend

    def new_handle(self) -> bytes:
        """A job handle never given before in this run (for jobs loaded from a store)."""
        self._handle_seq += 1
        return self._handle_base + b"%d" % self._handle_seq

    def unload(self, job: Job) -> bool:
        """Take a queued background job out of memory without ending it (no
        journal entry): a store keeps it and loads it back later. False when
        the job is no longer queued (a worker took it, it ended)."""
        if job.ignore or job.state != QUEUED or not job.background or job.clients:
            return False
        if self.jobs.get(job.handle) is not job:
            return False
        job.func.queued[job.priority] -= 1
        job.ignore = True
        del self.jobs[job.handle]
        forget_unique(job)
        self.bury(job)
        return True

    def set_handler(self, ptype: int, handler: Handler) -> None:
        """Route packets of ``ptype`` to ``handler`` (a server extension: the
        SUBMIT_JOB_SCHED of server/policy.py); it answers through ``reply``."""
        self._handlers[ptype] = handler

    # ----------------------------------------------------------------- admin

    def drop_function(self, name: bytes) -> bool | None:
        """Forget an idle function (name matched without case): True when
        dropped, False when it has workers or jobs, None when unknown."""
        wanted = name.lower()
        for key, func in self.functions.items():
            if key.lower() == wanted:
                if func.workers or func.total:
                    return False
                del self.functions[key]
                self.ready.pop(func, None)
                self.with_unique.pop(func, None)
                return True
        return None

    def set_max_queue(self, name: bytes, sizes: list[int]) -> None:
        """The queue limits of a known function per priority (0 = none)."""
        func = self.functions.get(name)
        if func is not None:
            func.max_queue = [sizes[0], sizes[1], sizes[2]]

    def cancel(self, handle: bytes) -> bool:
        """Admin ``cancel job``: clients get WORK_FAIL; a running job's result is discarded."""
        job = self.jobs.get(handle)
        if job is None or job.ignore:
            return False
        if job.clients:
            self._forward(job, encode(PacketType.WORK_FAIL, job.handle))
        for client in job.clients:
            client.waiting.discard(job)
        job.clients = ()
        if job.state == RUNNING:
            # its worker's result, or its worker leaving, ends it as cancelled
            job.cancelled = True
            job.ignore = True
            forget_unique(job)
        else:
            self._finish(job, CANCELLED)
            self.bury(job)
        return True

    def enqueue(
        self,
        name: bytes,
        unique: bytes,
        data: bytes,
        priority: int = 1,
        handle: bytes = b"",
        retries: int = 0,
    ) -> Job | None:
        """A background job the server itself submits (a cron tick, a job
        requeued from the dead set, which keeps its ``handle`` and attempt
        count). None when a live job already has its unique id or the server
        refuses new jobs."""
        if not self.accepting:
            return None
        func = self.function(name)
        key = unique_key(unique, data) if unique else None
        if key is not None and key in func.unique:
            return None
        if not handle:
            self._handle_seq += 1
            handle = self._handle_base + b"%d" % self._handle_seq
        elif handle in self.jobs:
            return None
        job = Job(handle, func, unique, data, priority, True)
        if retries:
            job.extra().retries = retries
        if key is not None:
            func.unique[key] = job
        self.jobs[handle] = job
        func.queued[priority] += 1
        self.counters.submitted += 1
        journal = self.journal
        if journal is not None:
            tally = journal.tally
            if tally is not None:
                tally.accepted(job)
            if journal.consumer is not None:
                journal.accepted(job, None, 0)
        func.own_queues()[priority].append(job)
        if not func.ready:
            self.make_ready(func)
        self._wake(func)
        return job

    def stats(self) -> dict[str, int]:
        """A snapshot for metrics: the counters since the start and the sizes now."""
        snapshot = self.counters.snapshot()
        queued = running = 0
        for more in self.stored.values():
            queued += more[0] + more[1] + more[2]
        for func in self.functions.values():
            queued += func.queued[0] + func.queued[1] + func.queued[2]
            running += func.running
        snapshot["jobs_queued"] = queued
        snapshot["jobs_running"] = running
        snapshot["functions"] = len(self.functions)
        snapshot["peers"] = len(self.peers)
        snapshot["workers"] = sum(1 for p in self.peers.values() if p.abilities)
        return snapshot

    def attach_journal(self, consumer: Consumer | None, hold_created: bool = False) -> Journal:
        """From now on record what the broker decides for ``consumer``; the
        edge hands it each batch before the replies are written. (None: for a
        metrics tally only, set on the journal returned.)"""
        journal = self.journal = Journal(consumer, hold_created)
        return journal

    def detach_journal(self) -> None:
        """The consumer goes; metrics, if any, keep the journal."""
        journal = self.journal
        if journal is not None:
            if journal.tally is None:
                self.journal = None
            journal.consumer = None
            journal.hold_created = False
            held = journal.held
            journal.held = []
            for peer in held:  # nobody will release them now
                self.release(peer)

    # -------------------------------------------------------------- shutdown

    def request_stop(self, graceful: bool) -> None:
        """Ask the edge to stop (admin ``shutdown``, a signal): now, or once idle."""
        if graceful:
            if self.stopping is None:
                self.stopping = "graceful"
        else:
            self.stopping = "now"

    def stop_accepting(self) -> bool:
        """Refuse new jobs from now on; False if that was already so."""
        if not self.accepting:
            return False
        self.accepting = False
        return True

    def idle(self) -> bool:
        """Nothing runs and nothing queued can run now: a graceful stop may finish.
        Jobs scheduled for later (epoch jobs, retries waiting out their backoff)
        are not runnable yet: the stop does not wait for them (they are reported lost).
        A job whose store commit is in flight (PENDING) is runnable once it is done, and
        a reply held for a commit (``parked``) is owed: the stop waits for both, else a
        client would lose the JOB_CREATED of a job the store keeps."""
        if self.parked:
            return False
        outside = False  # counted jobs of a function with workers, none on its queues
        for func in self.functions.values():
            if func.running:
                return False
            if func.workers and (func.queued[0] or func.queued[1] or func.queued[2]):
                # scheduled and pending jobs are counted but wait outside the queues
                for queue in func.queues:
                    for job in queue:
                        if not job.ignore:
                            return False
                outside = True
        if outside:
            for job in self.jobs.values():
                if job.state == PENDING and not job.ignore and job.func.workers:
                    return False
        return True

    def abort_all(self) -> None:
        """Drop every peer's sink at once (the server stops)."""
        for peer in list(self.peers.values()):
            sink = peer.sink
            if sink is not None:
                sink.abort()
