"""The job broker: every Gearman semantic of the server, with no I/O.

Theory of operation
-------------------
The edge (``connection.py``) creates a :class:`Peer` per connection and feeds
decoded packets to :meth:`Broker.handle`. The broker never writes to a socket:
it appends encoded replies to ``peer.out`` and lists the peer in
``broker.dirty``; after each read batch the edge writes every dirty peer's
output in one ``write``. Timers (epoch jobs, CAN_DO_TIMEOUT) live in one heap;
the edge asks :meth:`Broker.next_deadline` and calls :meth:`Broker.tick`.

Data model (reference §3.1): a :class:`Function` has three FIFO queues (high,
normal, low) and the list of worker entries that registered it (a CAN_DO twice
counts twice, as in gearmand). A :class:`Job` is queued, scheduled (an epoch
job not yet due) or running on exactly one worker; foreground jobs carry the
peers waiting on them. Abandoned queued jobs are flagged ``ignore`` and
skipped when they reach the head of their queue (O(1) removal).

One selection routine (:meth:`Broker._select`) serves both PRE_SLEEP ("is
there work?") and GRAB ("give work"), so the two can never disagree — the
cause of gearmand's NOOP/GRAB spin (#232) and stuck jobs (#343).
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from mypy_extensions import u8

from ..protocol import admin as text
from ..protocol.codec import WRONG_MAGIC, Event
from ..protocol.packets import (
    BIG_PIECE,
    HEADER,
    RES,
    SUBMIT_TYPES,
    ErrorCode,
    PacketType,
    encode,
    encode_pieces,
)

log = logging.getLogger("gearmill.broker")

MAX_UNIQUE: Final = 64
MAX_HANDLE: Final = 64
MAX_CLIENT_ID: Final = 127
MAX_OPTION: Final = 64
# a worker NOOPed for a job that has not asked for work this long after is
# passed over: another sleeping worker is woken for the job
NOOP_ANSWER_TIME: Final = 1.0

QUEUED: Final = 0
RUNNING: Final = 1
SCHEDULED: Final = 2

_SUBMIT_JOB_BG: Final = int(PacketType.SUBMIT_JOB_BG)
_SUBMIT_JOB: Final = int(PacketType.SUBMIT_JOB)
_GRAB_JOB: Final = int(PacketType.GRAB_JOB)
_WORK_COMPLETE: Final = int(PacketType.WORK_COMPLETE)
_PRE_SLEEP: Final = int(PacketType.PRE_SLEEP)

_NOOP: Final = encode(PacketType.NOOP)
_NO_JOB: Final = encode(PacketType.NO_JOB)
# one encoder for the whole project (protocol/packets.py); server packets carry RES magic
_packet = encode


# JOB_CREATED headers for the usual handle lengths: a submission's answer is
# then one concatenation
_JOB_CREATED_HEAD: Final = tuple(
    HEADER.pack(RES, PacketType.JOB_CREATED, n) for n in range(MAX_HANDLE + 1)
)


def _job_created(handle: bytes) -> bytes:
    n = len(handle)
    if n <= MAX_HANDLE:
        return _JOB_CREATED_HEAD[n] + handle
    return encode(PacketType.JOB_CREATED, handle)


def _error(code: bytes, message: bytes) -> bytes:
    return _packet(PacketType.ERROR, code, message)


_ERR_NOT_EXPECTED: Final = _error(ErrorCode.INVALID_COMMAND, b"Command not expected")
_ERR_MAGIC: Final = _error(ErrorCode.INVALID_MAGIC, b"Request magic expected")
_ERR_UNIQUE: Final = _error(ErrorCode.ARGUMENT_TOO_LARGE, b"Unique value too large")
_ERR_QUEUE_FULL: Final = _error(ErrorCode.QUEUE_ERROR, b"Job queue is full")
_ERR_SHUTTING_DOWN: Final = _error(ErrorCode.QUEUE_ERROR, b"Server is shutting down")
_ERR_RESULT_NOT_FOUND: Final = _error(
    ErrorCode.JOB_NOT_FOUND, b"Job given in work result not found"
)
_ERR_DATA_NOT_FOUND: Final = _error(ErrorCode.JOB_NOT_FOUND, b"Job does not exist on server")
_ERR_EXCEPTION_NOT_FOUND: Final = _error(
    ErrorCode.JOB_NOT_FOUND, b"An exception was received for a job that does not exist"
)
_ERR_HANDLE_SIZE: Final = _error(
    ErrorCode.ARGUMENT_TOO_LARGE,
    b"Error occurred due to GEARMAND_JOB_HANDLE_SIZE being too small from snprintf",
)
_ERR_OPTION: Final = _error(ErrorCode.UNKNOWN_OPTION, b"Server does not recognize given option")

LEVELS: Final = ("FATAL", "ALERT", "CRITICAL", "ERROR", "WARNING", "NOTICE", "INFO", "DEBUG")


@dataclass(slots=True)
class BrokerConfig:
    handle_prefix: bytes = b"H:localhost"
    # gearmand 1.1.x semantics: the number of attempts before a job is dropped; 0 = no limit.
    job_retries: int = 0
    # NOOPs per enqueued job: -1 = as many as there are queued jobs nobody was
    # woken for yet (ours), 0 = every sleeping worker (gearmand's default), N = at most N
    worker_wakeup: int = -1
    round_robin: bool = False
    # 2.0.0 semantics: a HIGH job of any function beats NORMAL/LOW of the others.
    global_priority: bool = False
    exceptions: bool = False
    version: bytes = b"1.1.20"
    pid: int = 0
    verbose: str = "ERROR"
    # "off" (gearmand 1.1.15+), "local" (loopback peers only) or "any"
    admin_shutdown: str = "local"


class Peer:
    """One connection's view in the broker: worker abilities, waits, output."""

    __slots__ = (
        "abilities",
        "addr",
        "assigned",
        "client_id",
        "close",
        "exceptions",
        "fd",
        "io",
        "local",
        "noop_sent",
        "out",
        "sleeping",
        "waiting",
        "woken_at",
        "woken_for",
    )

    def __init__(self, fd: int, addr: str, local: bool = True) -> None:
        self.fd = fd
        self.addr = addr
        self.local = local
        self.client_id = b"-"
        # [function, timeout_ms] entries, most recent CAN_DO first (gearmand prepends)
        self.abilities: list[list[object]] = []
        self.assigned: dict[bytes, Job] = {}
        self.waiting: set[Job] = set()
        self.sleeping = False
        self.noop_sent = False
        # the function whose queued job this worker was NOOPed for, until it answers
        self.woken_for: Function | None = None
        self.woken_at = 0.0
        self.exceptions = False
        self.out: list[bytes] = []
        self.close = False  # close after the pending output is written
        self.io: object = None  # owned by the edge


class Function:
    __slots__ = (
        "cursor",
        "max_queue",
        "name",
        "queued",
        "queues",
        "running",
        "unique",
        "woken",
        "workers",
    )

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.queues: tuple[deque[Job], deque[Job], deque[Job]] = (deque(), deque(), deque())
        self.queued = [0, 0, 0]  # live (not ignored) queued or scheduled jobs per priority
        self.running = 0
        self.workers: list[Peer] = []
        self.unique: dict[bytes, Job] = {}
        self.max_queue = [0, 0, 0]
        self.cursor = 0
        self.woken = 0  # workers NOOPed for this function's jobs that have not answered yet

    @property
    def total(self) -> int:
        return self.queued[0] + self.queued[1] + self.queued[2] + self.running


class JobMore:
    """What few jobs need (status, timeouts, retries, reduce): kept apart so
    that a plain queued job stays small (issue 4: at most 400 bytes a job)."""

    __slots__ = ("deadline", "den", "num", "reducer", "retries")

    def __init__(self) -> None:
        self.reducer = b""
        self.num = 0
        self.den = 0
        self.retries = 0
        self.deadline = 0.0


_NO_MORE: Final = JobMore()  # read-only defaults for jobs without any


class Job:
    __slots__ = (
        "background",
        "clients",
        "data",
        "func",
        "handle",
        "ignore",
        "more",
        "priority",
        "state",
        "unique",
        "worker",
    )

    def __init__(
        self,
        handle: bytes,
        func: Function,
        unique: bytes,
        data: bytes,
        priority: int,
        background: bool,
    ) -> None:
        self.handle = handle
        self.func = func
        self.unique = unique
        self.data = data
        # () until a foreground client waits: most jobs are background jobs,
        # and an empty list per queued job would cost 72 bytes
        self.clients: list[Peer] | tuple[Peer, ...] = ()
        self.worker: Peer | None = None
        # the four small fields last and adjacent: mypyc packs them in one word
        self.priority: u8 = priority
        self.state: u8 = QUEUED
        self.background = background
        self.ignore = False
        # _NO_MORE (shared, never written) until the job needs a field of JobMore
        self.more = _NO_MORE

    def extra(self) -> JobMore:
        """This job's own JobMore, to write to."""
        more = self.more
        if more is _NO_MORE:
            more = self.more = JobMore()
        return more

    def add_client(self, peer: Peer) -> None:
        if isinstance(self.clients, list):
            self.clients.append(peer)
        else:
            self.clients = [peer]

    def remove_client(self, peer: Peer) -> None:
        if isinstance(self.clients, list):
            self.clients.remove(peer)


def _unique_key(unique: bytes, data: bytes) -> bytes | None:
    """The coalescing key of a job: its unique id, or for ``-`` its payload."""
    if unique == b"-":
        # the key cannot clash with a real unique id, which has no NUL
        return b"\x00" + data if data else None
    return unique or None


def _forget_unique(job: Job) -> None:
    key = _unique_key(job.unique, job.data)
    if key is not None:
        uniques = job.func.unique
        if uniques.get(key) is job:
            del uniques[key]


def _uint32(value: bytes) -> int:
    return text.atoi(value) & 0xFFFFFFFF


class Broker:
    def __init__(self, config: BrokerConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        self.functions: dict[bytes, Function] = {}
        self.jobs: dict[bytes, Job] = {}
        self.peers: dict[int, Peer] = {}
        self.dirty: list[Peer] = []
        # (when, seq, job, worker): an epoch job due (worker None), a CAN_DO_TIMEOUT
        # (worker set) or, with job None, a check of unanswered NOOPs
        self.timers: list[tuple[float, int, Job | None, Peer | None]] = []
        # a timer was added: the edge must (re)arm its clock
        self.timers_changed = False
        self._check_due = 0.0  # when the pending check of unanswered NOOPs runs, or 0
        self._timer_seq = 0
        self._handle_seq = 0
        self._handle_base = config.handle_prefix + b":"
        # None, "now" or "graceful": set by admin shutdown or a signal, read by the edge
        self.stopping: str | None = None
        self.accepting = True
        h: list[Callable[[Peer, list[bytes]], None]] = [self._not_expected] * 43
        h[PacketType.CAN_DO] = self._can_do
        h[PacketType.CANT_DO] = self._cant_do
        h[PacketType.RESET_ABILITIES] = self._reset_abilities
        h[PacketType.PRE_SLEEP] = self._pre_sleep
        h[PacketType.GRAB_JOB] = self._grab_job
        h[PacketType.GRAB_JOB_UNIQ] = self._grab_job_uniq
        h[PacketType.GRAB_JOB_ALL] = self._grab_job_all
        h[PacketType.WORK_STATUS] = self._work_status
        h[PacketType.WORK_COMPLETE] = self._work_complete
        h[PacketType.WORK_FAIL] = self._work_fail
        h[PacketType.WORK_EXCEPTION] = self._work_exception
        h[PacketType.WORK_DATA] = self._work_data
        h[PacketType.WORK_WARNING] = self._work_warning
        h[PacketType.GET_STATUS] = self._get_status
        h[PacketType.GET_STATUS_UNIQUE] = self._get_status_unique
        h[PacketType.ECHO_REQ] = self._echo
        h[PacketType.SET_CLIENT_ID] = self._set_client_id
        h[PacketType.CAN_DO_TIMEOUT] = self._can_do_timeout
        h[PacketType.OPTION_REQ] = self._option
        for ptype in SUBMIT_TYPES:
            h[ptype] = self._submit_handler(ptype)
        self._handlers = h

    # ------------------------------------------------------------------ peers

    def connect(self, peer: Peer) -> Peer:
        peer.exceptions = self.config.exceptions
        self.peers[id(peer)] = peer
        return peer

    def disconnect(self, peer: Peer) -> None:
        """The connection is gone: requeue its running jobs, abandon its waits."""
        if self.peers.pop(id(peer), None) is None:
            return
        peer.sleeping = False  # requeueing its jobs below must not wake it
        woken_for = self._answered(peer)
        for job in list(peer.assigned.values()):
            self._requeue(job)
        for ability in peer.abilities:
            func = ability[0]
            assert isinstance(func, Function)
            try:
                func.workers.remove(peer)
            except ValueError:
                pass
        peer.abilities.clear()
        if woken_for is not None:
            self._wake(woken_for)  # its NOOP was for a job that still waits
        for job in peer.waiting:
            job.remove_client(peer)
            if not job.clients and not job.background:
                self._abandon(job)
        peer.waiting.clear()
        peer.out.clear()

    def _send(self, peer: Peer, data: bytes) -> None:
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

    def handle(self, peer: Peer, ptype: int, args: list[bytes]) -> None:
        if ptype == WRONG_MAGIC:
            self._send(peer, _ERR_MAGIC)
        else:
            self._handlers[ptype](peer, args)

    def handle_events(self, peer: Peer, events: list[Event], start: int) -> int:
        """Handle decoded packets from ``events[start]`` on; stop at the first
        event that is not a packet (an admin line, a malformed stream) and
        return its index, or ``len(events)``. One call per read keeps the
        per-packet loop in compiled code."""
        handlers = self._handlers
        i = start
        n = len(events)
        while i < n:
            kind, args = events[i]
            # the packets of the benchmarked paths as direct (native) calls
            if kind == _SUBMIT_JOB_BG:
                self.submit(peer, args[0], args[1], args[2], 1, True)
            elif kind == _SUBMIT_JOB:
                self.submit(peer, args[0], args[1], args[2], 1, False)
            elif kind == _GRAB_JOB:
                self._grab_job(peer, args)
            elif kind == _WORK_COMPLETE:
                self._work_complete(peer, args)
            elif kind == _PRE_SLEEP:
                self._pre_sleep(peer, args)
            elif kind > 0:
                handlers[kind](peer, args)
            elif kind == WRONG_MAGIC:
                self._send(peer, _ERR_MAGIC)
            else:
                return i
            i += 1
        return n

    def _not_expected(self, peer: Peer, args: list[bytes]) -> None:
        self._send(peer, _ERR_NOT_EXPECTED)

    # -------------------------------------------------------------- functions

    def function(self, name: bytes) -> Function:
        func = self.functions.get(name)
        if func is None:
            func = self.functions[name] = Function(name)
        return func

    # ---------------------------------------------------------------- workers

    def _add_ability(self, peer: Peer, name: bytes, timeout: int) -> None:
        func = self.function(name)
        peer.abilities.insert(0, [func, timeout])
        func.workers.append(peer)

    def _can_do(self, peer: Peer, args: list[bytes]) -> None:
        self._add_ability(peer, args[0], 0)

    def _can_do_timeout(self, peer: Peer, args: list[bytes]) -> None:
        # milliseconds since gearmand 1.1.19; below one second rounds up to one second
        ms = max(text.atoi(args[1]), 0)
        if 0 < ms < 1000:
            ms = 1000
        self._add_ability(peer, args[0], ms)

    def _cant_do(self, peer: Peer, args: list[bytes]) -> None:
        func = self.functions.get(args[0])
        if func is not None:
            self._remove_abilities(peer, func)

    def _reset_abilities(self, peer: Peer, args: list[bytes]) -> None:
        self._remove_abilities(peer, None)

    def _remove_abilities(self, peer: Peer, only: Function | None) -> None:
        keep: list[list[object]] = []
        for ability in peer.abilities:
            func = ability[0]
            assert isinstance(func, Function)
            if only is None or func is only:
                func.workers.remove(peer)
            else:
                keep.append(ability)
        peer.abilities = keep
        woken_for = peer.woken_for
        if woken_for is not None and (only is None or only is woken_for):
            self._answered(peer)
            self._wake(woken_for)
        for job in list(peer.assigned.values()):
            if only is None or job.func is only:
                self._requeue(job)

    def _head(self, func: Function, priority: int) -> Job | None:
        queue = func.queues[priority]
        while queue:
            job = queue[0]
            if not job.ignore:
                return job
            queue.popleft()  # reap an abandoned job
        return None

    def _select(self, peer: Peer) -> tuple[Job, int] | None:
        """The job ``peer`` would get now, and the index of its ability entry."""
        abilities = peer.abilities
        if self.config.global_priority:
            for priority in (0, 1, 2):
                for i, ability in enumerate(abilities):
                    func = ability[0]
                    assert isinstance(func, Function)
                    if func.queued[priority]:
                        job = self._head(func, priority)
                        if job is not None:
                            return job, i
            return None
        for i, ability in enumerate(abilities):
            func = ability[0]
            assert isinstance(func, Function)
            queued = func.queued
            if queued[0] or queued[1] or queued[2]:
                for priority in (0, 1, 2):
                    if queued[priority]:
                        job = self._head(func, priority)
                        if job is not None:
                            return job, i
        return None

    def _pre_sleep(self, peer: Peer, args: list[bytes]) -> None:
        self._answered(peer)
        if self.accepting_work() and self._select(peer) is not None:
            self._send(peer, _NOOP)
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
            self._send(peer, _NO_JOB)
            return None
        found = self._select(peer)
        if found is None:
            self._send(peer, _NO_JOB)
            return None
        job, index = found
        func = job.func
        if woken_for is not None and woken_for is not func:
            # woken for one function, it took another's job: wake someone else
            self._wake(woken_for)
        func.queues[job.priority].popleft()
        func.queued[job.priority] -= 1
        func.running += 1
        job.state = RUNNING
        job.worker = peer
        peer.assigned[job.handle] = job
        ability = peer.abilities[index]
        timeout = ability[1]
        assert isinstance(timeout, int)
        if timeout:
            deadline = job.extra().deadline = self.clock() + timeout / 1000.0
            self._push_timer(deadline, job, peer)
        if self.config.round_robin and len(peer.abilities) > 1:
            del peer.abilities[index]
            peer.abilities.append(ability)
        return job

    def _grab_job(self, peer: Peer, args: list[bytes]) -> None:
        job = self._grab(peer)
        if job is not None:
            if len(job.data) < BIG_PIECE:
                packet = _packet(PacketType.JOB_ASSIGN, job.handle, job.func.name, job.data)
                self._send(peer, packet)
            else:
                pieces = encode_pieces(PacketType.JOB_ASSIGN, job.handle, job.func.name, job.data)
                self._send_pieces(peer, pieces)

    def _grab_job_uniq(self, peer: Peer, args: list[bytes]) -> None:
        job = self._grab(peer)
        if job is not None:
            self._send_pieces(
                peer,
                encode_pieces(
                    PacketType.JOB_ASSIGN_UNIQ, job.handle, job.func.name, job.unique, job.data
                ),
            )

    def _grab_job_all(self, peer: Peer, args: list[bytes]) -> None:
        job = self._grab(peer)
        if job is None:
            return
        reducer = job.more.reducer
        if reducer:
            packet = encode_pieces(
                PacketType.JOB_ASSIGN_ALL,
                job.handle,
                job.func.name,
                job.unique,
                reducer,
                job.data,
            )
        else:
            packet = encode_pieces(
                PacketType.JOB_ASSIGN_UNIQ, job.handle, job.func.name, job.unique, job.data
            )
        self._send_pieces(peer, packet)

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
                self._send(peer, _NOOP)
                if not self._check_due:
                    self._check_due = peer.woken_at + NOOP_ANSWER_TIME
                    self._push_timer(self._check_due, None, None)
                sent += 1
                if sent >= limit:
                    func.cursor = i + 1
                    return

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
                self._wake(func)
            else:
                pending = True
        if pending and not self._check_due:
            self._check_due = now + NOOP_ANSWER_TIME
            self._push_timer(self._check_due, None, None)

    def _answered(self, peer: Peer) -> Function | None:
        """``peer`` spoke after a NOOP (or left): it no longer counts as woken."""
        func = peer.woken_for
        if func is not None:
            peer.woken_for = None
            func.woken -= 1
        return func

    # ------------------------------------------------------------------- jobs

    def _submit_handler(self, ptype: int) -> Callable[[Peer, list[bytes]], None]:
        priority, background = SUBMIT_TYPES[ptype]
        prio = int(priority)
        epoch = ptype == PacketType.SUBMIT_JOB_EPOCH
        reduce = ptype in (PacketType.SUBMIT_REDUCE_JOB, PacketType.SUBMIT_REDUCE_JOB_BACKGROUND)

        def submit(peer: Peer, args: list[bytes]) -> None:
            when = 0
            reducer = b""
            if epoch:
                when = max(text.atoi(args[2]), 0)
            elif reduce:
                reducer = args[2]
                if len(reducer) > MAX_UNIQUE:
                    self._send(peer, _ERR_UNIQUE)
                    return
            self.submit(peer, args[0], args[1], args[-1], prio, background, when, reducer)

        return submit

    def submit(
        self,
        peer: Peer | None,
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
            if peer is not None:
                self._send(peer, _ERR_UNIQUE)
            return None
        if not self.accepting:
            if peer is not None:
                self._send(peer, _ERR_SHUTTING_DOWN)
            return None
        func = self.function(name)
        key = _unique_key(unique, data) if unique else None
        if key is not None:
            existing = func.unique.get(key)
            if existing is not None:
                if not background and peer is not None:
                    existing.add_client(peer)
                    peer.waiting.add(existing)
                if peer is not None:
                    self._send(peer, _job_created(existing.handle))
                return existing
        limit = func.max_queue[priority]
        if limit and func.total >= limit:
            if peer is not None:
                self._send(peer, _ERR_QUEUE_FULL)
            return None
        self._handle_seq += 1
        handle = self._handle_base + b"%d" % self._handle_seq
        job = Job(handle, func, unique, data, priority, background)
        if reducer:
            job.extra().reducer = reducer
        if key is not None:
            func.unique[key] = job
        self.jobs[handle] = job
        if not background and peer is not None:
            job.add_client(peer)
            peer.waiting.add(job)
        func.queued[priority] += 1
        if when and when > self.clock():
            job.state = SCHEDULED
            self._push_timer(float(when), job, None)
        else:
            func.queues[priority].append(job)
            # The NOOP to a sleeping worker is queued (and written) before the
            # JOB_CREATED: the job's result waits on the worker, not on the
            # client learning its handle, which still arrives first.
            self._wake(func)
        if peer is not None:
            self._send(peer, _job_created(handle))
        return job

    def _forward(self, job: Job, packet: bytes) -> None:
        for client in job.clients:
            self._send(client, packet)

    def _forward_pieces(self, job: Job, pieces: list[bytes]) -> None:
        for client in job.clients:
            self._send_pieces(client, pieces)

    def _work_status(self, peer: Peer, args: list[bytes]) -> None:
        job = peer.assigned.get(args[0])
        if job is None:
            self._send(peer, _ERR_RESULT_NOT_FOUND)
            return
        more = job.extra()
        more.num = _uint32(args[1])
        more.den = _uint32(args[2])
        if job.clients:
            self._forward(job, _packet(PacketType.WORK_STATUS, *args))

    def _work_complete(self, peer: Peer, args: list[bytes]) -> None:
        job = peer.assigned.get(args[0])
        if job is None:
            self._send(peer, _ERR_RESULT_NOT_FOUND)
            return
        if job.clients:
            if len(args[1]) < BIG_PIECE:
                self._forward(job, _packet(PacketType.WORK_COMPLETE, args[0], args[1]))
            else:
                self._forward_pieces(job, encode_pieces(PacketType.WORK_COMPLETE, *args))
        self._finish(job)

    def _work_fail(self, peer: Peer, args: list[bytes]) -> None:
        if len(args[0]) >= MAX_HANDLE:
            self._send(peer, _ERR_HANDLE_SIZE)
            return
        job = peer.assigned.get(args[0])
        if job is None:
            self._send(peer, _ERR_RESULT_NOT_FOUND)
            return
        if job.clients:
            self._forward(job, _packet(PacketType.WORK_FAIL, args[0]))
        self._finish(job)

    def _work_exception(self, peer: Peer, args: list[bytes]) -> None:
        job = peer.assigned.get(args[0])
        if job is None:
            self._send(peer, _ERR_EXCEPTION_NOT_FOUND)
            return
        if job.clients:
            exception = _packet(PacketType.WORK_EXCEPTION, args[0], args[1])
            # gearmand sends ``handle\0`` here, which libgearman <= 1.1.x drops (#166):
            # a bare handle is what every client version understands.
            fail = _packet(PacketType.WORK_FAIL, args[0])
            for client in job.clients:
                self._send(client, exception if client.exceptions else fail)
        self._finish(job)

    def _work_data(self, peer: Peer, args: list[bytes]) -> None:
        self._work_chunk(peer, args, PacketType.WORK_DATA)

    def _work_warning(self, peer: Peer, args: list[bytes]) -> None:
        self._work_chunk(peer, args, PacketType.WORK_WARNING)

    def _work_chunk(self, peer: Peer, args: list[bytes], ptype: int) -> None:
        job = peer.assigned.get(args[0])
        if job is None:
            self._send(peer, _ERR_DATA_NOT_FOUND)
            return
        if job.clients:
            if len(args[1]) < BIG_PIECE:
                self._forward(job, _packet(ptype, args[0], args[1]))
            else:
                self._forward_pieces(job, encode_pieces(ptype, args[0], args[1]))

    def _finish(self, job: Job) -> None:
        """A job ended (complete, fail, exception, retry limit, cancel): forget it."""
        func = job.func
        if job.state == RUNNING:
            func.running -= 1
            worker = job.worker
            if worker is not None:
                del worker.assigned[job.handle]
            job.worker = None
        elif not job.ignore:
            func.queued[job.priority] -= 1
        job.ignore = True
        self.jobs.pop(job.handle, None)
        _forget_unique(job)
        for client in job.clients:
            client.waiting.discard(job)
        job.clients = ()

    def _requeue(self, job: Job) -> None:
        """The worker lost the job (disconnect, CANT_DO, timeout): run it again."""
        func = job.func
        worker = job.worker
        if worker is not None:
            del worker.assigned[job.handle]
        job.worker = None
        func.running -= 1
        job.state = QUEUED
        more = job.more
        if more is not _NO_MORE:
            more.num = more.den = 0
            more.deadline = 0.0
        if job.ignore:
            # abandoned by its clients while running: nobody wants the result
            self.jobs.pop(job.handle, None)
            return
        more = job.extra()
        more.retries += 1
        limit = self.config.job_retries
        if limit and more.retries >= limit:
            log.warning(
                "Dropped job due to max retry count: %s %s",
                job.handle.decode(errors="replace"),
                job.unique.decode(errors="replace"),
            )
            if job.clients:
                self._forward(job, _packet(PacketType.WORK_FAIL, job.handle))
            func.queued[job.priority] += 1
            self._finish(job)
            return
        func.queued[job.priority] += 1
        func.queues[job.priority].append(job)
        self._wake(func)

    def _abandon(self, job: Job) -> None:
        """The last foreground client left: a queued job is dropped, a running one ignored."""
        _forget_unique(job)
        if job.state == RUNNING:
            job.ignore = True
            return
        self._finish(job)

    def cancel(self, handle: bytes) -> bool:
        """Admin ``cancel job``: clients get WORK_FAIL; a running job's result is discarded."""
        job = self.jobs.get(handle)
        if job is None or job.ignore:
            return False
        if job.clients:
            self._forward(job, _packet(PacketType.WORK_FAIL, job.handle))
        for client in job.clients:
            client.waiting.discard(job)
        job.clients = ()
        if job.state == RUNNING:
            job.ignore = True
            _forget_unique(job)
        else:
            self._finish(job)
        return True

    # ---------------------------------------------------------------- queries

    def _get_status(self, peer: Peer, args: list[bytes]) -> None:
        handle = args[0]
        job = self.jobs.get(handle)
        if job is None or job.ignore:
            reply = _packet(PacketType.STATUS_RES, handle, b"0", b"0", b"0", b"0")
        else:
            reply = _packet(
                PacketType.STATUS_RES,
                handle,
                b"1",
                b"1" if job.state == RUNNING else b"0",
                b"%d" % job.more.num,
                b"%d" % job.more.den,
            )
        self._send(peer, reply)

    def find_unique(self, unique: bytes) -> Job | None:
        for func in self.functions.values():
            job = func.unique.get(unique)
            if job is not None:
                return job
        return None

    def _get_status_unique(self, peer: Peer, args: list[bytes]) -> None:
        unique = args[0]
        job = self.find_unique(unique) if unique else None
        if job is None:
            reply = _packet(PacketType.STATUS_RES_UNIQUE, unique, b"0", b"0", b"0", b"0", b"0")
        else:
            reply = _packet(
                PacketType.STATUS_RES_UNIQUE,
                unique,
                b"1",
                b"1" if job.state == RUNNING else b"0",
                b"%d" % job.more.num,
                b"%d" % job.more.den,
                b"%d" % len(job.clients),
            )
        self._send(peer, reply)

    def _echo(self, peer: Peer, args: list[bytes]) -> None:
        self._send(peer, _packet(PacketType.ECHO_RES, args[0]))

    def _set_client_id(self, peer: Peer, args: list[bytes]) -> None:
        peer.client_id = args[0][:MAX_CLIENT_ID] or b"-"

    def _option(self, peer: Peer, args: list[bytes]) -> None:
        name = args[0]
        if len(name) < MAX_OPTION and name.split(b"\x00", 1)[0].lower() == b"exceptions":
            peer.exceptions = True
            self._send(peer, _packet(PacketType.OPTION_RES, name))
        else:
            self._send(peer, _ERR_OPTION)

    # ----------------------------------------------------------------- timers

    def _push_timer(self, when: float, job: Job | None, worker: Peer | None) -> None:
        self._timer_seq += 1
        heapq.heappush(self.timers, (when, self._timer_seq, job, worker))
        self.timers_changed = True

    def next_deadline(self) -> float | None:
        return self.timers[0][0] if self.timers else None

    def tick(self) -> None:
        """Run every timer that is due: epoch jobs become runnable, timeouts requeue."""
        now = self.clock()
        timers = self.timers
        while timers and timers[0][0] <= now:
            when, _, job, worker = heapq.heappop(timers)
            if job is None:
                self._check_noops(now)
            elif worker is None:
                if job.state == SCHEDULED and not job.ignore:
                    job.state = QUEUED
                    job.func.queues[job.priority].append(job)
                    self._wake(job.func)
            elif job.worker is worker and job.more.deadline == when:
                log.warning(
                    "Worker timeout reached on job, requeueing: %s %s",
                    job.handle.decode(errors="replace"),
                    job.unique.decode(errors="replace"),
                )
                self._requeue(job)

    # -------------------------------------------------------------- shutdown

    def idle(self) -> bool:
        """Nothing runs and nothing queued can run: a graceful stop may finish."""
        for func in self.functions.values():
            if func.running:
                return False
            if func.workers and (func.queued[0] or func.queued[1] or func.queued[2]):
                return False
        return True
