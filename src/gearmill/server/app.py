"""Server lifecycle: listeners, flushing, timers, signals and staged shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time

from .. import __version__
from .._accel import IMPLEMENTATION
from . import admin
from .broker import Broker, Peer
from .config import Config
from .connection import GearmanProtocol
from .guard import Guard
from .model import RUNNING, SCHEDULED
from .stream import Hub, flush

log = logging.getLogger("gearmill.server")
# start, stop and jobs lost at exit: logged at every --verbose level
lifecycle = logging.getLogger("gearmill.lifecycle")
_NOTICE = {"gearman_level": "NOTICE"}


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.broker = Broker(config.broker_config(os.getpid()), time.time)
        self._why = ""
        self._announced = False  # the stop line answers the start line
        self._servers: list[asyncio.AbstractServer] = []
        self._stopped: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.addresses: list[tuple[str, int]] = []
        self.hub = Hub(self.broker, self._admin_line, self._after_flush)
        limits = config.limits
        self.guard = Guard(
            limits.max_connections, limits.max_connections_per_address, limits.idle_timeout
        )

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self.hub.defer = self._loop.call_soon
        for listener in self.config.listeners:
            try:
                server = await self._loop.create_server(
                    lambda: GearmanProtocol(
                        self.hub,
                        self.config.max_packet,
                        self.tune_socket,
                        self.config.limits.max_owed,
                        self.guard,
                    ),
                    host=listener.host or None,
                    port=listener.port,
                    backlog=self.config.backlog,
                    reuse_address=True,
                )
            except OSError as e:
                for opened in self._servers:
                    opened.close()
                reason = e.strerror or str(e)
                raise OSError(
                    e.errno,
                    f"cannot listen on {listener.host or '*'} port {listener.port}: {reason}",
                ) from e
            self._servers.append(server)
            for sock in server.sockets:
                addr = sock.getsockname()
                self.addresses.append((addr[0], addr[1]))

    def announce(self) -> None:
        """The start line, once the server is ready (listening, pid file written)."""
        where = ", ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.addresses)
        store = "jobs in memory" if self.config.store.url == "memory" else self.config.store.url
        lifecycle.info(
            "Listening on %s (gearmill %s, %s hot path, %s)",
            where,
            __version__,
            IMPLEMENTATION,
            store,
            extra=_NOTICE,
        )
        self._announced = True

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    async def serve_forever(self) -> None:
        if self._stopped is None:
            await self.start()
        assert self._stopped is not None
        await self._stopped.wait()
        await self._close()

    def stop(self, why: str = "") -> None:
        """Stop now: drop every connection (SIGTERM, SIGINT, admin ``shutdown``)."""
        if self._stopped is not None and not self._stopped.is_set():
            self._why = (
                why
                or self._why
                or ("admin shutdown" if self.broker.stopping == "now" else "graceful shutdown")
            )
            self._stopped.set()

    def _signal(self, name: str, graceful: bool) -> None:
        self._why = name
        if graceful:
            self.stop_gracefully()
        else:
            self.stop(name)

    def stop_gracefully(self) -> None:
        """Stop listening and refuse new jobs; exit once running jobs are done."""
        self.broker.request_stop(graceful=True)
        self._begin_graceful()
        self._check_idle()

    def _begin_graceful(self) -> None:
        if self.broker.stop_accepting():
            lifecycle.warning(
                "%s: graceful shutdown: no new connections or jobs", self._why or "admin"
            )
            for server in self._servers:
                server.close()

    def _check_idle(self) -> None:
        # queued jobs no connected worker can do are dropped; _close says how many
        if self.broker.idle():
            self.stop()

    def _report_lost(self) -> None:
        """One warning: the jobs still in memory, by kind, that this exit loses."""
        states = ("queued", "scheduled", "running")
        counts = {(bg, state): 0 for bg in (True, False) for state in states}
        for job in self.broker.jobs.values():
            if not job.ignore:
                state = {RUNNING: "running", SCHEDULED: "scheduled"}.get(job.state, "queued")
                counts[job.background, state] += 1
        parts = []
        for bg, kind in ((True, "background"), (False, "foreground")):
            n = sum(counts[bg, state] for state in states)
            if n:
                detail = ", ".join(f"{counts[bg, s]} {s}" for s in states if counts[bg, s])
                parts.append(f"{n} {kind} ({detail})")
        if parts:
            total = sum(counts.values())
            lifecycle.warning(
                "%s: %d job%s lost at exit: %s; jobs are kept in memory only "
                "and do not survive a restart",
                self._why or "stop",
                total,
                "" if total == 1 else "s",
                ", ".join(parts),
            )

    async def close(self, why: str) -> None:
        """Stop and close everything (also when serve_forever never ran)."""
        self.stop(why)
        await self._close()

    async def _close(self) -> None:
        self._report_lost()
        for server in self._servers:
            server.close()
        self.broker.abort_all()
        for server in self._servers:
            await server.wait_closed()
        if self._timer is not None:
            self._timer.cancel()
        if self._announced:
            lifecycle.info("Shutdown complete (%s)", self._why or "stop", extra=_NOTICE)

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._signal, "SIGTERM", False)
        loop.add_signal_handler(signal.SIGINT, self._signal, "SIGINT", False)
        loop.add_signal_handler(signal.SIGUSR1, self._signal, "SIGUSR1", True)

    # ---------------------------------------------------------------- edges

    def tune_socket(self, sock: socket.socket) -> None:
        """gearmand sets TCP_NODELAY and SO_KEEPALIVE on every accepted socket."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        cfg = self.config
        if cfg.keepalive:
            for opt, value in (
                ("TCP_KEEPIDLE", cfg.keepalive_idle),
                ("TCP_KEEPINTVL", cfg.keepalive_interval),
                ("TCP_KEEPCNT", cfg.keepalive_count),
            ):
                if value > 0 and hasattr(socket, opt):
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)

    def flush(self) -> None:
        """Write every peer's pending output, then arm timers / go on with a shutdown."""
        flush(self.hub)

    def _admin_line(self, peer: Peer, line: bytes) -> bytes | None:
        return admin.run(self.broker, peer, line)

    def _after_flush(self) -> None:
        broker = self.broker
        if broker.timers_changed:
            broker.timers_changed = False
            self._arm_timer()
        if broker.stopping is not None:
            if broker.stopping == "now":
                self.stop()
            else:
                self._begin_graceful()
                self._check_idle()

    def _arm_timer(self) -> None:
        deadline = self.broker.next_deadline()
        if deadline is None or self._loop is None:
            return
        if self._timer is not None and self._timer_at <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        delay = max(deadline - time.time(), 0.0)
        self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.broker.tick()
        self.flush()
        self._arm_timer()
