"""asyncio Gearman client: submit jobs, follow them, query the server.

async with AsyncClient("127.0.0.1:4730") as client:
    print(await client.run("reverse", b"hello"))          # b"olleh"
    job = await client.submit("report", b"2026", on_status=print)
    async for chunk in job:                               # WORK_DATA
        ...
    await client.submit("cleanup", background=True, priority="low")

Every wait ends: at the client's ``timeout`` (60 s unless given; ``None`` for
no limit) or a call's own. Job data is bytes or str unless a codec is given
(``codec=gearmill.JSON``). User callbacks (``on_status``) run inside the
protocol, so what they raise is logged and dropped, never passed on.
"""

from __future__ import annotations

import asyncio
import datetime
import enum
import inspect
import itertools
import logging
import ssl
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..data import Codec, Data, encode, to_bytes
from ..errors import (
    CannotConnect,
    ConnectionLost,
    GearmanError,
    JobException,
    JobFailed,
    NoServersAvailable,
    NotAJobServer,
    ProtocolError,
    ServerError,
    connect_reason,
    seconds,
)
from ..errors import Timeout as GearmanTimeout
from ..protocol.packets import PacketType, Priority, submit_type
from .connection import Connection
from .servers import Address, format_address, parse_servers, with_context

T = TypeVar("T")
PriorityLike = Priority | str | int
StatusCallback = Callable[[int, int], Any]

log = logging.getLogger("gearmill.client")

# How long a call waits when neither the client nor the call says: long enough
# for ordinary jobs, short enough that a job nobody works on fails loudly
# instead of hanging. ``timeout=None`` waits without limit.
DEFAULT_TIMEOUT = 60.0


class _Default(enum.Enum):
    DEFAULT = "the client's timeout"


DEFAULT = _Default.DEFAULT
"""A call's ``timeout`` when not given: the client's own ``timeout``."""
TimeoutArg = float | _Default | None
CodecArg = Codec | _Default | None


def to_priority(value: PriorityLike) -> Priority:
    if isinstance(value, str):
        try:
            return Priority[value.upper()]
        except KeyError:
            raise ValueError(f"priority {value!r}: use 'high', 'normal' or 'low'") from None
    try:
        return Priority(value)
    except ValueError:
        raise ValueError(f"priority {value!r}: use 'high', 'normal' or 'low'") from None


async def with_timeout(
    aw: Awaitable[T], timeout: float | None, what: str, shown: float | None = None
) -> T:
    """``aw``, or :class:`Timeout` saying "<what> within N s" (N is ``shown`` when given:
    the whole time the caller allowed, of which ``timeout`` may be the rest)."""
    if timeout is None:
        return await aw
    try:
        return await asyncio.wait_for(aw, timeout)
    except TimeoutError:
        figure = timeout if shown is None else shown
        raise GearmanTimeout(f"{what} within {seconds(figure)} s") from None


_TASKS: set[asyncio.Task[Any]] = set()  # async callbacks still running (kept referenced)


def call_user(callback: Callable[..., Any], what: str, *args: Any) -> None:
    """Run a user's callback from inside the protocol: whatever it raises is logged,
    never passed on (it would abort the connection and every job on it)."""
    try:
        returned = callback(*args)
    except Exception:
        log.exception("%s raised (ignored; the job carries on)", what)
        return
    if inspect.isawaitable(returned):
        task = asyncio.ensure_future(returned)
        _TASKS.add(task)

        def done(task: asyncio.Task[Any]) -> None:
            _TASKS.discard(task)
            if not task.cancelled() and task.exception() is not None:
                error = task.exception()
                log.error(
                    "%s raised (ignored; the job carries on)",
                    what,
                    exc_info=(type(error), error, error.__traceback__) if error else None,
                )

        task.add_done_callback(done)


@dataclass(frozen=True, slots=True)
class JobStatus:
    """GET_STATUS / GET_STATUS_UNIQUE answer."""

    known: bool
    running: bool
    numerator: int
    denominator: int
    clients: int | None = None  # waiting foreground clients (GET_STATUS_UNIQUE only)

    @property
    def percent(self) -> float | None:
        return 100.0 * self.numerator / self.denominator if self.denominator else None


@dataclass(frozen=True, slots=True)
class JobRequest:
    """One job for :meth:`AsyncClient.submit_many`."""

    function: Data
    data: Any = b""
    unique: Data | None = None
    priority: PriorityLike = Priority.NORMAL
    background: bool = False
    on_status: StatusCallback | None = None


class Job:
    """A submitted job. Await :meth:`result`, iterate WORK_DATA chunks, watch status.

    Waiting on it (``result()``, ``next_status()``, ``async for``) ends at the
    job's deadline: the client's (or the submitting call's) timeout counted
    from submission, unless a ``timeout`` is given to that wait.
    """

    def __init__(
        self,
        function: bytes,
        unique: bytes,
        background: bool,
        on_status: StatusCallback | None,
        codec: Codec | None = None,
    ) -> None:
        self.function = function
        self.unique = unique
        self.background = background
        self.handle = ""
        self.server = ""
        self.status: tuple[int, int] | None = None
        self.warnings: list[bytes] = []
        self.data_chunks: list[bytes] = []
        self.on_status = on_status
        self.codec = codec
        self.timeout: float | None = None  # what the submitting call allowed, for messages
        self.deadline: float | None = None  # time.monotonic() when default waits give up
        self._result: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._changed: asyncio.Future[None] | None = None
        if background:
            self._result.set_result(b"")

    def __repr__(self) -> str:
        state = "done" if self._result.done() else "pending"
        return f"<Job {self.handle or '?'} {self.function.decode(errors='replace')} {state}>"

    @property
    def _name(self) -> str:
        return f"job {self.handle or '?'} ({self.function.decode(errors='replace')})"

    def done(self) -> bool:
        return self._result.done()

    def _limit(self, timeout: TimeoutArg) -> tuple[float | None, float | None]:
        """(seconds left to wait, the figure to quote) for a wait given ``timeout``."""
        if not isinstance(timeout, _Default):
            return timeout, timeout
        if self.deadline is None:
            return None, None
        return max(self.deadline - time.monotonic(), 0.0), self.timeout

    def _not_done(self, figure: str) -> str:
        if self.status is None and not self.data_chunks and not self.warnings:
            fn = self.function.decode(errors="replace")
            why = f"no word from a worker: is one for {fn!r} running?"
        else:
            why = "a worker is still on it;"
        return (
            f"{self._name} did not finish within {figure} s"
            f" ({why} timeout=None waits without limit)"
        )

    async def _wait(
        self, aw: Awaitable[T], timeout: TimeoutArg, message: Callable[[str], str]
    ) -> T:
        left, shown = self._limit(timeout)
        if left is None:
            return await aw
        try:
            return await asyncio.wait_for(aw, left)
        except TimeoutError:
            raise GearmanTimeout(message(seconds(shown if shown is not None else left))) from None

    async def result(self, timeout: TimeoutArg = DEFAULT) -> Any:
        """The WORK_COMPLETE payload (decoded by the codec, if any).

        Raises :class:`JobFailed`, :class:`JobException`, :class:`ConnectionLost`,
        or :class:`Timeout` at the job's deadline (``timeout=None``: no limit).
        """
        raw = await self._wait(asyncio.shield(self._result), timeout, self._not_done)
        return raw if self.codec is None or self.background else self.codec.decode(raw)

    async def _wait_change(self) -> None:
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        waits: list[asyncio.Future[Any]] = [self._changed, self._result]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)

    async def next_status(self, timeout: TimeoutArg = DEFAULT) -> tuple[int, int] | None:
        """Wait for the next WORK_STATUS; None when the job ended first."""
        before = self.status

        async def wait() -> tuple[int, int] | None:
            while self.status is before and not self._result.done():
                await self._wait_change()
            return None if self.status is before else self.status

        return await self._wait(
            wait(), timeout, lambda s: f"no new status for {self._name} within {s} s"
        )

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncGenerator[bytes, None]:
        i = 0
        while True:
            while i < len(self.data_chunks):
                yield self.data_chunks[i]
                i += 1
            if self._result.done():
                self._result.result()  # raises if the job failed
                return
            await self._wait(self._wait_change(), DEFAULT, self._not_done)

    def _changed_now(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    def _packet(self, kind: int, args: list[bytes]) -> None:
        if self._result.done():
            return
        function = self.function.decode(errors="replace")
        if kind == PacketType.WORK_COMPLETE:
            self._result.set_result(args[1])
        elif kind == PacketType.WORK_DATA:
            self.data_chunks.append(args[1])
        elif kind == PacketType.WORK_STATUS:
            self.status = (_int(args[1]), _int(args[2]))
            if self.on_status is not None:
                call_user(self.on_status, f"on_status for {self._name}", *self.status)
        elif kind == PacketType.WORK_WARNING:
            self.warnings.append(args[1])
        elif kind == PacketType.WORK_FAIL:
            self._result.set_exception(JobFailed(self.handle, function=function))
        elif kind == PacketType.WORK_EXCEPTION:
            self._result.set_exception(JobException(self.handle, args[1], function))
        self._changed_now()

    def _lost(self, error: Exception) -> None:
        if not self._result.done():
            self._result.set_exception(error)
            self._result.exception()  # mark retrieved: a lost job nobody awaits is not an error
            self._changed_now()


def _int(value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


_JOB_PACKETS = frozenset(
    {
        PacketType.WORK_COMPLETE,
        PacketType.WORK_DATA,
        PacketType.WORK_STATUS,
        PacketType.WORK_WARNING,
        PacketType.WORK_FAIL,
        PacketType.WORK_EXCEPTION,
    }
)


class _Server:
    __slots__ = ("address", "conn", "connecting", "down_until", "failures", "name")

    def __init__(self, address: Address) -> None:
        self.address = address
        self.name = format_address(address)
        self.conn: Connection | None = None
        self.connecting: asyncio.Future[Connection] | None = None
        self.down_until = 0.0
        self.failures = 0


class AsyncClient:
    """A Gearman client over one connection per job server.

    Jobs are spread round-robin across the servers; a server that refuses
    connections is skipped and retried after a backoff (0.5 s doubling to 30 s).
    A background job a server cannot queue (``ERROR QUEUE_ERROR``: its store is
    down, its queue full) is submitted to the next server. A foreground job
    whose server dies fails with :class:`ConnectionLost`.

    ``timeout`` (seconds, default :data:`DEFAULT_TIMEOUT`) bounds every call,
    including waiting for a job's result; ``None`` waits without limit. Each
    call takes its own ``timeout=`` too. ``codec`` (e.g. ``gearmill.JSON``)
    encodes job arguments and decodes results; without one, job data must be
    ``bytes`` or ``str`` and results are ``bytes``. ``tls``: the SSL context for
    ``tls://`` servers (see :mod:`gearmill.client.tls`).
    """

    def __init__(
        self,
        servers: str | Iterable[str] | None = None,
        *,
        client_id: str | None = None,
        exceptions: bool = True,
        timeout: float | None = DEFAULT_TIMEOUT,
        connect_timeout: float = 5.0,
        codec: Codec | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.servers = [_Server(a) for a in with_context(parse_servers(servers), tls)]
        self.client_id = client_id
        self.exceptions = exceptions
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.codec = codec
        self._rr = itertools.count()
        # keyed by the connection object, not id(): an id can be reused once a
        # lost connection is garbage collected
        self._jobs: dict[tuple[Connection, bytes], list[Job]] = {}
        self._conn_jobs: dict[Connection, set[Job]] = {}
        self._closed = False

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------ recurring jobs (gearmill servers only)

    async def schedule(
        self,
        name: str,
        function: Data,
        cron: str,
        data: Any = None,
        *,
        priority: PriorityLike = Priority.NORMAL,
        codec: CodecArg = DEFAULT,
        timeout: TimeoutArg = DEFAULT,
    ) -> None:
        """Submit ``function`` with ``data`` as a background job each minute ``cron``
        matches (five fields in UTC, or ``@hourly``, ``@daily``, ...), from now on,
        on the first server; ``data`` None is an empty payload. A name in use is
        :class:`ServerError` ``EXISTS``. Listed, paused and removed with
        ``gearmill schedule`` or AdminClient."""
        payload = b"" if data is None else encode(data, self._codec(codec))
        if any(c in payload for c in b"\r\n\x00") or payload != b" ".join(payload.split()):
            raise ValueError(
                "scheduled job data travels on one admin line: use data without line "
                "breaks, NUL bytes or repeated spaces (e.g. JSON without indentation)"
            )
        level = {Priority.HIGH: "high", Priority.LOW: "low"}.get(to_priority(priority), "")
        words = [b"schedule add", name.encode(), to_bytes(function, "function name")]
        words.append(" ".join(cron.split()).replace(" ", "_").encode())
        if level:
            words.append(b"priority=" + level.encode())
        if payload:
            words.append(payload)
        await self._admin(b" ".join(words), timeout)

    async def unschedule(self, name: str, *, timeout: TimeoutArg = DEFAULT) -> None:
        """Remove a recurring job by name (:class:`ServerError` when there is none)."""
        await self._admin(b"schedule remove " + name.encode(), timeout)

    async def _admin(self, line: bytes, timeout: TimeoutArg) -> bytes:
        """One admin line to the first server on a connection of its own; the reply."""
        server = self.servers[0]

        async def ask() -> bytes:
            try:
                reader, writer = await asyncio.open_connection(*server.address)
            except OSError as e:
                raise CannotConnect(server.name, connect_reason(e)) from e
            try:
                writer.write(line + b"\r\n")
                reply = await reader.readline()
            finally:
                writer.close()
            if not reply:
                raise ConnectionLost(server.name, "closed by server")
            return reply

        reply = await with_timeout(ask(), self._timeout(timeout), f"{server.name} to answer")
        if reply.startswith(b"ERR "):
            code, _, text = reply[4:].decode(errors="replace").rstrip("\r\n").partition(" ")
            raise ServerError(code, text.replace("+", " "))
        return reply

    async def close(self) -> None:
        self._closed = True
        for server in self.servers:
            if server.conn is not None:
                server.conn.close()
                server.conn = None
        self._jobs.clear()
        self._conn_jobs.clear()

    def _timeout(self, timeout: TimeoutArg) -> float | None:
        return self.timeout if isinstance(timeout, _Default) else timeout

    def _codec(self, codec: CodecArg) -> Codec | None:
        return self.codec if isinstance(codec, _Default) else codec

    # ----------------------------------------------------------- connections

    async def _connect(self, server: _Server) -> Connection:
        if server.conn is not None and server.conn.closed is None:
            return server.conn
        if server.connecting is not None:
            return await asyncio.shield(server.connecting)
        loop = asyncio.get_running_loop()
        server.connecting = loop.create_future()
        try:
            conn = await Connection.open(
                server.address, self._on_packet, self._on_lost, self.connect_timeout
            )
            if self.client_id:
                conn.send(PacketType.SET_CLIENT_ID, self.client_id.encode())
            if self.exceptions:
                # what gearmand and libgearman do: without it, gearmand turns a
                # worker's WORK_EXCEPTION into a bare WORK_FAIL
                try:
                    await with_timeout(
                        conn.request(PacketType.OPTION_REQ, PacketType.OPTION_RES, b"exceptions"),
                        self.connect_timeout,
                        "OPTION_REQ",
                    )
                except ConnectionLost as e:
                    conn.close()
                    raise CannotConnect(server.name, f"connected, then {e.detail}") from e
                except ProtocolError as e:
                    # another service on that port: skip it like one that refuses
                    conn.close()
                    if e.sent:
                        raise NotAJobServer(server.name, e.sent) from e
                    said = str(e).removeprefix(f"{server.name}: ")
                    raise CannotConnect(server.name, f"connected, but {said}") from e
                except GearmanTimeout as e:
                    conn.close()
                    raise CannotConnect(
                        server.name,
                        "connected, but no answer to OPTION_REQ exceptions within"
                        f" {seconds(self.connect_timeout)} s",
                    ) from e
                except GearmanError:
                    pass  # a server without the option still ends jobs with WORK_FAIL
        except Exception as e:
            server.failures += 1
            server.down_until = time.monotonic() + min(0.5 * 2 ** (server.failures - 1), 30.0)
            server.connecting.set_exception(e)
            server.connecting.exception()
            server.connecting = None
            raise
        server.failures = 0
        server.conn = conn
        self._conn_jobs[conn] = set()
        server.connecting.set_result(conn)
        server.connecting = None
        return conn

    async def _pick(self, start: int | None = None) -> tuple[_Server, Connection]:
        """A connected server, trying each once from the round-robin position."""
        if self._closed:
            raise GearmanError("client is closed")
        n = len(self.servers)
        first = next(self._rr) if start is None else start
        order = [self.servers[(first + i) % n] for i in range(n)]
        now = time.monotonic()
        # servers in backoff are tried last, not never: better late than failing
        order.sort(key=lambda s: s.down_until > now)
        errors = []
        wrong = 0  # servers that answered, but not in Gearman
        for server in order:
            try:
                return server, await self._connect(server)
            except CannotConnect as e:
                errors.append(f"{server.name}: {e.reason}")
                wrong += isinstance(e, NotAJobServer)
            except ConnectionLost as e:
                errors.append(f"{server.name}: {e.detail or e}")
        names = [s.name for s in self.servers]
        raise NoServersAvailable(names, errors, wrong_port=0 < wrong == len(errors))

    def _on_packet(self, conn: Connection, kind: int, args: list[bytes]) -> None:
        if kind in _JOB_PACKETS:
            handle = args[0]
            if kind == PacketType.WORK_FAIL and handle.endswith(b"\0"):
                # gearmand sends WORK_FAIL as ``handle\0`` when it stands in for a
                # WORK_EXCEPTION the client did not ask for
                handle = handle[:-1]
            jobs = self._jobs.get((conn, handle))
            if jobs:
                for job in jobs:
                    job._packet(kind, args)
                if kind in (
                    PacketType.WORK_COMPLETE,
                    PacketType.WORK_FAIL,
                    PacketType.WORK_EXCEPTION,
                ):
                    del self._jobs[(conn, handle)]
                    waiting = self._conn_jobs.get(conn)
                    if waiting is not None:
                        waiting.difference_update(jobs)

    def _on_lost(self, conn: Connection, error: Exception) -> None:
        for server in self.servers:
            if server.conn is conn:
                server.conn = None
        for job in self._conn_jobs.pop(conn, ()):
            job._lost(error)
            self._jobs.pop((conn, job.handle.encode()), None)

    # ------------------------------------------------------------------ jobs

    def _send_submit(
        self,
        server: _Server,
        conn: Connection,
        function: Data,
        data: Any,
        unique: Data | None,
        priority: PriorityLike,
        background: bool,
        when: float | datetime.datetime | None,
        reducer: Data | None,
        on_status: StatusCallback | None,
        codec: Codec | None,
    ) -> tuple[Job, asyncio.Future[list[bytes]]]:
        fn = to_bytes(function, "function name")
        prio = to_priority(priority)
        if unique is None:
            # background jobs get an id (durable stores key on it, as libgearman does);
            # foreground jobs without one are never coalesced
            uniq = uuid.uuid4().hex.encode() if background else b""
        else:
            uniq = to_bytes(unique, "unique id")
        payload = encode(data, codec)
        job = Job(fn, uniq, background, on_status, codec)

        def created(args: list[bytes]) -> None:
            self._created(server, conn, job, args)

        if when is not None:
            if not background:
                raise ValueError("a job with a start time (when=) must be a background job")
            if isinstance(when, datetime.datetime):
                when = when.timestamp()
            future = conn.request(
                PacketType.SUBMIT_JOB_EPOCH,
                PacketType.JOB_CREATED,
                fn,
                uniq,
                b"%d" % int(when),
                payload,
                on_reply=created,
            )
        elif reducer is not None:
            ptype = (
                PacketType.SUBMIT_REDUCE_JOB_BACKGROUND
                if background
                else PacketType.SUBMIT_REDUCE_JOB
            )
            future = conn.request(
                ptype,
                PacketType.JOB_CREATED,
                fn,
                uniq,
                to_bytes(reducer, "reducer"),
                b"",
                payload,
                on_reply=created,
            )
        else:
            future = conn.request(
                submit_type(prio, background),
                PacketType.JOB_CREATED,
                fn,
                uniq,
                payload,
                on_reply=created,
            )
        return job, future

    def _created(self, server: _Server, conn: Connection, job: Job, args: list[bytes]) -> None:
        """JOB_CREATED: the job gets its handle and, in the foreground, its packets."""
        handle = args[0]
        job.handle = handle.decode(errors="replace")
        job.server = server.name
        if not job.background:
            if conn.closed is not None:
                job._lost(conn.closed)
            else:
                self._jobs.setdefault((conn, handle), []).append(job)
                self._conn_jobs.setdefault(conn, set()).add(job)

    async def submit(
        self,
        function: Data,
        data: Any = b"",
        *,
        unique: Data | None = None,
        priority: PriorityLike = Priority.NORMAL,
        background: bool = False,
        when: float | datetime.datetime | None = None,
        reducer: Data | None = None,
        on_status: StatusCallback | None = None,
        timeout: TimeoutArg = DEFAULT,
        codec: CodecArg = DEFAULT,
    ) -> Job:
        """Submit a job and return once the server has accepted it (JOB_CREATED).

        A server lost before it answered is no loss of work (no handle was
        given out), so the submission moves on to the next server; one that
        dies after JOB_CREATED fails the job with :class:`ConnectionLost`.
        ``timeout`` counts from now and also bounds waiting on the job.
        """
        t = self._timeout(timeout)
        deadline = None if t is None else time.monotonic() + t
        c = self._codec(codec)
        for attempt in range(len(self.servers)):
            server, conn = await self._pick()
            job, future = self._send_submit(
                server,
                conn,
                function,
                data,
                unique,
                priority,
                background,
                when,
                reducer,
                on_status,
                c,
            )
            job.timeout, job.deadline = t, deadline
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                await with_timeout(
                    future,
                    left,
                    f"{server.name} did not accept the {job.function.decode(errors='replace')!r}"
                    " job (no JOB_CREATED)",
                    shown=t,
                )
            except asyncio.CancelledError:
                self._forget(job)  # taken by the server as the caller gave up: no one has it
                raise
            except ConnectionLost:
                if attempt == len(self.servers) - 1:
                    raise
                continue
            except ServerError as e:
                # a background job the server could not queue (its store is down,
                # its queue full) is not there: the next server may take it
                if not background or e.code != "QUEUE_ERROR" or attempt == len(self.servers) - 1:
                    raise
                continue
            return job  # registered by _created as the reply was read
        raise AssertionError("unreachable")

    async def run(
        self,
        function: Data,
        data: Any = b"",
        *,
        unique: Data | None = None,
        priority: PriorityLike = Priority.NORMAL,
        on_status: StatusCallback | None = None,
        timeout: TimeoutArg = DEFAULT,
        codec: CodecArg = DEFAULT,
    ) -> Any:
        """Submit a foreground job and return its result (decoded by the codec, if any)."""
        job = await self.submit(
            function,
            data,
            unique=unique,
            priority=priority,
            on_status=on_status,
            timeout=timeout,
            codec=codec,
        )
        try:
            return await job.result()
        except (GearmanTimeout, asyncio.CancelledError):
            # nobody can wait on this job again: a late result has no one to go to,
            # and a long-lived client would keep every such job
            self._forget(job)
            raise

    def _forget(self, job: Job) -> None:
        handle = job.handle.encode()
        for conn, waiting in self._conn_jobs.items():
            if job in waiting:
                waiting.discard(job)
                jobs = self._jobs.get((conn, handle), [])
                if job in jobs:
                    jobs.remove(job)
                if not jobs:
                    self._jobs.pop((conn, handle), None)

    async def submit_many(
        self,
        requests: Iterable[JobRequest | tuple[Data, Any]],
        *,
        timeout: TimeoutArg = DEFAULT,
        codec: CodecArg = DEFAULT,
    ) -> list[Job]:
        """Pipeline many submissions (spread over the servers); one JOB_CREATED each."""
        t = self._timeout(timeout)
        deadline = None if t is None else time.monotonic() + t
        c = self._codec(codec)
        sent: list[tuple[Job, asyncio.Future[list[bytes]]]] = []
        asked: list[JobRequest] = []
        for request in requests:
            r = request if isinstance(request, JobRequest) else JobRequest(*request)
            server, conn = await self._pick()
            job, future = self._send_submit(
                server,
                conn,
                r.function,
                r.data,
                r.unique,
                r.priority,
                r.background,
                None,
                None,
                r.on_status,
                c,
            )
            job.timeout, job.deadline = t, deadline
            sent.append((job, future))
            asked.append(r)
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        replies = await with_timeout(
            asyncio.gather(*(f for _, f in sent), return_exceptions=True),
            left,
            f"the servers did not accept all {len(sent)} jobs (no JOB_CREATED)",
            shown=t,
        )
        jobs = []
        for (job, _), r, reply in zip(sent, asked, replies, strict=True):
            if isinstance(reply, ConnectionLost) or (
                r.background and isinstance(reply, ServerError) and reply.code == "QUEUE_ERROR"
            ):
                # lost before JOB_CREATED: submit it again elsewhere (see submit())
                left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                job = await self.submit(
                    r.function,
                    r.data,
                    unique=r.unique,
                    priority=r.priority,
                    background=r.background,
                    on_status=r.on_status,
                    timeout=left,
                    codec=c,
                )
                job.timeout, job.deadline = t, deadline
            elif isinstance(reply, BaseException):
                raise reply
            jobs.append(job)
        return jobs

    async def map(
        self,
        function: Data,
        items: Iterable[Any],
        *,
        priority: PriorityLike = Priority.NORMAL,
        timeout: TimeoutArg = DEFAULT,
        return_exceptions: bool = False,
        codec: CodecArg = DEFAULT,
    ) -> list[Any]:
        """Fan ``items`` out as foreground jobs and gather the results in order."""
        jobs = await self.submit_many(
            (JobRequest(function, item, priority=priority) for item in items),
            timeout=timeout,
            codec=codec,
        )
        gathered = asyncio.gather(*(j.result() for j in jobs), return_exceptions=return_exceptions)
        return list(await gathered)

    # --------------------------------------------------------------- queries

    async def _on_server(self, server_name: str | None) -> tuple[_Server, Connection]:
        if server_name:
            for server in self.servers:
                if server.name == server_name:
                    return server, await self._connect(server)
            raise ValueError(f"{server_name} is not one of this client's servers")
        return await self._pick(0)

    async def get_status(
        self, job: Job | str, *, server: str | None = None, timeout: TimeoutArg = DEFAULT
    ) -> JobStatus:
        """GET_STATUS for a job (asked of the server that took it)."""
        handle = job.handle if isinstance(job, Job) else job
        where = job.server if isinstance(job, Job) else server
        srv, conn = await self._on_server(where)
        future = conn.request(PacketType.GET_STATUS, PacketType.STATUS_RES, handle.encode())
        args = await with_timeout(
            future, self._timeout(timeout), f"{srv.name} did not answer GET_STATUS {handle}"
        )
        return JobStatus(args[1] == b"1", args[2] == b"1", _int(args[3]), _int(args[4]))

    async def get_status_unique(
        self, unique: Data, *, server: str | None = None, timeout: TimeoutArg = DEFAULT
    ) -> JobStatus:
        srv, conn = await self._on_server(server)
        future = conn.request(
            PacketType.GET_STATUS_UNIQUE,
            PacketType.STATUS_RES_UNIQUE,
            to_bytes(unique, "unique id"),
        )
        args = await with_timeout(
            future, self._timeout(timeout), f"{srv.name} did not answer GET_STATUS_UNIQUE"
        )
        return JobStatus(
            args[1] == b"1", args[2] == b"1", _int(args[3]), _int(args[4]), _int(args[5])
        )

    async def echo(
        self, data: Data = b"ping", *, server: str | None = None, timeout: TimeoutArg = DEFAULT
    ) -> bytes:
        srv, conn = await self._on_server(server)
        future = conn.request(PacketType.ECHO_REQ, PacketType.ECHO_RES, to_bytes(data, "echo data"))
        reply = await with_timeout(
            future, self._timeout(timeout), f"{srv.name} did not answer ECHO_REQ"
        )
        return bytes(reply[0])


__all__: Sequence[str] = (
    "DEFAULT",
    "DEFAULT_TIMEOUT",
    "AsyncClient",
    "Job",
    "JobRequest",
    "JobStatus",
)
