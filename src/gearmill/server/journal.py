"""What the broker decided, for whoever needs to know: a store, metrics, a log.

The broker appends typed entries and never acts on them. The edge drains the
journal once per read batch, right before it writes the replies
(``stream.flush``), and hands the entries to the journal's consumer. The
journal exists only while a consumer is attached (``Broker.attach_journal``);
without one the broker skips every entry at the cost of one ``is None`` test.

A store that must make background jobs durable before their submitters learn
the handle asks for ``hold_created``: each background submission then holds
the submitter's output (its JOB_CREATED and anything after it, in order) until
the consumer, having committed that batch, calls ``Broker.release(peer)`` for
each peer in ``held``.

:class:`Counters` are plain integers the broker keeps for the hot events,
journal or not.
"""

from __future__ import annotations

from typing import Final, Protocol

from .model import Job, Peer

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
    __slots__ = ("consumer", "entries", "held", "hold_created")

    def __init__(self, consumer: Consumer, hold_created: bool = False) -> None:
        self.consumer = consumer
        self.hold_created = hold_created
        self.entries: list[Entry] = []
        self.held: list[Peer] = []

    def drain(self) -> None:
        """Hand the batch so far to the consumer (the edge calls this before a flush)."""
        if self.entries or self.held:
            entries = self.entries
            held = self.held
            self.entries = []
            self.held = []
            self.consumer.consume(entries, held)


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
