"""The broker's hot path: every packet's Gearman semantics, with no I/O.

Theory of operation
-------------------
An edge (a socket stream, an in-process caller, a test) makes a
:class:`~.model.Peer` with a sink, ``connect``s it, and feeds decoded events to
:meth:`Core.handle_events`. Each event first passes the peer's access check
(``peer.access``; None = allow all), then its handler. The broker never
writes to a socket: replies go to ``peer.out`` and the peer is listed in
``dirty``; after each read batch the edge drains the journal (if any) and
calls :meth:`Core.flush`, which writes every dirty peer's output to its sink
in one call.

What the broker decided is recorded, for a store or metrics, in the
journal (``journal.py``) when one is attached, and always in plain integer
counters.

One selection routine (:meth:`Core._select`) serves both PRE_SLEEP ("is
there work?") and GRAB ("give work"), so the two can never disagree: the
cause of gearmand's NOOP/GRAB spin (#232) and stuck jobs (#343).

The cold parts (timers, cancel, statistics, shutdown) are in ``broker.py``.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from collections.abc import Callable
from typing import Final

from ..protocol import admin as text
from ..protocol.codec import TEXT, WRONG_MAGIC, Event
from ..protocol.packets import (
    BIG_PIECE,
    PacketType,
    encode_pieces,
)
from .journal import (
    CANCELLED,
    COMPLETED,
    DROPPED,
    EXCEPTION,
    FAILED,
    Counters,
    Journal,
)
from .model import (
    MAX_UNIQUE,
    NO_MORE,
    PENDING,
    QUEUED,
    RUNNING,
    SCHEDULED,
    TIMER_DEAD,
    TIMER_EPOCH,
    TIMER_NOOPS,
    TIMER_TIMEOUT,
    AccessList,
    BrokerConfig,
    Function,
    Job,
    JobMore,
    Peer,
    Policy,
    Timer,
    forget_unique,
    unique_key,
)
from .replies import (
    ERR_DENIED,
    ERR_DENIED_TEXT,
    ERR_MAGIC,
    ERR_NAME_SIZE,
    ERR_NOT_EXPECTED,
    ERR_QUEUE_FULL,
    ERR_RESULT_NOT_FOUND,
    ERR_SHUTTING_DOWN,
    ERR_UNIQUE,
    NO_JOB,
    NOOP,
    job_created,
    packet2,
    packet3,
    packet4,
    status_res,
)

log = logging.getLogger("gearmill.broker")

# a worker NOOPed for a job that has not asked for work this long after is
# passed over: another sleeping worker is woken for the job
NOOP_ANSWER_TIME: Final = 1.0

# the work one connection gets per turn of the event loop: packets, where an
# admin line (whose reply may list every function) counts TEXT_COST
TURN_BUDGET: Final = 1024
TEXT_COST: Final = 64
NO_BUDGET: Final = 1 << 62  # an in-process caller's default: everything at once

# a worker with more functions than this looks for work among the functions
# that have jobs (Core.ready) when there are fewer of those
MANY_ABILITIES: Final = 32
# Compiled, ``if data:`` on bytes is a generic truth-value call and ``len(data)``
# reads the size in place: the per-job paths test bytes with len().
# a job queue's two per-job calls, unbound: compiled, ``queue.popleft()`` looks the
# method up by name each time (deque is not one of the compiler's own types)
_append: Final = deque.append
_popleft: Final = deque.popleft

# the packets of the benchmarked paths, as native ints for direct calls
_SUBMIT_JOB_BG: Final = int(PacketType.SUBMIT_JOB_BG)
_SUBMIT_JOB: Final = int(PacketType.SUBMIT_JOB)
_GRAB_JOB: Final = int(PacketType.GRAB_JOB)
# libgearman's workers (the C tools, PHP, Perl, our load generator) grab with GRAB_JOB_ALL
_GRAB_JOB_ALL: Final = int(PacketType.GRAB_JOB_ALL)
_WORK_COMPLETE: Final = int(PacketType.WORK_COMPLETE)
_PRE_SLEEP: Final = int(PacketType.PRE_SLEEP)
_GET_STATUS: Final = int(PacketType.GET_STATUS)
_JOB_ASSIGN: Final = int(PacketType.JOB_ASSIGN)
_JOB_ASSIGN_UNIQ: Final = int(PacketType.JOB_ASSIGN_UNIQ)

Handler = Callable[[Peer, list[bytes]], None]
# an admin line -> its reply, or None to close the connection
TextHandler = Callable[[Peer, bytes], "bytes | None"]


class Core:
    def __init__(self, config: BrokerConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        self.functions: dict[bytes, Function] = {}
        self.jobs: dict[bytes, Job] = {}
        self.peers: dict[int, Peer] = {}
        # peers with output to write on the next flush, and held peers' output
        self.dirty: list[Peer] = []
        self.parked: list[Peer] = []
        # (when, seq, timer): epoch jobs due, CAN_DO_TIMEOUTs, checks of unanswered NOOPs
        self.timers: list[tuple[float, int, Timer]] = []
        self.dead_timers = 0  # cancelled entries still in the heap
        # a timer was added: the edge must (re)arm its clock
        self.timers_changed = False
        self._check_due = 0.0  # when the pending check of unanswered NOOPs runs, or 0
        self._timer_seq = 0
        self._handle_seq = 0
        self._handle_base = config.handle_prefix + b":"
        # None, "now" or "graceful": set by admin shutdown or a signal, read by the edge
        self.stopping: str | None = None
        self.accepting = True
        self.counters = Counters()
        self.journal: Journal | None = None  # see Broker.attach_journal
        self.access: AccessList | None = None  # gives each connecting peer its rules
        self.on_text: TextHandler | None = None  # the edge's admin command handler
        # retries and the dead set (server/policy.py); None: gearmand's --job-retries
        self.policy: Policy | None = None
        # called with the time when a call_at timer is due (the scheduler, the dead set)
        self.timer_hook: Callable[[float], None] | None = None
        self.refused: set[str] = set()  # limits already logged
        self.paused_peers = 0  # peers with Peer.paused set
        # functions that may have queued jobs (listed when a job is queued,
        # pruned when looked at empty): what a worker with many functions scans
        self.ready: dict[Function, None] = {}
        # functions that may have unique ids (likewise): what GET_STATUS_UNIQUE scans
        self.with_unique: dict[Function, None] = {}
        table = self._table()
        # indexed by the decoder's packet type; a packet a client may not send
        # (JOB_CREATED, NOOP, ...) is "not expected"
        self._handlers: list[Handler] = [
            table.get(ptype, self._not_expected) for ptype in PacketType
        ]

    def _table(self) -> dict[PacketType, Handler]:
        """The handler of each packet type (the hot ones are also called directly)."""
        return {
            PacketType.PRE_SLEEP: self._pre_sleep,
            PacketType.GRAB_JOB: self._grab_job,
            PacketType.GRAB_JOB_UNIQ: self._grab_job_uniq,
            PacketType.GRAB_JOB_ALL: self._grab_job_all,
            PacketType.WORK_COMPLETE: self._work_complete,
            PacketType.GET_STATUS: self._get_status,
        }

    # ------------------------------------------------------------- the edge

    def connect(self, peer: Peer) -> Peer:
        peer.exceptions = self.config.exceptions
        access = self.access
        if access is not None:
            peer.access = access.for_peer(peer)
        self.peers[id(peer)] = peer
        return peer

    def reply(self, peer: Peer, data: bytes) -> None:
        """Queue ``data`` for ``peer``; it is written on the next flush."""
        if not peer.out:
            self.dirty.append(peer)
        peer.out.append(data)

    # JOB_ASSIGN, WORK_COMPLETE and WORK_DATA check the data size where they are
    # sent: a shared helper taking *args measured 18 % slower per round trip
    # (bench/micro, compiled), so only large data takes this path.
    def _send_pieces(self, peer: Peer, pieces: list[bytes]) -> None:
        if not peer.out:
            self.dirty.append(peer)
        peer.out += pieces

    def refuse(self, peer: Peer, reply: bytes, limit: str) -> None:
        """A limit refused ``peer``'s request: the ERROR, and one log line per limit."""
        self.reply(peer, reply)
        self.log_limit(peer, limit)

    def log_limit(self, peer: Peer, limit: str) -> None:
        if limit not in self.refused:
            self.refused.add(limit)
            log.warning("refused a request from %s: %s (logged once per limit)", peer.addr, limit)

    def close_after_flush(self, peer: Peer, why: str) -> None:
        """Close ``peer``'s sink once its pending output is written; read no more from it."""
        if peer.close:
            return
        log.info("closing connection from %s: %s", peer.addr, why)
        peer.close = True
        if not peer.out:
            self.dirty.append(peer)

    def release(self, peer: Peer) -> None:
        """A JOB_CREATED held for ``peer`` may go (its batch is durable)."""
        if peer.holds > 0:
            peer.holds -= 1
            if not peer.holds and peer in self.parked:
                self.parked.remove(peer)
                self.dirty.append(peer)

    def flush(self) -> None:
        """Write every dirty peer's output to its sink, one call each. A sink
        must not call back into the broker."""
        dirty = self.dirty
        if not dirty:
            return
        for peer in dirty:
            if peer.holds:
                self.parked.append(peer)  # written on release
                continue
            out = peer.out
            sink = peer.sink
            if sink is not None:
                if len(out) == 1:
                    sink.write(out[0])
                elif out:
                    # many small packets: one joined write; a large piece is
                    # handed over as is (uvloop writes the list with writev)
                    total = 0
                    for piece in out:
                        total += len(piece)
                    if total >= BIG_PIECE:
                        sink.writelines(out)
                    else:
                        sink.write(b"".join(out))
                if peer.close:
                    sink.close()
            out.clear()
        dirty.clear()

    def handle(self, peer: Peer, ptype: int, args: list[bytes]) -> None:
        """One decoded event (a packet type, TEXT, WRONG_MAGIC or MALFORMED)."""
        self._dispatch(peer, ptype, args)

    def handle_events(
        self, peer: Peer, events: list[Event], start: int = 0, budget: int = NO_BUDGET
    ) -> int:
        """Handle decoded events from ``events[start]`` on, in order, and
        return how far it got: ``len(events)``, or less when the peer is to
        be closed (a malformed stream, a rejected admin line) or ``budget``
        is spent (a packet costs 1, an admin line TEXT_COST): the edge goes
        on with the rest on a later turn of its loop, so that one busy
        connection cannot starve the others. One call per read keeps the
        per-packet loop in compiled code."""
        i = start
        n = len(events)
        while i < n:
            if peer.close:
                return i
            kind, args = events[i]
            self._dispatch(peer, kind, args)
            i += 1
            budget -= TEXT_COST if kind == TEXT else 1
            if budget <= 0:
                return i
        return n

    def _dispatch(self, peer: Peer, kind: int, args: list[bytes]) -> None:
        # the one access check for every peer and every event
        access = peer.access
        if access is not None and kind >= 0 and not access.allows(kind, args):
            self.reply(peer, ERR_DENIED_TEXT if kind == TEXT else ERR_DENIED)
            return
        # the packets of the benchmarked paths as direct (native) calls
        if kind == _SUBMIT_JOB_BG:
            self.submit(peer, args[0], args[1], args[2], 1, True)
        elif kind == _SUBMIT_JOB:
            self.submit(peer, args[0], args[1], args[2], 1, False)
        elif kind == _GRAB_JOB_ALL:
            self._grab_job_all(peer, args)
        elif kind == _GRAB_JOB:
            self._grab_job(peer, args)
        elif kind == _WORK_COMPLETE:
            self._work_complete(peer, args)
        elif kind == _PRE_SLEEP:
            self._pre_sleep(peer, args)
        elif kind == _GET_STATUS:
            self._get_status(peer, args)
        elif kind > 0:
            self._handlers[kind](peer, args)
        elif kind == TEXT:
            self._text(peer, args[0])
        elif kind == WRONG_MAGIC:
            self.reply(peer, ERR_MAGIC)
        else:  # MALFORMED: the stream cannot be read further
            why = args[0].decode(errors="replace")
            if why == "packet too large":
                self.log_limit(peer, "packet larger than --max-payload; connection closed")
            self.close_after_flush(peer, why)

    def _text(self, peer: Peer, line: bytes) -> None:
        on_text = self.on_text
        if on_text is None:
            self.reply(peer, text.err_unknown_command(line.split(b" ", 1)[0]))
            return
        reply = on_text(peer, line)
        if reply is None:
            self.close_after_flush(peer, "admin line with more than 5 tokens")
        else:
            self.reply(peer, reply)

    def _not_expected(self, peer: Peer, args: list[bytes]) -> None:
        self.reply(peer, ERR_NOT_EXPECTED)

    # -------------------------------------------------------------- functions

    def function(self, name: bytes) -> Function:
        func = self.functions.get(name)
        if func is None:
            func = self.functions[name] = Function(name)
        return func

    # ---------------------------------------------------------------- workers

    def _head(self, func: Function, priority: int) -> Job | None:
        queue = func.queues[priority]
        while queue:
            job = queue[0]
            if job.ignore:
                queue.popleft()  # reap an abandoned job
            elif self.paused_peers and job.clients and self._unread(job):
                # its result would pile up unread: it waits off the queue
                queue.popleft()
                job.clients[0].parked.append(job)
            else:
                return job
        return None

    def _unread(self, job: Job) -> bool:
        """Every client of ``job`` owes the server reading (see Peer.paused)."""
        for client in job.clients:
            if not client.paused:
                return False
        return True

    def pause(self, peer: Peer) -> None:
        """More than the edge's bound is owed to ``peer``: give out no job
        whose result only it waits for, until ``resume``."""
        if not peer.paused:
            peer.paused = True
            self.paused_peers += 1

    def resume(self, peer: Peer) -> None:
        """``peer`` read: its parked jobs go back to the head of their queues."""
        if not peer.paused:
            return
        peer.paused = False
        self.paused_peers -= 1
        self.unpark(peer)

    def unpark(self, peer: Peer) -> None:
        parked = peer.parked
        if not parked:
            return
        peer.parked = []
        for job in reversed(parked):  # appendleft: the oldest ends first
            if not job.ignore and job.state == QUEUED:
                func = job.func
                func.own_queues()[job.priority].appendleft(job)
                if not func.ready:
                    self.make_ready(func)
        for job in parked:
            if not job.ignore:
                self._wake(job.func)

    def make_ready(self, func: Function) -> None:
        func.ready = True
        self.ready[func] = None

    def _select(self, peer: Peer) -> tuple[Job | None, int]:
        """The job ``peer`` would get now, and the index of its ability entry;
        (None, -1) when there is none. (Compiled, an optional tuple is a tuple
        object per call; this one is a C struct.)"""
        abilities = peer.abilities
        if len(abilities) > MANY_ABILITIES and len(self.ready) < len(abilities):
            return self._select_ready(peer)
        if self.config.global_priority:
            for priority in range(3):
                for i, ability in enumerate(abilities):
                    func = ability.func
                    if func.queued[priority]:
                        job = self._head(func, priority)
                        if job is not None:
                            return job, i
            return None, -1
        for i, ability in enumerate(abilities):
            func = ability.func
            queued = func.queued
            if queued[0] or queued[1] or queued[2]:
                for priority in range(3):
                    if queued[priority]:
                        job = self._head(func, priority)
                        if job is not None:
                            return job, i
        return None, -1

    def _select_ready(self, peer: Peer) -> tuple[Job | None, int]:
        """``_select`` for a worker with many functions: the same answer, from
        the functions that have queued jobs instead of all of the worker's."""
        rank = peer.rank
        if rank is None:
            rank = {}
            for i, ability in enumerate(peer.abilities):
                if ability.func not in rank:
                    rank[ability.func] = i
            peer.rank = rank
        best: Job | None = None
        best_key = (3, len(peer.abilities))
        by_priority = self.config.global_priority
        empty: list[Function] = []
        for func in self.ready:
            queued = func.queued
            if not (queued[0] or queued[1] or queued[2]):
                empty.append(func)
                continue
            at = rank.get(func)
            if at is None:
                continue
            for priority in range(3):
                if queued[priority]:
                    key = (priority, at) if by_priority else (0, at)
                    if key < best_key:
                        job = self._head(func, priority)
                        if job is not None:
                            best = job
                            best_key = key
                            break
        for func in empty:
            func.ready = False
            del self.ready[func]
        if best is None:
            return None, -1
        return best, best_key[1]

    def _pre_sleep(self, peer: Peer, args: list[bytes]) -> None:
        self._answered(peer)
        if self.accepting_work() and self._select(peer)[0] is not None:
            self.reply(peer, NOOP)
        else:
            peer.sleeping = True
            peer.noop_sent = False

    def accepting_work(self) -> bool:
        return self.stopping != "now"

    def _grab(self, peer: Peer) -> Job | None:
        peer.sleeping = False
        peer.noop_sent = False
        woken_for = self._answered(peer)
        if not self.accepting_work():
            self.reply(peer, NO_JOB)
            return None
        job, index = self._select(peer)
        if job is None:
            self.reply(peer, NO_JOB)
            return None
        func = job.func
        if woken_for is not None and woken_for is not func:
            # woken for one function, it took another's job: wake someone else
            self._wake(woken_for)
        _popleft(func.queues[job.priority])
        queued = func.queued
        queued[job.priority] = queued[job.priority] - 1
        func.running += 1
        job.state = RUNNING
        job.worker = peer
        peer.assigned[job.handle] = job
        ability = peer.abilities[index]
        timeout = ability.timeout
        if timeout:
            self._push_timer(self.clock() + timeout / 1000.0, TIMER_TIMEOUT, job, peer)
        if self.config.round_robin and len(peer.abilities) > 1:
            del peer.abilities[index]
            peer.abilities.append(ability)
            peer.rank = None
        self.counters.started += 1
        journal = self.journal
        if journal is not None:
            tally = journal.tally
            if tally is not None:
                tally.started(job)
            if journal.consumer is not None:
                journal.started(job, peer)
        return job

    def _grab_job(self, peer: Peer, args: list[bytes]) -> None:
        job = self._grab(peer)
        if job is not None:
            if len(job.data) < BIG_PIECE:
                packet = packet3(_JOB_ASSIGN, job.handle, job.func.name, job.data)
                self.reply(peer, packet)
            else:
                pieces = encode_pieces(PacketType.JOB_ASSIGN, job.handle, job.func.name, job.data)
                self._send_pieces(peer, pieces)

    def _grab_job_uniq(self, peer: Peer, args: list[bytes]) -> None:
        job = self._grab(peer)
        if job is not None:
            self._assign_uniq(peer, job)

    def _grab_job_all(self, peer: Peer, args: list[bytes]) -> None:
        job = self._grab(peer)
        if job is None:
            return
        reducer = job.more.reducer
        if len(reducer):
            pieces = encode_pieces(
                PacketType.JOB_ASSIGN_ALL,
                job.handle,
                job.func.name,
                job.unique,
                reducer,
                job.data,
            )
            self._send_pieces(peer, pieces)
        else:
            self._assign_uniq(peer, job)

    def _assign_uniq(self, peer: Peer, job: Job) -> None:
        # a fixed-arity encoder, as for JOB_ASSIGN: encode_pieces cost about 3,500
        # instructions a job (bench/micro/icount.py drain)
        if len(job.data) < BIG_PIECE:
            packet = packet4(_JOB_ASSIGN_UNIQ, job.handle, job.func.name, job.unique, job.data)
            self.reply(peer, packet)
        else:
            pieces = encode_pieces(
                PacketType.JOB_ASSIGN_UNIQ, job.handle, job.func.name, job.unique, job.data
            )
            self._send_pieces(peer, pieces)

    def _wake(self, func: Function) -> None:
        """NOOP sleeping workers of ``func``, at most once per sleep (§3.3).

        By default only as many as there are queued jobs that no woken worker
        is on its way to take: waking every sleeper for each job (gearmand's
        default, ``worker_wakeup=0``) sends the others GRAB_JOB -> NO_JOB ->
        PRE_SLEEP for nothing (bench/herd.py, 1 client and 32 workers: 4 to 5x
        the round trips per second at a fifth to a seventh of the server CPU).
        """
        workers = func.workers
        count = len(workers)
        if not count:
            return
        limit = self.config.worker_wakeup
        if limit < 0:
            queued = func.queued
            limit = queued[0] + queued[1] + queued[2] - func.woken
            if limit <= 0:
                return
        elif limit == 0:
            limit = count
        start = func.cursor % count
        sent = 0
        for step in range(count):
            i = (start + step) % count
            peer = workers[i]
            if peer.sleeping and not peer.noop_sent:
                peer.noop_sent = True
                peer.woken_for = func
                peer.woken_at = self.clock()
                func.woken += 1
                self.reply(peer, NOOP)
                if not self._check_due:
                    self._check_due = peer.woken_at + NOOP_ANSWER_TIME
                    self._push_timer(self._check_due, TIMER_NOOPS, None, None)
                sent += 1
                if sent >= limit:
                    func.cursor = i + 1
                    return

    def _answered(self, peer: Peer) -> Function | None:
        """``peer`` spoke after a NOOP (or left): it no longer counts as woken."""
        func = peer.woken_for
        if func is not None:
            peer.woken_for = None
            func.woken -= 1
        return func

    # ------------------------------------------------------------------- jobs

    def submit(
        self,
        peer: Peer,
        name: bytes,
        unique: bytes,
        data: bytes,
        priority: int,
        background: bool,
        when: int = 0,
        reducer: bytes = b"",
    ) -> Job | None:
        """Create or coalesce a job; answers ``peer`` with JOB_CREATED or ERROR."""
        if len(unique) > MAX_UNIQUE:
            self.reply(peer, ERR_UNIQUE)
            return None
        if self.config.max_function_name and len(name) > self.config.max_function_name:
            self.refuse(peer, ERR_NAME_SIZE, "function name longer than --max-function-name")
            return None
        if not self.accepting:
            self.reply(peer, ERR_SHUTTING_DOWN)
            return None
        func = self.function(name)
        key = unique_key(unique, data) if len(unique) else None
        journal = self.journal
        if key is not None:
            existing = func.unique.get(key)
            if existing is not None:
                self.counters.coalesced += 1
                if not background:
                    existing.add_client(peer)
                    peer.waiting.add(existing)
                elif journal is not None and journal.hold_created:
                    # the job may be in the batch being made durable
                    peer.holds += 1
                    journal.held.append(peer)
                self.reply(peer, job_created(existing.handle))
                return existing
        limit = func.max_queue[priority]
        if limit and func.total >= limit:
            self.reply(peer, ERR_QUEUE_FULL)
            return None
        self._handle_seq += 1
        handle = b"%s%d" % (self._handle_base, self._handle_seq)  # one build, no concat
        job = Job(handle, func, unique, data, priority, background)
        if len(reducer):
            job.extra().reducer = reducer
        if key is not None:
            if not func.unique:
                self.with_unique[func] = None
            func.unique[key] = job
        self.jobs[handle] = job
        if not background:
            job.add_client(peer)
            peer.waiting.add(job)
        # (compiled, a list item's += is a generic number call; this is an int add)
        queued = func.queued
        queued[priority] = queued[priority] + 1
        self.counters.submitted += 1
        if journal is not None:
            tally = journal.tally
            if tally is not None:
                tally.accepted(job)
            if journal.consumer is not None:
                journal.accepted(job, peer, when)
            if background and journal.hold_created:
                peer.holds += 1
                journal.held.append(peer)
        if when and when > self.clock():
            job.state = SCHEDULED
            self._push_timer(float(when), TIMER_EPOCH, job, None)
            if background and journal is not None and journal.hold_created:
                job.more.held = True  # due before its commit ends: waits for publish
        elif background and journal is not None and journal.hold_created:
            # a store makes it durable first: a worker must not run a job whose
            # client may yet be told QUEUE_ERROR (the commit calls publish)
            job.state = PENDING
        else:
            _append(func.own_queues()[priority], job)
            if not func.ready:
                self.make_ready(func)
            # The NOOP to a sleeping worker is queued (and written) before the
            # JOB_CREATED: the job's result waits on the worker, not on the
            # client learning its handle, which still arrives first.
            self._wake(func)
        self.reply(peer, job_created(handle))
        return job

    def publish(self, job: Job) -> None:
        """``job`` (PENDING) is durable now: queue it and wake a worker. Nothing for a
        job that ended meanwhile (cancelled) or was never held."""
        if job.state != PENDING or job.ignore:
            if job.state == SCHEDULED:
                job.more.held = False  # durable before it is due: its timer queues it
            return
        job.state = QUEUED
        func = job.func
        _append(func.own_queues()[job.priority], job)
        if not func.ready:
            self.make_ready(func)
        self._wake(func)

    def _forward(self, job: Job, packet: bytes) -> None:
        for client in job.clients:
            self.reply(client, packet)

    def _forward_pieces(self, job: Job, pieces: list[bytes]) -> None:
        for client in job.clients:
            self._send_pieces(client, pieces)

    def _work_complete(self, peer: Peer, args: list[bytes]) -> None:
        job = peer.assigned.get(args[0])
        if job is None:
            self.reply(peer, ERR_RESULT_NOT_FOUND)
            return
        if job.clients:
            if len(args[1]) < BIG_PIECE:
                self._forward(job, packet2(_WORK_COMPLETE, args[0], args[1]))
            else:
                self._forward_pieces(job, encode_pieces(PacketType.WORK_COMPLETE, *args))
        # the result's size goes to metrics with the ending (one call, not two)
        self._finish(job, COMPLETED, len(args[1]))

    def _finish(self, job: Job, outcome: int, out: int = 0) -> None:
        """A job ended (complete, fail, exception, retry limit, cancel, abandon): forget
        it. ``out``: bytes of result sent with the ending (metrics count them)."""
        func = job.func
        if job.state == RUNNING:
            func.running -= 1
            worker = job.worker
            if worker is not None:
                del worker.assigned[job.handle]
            job.worker = None
        elif not job.ignore:
            queued = func.queued
            queued[job.priority] = queued[job.priority] - 1
        job.ignore = True
        more = job.more
        if more is not NO_MORE and more.timer is not None:
            self._cancel_timer(more)
        # (compiled: a dict's pop is a method call; ``in`` before the del hashes twice)
        try:
            del self.jobs[job.handle]
        except KeyError:
            pass  # no longer listed
        forget_unique(job)
        if job.clients:  # a background job has none: no iterator
            for client in job.clients:
                client.waiting.discard(job)
            job.clients = ()
        if job.cancelled:
            outcome = CANCELLED
        self._count(job, outcome, out)

    def _count(self, job: Job, outcome: int, out: int = 0) -> None:
        counters = self.counters
        if outcome == COMPLETED:
            counters.completed += 1
        elif outcome == FAILED:
            counters.failed += 1
        elif outcome == EXCEPTION:
            counters.exceptions += 1
        elif outcome == CANCELLED:
            counters.cancelled += 1
        elif outcome == DROPPED:
            counters.dropped += 1
        else:
            counters.abandoned += 1
        journal = self.journal
        if journal is not None:
            tally = journal.tally
            if tally is not None:
                tally.finished(job, outcome, out)
            if journal.consumer is not None:
                journal.finished(job, outcome)

    # ---------------------------------------------------------------- queries

    def _get_status(self, peer: Peer, args: list[bytes]) -> None:
        handle = args[0]
        job = self.jobs.get(handle)
        if job is None or job.ignore:
            reply = status_res(handle, False, False, 0, 0)
        else:
            more = job.more
            reply = status_res(handle, True, job.state == RUNNING, more.num, more.den)
        self.reply(peer, reply)

    # ----------------------------------------------------------------- timers

    def _push_timer(self, when: float, kind: int, job: Job | None, worker: Peer | None) -> None:
        timer = Timer(when, kind, job, worker)
        if job is not None:
            job.extra().timer = timer
        self._timer_seq += 1
        heapq.heappush(self.timers, (when, self._timer_seq, timer))
        self.timers_changed = True

    def _cancel_timer(self, more: JobMore) -> None:
        """The job's timer goes with it: the heap entry no longer refers to the
        job (so a finished job is freed now, not when its timeout would have
        run out), and the heap is rebuilt once most of it is dead."""
        timer = more.timer
        assert timer is not None
        more.timer = None
        timer.kind = TIMER_DEAD
        timer.job = None
        timer.worker = None
        self.dead_timers += 1
        timers = self.timers
        if self.dead_timers > 64 and self.dead_timers * 2 > len(timers):
            self.timers = [t for t in timers if t[2].kind != TIMER_DEAD]
            heapq.heapify(self.timers)
            self.dead_timers = 0
