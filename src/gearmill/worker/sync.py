"""Blocking twin of :class:`AsyncWorker`: ``worker.work()`` blocks until stopped.

    worker = Worker("127.0.0.1:4730")
    worker.register("reverse", lambda job: job.data[::-1])
    worker.work()

Functions run in threads (``concurrency`` at a time), or in child processes with
``processes=True``; ``stop()`` may be called from any thread or a signal handler.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable, Iterable

from ..data import Codec
from .aio import AsyncWorker, F, JobFunction, WorkerJob


class Worker:
    """The blocking :class:`AsyncWorker`; the same arguments, see there."""

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
        self._async = AsyncWorker(
            servers,
            client_id=client_id,
            concurrency=concurrency,
            processes=processes,
            codec=codec,
            exceptions=exceptions,
            connect_timeout=connect_timeout,
            tls=tls,
        )
        self._loop: asyncio.AbstractEventLoop | None = None  # while work() runs
        self._pending: bool | None = None  # a stop (its requeue) that came before work()

    @property
    def jobs_done(self) -> int:
        return self._async.jobs_done

    def register(self, name: str, func: JobFunction, *, timeout: float | None = None) -> None:
        self._async.register(name, func, timeout=timeout)

    def function(self, name: str, *, timeout: float | None = None) -> Callable[[F], F]:
        return self._async.function(name, timeout=timeout)

    def unregister(self, name: str) -> None:
        self._async.unregister(name)

    def work(self, *, handle_signals: bool | None = None) -> None:
        """Run jobs until :meth:`stop` (or SIGTERM/SIGINT in the main thread)."""
        if handle_signals is None:
            handle_signals = threading.current_thread() is threading.main_thread()
        asyncio.run(self._main(handle_signals))

    async def _main(self, handle_signals: bool) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop  # set before reading _pending: see stop()
        pending, self._pending = self._pending, None
        if pending is not None:
            # runs once work() has started (it clears an earlier stop)
            loop.call_soon(lambda: self._async.stop(requeue=pending))
        try:
            if handle_signals:
                await self._async.run()
            else:
                await self._async.work()
        finally:
            self._loop = None

    def stop(self, *, requeue: bool = False) -> None:
        """See :meth:`AsyncWorker.stop`. Called before :meth:`work` has started (from
        another thread, say), it makes work() return at once instead of being lost."""
        loop = self._loop
        if loop is None:
            self._pending = requeue or bool(self._pending)
            loop = self._loop  # work() may have started meanwhile and missed _pending
            if loop is None:
                return
        try:
            loop.call_soon_threadsafe(lambda: self._async.stop(requeue=requeue))
        except RuntimeError:
            pass  # the loop already ended


__all__ = ["Worker", "WorkerJob"]
