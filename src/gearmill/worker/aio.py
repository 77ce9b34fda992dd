"""asyncio Gearman worker.

    worker = AsyncWorker("127.0.0.1:4730", concurrency=4)

    @worker.function("reverse")
    async def reverse(job: WorkerJob) -> bytes:
        job.send_status(1, 2)
        return job.data[::-1]

    await worker.run()   # until worker.stop(), SIGTERM or SIGINT

Returning completes the job: ``bytes`` or ``str`` (UTF-8), ``None`` for an
empty result; with ``codec=JSON`` any JSON value, and ``job.value`` is the
decoded job data. Raising fails the job: the traceback goes to the
``gearmill.worker`` log at WARNING and the client gets ``TypeName: message``
(WORK_EXCEPTION) or a plain WORK_FAIL, see ``exceptions``.

Plain (non-async) functions run in a pool of ``concurrency`` threads, so a
slow one does not stop the worker from talking to its servers; with
``processes=True`` they run in ``concurrency`` child processes instead (for
CPU-bound work). A function registered with ``timeout`` is stopped when it
runs longer: a coroutine is cancelled, a child process is killed, a thread
(which cannot be stopped) is abandoned; no late result is sent, since the
server has already given the job to another worker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import multiprocessing
import multiprocessing.connection
import pickle
import signal
import ssl
import traceback
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from ..client.connection import Connection
from ..client.servers import Address, format_address, parse_servers, tls_arguments, with_context
from ..data import Codec, encode, to_bytes
from ..errors import (
    WRONG_PORT_HINT,
    CannotConnect,
    ConnectionLost,
    NotAJobServer,
    ProtocolError,
    seconds,
)
from ..protocol.packets import PacketType

log = logging.getLogger("gearmill.worker")

JobFunction = Callable[["WorkerJob"], Any]
F = TypeVar("F", bound=JobFunction)
T = TypeVar("T")


class WorkerJob:
    """The job a function is running, with ways to talk back to the client.

    ``data`` is the job's payload as bytes; ``value`` is that payload decoded by
    the worker's codec (only when the worker has one).
    """

    __slots__ = (
        "_codec",
        "_conn",
        "_dropped",
        "_exceptions",
        "_loop",
        "data",
        "function",
        "handle",
        "reducer",
        "unique",
    )

    def __init__(
        self,
        conn: Connection,
        handle: bytes,
        function: bytes,
        unique: bytes,
        data: bytes,
        reducer: bytes = b"",
        *,
        codec: Codec | None = None,
        exceptions: bool = False,
    ) -> None:
        self._conn = conn
        self._loop = asyncio.get_running_loop()
        self._codec = codec
        self._exceptions = exceptions
        self._dropped = False  # past its timeout: the server took it back, nothing more is sent
        self.handle = handle.decode(errors="replace")
        self.function = function.decode(errors="replace")
        self.unique = unique.decode(errors="replace")
        self.data = data
        self.reducer = reducer.decode(errors="replace")

    def __repr__(self) -> str:
        return f"<WorkerJob {self.handle} {self.function}>"

    @property
    def value(self) -> Any:
        """The job data decoded by the worker's codec (e.g. a dict with ``codec=JSON``)."""
        if self._codec is None:
            raise AttributeError(
                "job.value needs a codec: create the worker with codec=gearmill.JSON"
                " (job.data has the raw bytes)"
            )
        return self._codec.decode(self.data)

    def _send(self, ptype: int, *args: bytes) -> None:
        # callable from the worker's loop or from a plain function's thread
        if self._dropped:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._conn.send(ptype, self.handle.encode(), *args)
        else:
            self._loop.call_soon_threadsafe(self._send_quiet, ptype, *args)

    def _send_quiet(self, ptype: int, *args: bytes) -> None:
        if self._dropped:
            return
        try:
            self._conn.send(ptype, self.handle.encode(), *args)
        except ConnectionLost:
            pass

    def send_data(self, data: bytes | str) -> None:
        """WORK_DATA: a chunk of output the client sees before the result."""
        self._send(PacketType.WORK_DATA, to_bytes(data, "WORK_DATA"))

    def send_warning(self, data: bytes | str) -> None:
        """WORK_WARNING: a warning the client sees while the job runs."""
        self._send(PacketType.WORK_WARNING, to_bytes(data, "WORK_WARNING"))

    def send_status(self, numerator: int, denominator: int) -> None:
        """WORK_STATUS: progress, ``numerator`` of ``denominator`` done."""
        self._send(PacketType.WORK_STATUS, b"%d" % numerator, b"%d" % denominator)


class _ChildJob(WorkerJob):
    """The picklable copy of a job that a child process gets (``processes=True``)."""

    __slots__ = ()

    @classmethod
    def of(cls, job: WorkerJob) -> _ChildJob:
        child = cls.__new__(cls)
        child._codec = job._codec
        child._dropped = False
        child.handle = job.handle
        child.function = job.function
        child.unique = job.unique
        child.data = job.data
        child.reducer = job.reducer
        return child

    def _send(self, ptype: int, *args: bytes) -> None:
        names = {
            int(PacketType.WORK_DATA): "send_data",
            int(PacketType.WORK_WARNING): "send_warning",
            int(PacketType.WORK_STATUS): "send_status",
        }
        name = names.get(ptype, "send")
        raise RuntimeError(
            f"job.{name}() is not available in a function run with processes=True"
            " (it runs in another process); use a thread or a coroutine for jobs that report"
            " progress or data"
        )


class _ChildError(Exception):
    """A function raised in a child process; carries its type name and traceback."""

    def __init__(self, type_name: str, message: str, trace: str) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.trace = trace


def _child_main(conn: multiprocessing.connection.Connection) -> None:
    """A child process's loop: run (function, job) pairs until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what happens on Ctrl-C
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        func, job = task
        try:
            reply: tuple[Any, ...] = ("ok", func(job))
            conn.send(reply)
        except BaseException as e:  # every failure goes back to the parent
            conn.send(("error", type(e).__name__, str(e), traceback.format_exc()))


class _Child:
    """One child process that runs jobs one at a time."""

    def __init__(self, context: Any) -> None:
        self.conn, child_end = context.Pipe()
        self.process = context.Process(target=_child_main, args=(child_end,), daemon=True)
        self.process.start()
        child_end.close()

    def call(self, func: JobFunction, job: _ChildJob) -> Any:
        """Run ``func(job)`` in the child (blocking; called from a thread)."""
        self.conn.send((func, job))
        try:
            reply = self.conn.recv()
        except (EOFError, OSError):
            self.process.join(5)
            raise RuntimeError(
                f"the process running the job exited (exit code {self.process.exitcode})"
            ) from None
        if reply[0] == "ok":
            return reply[1]
        raise _ChildError(reply[1], reply[2], reply[3])

    def kill(self) -> None:
        self.process.kill()
        self.process.join(5)
        self.conn.close()

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(5)
        if self.process.is_alive():
            self.kill()
        self.conn.close()


def _process_context(functions: Iterable[JobFunction]) -> Any:
    """A forkserver that has imported the functions' modules: a child (the first, or
    one replacing a killed one) then starts in milliseconds, not after re-importing
    them, which on a busy machine can take longer than a job's timeout."""
    context = multiprocessing.get_context("forkserver")
    modules = {"gearmill.worker.aio"} | {getattr(f, "__module__", None) or "" for f in functions}
    modules.discard("")
    # the forkserver is one per program: the first worker to start it sets its imports
    context.set_forkserver_preload(sorted(modules))
    return context


def _describe(error: BaseException) -> str:
    """``TypeName: message`` (just the type name when there is no message)."""
    if isinstance(error, _ChildError):
        name, text = error.type_name, str(error)
    else:
        name, text = type(error).__name__, str(error)
    return f"{name}: {text}" if text else name


async def _is_gearmill(address: Address, timeout: float) -> bool:
    """Whether the server says (admin ``version``) that it is gearmill."""
    host, port = address
    context, hostname = tls_arguments(address)  # a TLS listener answers no plain text
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context, server_hostname=hostname),
            timeout,
        )
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"version\n")
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
    return line.startswith(b"OK ") and b"gearmill" in line


class _Link:
    """One server connection and its grab/sleep cycle."""

    def __init__(self, worker: AsyncWorker, address: Address) -> None:
        self.worker = worker
        self.address = address
        self.name = format_address(address)
        self.conn: Connection | None = None
        self.wake = asyncio.Event()
        self.lost = asyncio.Event()  # this connection is gone (set by on_lost)
        self.reply: asyncio.Future[tuple[int, list[bytes]]] | None = None
        self.exceptions = bool(worker.exceptions)
        self.delay = 0.5  # before the next connection attempt; doubles to 30 s
        self.down = False  # a connection failed or was lost: say so when it is back
        self.failing = ""  # how the last attempts failed (said once, not at each retry)
        self.failures = 0  # attempts in a row that failed that way
        self.answered = False  # this connection's server answered a GRAB_JOB_ALL

    def on_packet(self, conn: Connection, kind: int, args: list[bytes]) -> None:
        if kind == PacketType.NOOP:
            self.wake.set()
        elif kind in (
            PacketType.NO_JOB,
            PacketType.JOB_ASSIGN,
            PacketType.JOB_ASSIGN_UNIQ,
            PacketType.JOB_ASSIGN_ALL,
        ):
            if self.reply is not None and not self.reply.done():
                self.reply.set_result((kind, args))
        elif kind == PacketType.ERROR:
            log.warning("%s: %s", self.name, b": ".join(args).decode(errors="replace"))

    def on_lost(self, conn: Connection, error: Exception) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(error)
        self.wake.set()
        self.lost.set()

    async def register(self, conn: Connection) -> None:
        w = self.worker
        if w.client_id:
            conn.send(PacketType.SET_CLIENT_ID, w.client_id.encode())
        conn.send(PacketType.RESET_ABILITIES)
        for name, (_, timeout) in w.functions.items():
            if timeout:
                conn.send(PacketType.CAN_DO_TIMEOUT, name.encode(), b"%d" % int(timeout * 1000))
            else:
                conn.send(PacketType.CAN_DO, name.encode())

    async def run(self) -> None:
        w = self.worker
        while not w.stopping:
            self.lost.clear()
            try:
                conn = await Connection.open(
                    self.address, self.on_packet, self.on_lost, w.connect_timeout
                )
            except ConnectionLost as e:
                await self._retry(e)
                continue
            self.conn = conn
            self.answered = False
            lost: Exception | None = None
            try:
                if w.exceptions is None:
                    # gearmill turns WORK_EXCEPTION into a plain WORK_FAIL for clients that
                    # did not ask for exceptions; gearmand 1.1 sends them a WORK_FAIL with a
                    # trailing NUL that libgearman 1.1 clients (the `gearman` tool) never
                    # match, so they would hang: there, only WORK_FAIL is safe.
                    self.exceptions = await _is_gearmill(self.address, w.connect_timeout)
                await self.register(conn)
                await self.cycle(conn)
                # stopping: the running jobs send their results on this connection, so
                # it stays open until work() has waited for them (it cancels this then)
                await asyncio.get_running_loop().create_future()
            except (ConnectionLost, ProtocolError) as e:
                lost = e
                if isinstance(e, ProtocolError) and e.sent and not self.answered:
                    lost = NotAJobServer(self.name, e.sent)  # a wrong port, said as such
            finally:
                self.conn = None
                conn.close()
            if lost is None or w.stopping:
                continue
            if self.answered:
                log.warning("%s; reconnecting", lost)
                self.down = True
            else:
                # it never answered like a job server (something else on that port, or
                # junk): back off as for a refused connection instead of spinning
                await self._retry(lost)

    async def _retry(self, error: Exception) -> None:
        # A daemon retries for ever (servers come and go), so a failure is said once, then
        # summed up after 4, 16, 64, ... attempts in a row: at most a few lines a day.
        said = str(error)
        if said != self.failing:
            self.failing, self.failures = said, 1
            if isinstance(error, NotAJobServer):
                said += f"; {self.worker.wrong_port_hint}"
            log.warning("%s; retrying in %.1f s", said, self.delay)
        else:
            self.failures += 1
            n = self.failures
            if n & (n - 1) == 0 and n.bit_length() % 2:  # a power of 4
                log.warning(
                    "%s: still the same after %d attempts; retrying in %.1f s"
                    " (said again after %d)",
                    self.name,
                    n,
                    self.delay,
                    4 * n,
                )
        self.down = True
        await self.worker._sleep(self.delay)
        self.delay = min(self.delay * 2, 30.0)

    def _first_reply(self) -> None:
        """The server answered the first GRAB_JOB_ALL: it is a job server, and it is up."""
        self.answered = True
        self.delay = 0.5
        self.failing, self.failures = "", 0
        if self.down:
            log.warning("connected to %s again; functions registered", self.name)
            self.down = False

    async def _first(self, reply: Awaitable[T]) -> T:
        t = self.worker.connect_timeout
        try:
            got = await asyncio.wait_for(reply, t)
        except TimeoutError:
            raise CannotConnect(
                self.name,
                f"connected, but no answer to GRAB_JOB_ALL within {seconds(t)} s"
                " (is that a Gearman job server?)",
            ) from None
        self._first_reply()
        return got

    async def _slot(self, conn: Connection) -> None:
        """A free job slot; or, while every slot is busy, the connection's loss (raised).

        A worker whose slots all hold long jobs still notices its server going away:
        it says so, reconnects and registers its functions again at once, instead of
        when a job ends.
        """
        slots = self.worker.slots
        if not slots.locked():
            await slots.acquire()  # at once, no task: the path of every job
            return
        if not self.answered:
            # no GRAB_JOB_ALL before a slot frees up: an echo shows a job server is there
            await self._first(conn.request(PacketType.ECHO_REQ, PacketType.ECHO_RES, b"up"))
        acquire = asyncio.ensure_future(slots.acquire())
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            await asyncio.wait([acquire, lost], return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            acquire.cancel()  # a slot it took before the cancel takes effect goes back
        if not acquire.done() or acquire.cancelled():
            assert conn.closed is not None
            raise conn.closed

    async def cycle(self, conn: Connection) -> None:
        w = self.worker
        while not w.stopping:
            await self._slot(conn)
            if w.is_stopping():
                w.slots.release()
                return
            loop = asyncio.get_running_loop()
            self.reply = loop.create_future()
            try:
                # the send fails too when the server went away while a job ran: the
                # slot must come back, or the reconnected worker never grabs again
                conn.send(PacketType.GRAB_JOB_ALL)
                if self.answered:
                    kind, args = await self.reply
                else:
                    kind, args = await self._first(self.reply)
            except BaseException:
                w.slots.release()
                raise
            if kind == PacketType.NO_JOB:
                w.slots.release()
                self.wake.clear()
                conn.send(PacketType.PRE_SLEEP)
                await w._wait(self.wake)
                if conn.closed is not None:
                    raise conn.closed
                continue
            if kind == PacketType.JOB_ASSIGN:
                handle, function, unique, reducer, data = args[0], args[1], b"", b"", args[2]
            elif kind == PacketType.JOB_ASSIGN_UNIQ:
                handle, function, unique, reducer, data = args[0], args[1], args[2], b"", args[3]
            else:
                handle, function, unique, reducer, data = args
            job = WorkerJob(
                conn,
                handle,
                function,
                unique,
                data,
                reducer,
                codec=w.codec,
                exceptions=self.exceptions,
            )
            w._start(job)


class AsyncWorker:
    """Runs registered functions for jobs from one or more servers.

    ``concurrency``: jobs run at once across all servers (and the size of the
    thread or process pool). ``processes=True``: plain functions run in child
    processes (they must be picklable: defined at module level; the job's data
    goes in and the return value comes back; ``send_status`` and friends are not
    available there). ``codec``: decodes ``job.value`` and encodes return values
    (``gearmill.JSON``). ``exceptions``: how a raised error reaches the
    client: ``True`` WORK_EXCEPTION (``TypeName: message``; the server passes it
    to clients that asked for exceptions and a WORK_FAIL to the others),
    ``False`` WORK_FAIL, ``None`` (default) WORK_EXCEPTION on gearmill servers
    and WORK_FAIL on others (gearmand 1.1 would leave its own clients hanging).
    """

    def __init__(
        self,
        servers: str | Iterable[str] | None = None,
        *,
        client_id: str | None = None,
        concurrency: int = 1,
        processes: bool = False,
        codec: Codec | None = None,
        exceptions: bool | None = None,
        connect_timeout: float = 5.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        # tls: the SSL context for tls:// servers (see gearmill.client.tls)
        self.addresses = with_context(parse_servers(servers), tls)
        self.client_id = client_id
        self.concurrency = concurrency
        self.processes = processes
        self.codec = codec
        self.exceptions = exceptions
        self.connect_timeout = connect_timeout
        # how to fix an address where something other than a job server answers (logged
        # with that failure; a command line names its own flags here)
        self.wrong_port_hint = WRONG_PORT_HINT
        self.functions: dict[str, tuple[JobFunction, float | None]] = {}
        self.stopping = False
        self.jobs_done = 0
        self._requeue = False
        self._tasks: dict[asyncio.Task[None], WorkerJob] = {}
        self._stop_event: asyncio.Event | None = None  # while work() runs
        self._early_stop = False  # stop() before work(): work() returns at once
        self.slots: asyncio.Semaphore
        self._links: list[_Link] = []
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None
        self._children: list[_Child] = []
        self._context: Any = None

    def register(self, name: str, func: JobFunction, *, timeout: float | None = None) -> None:
        """Do ``name`` with ``func``.

        ``timeout`` (seconds) is sent as CAN_DO_TIMEOUT (the server takes the job
        back after it) and the worker stops the function then.
        """
        if self.processes:
            if inspect.iscoroutinefunction(func):
                raise ValueError(
                    f"{name}: a coroutine function runs on the worker's event loop, not in a"
                    " process; register a plain function, or use a worker without processes=True"
                )
            try:
                pickle.dumps(func)
            except Exception as e:
                raise ValueError(
                    f"{name}: functions run with processes=True must be picklable: define"
                    f" {getattr(func, '__qualname__', func)!s} at module level (not a lambda"
                    f" or nested function) ({e})"
                ) from None
        self.functions[name] = (func, timeout)
        for link in self._links:
            if link.conn is not None and link.conn.closed is None:
                if timeout:
                    link.conn.send(
                        PacketType.CAN_DO_TIMEOUT, name.encode(), b"%d" % int(timeout * 1000)
                    )
                else:
                    link.conn.send(PacketType.CAN_DO, name.encode())

    def function(self, name: str, *, timeout: float | None = None) -> Callable[[F], F]:
        """Decorator form of :meth:`register`; the function keeps its own type."""

        def decorate(func: F) -> F:
            self.register(name, func, timeout=timeout)
            return func

        return decorate

    def unregister(self, name: str) -> None:
        self.functions.pop(name, None)
        for link in self._links:
            if link.conn is not None and link.conn.closed is None:
                link.conn.send(PacketType.CANT_DO, name.encode())

    async def _sleep(self, seconds: float) -> None:
        assert self._stop_event is not None
        try:
            await asyncio.wait_for(self._stop_event.wait(), seconds)
        except TimeoutError:
            pass

    async def _wait(self, event: asyncio.Event) -> None:
        assert self._stop_event is not None
        stop = asyncio.ensure_future(self._stop_event.wait())
        wake = asyncio.ensure_future(event.wait())
        await asyncio.wait([stop, wake], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        wake.cancel()

    def _start(self, job: WorkerJob) -> None:
        task = asyncio.ensure_future(self._execute(job))
        self._tasks[task] = job
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self.slots.release()

    async def _execute(self, job: WorkerJob) -> None:
        entry = self.functions.get(job.function)
        try:
            if entry is None:
                raise LookupError(f"no function {job.function} registered")
            func, timeout = entry
            if inspect.iscoroutinefunction(func):
                result = await self._in_loop(func, job, timeout)
            elif self.processes:
                result = await self._in_process(func, job, timeout)
            else:
                result = await self._in_thread(func, job, timeout)
            payload = (
                b""
                if result is None and self.codec is None
                else encode(result, self.codec, "job result")
            )
        except _Abandoned:
            return  # the server takes the job back; a late result would only be refused
        except Exception as e:
            self.jobs_done += 1
            description = _describe(e)
            if isinstance(e, _ChildError):
                log.warning(
                    "job %s (%s) failed in its process: %s\n%s",
                    job.handle,
                    job.function,
                    description,
                    e.trace.rstrip(),
                )
            else:
                log.warning(
                    "job %s (%s) failed: %s", job.handle, job.function, description, exc_info=e
                )
            if job._exceptions:
                job._send_quiet(PacketType.WORK_EXCEPTION, description.encode(errors="replace"))
            else:
                job._send_quiet(PacketType.WORK_FAIL)
            return
        self.jobs_done += 1
        job._send_quiet(PacketType.WORK_COMPLETE, payload)

    def _timed_out(self, job: WorkerJob, timeout: float, what: str) -> None:
        job._dropped = True
        log.warning(
            "job %s (%s) passed its %g s timeout: %s; the server gives it to another worker",
            job.handle,
            job.function,
            timeout,
            what,
        )

    async def _in_loop(self, func: JobFunction, job: WorkerJob, timeout: float | None) -> Any:
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                result = await func(job)
        except TimeoutError:
            if timeout is None or not deadline.expired():
                raise  # the function's own TimeoutError is an ordinary failure
            self._timed_out(job, timeout, "cancelled")
            raise _Abandoned from None
        if timeout is not None and deadline.expired():  # it swallowed the cancellation
            self._timed_out(job, timeout, "it ignored the cancellation; its result is dropped")
            raise _Abandoned
        return result

    async def _in_thread(self, func: JobFunction, job: WorkerJob, timeout: float | None) -> Any:
        loop = asyncio.get_running_loop()
        running = loop.run_in_executor(self._threads, func, job)
        running.add_done_callback(_consume)
        done, _ = await asyncio.wait([running], timeout=timeout)
        if not done:
            assert timeout is not None
            self._timed_out(
                job, timeout, "abandoned (a thread cannot be stopped; its result will be dropped)"
            )
            # the thread still runs: keep its slot until it returns, so no more jobs are
            # taken than there are threads to run them
            await asyncio.wait([running])
            raise _Abandoned
        result = running.result()
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _in_process(self, func: JobFunction, job: WorkerJob, timeout: float | None) -> Any:
        if self._context is None:
            self._context = _process_context(f for f, _ in self.functions.values())
        loop = asyncio.get_running_loop()
        if self._children:
            child = self._children.pop()
        else:
            # started in a thread: the first start waits for the forkserver's imports
            child = await loop.run_in_executor(self._threads, _Child, self._context)
        running = loop.run_in_executor(self._threads, child.call, func, _ChildJob.of(job))
        running.add_done_callback(_consume)
        try:
            done, _ = await asyncio.wait([running], timeout=timeout)
        except BaseException:
            child.kill()  # cancelled (stop with requeue): the job goes back to the server
            raise
        if not done:
            assert timeout is not None
            child.kill()
            await asyncio.wait([running])
            self._timed_out(job, timeout, "its process was killed")
            raise _Abandoned
        try:
            result = running.result()
        except _ChildError:
            self._children.append(child)  # the function raised; its process is fine
            raise
        except BaseException:
            child.kill()  # it died, or the pipe to it broke: never reuse it
            raise
        self._children.append(child)
        return result

    async def work(self) -> None:
        """Connect to every server and run jobs until :meth:`stop`."""
        if not self.functions:
            raise ValueError("register at least one function before work()")
        # a stop() that came before work() started (e.g. right after create_task) counts
        early, self._early_stop = self._early_stop, False
        self.stopping = early
        self._requeue = self._requeue and early
        self._stop_event = asyncio.Event()
        if early:
            self._stop_event.set()
        self.slots = asyncio.Semaphore(self.concurrency)
        self._threads = concurrent.futures.ThreadPoolExecutor(
            self.concurrency, thread_name_prefix="gearmill-job"
        )
        self._links = [_Link(self, a) for a in self.addresses]
        runners = [asyncio.ensure_future(link.run()) for link in self._links]
        try:
            await self._stop_event.wait()
        finally:
            self.stopping = True
            if self._requeue and self._tasks:
                log.warning(
                    "stopping: %d running job(s) given back to the server: %s",
                    len(self._tasks),
                    " ".join(job.handle for job in self._tasks.values()),
                )
                for task in self._tasks:
                    task.cancel()
            # running jobs finish and report (or are cancelled) before the connections close
            while self._tasks:  # a job assigned as the worker stopped runs too
                await asyncio.gather(*self._tasks, return_exceptions=True)
            for link in self._links:
                if link.reply is not None and not link.reply.done():
                    link.reply.cancel()
            for runner in runners:
                runner.cancel()
            await asyncio.gather(*runners, return_exceptions=True)
            self._links = []
            for child in self._children:
                child.close()
            self._children = []
            # a thread abandoned at requeue may still run; do not wait for it here
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._stop_event = None

    def is_stopping(self) -> bool:
        return self.stopping

    def stop(self, *, requeue: bool = False) -> None:
        """Stop taking jobs; :meth:`work` returns once running jobs are done.

        ``requeue=True`` does not wait: running jobs are cancelled (a coroutine is
        cancelled, a child process killed, a thread abandoned) and the worker
        disconnects without their results, so the server gives them to another
        worker, as ``gearman -w`` does when interrupted.
        """
        self.stopping = True
        self._requeue = self._requeue or requeue
        if self._stop_event is not None:
            self._stop_event.set()
        else:
            self._early_stop = True

    async def run(self) -> None:
        """:meth:`work` with SIGTERM and SIGINT wired to :meth:`stop`."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        try:
            await self.work()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


def _consume(future: asyncio.Future[Any]) -> None:
    # an abandoned job's outcome is read here, so asyncio does not log it as unread
    if not future.cancelled():
        future.exception()


class _Abandoned(Exception):
    """The job passed its timeout and was stopped: nothing is sent for it."""
