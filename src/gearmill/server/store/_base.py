"""What every store shares: the stored job, the one error class, the URL redaction."""

from __future__ import annotations

import asyncio
import logging
import re
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from ...errors import connect_reason
from ._job import PRIORITY_HIGH as PRIORITY_HIGH
from ._job import PRIORITY_LOW as PRIORITY_LOW
from ._job import PRIORITY_NORMAL as PRIORITY_NORMAL
from ._job import StoredJob as StoredJob

log = logging.getLogger("gearmill.store")

# The schema version this code writes; stores refuse a newer one (written by a newer gearmill).
SCHEMA_VERSION = 3

Key = tuple[bytes, bytes]  # (function, unique)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A background job that gave up (the dead set, server/policy.py), as a store keeps it;
    the store numbers each one (an id, increasing) when it is added."""

    job: StoredJob  # attempts: how many it had
    error: str  # the last ending and its text: "exception: Traceback ...", "timeout"
    failed_at: int  # epoch seconds


@dataclass(frozen=True, slots=True)
class StoredSchedule:
    """A recurring job (server/policy.py's Scheduler), keyed by its name."""

    name: str
    function: bytes
    cron: str  # five fields, UTC
    data: bytes = b""
    priority: int = PRIORITY_NORMAL
    enabled: bool = True  # False: paused
    next_run: int = 0  # epoch seconds of the next tick
    last_run: int = 0  # of the last tick fired, 0 = never


class StoreError(Exception):
    """The store cannot do what was asked (unreachable, full, refused); one line, no password."""


# The end of a store's start-up error; the server names where the URL really came from
# (GEARMILL_STORE, a TOML file, gearmand's -q flags) in its place.
FIX_URL = "the URL given to --store"


def unreachable(url: str, error: BaseException, service: str) -> StoreError:
    """The one line for a store that cannot be reached at start: its URL (password
    hidden), why in words (not "[Errno -2]", not a driver's sentence with its own full
    stop), and the fix."""
    if isinstance(error, OSError):
        why = connect_reason(error)
    else:
        args = error.args
        # MySQL drivers raise (code, "text"): the text
        text = args[1] if len(args) == 2 and isinstance(args[1], str) else str(error)
        why = re.sub(r"\[Errno -?\d+\] ", "", text or type(error).__name__).rstrip(". ")
    return StoreError(f"cannot reach the store {url}: {why}; start {service}, or fix {FIX_URL}")


class SingleServer:
    """The lease methods of a store that one server uses at a time (memory, SQLite,
    MySQL): each says so."""

    url: str
    shared = False
    owner: str | None = None
    lane: Lane | None = None  # these stores commit through `commit` alone
    # told once, with why, when another server took the store over (MariaDB/MySQL's
    # owner lease): the server stops, as a shared store's does when its lease is lost
    on_lost: Callable[[str], None] | None = None

    def _single(self) -> StoreError:
        return StoreError(
            f"{self.url} is used by one server at a time; several servers on one store "
            "need postgresql:// or redis://"
        )

    async def join(
        self, owner: str, lease: float, replace: tuple[str, int] | None = None
    ) -> tuple[str, int] | None:
        raise self._single()

    async def renew(self, owner: str, lease: float) -> bool:
        raise self._single()

    async def leave(self, owner: str) -> None:
        raise self._single()

    async def reap(self) -> list[tuple[str, bool]]:
        raise self._single()

    async def claim(self, owner: str, limit: int) -> list[tuple[int, StoredJob]]:
        raise self._single()

    async def claim_tick(self, name: str, minute: int, next_run: int) -> bool:
        raise self._single()

    async def dead_ids(self) -> list[int]:
        raise self._single()

    async def take_dead(self, ids: Sequence[int]) -> list[int]:
        raise self._single()

    async def nodes(self, count: bool = True) -> list[tuple[str, int, int]]:
        raise self._single()


class Lane(Protocol):
    """A store's own connection for a job committed alone: what a client that submits
    one job at a time waits for. The commit is written in the loop turn the job arrived
    in, and its answer calls back from the connection's data_received: no task switch,
    no future, no driver layers (server/durable.py, `Durable._send_lone`). Groups, and
    everything else, go through `Store.commit`.

    The store connects it in `open` (a lane that cannot connect leaves `ready` False;
    `commit` goes on alone), connects it again after a failure from its own `commit`
    (so a store that came back gets its lane back), and closes it in `close`.
    """

    def ready(self) -> bool:
        """Connected, and no commit of its own in flight: `send` may be called now."""

    def send(self, job: StoredJob, done: Callable[[str | None], None]) -> None:
        """Write the commit of one new job, exactly as `Store.commit([job], [])` would
        (nothing changes when its key is stored; leased to the store's `owner`), and
        return at once. Later, exactly once: ``done(None)`` when the store made it
        durable, or ``done(why)`` (one line, no password) when the store refused it or
        the connection broke; then `ready` stays False until the store reconnects."""

    def abort(self, why: str) -> None:
        """The commit in flight took too long: drop the connection and call
        ``done(why)`` now (no later call)."""


class Unsupported(Exception):
    """A store's URL or server asks for a connection its lane does not make (TLS it
    cannot match, an authentication it lacks): the lane stays off for good."""


class KeptLane(Lane, Protocol):
    def broken(self) -> bool:
        """Its connection is gone (a new lane is needed)."""

    def close(self) -> None:
        """Say goodbye and close the connection."""


class LaneKeeper:
    """A store's lane over its life, the same for every store that has one: connected
    in the store's `open`, connected again after a good `commit` when it broke (the
    store answers again; at most once a second), closed in `close`. A lane that cannot
    be made for good (`Unsupported`) leaves every commit to the driver, said once."""

    def __init__(self, url: str, driver: str, connect: Callable[[], Awaitable[KeptLane]]):
        self._url = url
        self._driver = driver
        self._connect = connect
        self.lane: KeptLane | None = None
        self._off = False
        self._task: asyncio.Task[None] | None = None
        self._after = 0.0  # monotonic time before which no new lane is tried

    async def open(self) -> None:
        try:
            self.lane = await self._connect()
            log.debug("store %s: the lone-job connection is open", self._url)
        except Unsupported as e:
            self._off = True
            log.info("store %s: lone jobs commit through %s: %s", self._url, self._driver, e)
        except (OSError, ConnectionError, TimeoutError) as e:
            log.info("store %s: the lone-job connection failed: %s", self._url, e)
        finally:
            self._task = None

    def committed(self) -> None:
        """The store took a commit: a broken lane is worth another try."""
        lane = self.lane
        if (
            (lane is None or lane.broken())
            and not self._off
            and self._task is None
            and time.monotonic() >= self._after
        ):
            self._after = time.monotonic() + 1.0
            self._task = asyncio.get_running_loop().create_task(self.open())

    def close(self) -> None:
        lane, self.lane = self.lane, None
        if lane is not None:
            lane.close()
        if self._task is not None:
            self._task.cancel()


@runtime_checkable
class Store(Protocol):
    """A durable queue of background jobs.

    One writer at a time calls `commit`; `load` may run beside it (replay while new
    work is accepted). Every method raises StoreError and nothing else.
    """

    url: str  # password hidden, for logs
    durable: bool  # False only for the memory store
    # several servers may share it (PostgreSQL, Redis): the lease methods below work
    shared: bool
    # set by the server sharing the store (server/cluster.py): added jobs are stored as
    # this owner's, and removes are fenced (see `commit`); None: one server, no leases
    owner: str | None

    @property
    def lane(self) -> Lane | None:
        """The fast path for a lone job, where the store has one (see Lane)."""

    async def open(self) -> None:
        """Connect, check the durability settings, create or migrate the schema."""

    async def commit(self, add: Sequence[StoredJob], remove: Sequence[Key]) -> None:
        """Make a whole group durable in one transaction.

        Removes are applied before adds, so a key finished and submitted again in the same
        group ends up stored once (with a new sequence number). Adding a key that is
        already stored changes nothing (gearmand coalesces such a submission with the
        stored job). The caller drops an add whose job already finished in the same group.

        With an `owner` set, added jobs are leased to it, and a remove deletes a job only
        while that owner still holds it with the fencing number it got (0 when it added
        the job, the claimed one after `claim`): a server whose job was taken over cannot
        delete the copy the new owner runs.
        """

    async def load(self, after: int, limit: int) -> list[tuple[int, StoredJob]]:
        """Up to `limit` stored jobs with a sequence number above `after`, in that order."""

    async def count(self) -> int:
        """How many jobs are stored."""

    async def ping(self) -> None:
        """One cheap round trip to the store (readiness probes, server/http.py)."""

    # -- paging: queued jobs beyond the server's memory budget stay here (server/durable.py)

    async def last_seq(self) -> int:
        """The highest sequence number stored, 0 when there is none."""

    async def queued_counts(self, after: int, upto: int) -> list[tuple[bytes, int, int]]:
        """(function, priority, how many) of the stored jobs with after < seq <= upto."""

    async def load_queued(
        self, function: bytes, priority: int, after: int, limit: int
    ) -> list[tuple[int, StoredJob]]:
        """Like `load`, for one function and priority only."""

    async def find(self, keys: Sequence[Key]) -> list[Key]:
        """Those of `keys` that are stored."""

    async def size_bytes(self) -> int:
        """The space the store's own tables or keys take (on disk, or in Redis memory)."""

    async def import_gearmand(self, source: str | None = None) -> int:
        """Move the jobs a C gearmand left in its queue table or keys into this store.

        `source` names gearmand's table (SQL stores) or key prefix (Redis); None means
        gearmand's default. Imported rows are deleted from gearmand's table once they
        are committed here, so a second call imports nothing; returns how many came.
        """

    async def add_dead(self, dead: Sequence[DeadLetter]) -> list[int]:
        """Keep dead letters (one transaction); their ids, in the same order."""

    async def list_dead(self, after: int, limit: int) -> list[tuple[int, DeadLetter]]:
        """Up to `limit` dead letters with an id above `after`, oldest first."""

    async def remove_dead(self, ids: Sequence[int]) -> None:
        """Forget these dead letters (requeued, purged, or past the bounds); unknown ids are
        ignored."""

    async def put_schedule(self, schedule: StoredSchedule) -> None:
        """Add a schedule, or replace the one of that name."""

    async def list_schedules(self) -> list[StoredSchedule]:
        """Every schedule, by name."""

    async def remove_schedule(self, name: str) -> bool:
        """Forget a schedule; False when there was none of that name."""

    async def close(self) -> None:
        """Release connections, threads and locks; the store can be opened again later."""

    # Leases, for several servers on one shared store. An owner is "<node id>#<token>",
    # the token new at every start; times are the store's own clock (no skew between
    # machines). Stores that are not shared raise StoreError from each of these.

    async def join(
        self, owner: str, lease: float, replace: tuple[str, int] | None = None
    ) -> tuple[str, int] | None:
        """Take the node id of `owner` with a heartbeat good for `lease` seconds; None
        when taken. When a live heartbeat holds it: (its owner, its expiry in store
        milliseconds); passing that back as `replace` takes it only if it was not
        renewed meanwhile (a crashed earlier run of this server)."""

    async def renew(self, owner: str, lease: float) -> bool:
        """Extend the heartbeat; False when it is gone (declared dead, jobs taken over)."""

    async def leave(self, owner: str) -> None:
        """Drop the heartbeat (a clean stop): the others take the jobs over at once."""

    async def reap(self) -> list[tuple[str, bool]]:
        """Declare dead the owners whose heartbeat expired (delete it): who they were, and
        whether each left cleanly (`leave`) rather than stopped renewing."""

    async def claim_tick(self, name: str, minute: int, next_run: int) -> bool:
        """Compare-and-set a schedule's last run: True for the one server that moves it to
        `minute` (and keeps `next_run`), so a tick fires once across servers; also True
        when the store does not know the schedule (only this server has it)."""

    async def claim(self, owner: str, limit: int) -> list[tuple[int, StoredJob]]:
        """Atomically take up to `limit` jobs whose owner has no heartbeat (dead, an
        earlier run, or none), oldest first: each job goes to one claimer, its fencing
        number grows, and this store remembers it for the fenced remove."""

    async def dead_ids(self) -> list[int]:
        """The ids of every dead letter (cheap: what the other servers added or removed)."""

    async def take_dead(self, ids: Sequence[int]) -> list[int]:
        """Remove these dead letters; the ids this call removed (not those another server
        removed first), so a letter requeued by two servers at once runs once."""

    async def nodes(self, count: bool = True) -> list[tuple[str, int, int]]:
        """The servers sharing the store, by node id: (owner, milliseconds until the
        heartbeat expires, negative once expired; the stored jobs it holds, or -1 when
        not ``count``: counting is not free, the heartbeats are a few rows)."""


_SECRET_PARAMS = ("password", "pass", "passwd", "sslpassword")


def about(url: str, error: object) -> str:
    """A store error's words for a log line that names the store already: without the
    URL the store's errors start with, nor a driver's full stop before the "; ..." that
    follows (not "store URL failed: URL: commit failed: ... refused.; ...")."""
    text = str(error) or type(error).__name__
    if text.startswith(url + ": "):
        text = text[len(url) + 2 :]
    return text.rstrip(". ")


def hide_password(url: str) -> str:
    """The URL with its password (in the user part or the query) replaced by ***."""
    try:
        parts = urlsplit(url)
        password = parts.password
        port = parts.port
    except ValueError:
        return "<unparsable store URL>"
    netloc = parts.netloc
    if password is not None:
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{parts.username or ''}:***@{host}" + (f":{port}" if port is not None else "")
    query = "&".join(
        item.split("=", 1)[0] + "=***" if item.split("=", 1)[0].lower() in _SECRET_PARAMS else item
        for item in parts.query.split("&")
        if item
    )
    if netloc == parts.netloc and query == parts.query:
        return url  # nothing secret; urlunsplit would also drop sqlite:///'s empty host
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def check_job(job: StoredJob) -> None:
    if job.priority not in (PRIORITY_HIGH, PRIORITY_NORMAL, PRIORITY_LOW):
        raise StoreError(f"job priority must be 0, 1 or 2, not {job.priority}")


# A compact value encoding for key-value stores (Redis): fixed header, then the bytes.
_HEADER = struct.Struct("!QBqIIII")  # seq, priority, when, attempts, len(function, unique, reducer)


def pack_job(seq: int, job: StoredJob) -> bytes:
    head = _HEADER.pack(
        seq,
        job.priority,
        job.when,
        job.attempts,
        len(job.function),
        len(job.unique),
        len(job.reducer),
    )
    return b"".join((head, job.function, job.unique, job.reducer, job.data))


def unpack_job(value: bytes) -> tuple[int, StoredJob]:
    seq, priority, when, attempts, lf, lu, lr = _HEADER.unpack_from(value)
    at = _HEADER.size
    function = value[at : at + lf]
    at += lf
    unique = value[at : at + lu]
    at += lu
    reducer = value[at : at + lr]
    at += lr
    return seq, StoredJob(function, unique, value[at:], priority, when, reducer, attempts)


_DEAD = struct.Struct("!qI")  # failed_at, len(error)


def pack_dead(dead: DeadLetter) -> bytes:
    error = dead.error.encode()
    return _DEAD.pack(dead.failed_at, len(error)) + error + pack_job(0, dead.job)


def unpack_dead(value: bytes) -> DeadLetter:
    failed_at, size = _DEAD.unpack_from(value)
    at = _DEAD.size
    error = value[at : at + size].decode(errors="replace")
    return DeadLetter(unpack_job(value[at + size :])[1], error, failed_at)


def check_schedule(schedule: StoredSchedule) -> None:
    if schedule.priority not in (PRIORITY_HIGH, PRIORITY_NORMAL, PRIORITY_LOW):
        raise StoreError(f"schedule priority must be 0, 1 or 2, not {schedule.priority}")
    if not schedule.name or len(schedule.name) > 255:
        raise StoreError("a schedule needs a name of 1 to 255 characters")


_SCHEDULE = struct.Struct("!BBqqII")  # priority, enabled, next_run, last_run, len(function, cron)


def pack_schedule(s: StoredSchedule) -> bytes:
    cron = s.cron.encode()
    head = _SCHEDULE.pack(s.priority, s.enabled, s.next_run, s.last_run, len(s.function), len(cron))
    return b"".join((head, s.function, cron, s.data))


def unpack_schedule(name: str, value: bytes) -> StoredSchedule:
    priority, enabled, next_run, last_run, lf, lc = _SCHEDULE.unpack_from(value)
    at = _SCHEDULE.size
    function, cron = value[at : at + lf], value[at + lf : at + lf + lc].decode()
    data = value[at + lf + lc :]
    return StoredSchedule(name, function, cron, data, priority, bool(enabled), next_run, last_run)


def field_of(function: bytes, unique: bytes) -> bytes:
    """An unambiguous single-bytes form of the (function, unique) key."""
    return b"%d:%b%b" % (len(function), function, unique)
