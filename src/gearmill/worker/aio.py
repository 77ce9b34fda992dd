"""asyncio Gearman worker.

    worker = AsyncWorker("127.0.0.1:4730", concurrency=4)

    @worker.function("reverse")
    async def reverse(job: WorkerJob) -> bytes:
        await job.send_status(1, 2)
        return job.data[::-1]

    await worker.work()          # until worker.stop() or SIGTERM (with run())

Returning completes the job (``bytes``, ``str`` or ``None``); raising fails it
(WORK_FAIL), or with ``exceptions=True`` sends WORK_EXCEPTION carrying the
error text. Plain (non-async) functions run in a thread, so a slow one does
not stop the worker from talking to its servers.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import signal
from collections.abc import Callable, Iterable
from typing import Any

from ..client.connection import Connection
from ..client.servers import Address, format_address, parse_servers
from ..errors import ConnectionLost
from ..protocol.packets import PacketType

log = logging.getLogger("gearmill.worker")

JobFunction = Callable[["WorkerJob"], Any]


class WorkerJob:
    """The job a function is running, with ways to talk back to the client."""

    __slots__ = ("_conn", "_loop", "data", "function", "handle", "reducer", "unique")

    def __init__(
        self,
        conn: Connection,
        handle: bytes,
        function: bytes,
        unique: bytes,
        data: bytes,
        reducer: bytes = b"",
    ) -> None:
        self._conn = conn
        self._loop = asyncio.get_running_loop()
        self.handle = handle.decode(errors="replace")
        self.function = function.decode(errors="replace")
        self.unique = unique.decode(errors="replace")
        self.data = data
        self.reducer = reducer.decode(errors="replace")

    def __repr__(self) -> str:
        return f"<WorkerJob {self.handle} {self.function}>"

    def _send(self, ptype: int, *args: bytes) -> None:
        # callable from the worker's loop or from a plain function's thread
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._conn.send(ptype, self.handle.encode(), *args)
        else:
            self._loop.call_soon_threadsafe(self._send_quiet, ptype, *args)

    def _send_quiet(self, ptype: int, *args: bytes) -> None:
        try:
            self._conn.send(ptype, self.handle.encode(), *args)
        except ConnectionLost:
            pass

    def send_data(self, data: bytes | str) -> None:
        self._send(PacketType.WORK_DATA, _b(data))

    def send_warning(self, data: bytes | str) -> None:
        self._send(PacketType.WORK_WARNING, _b(data))

    def send_status(self, numerator: int, denominator: int) -> None:
        self._send(PacketType.WORK_STATUS, b"%d" % numerator, b"%d" % denominator)


def _b(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return str(value).encode()


class _Link:
    """One server connection and its grab/sleep cycle."""

    def __init__(self, worker: AsyncWorker, address: Address) -> None:
        self.worker = worker
        self.address = address
        self.name = format_address(address)
        self.conn: Connection | None = None
        self.wake = asyncio.Event()
        self.reply: asyncio.Future[tuple[int, list[bytes]]] | None = None

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
        delay = 0.5
        while not w.stopping:
            try:
                conn = await Connection.open(
                    self.address, self.on_packet, self.on_lost, w.connect_timeout
                )
            except ConnectionLost as e:
                log.warning("%s; retrying in %.1f s", e, delay)
                await w._sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            delay = 0.5
            self.conn = conn
            try:
                await self.register(conn)
                await self.cycle(conn)
            except ConnectionLost as e:
                if not w.stopping:
                    log.warning("%s; reconnecting", e)
            finally:
                self.conn = None
                conn.close()

    async def cycle(self, conn: Connection) -> None:
        w = self.worker
        while not w.stopping:
            await w.slots.acquire()
            if w.is_stopping():
                w.slots.release()
                return
            loop = asyncio.get_running_loop()
            self.reply = loop.create_future()
            conn.send(PacketType.GRAB_JOB_ALL)
            try:
                kind, args = await self.reply
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
                job = WorkerJob(conn, args[0], args[1], b"", args[2])
            elif kind == PacketType.JOB_ASSIGN_UNIQ:
                job = WorkerJob(conn, args[0], args[1], args[2], args[3])
            else:
                job = WorkerJob(conn, args[0], args[1], args[2], args[4], args[3])
            w._start(job)


class AsyncWorker:
    def __init__(
        self,
        servers: str | Iterable[str] | None = None,
        *,
        client_id: str | None = None,
        concurrency: int = 1,
        exceptions: bool = False,
        connect_timeout: float = 5.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.addresses = parse_servers(servers)
        self.client_id = client_id
        self.concurrency = concurrency
        self.exceptions = exceptions
        self.connect_timeout = connect_timeout
        self.functions: dict[str, tuple[JobFunction, float | None]] = {}
        self.stopping = False
        self.jobs_done = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop_event: asyncio.Event | None = None
        self.slots: asyncio.Semaphore
        self._links: list[_Link] = []

    def register(self, name: str, func: JobFunction, *, timeout: float | None = None) -> None:
        """Do ``name`` with ``func``; ``timeout`` (seconds) is sent as CAN_DO_TIMEOUT."""
        self.functions[name] = (func, timeout)
        for link in self._links:
            if link.conn is not None and link.conn.closed is None:
                if timeout:
                    link.conn.send(
                        PacketType.CAN_DO_TIMEOUT, name.encode(), b"%d" % int(timeout * 1000)
                    )
                else:
                    link.conn.send(PacketType.CAN_DO, name.encode())

    def function(
        self, name: str, *, timeout: float | None = None
    ) -> Callable[[JobFunction], JobFunction]:
        def decorate(func: JobFunction) -> JobFunction:
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
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, job: WorkerJob) -> None:
        try:
            entry = self.functions.get(job.function)
            try:
                if entry is None:
                    raise LookupError(f"no function {job.function} registered")
                func = entry[0]
                if inspect.iscoroutinefunction(func):
                    result = await func(job)
                else:
                    loop = asyncio.get_running_loop()
                    result = await loop.run_in_executor(None, functools.partial(func, job))
                    if inspect.isawaitable(result):
                        result = await result
            except Exception as e:
                log.info("job %s (%s) failed: %r", job.handle, job.function, e)
                if self.exceptions:
                    job._send_quiet(PacketType.WORK_EXCEPTION, _b(str(e) or type(e).__name__))
                else:
                    job._send_quiet(PacketType.WORK_FAIL)
            else:
                job._send_quiet(PacketType.WORK_COMPLETE, _b(result))
            self.jobs_done += 1
        finally:
            self.slots.release()

    async def work(self) -> None:
        """Connect to every server and run jobs until :meth:`stop`."""
        if not self.functions:
            raise ValueError("register at least one function before work()")
        self.stopping = False
        self._stop_event = asyncio.Event()
        self.slots = asyncio.Semaphore(self.concurrency)
        self._links = [_Link(self, a) for a in self.addresses]
        runners = [asyncio.ensure_future(link.run()) for link in self._links]
        try:
            await self._stop_event.wait()
        finally:
            self.stopping = True
            # running jobs finish and report before the connections close
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            for link in self._links:
                if link.reply is not None and not link.reply.done():
                    link.reply.cancel()
            for runner in runners:
                runner.cancel()
            await asyncio.gather(*runners, return_exceptions=True)
            self._links = []

    def is_stopping(self) -> bool:
        return self.stopping

    def stop(self) -> None:
        """Stop taking jobs; :meth:`work` returns once running jobs are done."""
        self.stopping = True
        if self._stop_event is not None:
            self._stop_event.set()

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
