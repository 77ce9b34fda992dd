"""Server lifecycle: listeners, flushing, timers, signals and staged shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field

from .._accel import IMPLEMENTATION
from ..protocol.codec import MAX_PAYLOAD
from ..protocol.packets import DEFAULT_PORT
from . import admin
from .broker import Broker, BrokerConfig, Peer
from .connection import GearmanProtocol
from .stream import Hub, flush

log = logging.getLogger("gearmill.server")


@dataclass(slots=True)
class ServerConfig:
    listen: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    port: int = DEFAULT_PORT
    backlog: int = 32
    keepalive: bool = False
    keepalive_idle: int = -1
    keepalive_interval: int = -1
    keepalive_count: int = -1
    max_packet: int = MAX_PAYLOAD
    broker: BrokerConfig = field(default_factory=BrokerConfig)


class Server:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.broker = Broker(config.broker, time.time)
        self._servers: list[asyncio.AbstractServer] = []
        self._stopped: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.addresses: list[tuple[str, int]] = []
        self.hub = Hub(self.broker, self._admin_line, self._after_flush)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        for host in self.config.listen:
            server = await self._loop.create_server(
                lambda: GearmanProtocol(self.hub, self.config.max_packet, self.tune_socket),
                host=host or None,
                port=self.config.port,
                backlog=self.config.backlog,
                reuse_address=True,
            )
            self._servers.append(server)
            for sock in server.sockets:
                addr = sock.getsockname()
                self.addresses.append((addr[0], addr[1]))
                log.info("Listening on %s:%d (%s hot path)", addr[0], addr[1], IMPLEMENTATION)

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    async def serve_forever(self) -> None:
        if self._stopped is None:
            await self.start()
        assert self._stopped is not None
        await self._stopped.wait()
        await self._close()

    def stop(self) -> None:
        """Stop now: drop every connection (SIGTERM, SIGINT, admin ``shutdown``)."""
        if self._stopped is not None:
            self._stopped.set()

    def stop_gracefully(self) -> None:
        """Stop listening and refuse new jobs; exit once running jobs are done."""
        if self.broker.stopping is None:
            self.broker.stopping = "graceful"
        self._begin_graceful()
        self._check_idle()

    def _begin_graceful(self) -> None:
        if self.broker.accepting:
            log.warning("graceful shutdown: no new connections or jobs")
            self.broker.accepting = False
            for server in self._servers:
                server.close()

    def _check_idle(self) -> None:
        if self.broker.idle():
            lost = len(self.broker.jobs)
            if lost:
                log.warning(
                    "graceful shutdown: %d queued jobs have no worker and are dropped", lost
                )
            self.stop()

    async def _close(self) -> None:
        for server in self._servers:
            server.close()
        self.broker.abort_all()
        for server in self._servers:
            await server.wait_closed()
        if self._timer is not None:
            self._timer.cancel()
        log.info("Shutdown complete")

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        loop.add_signal_handler(signal.SIGUSR1, self.stop_gracefully)

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


def default_handle_prefix() -> bytes:
    return b"H:" + os.uname().nodename.encode()
