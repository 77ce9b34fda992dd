"""Server lifecycle: listeners, flushing, timers, signals and staged shutdown."""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import __version__
from .._accel import IMPLEMENTATION
from ..errors import listen_reason
from . import admin, admin_policy
from .broker import Broker, Peer
from .cluster import Cluster, default_node_id
from .config import Config
from .connection import GearmanProtocol, read_in_place
from .durable import Durable, open_durable
from .guard import Guard
from .model import RUNNING, SCHEDULED
from .notify import Notifier
from .policy import Policies
from .policy_store import PolicyStore
from .store import SingleServer, hide_password
from .stream import Hub, flush

if TYPE_CHECKING:
    import ssl

    from .http import HttpFront
    from .tls import Refusals

log = logging.getLogger("gearmill.server")
# start, stop and jobs lost at exit: logged at every --verbose level
lifecycle = logging.getLogger("gearmill.lifecycle")
_NOTICE = {"gearman_level": "NOTICE"}
_PORT_PICKS = 20  # tries at one port free on every address, for -p 0


class _PickAgain(Exception):
    """The port picked for -p 0 does not suit every address: try ``port`` (0: any)."""

    def __init__(self, port: int) -> None:
        self.port = port


class Server:
    def __init__(self, config: Config, notify: Notifier | None = None) -> None:
        self.config = config
        self.notify = notify or Notifier(None)  # systemd's NOTIFY_SOCKET, if any
        self._graceful_timer: asyncio.TimerHandle | None = None
        self.broker = Broker(config.broker_config(os.getpid()), time.time)
        # retries, the dead set and schedules (hooks: broker.policy, broker.timer_hook)
        self.policies = Policies(self.broker, config.retry)
        self._why = ""
        self._announced = False  # the stop line answers the start line
        self._servers: list[asyncio.Server] = []
        self._handshakes: set[asyncio.Task[None]] = set()  # TLS handshakes under way
        self._refusals: Refusals | None = None  # the log of refused TLS handshakes
        self._stopped: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.addresses: list[tuple[str, int]] = []
        self.tls_addresses: list[tuple[str, int]] = []  # those of addresses that speak TLS
        self.hub = Hub(self.broker, self._admin_line, self._after_flush)
        self.hub.in_place = read_in_place
        if config.access is not None or any(x.tls for x in config.listeners):
            # an access list, or TLS's default one (state-changing admin: loopback only)
            from .access import AccessConfig, AccessList

            self.broker.access = AccessList(config.access or AccessConfig())
        self.durable: Durable | None = None  # the store's writer, unless jobs live in memory
        self._replay: asyncio.Task[int] | None = None
        self.cluster: Cluster | None = None  # several servers on one shared store
        self.exit_code = 0  # 1 when it stopped because its lease was lost
        self.keeper: PolicyStore | None = None  # the dead set's and schedules' writer
        self.http: HttpFront | None = None  # the HTTP listener, with --http
        limits = config.limits
        self.guard = Guard(
            limits.max_connections, limits.max_connections_per_address, limits.idle_timeout
        )

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self.hub.defer = self._loop.call_soon
        kinds: dict[bool, type[GearmanProtocol]] = {False: GearmanProtocol}
        tls: tuple[ssl.SSLContext, Refusals] | None = None
        if any(x.tls for x in self.config.listeners):
            from .tls import Refusals, TLSProtocol, server_context

            self._refusals = Refusals()
            tls = (server_context(self.config.tls), self._refusals)
            kinds[True] = TLSProtocol
        protocols: dict[bool, Callable[[], asyncio.BaseProtocol]] = {}
        for is_tls, kind in kinds.items():
            protocol: Callable[[], asyncio.BaseProtocol]
            protocol = app = functools.partial(
                kind,
                self.hub,
                self.config.max_packet,
                self.tune_socket,
                self.config.limits.max_owed,
                self.guard,
            )
            if is_tls:
                # the socket is plain TCP: Handshake runs TLS, so that a refused one is logged
                from .tls import Handshake

                assert tls is not None
                protocol = functools.partial(Handshake, app, *tls, self._handshakes)
            protocols[is_tls] = protocol
        await self._listen(protocols)
        for listener, server in zip(self.config.listeners, self._servers, strict=True):
            for sock in server.sockets:
                addr = sock.getsockname()
                self.addresses.append((addr[0], addr[1]))
                if listener.tls:
                    self.tls_addresses.append((addr[0], addr[1]))
        # The store opens once the ports are ours: a gearmand still running on them
        # (stopped after the switch, not before) keeps the jobs it left in its queue,
        # rather than both servers running them.
        try:
            await self._open_store()
        except BaseException:
            self._close_listeners()
            raise
        if log.isEnabledFor(logging.DEBUG):  # at other levels nothing is attached
            from . import fanout
            from .debuglog import DebugLog

            fanout.attach(self.broker, DebugLog())
        if self.durable is not None and self.durable.store.shared:
            await self._join(self.durable)  # before any job is stored as this server's
        for opened in self._servers:
            await opened.start_serving()
        # schedules from the config file are on the timer heap before any traffic
        self._arm_timer()
        if self.cluster is not None and self.durable is not None:
            await self.durable.start_shared()
            self.cluster.start()  # claims its own jobs and those nobody holds
        elif self.durable is not None:
            self._replay = self._loop.create_task(self.durable.replay())
        if self.config.http.listen is not None:
            from .http import HttpFront  # needs the [http] extra

            self.http = HttpFront(
                self.broker,
                self.config,
                self.hub,
                self.addresses,
                self.policies,
                self.durable,
                self.cluster,
            )
            try:
                await self.http.start()
            except OSError:
                for opened in self._servers:
                    opened.close()
                raise

    async def _listen(self, protocols: dict[bool, Callable[[], asyncio.BaseProtocol]]) -> None:
        """Open every listener (not yet serving). Those given port 0 share one port per
        kind (plain, TLS) that the system picks, as a user of -p 0 with several -L
        expects: one port to give clients, whichever address they reach. A port free
        on the first address but taken on another is given up for a new one."""
        loop = asyncio.get_running_loop()
        picked: dict[bool, int] = {}  # the port of each kind's port-0 listeners, once known
        for _ in range(_PORT_PICKS):
            try:
                for listener in self.config.listeners:
                    port = listener.port or picked.get(listener.tls, 0)
                    try:
                        server = await loop.create_server(
                            protocols[listener.tls],
                            host=listener.host or None,
                            port=port,
                            backlog=self.config.backlog,
                            reuse_address=True,
                            start_serving=False,  # a shared store's node id is taken first
                        )
                    except OSError as e:
                        if e.errno == errno.EADDRINUSE and port and not listener.port:
                            raise _PickAgain(0) from e  # picked here, taken there: another
                        raise OSError(
                            e.errno,
                            f"cannot listen on {listener.host or '*'} port {port}: "
                            f"{listen_reason(e)}",
                        ) from e
                    self._servers.append(server)
                    if not listener.port:
                        got = [sock.getsockname()[1] for sock in server.sockets]
                        picked.setdefault(listener.tls, got[0])
                        if any(p != picked[listener.tls] for p in got):
                            # a host of several addresses (localhost: 127.0.0.1 and ::1)
                            # got a port each: bind all of them on the first one's
                            raise _PickAgain(got[0])
                return
            except _PickAgain as again:
                picked = {k: again.port for k in picked} if again.port else {}
                self._close_listeners()
            except BaseException:
                self._close_listeners()
                raise
        raise OSError(
            errno.EADDRINUSE,
            f"cannot find a port free on every listen address (-p 0) in {_PORT_PICKS} tries; "
            "give a port with -p",
        )

    def _close_listeners(self) -> None:
        for opened in self._servers:
            opened.close()
        self._servers = []

    async def _open_store(self) -> None:
        store = self.config.store
        if store.url != "memory" and self.durable is None:
            # raises StoreError (one line) when the store cannot be used
            self.durable = await open_durable(
                store.url,
                store.gearmand_source,
                self.broker,
                functools.partial(flush, self.hub),  # no interpreted frame per lone job's release
                self.config.memory_jobs,
                store.origin,
                store.lease,
            )
            self.durable.start()
            # a one-server store that lost its lease to another server (MariaDB/MySQL)
            if isinstance(self.durable.store, SingleServer):
                self.durable.store.on_lost = self._store_lost
            # the dead set and the schedules live in the same store
            self.keeper = PolicyStore(self.policies, self.durable.store, self.flush)
            await self.keeper.open()

    async def _join(self, durable: Durable) -> None:
        store = self.config.store
        node = store.node_id
        # host:port; the port is bound now, so a server that held this id before is gone
        mine = node is None
        if node is None:
            node = default_node_id(self.addresses[0][1])
        self.cluster = Cluster(durable, node, store.lease, self._lease_lost)
        if self.keeper is not None:
            self.cluster.on_sweep = self.keeper.sync_soon
            self.cluster.on_beat = self.keeper.sync_dead_soon
        try:
            await self.cluster.join(restarted=mine)
        except BaseException:
            for opened in self._servers:
                opened.close()
            raise

    def announce(self) -> None:
        """The start line, once the server is ready (listening, pid file written)."""
        where = self._where()
        url = self.config.store.url
        shown = "memory" if url == "memory" else hide_password(url)
        # the same facts as fields, for --log-format json (the plain line ignores them)
        fields = {
            "listen": where.split(", "),
            "ports": sorted({p for _, p in self.addresses}),
            "store": shown,
            "version": __version__,
            "hot_path": IMPLEMENTATION,
            "pid": os.getpid(),
        }
        lifecycle.info(
            "Listening on %s (gearmill %s, %s hot path, jobs in %s)",
            where,
            __version__,
            IMPLEMENTATION,
            shown,
            extra=_NOTICE | fields,
        )
        if self.http is not None and self.http.address is not None:
            host, port = self.http.address
            http = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
            lifecycle.info(
                "HTTP on %s (dashboard, /metrics, API, gateway)",
                http,
                extra=_NOTICE | {"http": http},
            )
        self._announced = True
        self.notify.ready(self.status_line())
        self.notify.start(self.status_line)

    def _where(self) -> str:
        return ", ".join(
            ("tls://" if (h, p) in self.tls_addresses else "")
            + (f"[{h}]:{p}" if ":" in h else f"{h}:{p}")
            for h, p in self.addresses
        )

    def status_line(self) -> str:
        """One line for ``systemctl status``: where, and how many jobs and workers."""
        stats = self.broker.stats()
        counts = (
            f"{stats['jobs_queued']} jobs queued, {stats['jobs_running']} running, "
            f"{stats['workers']} workers"
        )
        if self.broker.stopping is None:
            return f"Listening on {self._where()}; {counts}"
        return f"Stopping ({self._why or 'admin'}); {counts}"

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
            self.notify.stopping(f"Stopping ({self._why})")

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
            # an operator's normal stop (systemctl stop sends SIGUSR1): NOTICE, as the
            # start and stop lines, at every --verbose level
            lifecycle.info(
                "%s: graceful shutdown: no new connections or jobs",
                self._why or "admin",
                extra=_NOTICE,
            )
            for server in self._servers:
                server.close()
            self.notify.stopping(self.status_line())
            limit = self.config.graceful_timeout
            if limit and self._loop is not None:
                self._graceful_timer = self._loop.call_later(limit, self._graceful_expired)

    def _graceful_expired(self) -> None:
        """--graceful-timeout passed with jobs still running: stop as SIGTERM would."""
        self._graceful_timer = None
        running = self.broker.stats()["jobs_running"]
        lifecycle.warning(
            "%s: graceful shutdown did not finish within %d s (--graceful-timeout): "
            "%d job%s still running; stopping now",
            self._why or "admin",
            self.config.graceful_timeout,
            running,
            "" if running == 1 else "s",
            extra={"graceful_timeout": self.config.graceful_timeout, "jobs_running": running},
        )
        self.stop()

    def _check_idle(self) -> None:
        # queued jobs no connected worker can do are dropped; _close says how many
        if self.broker.idle():
            self.stop()

    def _report_lost(self) -> None:
        """One warning: the jobs still in memory, by kind, that this exit loses."""
        states = ("queued", "scheduled", "running")
        counts = {(bg, state): 0 for bg in (True, False) for state in states}
        for job in self.broker.jobs.values():
            if not job.ignore and not (job.background and self.durable is not None):
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
                extra={"jobs_lost": total},
            )

    async def close(self, why: str) -> None:
        """Stop and close everything (also when serve_forever never ran)."""
        self.stop(why)
        await self._close()

    async def _close(self) -> None:
        """Where every stop ends (now, graceful, graceful timed out): the one place to
        save or report what is still in memory before connections drop."""
        if self._graceful_timer is not None:
            self._graceful_timer.cancel()
            self._graceful_timer = None
        self._report_lost()
        for server in self._servers:
            server.close()
        for handshake in list(self._handshakes):
            handshake.cancel()
        if self._refusals is not None:
            self._refusals.close()
        self.broker.abort_all()
        if self.http is not None:
            await self.http.close()
        for server in self._servers:
            await server.wait_closed()
        if self._timer is not None:
            self._timer.cancel()
        if self._replay is not None:
            self._replay.cancel()
        if self.keeper is not None:
            await self.keeper.close()
        if self.cluster is not None:
            await self.cluster.close()
        if self.durable is not None:
            await self.durable.close(last=self.cluster.leave if self.cluster else None)
        if self._announced:
            lifecycle.info("Shutdown complete (%s)", self._why or "stop", extra=_NOTICE)
        self.notify.close()

    def _store_lost(self, why: str) -> None:
        """Another server owns the store now: refuse background jobs (the store logged
        why, once), then stop as a shared store's server does."""
        if self.durable is not None:
            self.durable.down = why
        self._lease_lost(why)

    def _lease_lost(self, why: str) -> None:
        self.exit_code = 1
        self.stop(why)

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
        if line == b"status":
            # the usual monitoring poll, straight to its reply: the lookups below
            # cost a fifth of it (bench/micro/icount.py admin)
            return admin.status(self.broker)
        if line.strip().lower() == b"nodes":
            c = self.cluster
            if c is None:
                return admin_policy.nodes(None)
            c.asked()
            return admin_policy.nodes(c.view())
        reply = admin_policy.run(self.policies, line)
        if reply is not None:
            return reply
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
