"""Blocking twin of :class:`AsyncClient`: the same methods, without ``await``.

    with Client("127.0.0.1:4730") as client:
        print(client.run("reverse", "hello"))

It runs an asyncio loop in a private thread, so it is safe to use from
several threads at once.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
import threading
from collections.abc import Coroutine, Iterable, Iterator
from typing import Any, TypeVar

from ..data import Codec, Data
from ..protocol.packets import Priority
from .aio import (
    DEFAULT,
    DEFAULT_TIMEOUT,
    AsyncClient,
    CodecArg,
    Job,
    JobRequest,
    JobStatus,
    PriorityLike,
    StatusCallback,
    TimeoutArg,
)

T = TypeVar("T")


class LoopThread:
    """An event loop in a daemon thread, for blocking facades."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
        if not self.loop.is_running():
            self.loop.close()


class SyncJob:
    """A submitted job, seen from blocking code."""

    def __init__(self, job: Job, runner: LoopThread) -> None:
        self._job = job
        self._runner = runner

    def __repr__(self) -> str:
        return repr(self._job)

    @property
    def handle(self) -> str:
        return self._job.handle

    @property
    def function(self) -> bytes:
        return self._job.function

    @property
    def unique(self) -> bytes:
        return self._job.unique

    @property
    def background(self) -> bool:
        return self._job.background

    @property
    def server(self) -> str:
        return self._job.server

    @property
    def status(self) -> tuple[int, int] | None:
        return self._job.status

    @property
    def warnings(self) -> list[bytes]:
        return list(self._job.warnings)

    def done(self) -> bool:
        return self._job.done()

    def result(self, timeout: TimeoutArg = DEFAULT) -> Any:
        return self._runner.call(self._job.result(timeout))

    def next_status(self, timeout: TimeoutArg = DEFAULT) -> tuple[int, int] | None:
        return self._runner.call(self._job.next_status(timeout))

    def __iter__(self) -> Iterator[bytes]:
        iterator = self._job._iterate()
        while True:
            try:
                yield self._runner.call(iterator.__anext__())
            except StopAsyncIteration:
                return


class Client:
    """Blocking client: see :class:`AsyncClient` for the arguments and defaults."""

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
        self._runner = LoopThread("gearmill-client")
        self._async = self._runner.call(
            _make(servers, client_id, exceptions, timeout, connect_timeout, codec, tls)
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._runner.loop.is_running():
            self._runner.call(self._async.close())
        self._runner.stop()

    def schedule(
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
        """A recurring background job: see :meth:`AsyncClient.schedule`."""
        self._runner.call(
            self._async.schedule(
                name, function, cron, data, priority=priority, codec=codec, timeout=timeout
            )
        )

    def unschedule(self, name: str, *, timeout: TimeoutArg = DEFAULT) -> None:
        self._runner.call(self._async.unschedule(name, timeout=timeout))

    def submit(
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
    ) -> SyncJob:
        job = self._runner.call(
            self._async.submit(
                function,
                data,
                unique=unique,
                priority=priority,
                background=background,
                when=when,
                reducer=reducer,
                on_status=on_status,
                timeout=timeout,
                codec=codec,
            )
        )
        return SyncJob(job, self._runner)

    def run(
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
        return self._runner.call(
            self._async.run(
                function,
                data,
                unique=unique,
                priority=priority,
                on_status=on_status,
                timeout=timeout,
                codec=codec,
            )
        )

    def submit_many(
        self,
        requests: Iterable[JobRequest | tuple[Data, Any]],
        *,
        timeout: TimeoutArg = DEFAULT,
        codec: CodecArg = DEFAULT,
    ) -> list[SyncJob]:
        jobs = self._runner.call(
            self._async.submit_many(list(requests), timeout=timeout, codec=codec)
        )
        return [SyncJob(j, self._runner) for j in jobs]

    def map(
        self,
        function: Data,
        items: Iterable[Any],
        *,
        priority: PriorityLike = Priority.NORMAL,
        timeout: TimeoutArg = DEFAULT,
        return_exceptions: bool = False,
        codec: CodecArg = DEFAULT,
    ) -> list[Any]:
        return self._runner.call(
            self._async.map(
                function,
                list(items),
                priority=priority,
                timeout=timeout,
                return_exceptions=return_exceptions,
                codec=codec,
            )
        )

    def get_status(
        self, job: SyncJob | str, *, server: str | None = None, timeout: TimeoutArg = DEFAULT
    ) -> JobStatus:
        target: Job | str = job._job if isinstance(job, SyncJob) else job
        return self._runner.call(self._async.get_status(target, server=server, timeout=timeout))

    def get_status_unique(
        self, unique: Data, *, server: str | None = None, timeout: TimeoutArg = DEFAULT
    ) -> JobStatus:
        return self._runner.call(
            self._async.get_status_unique(unique, server=server, timeout=timeout)
        )

    def echo(
        self, data: Data = b"ping", *, server: str | None = None, timeout: TimeoutArg = DEFAULT
    ) -> bytes:
        return self._runner.call(self._async.echo(data, server=server, timeout=timeout))


async def _make(
    servers: str | Iterable[str] | None,
    client_id: str | None,
    exceptions: bool,
    timeout: float | None,
    connect_timeout: float,
    codec: Codec | None,
    tls: ssl.SSLContext | None,
) -> AsyncClient:
    return AsyncClient(
        servers,
        client_id=client_id,
        exceptions=exceptions,
        timeout=timeout,
        connect_timeout=connect_timeout,
        codec=codec,
        tls=tls,
    )
