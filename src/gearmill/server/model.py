"""The broker's data: configuration, peers, functions, jobs and timers.

Compiled with the broker (see ``_accel``); no logic beyond small helpers.

A :class:`Function` has three FIFO queues (high, normal, low) and the list of
worker entries that registered it (a CAN_DO twice counts twice, as in
gearmand). A :class:`Job` is queued, scheduled (an epoch job not yet due) or
running on exactly one worker; foreground jobs carry the peers waiting on
them. Abandoned queued jobs are flagged ``ignore`` and skipped when they reach
the head of their queue (O(1) removal).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final, Protocol

from mypy_extensions import u8

from .sink import Sink

MAX_UNIQUE: Final = 64
MAX_HANDLE: Final = 64
MAX_CLIENT_ID: Final = 127
MAX_OPTION: Final = 64

QUEUED: Final = 0
RUNNING: Final = 1
SCHEDULED: Final = 2
# a background job whose store commit is in flight: counted as queued, but no worker
# gets it until the commit is done (Core.publish); a failed commit refuses it unrun
PENDING: Final = 3

# what a timer does when it is due
TIMER_EPOCH: Final = 0  # a scheduled job becomes runnable
TIMER_TIMEOUT: Final = 1  # a worker's CAN_DO_TIMEOUT ran out: requeue the job
TIMER_NOOPS: Final = 2  # look for woken workers that never answered
TIMER_DEAD: Final = 3  # cancelled: its job ended first
TIMER_CALL: Final = 4  # the broker's timer_hook has something due (cron, dead-set ages)

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
    # limits (0 = none): CAN_DOs a worker may hold, bytes of a function name
    max_functions_per_worker: int = 0
    max_function_name: int = 0


class PeerAccess(Protocol):
    """What one peer may do; asked before the broker acts on each packet or
    admin line (``ptype`` 0 = admin line, ``args[0]`` its text)."""

    def allows(self, ptype: int, args: list[bytes]) -> bool: ...


class AccessList(Protocol):
    """Gives each new peer its rules from its identity (address, later a TLS
    subject); None lets the peer do everything at no cost per packet."""

    def for_peer(self, peer: Peer) -> PeerAccess | None: ...


class Policy(Protocol):
    """A retry policy (server/policy.py), asked only when a job's attempt
    ended without a result; None (the default) keeps gearmand's rules."""

    def retries(self, job: Job, why: int) -> bool:
        """Whether a background job's WORK_FAIL / WORK_EXCEPTION (``why``
        RETRY_FAILED / RETRY_EXCEPTION) is retried rather than final."""
        ...

    def retry_delay(self, job: Job, why: int, error: bytes) -> float:
        """``job.more.retries`` attempts have ended (``why``): seconds until the
        next attempt (0 = at once), or -1 to give up."""
        ...

    def bury(self, job: Job, why: int, error: bytes) -> bool:
        """The job gives up (or failed for good): keep it in the dead set if the
        function asks for that (True when it went there)."""
        ...


class Peer:
    """One party the broker talks to: its identity, its sink, and the broker's
    view of it (worker abilities, jobs it runs or waits on, pending output).

    A socket connection, an in-process caller and a test are all peers; only
    the sink differs."""

    __slots__ = (
        "abilities",
        "access",
        "addr",
        "assigned",
        "client_id",
        "close",
        "exceptions",
        "fd",
        "holds",
        "local",
        "noop_sent",
        "out",
        "parked",
        "paused",
        "rank",
        "sink",
        "sleeping",
        "subject",
        "waiting",
        "woken_at",
        "woken_for",
    )

    def __init__(self, fd: int, addr: str, local: bool = True, sink: Sink | None = None) -> None:
        # identity: the connection number admin "workers" shows, the address,
        # whether it is a loopback peer
        self.fd = fd
        self.addr = addr
        self.local = local
        self.subject = ""  # a TLS peer's certificate subject ("CN=a,O=b"), else ""
        self.client_id = b"-"
        self.sink = sink  # where the bytes in ``out`` go on a flush
        self.access: PeerAccess | None = None  # None: everything allowed
        # most recent CAN_DO first (gearmand prepends)
        self.abilities: list[Ability] = []
        # each function's first index in ``abilities``, built when a worker with
        # many functions looks for work; None when stale
        self.rank: dict[Function, int] | None = None
        self.assigned: dict[bytes, Job] = {}
        self.waiting: set[Job] = set()
        self.sleeping = False
        self.noop_sent = False
        # the function whose queued job this worker was NOOPed for, until it answers
        self.woken_for: Function | None = None
        self.woken_at = 0.0
        self.exceptions = False
        self.out: list[bytes] = []
        # more than --max-owed is owed to it (it does not read): jobs that only
        # it waits for are taken off their queue into ``parked`` until it reads
        self.paused = False
        self.parked: list[Job] = []
        self.close = False  # close after the pending output is written
        # held JOB_CREATEDs (see Journal.hold_created): output waits until 0
        self.holds = 0


class Ability:
    """One CAN_DO (or CAN_DO_TIMEOUT) of a worker."""

    __slots__ = ("func", "timeout")

    def __init__(self, func: Function, timeout: int) -> None:
        self.func = func
        self.timeout = timeout  # milliseconds; 0 = none


# high, normal, low. A list, not a tuple: compiled, a tuple is an unboxed value,
# and indexing it by priority built a tuple object each time (3 a drained job)
Queues = list["deque[Job]"]
# the queues of every function that never had a job: three empty deques cost
# 1.9 KB, and a worker may register tens of thousands of functions (issue 13)
NO_QUEUES: Final[Queues] = [deque(), deque(), deque()]
# no queue limits: shared and never written (set_max_queue gives a new list)
NO_LIMIT: Final[list[int]] = [0, 0, 0]


class Function:
    """A function name and its jobs: a few hundred bytes while it has none."""

    __slots__ = (
        "cursor",
        "dead",
        "max_queue",
        "name",
        "queued",
        "queues",
        "ready",
        "running",
        "unique",
        "woken",
        "workers",
    )

    def __init__(self, name: bytes) -> None:
        self.name = name
        # NO_QUEUES (shared, never written) until a job is queued: own_queues()
        self.queues: Queues = NO_QUEUES
        self.queued = [0, 0, 0]  # live (not ignored) queued or scheduled jobs per priority
        self.running = 0
        self.workers: list[Peer] = []
        self.unique: dict[bytes, Job] = {}
        self.max_queue = NO_LIMIT
        self.ready = False  # listed in the broker's ``ready`` (it may have queued jobs)
        self.cursor = 0
        self.woken = 0  # workers NOOPed for this function's jobs that have not answered yet
        # abandoned or cancelled jobs still in the queues (an upper bound: the
        # head reaps some without counting); the queues are swept when they
        # outnumber the live ones
        self.dead = 0

    def own_queues(self) -> Queues:
        """The function's own queues, to append to."""
        queues = self.queues
        if queues is NO_QUEUES:
            queues = self.queues = [deque(), deque(), deque()]
        return queues

    @property
    def total(self) -> int:
        return self.queued[0] + self.queued[1] + self.queued[2] + self.running


class Timer:
    """One entry of the broker's timer heap. A job's timer is cancelled when
    the job ends or is requeued, so the heap never keeps a finished job alive."""

    __slots__ = ("job", "kind", "when", "worker")

    def __init__(self, when: float, kind: int, job: Job | None, worker: Peer | None) -> None:
        self.when = when
        self.kind = kind
        self.job = job
        self.worker = worker


class JobMore:
    """What few jobs need (status, timers, retries, reduce): kept apart so
    that a plain queued job stays small (issue 4: at most 400 bytes a job)."""

    __slots__ = ("den", "held", "num", "reducer", "retries", "timer")

    def __init__(self) -> None:
        self.reducer = b""
        self.num = 0
        self.den = 0
        self.retries = 0
        self.timer: Timer | None = None  # its epoch or CAN_DO_TIMEOUT timer, if any
        # a scheduled job whose store commit is in flight: due before it ends, it is
        # PENDING (not queued) until Core.publish
        self.held = False


NO_MORE: Final = JobMore()  # read-only defaults for jobs without any


class Job:
    __slots__ = (
        "at",
        "background",
        "cancelled",
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
        # metrics only (journal.Tally): when it was queued or started, by the
        # metrics' monotonic clock; 0.0 while nothing times it
        self.at = 0.0
        # the small fields last and adjacent: mypyc packs them in one word
        self.priority: u8 = priority
        self.state: u8 = QUEUED
        self.background = background
        self.ignore = False
        self.cancelled = False  # by an admin while running: its end is a cancel
        # NO_MORE (shared, never written) until the job needs a field of JobMore
        self.more = NO_MORE

    def extra(self) -> JobMore:
        """This job's own JobMore, to write to."""
        more = self.more
        if more is NO_MORE:
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


def unique_key(unique: bytes, data: bytes) -> bytes | None:
    """The coalescing key of a job: its unique id, or for ``-`` its payload."""
    # (compiled, == on bytes is a generic rich comparison: most ids are longer)
    if len(unique) == 1 and unique == b"-":
        # the key cannot clash with a real unique id, which has no NUL
        return b"\x00" + data if data else None
    return unique if len(unique) else None  # (compiled, len() is inline; ``or`` is a call)


def forget_unique(job: Job) -> None:
    key = unique_key(job.unique, job.data)
    if key is not None:
        uniques = job.func.unique
        if uniques.get(key) is job:
            del uniques[key]
