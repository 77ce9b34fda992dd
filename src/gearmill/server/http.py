"""The HTTP listener: /metrics, health, a JSON API, the dashboard and gearmand's gateway.

It runs on the server's event loop (h11 parses, asyncio moves the bytes; no
threads) and is off unless ``--http`` (or gearmand's ``-r http``) is given, so
the job path is untouched without it.

Paths (docs/compatibility.md lists them):

* ``GET /`` and ``/static/...``: the dashboard (files in ``static/``);
* ``GET /metrics``: Prometheus text format;
* ``GET /healthz`` (the process answers), ``GET /readyz`` (listening and accepting jobs);
* ``/api/...``: JSON for the dashboard and scripts;
* ``POST`` or ``PUT /<function>``: gearmand's ``-r http`` gateway. ``GET`` never
  submits (a browser's ``/favicon.ico`` must not run a job).

A gateway request is an in-process peer of the broker (with its own sink) that
goes through the same per-peer access check as a socket connection.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import re
import time
from collections.abc import Callable
from http import HTTPStatus
from importlib import resources
from typing import Any, Final
from urllib.parse import parse_qs, unquote_to_bytes

try:
    import h11
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST
    from prometheus_client.process_collector import ProcessCollector
except ImportError as e:  # pragma: no cover - the [http] extra is missing
    raise ImportError(
        f"the HTTP listener needs {e.name}: pip install 'gearmill[http]' (h11, prometheus_client)"
    ) from None

from ..errors import listen_reason
from ..protocol.codec import Decoder
from ..protocol.packets import PacketType
from .broker import Broker
from .cluster import Cluster
from .config import Config
from .connection import is_loopback
from .durable import Durable
from .metrics import Collector, StoreStats
from .model import RUNNING, SCHEDULED, Job, Peer
from .policy import Policies
from .recorder import Recorder
from .store import about
from .stream import Hub, flush

log = logging.getLogger("gearmill.http")

MAX_BODY: Final = 64 * 1024 * 1024
NODES_WAIT: Final = 2.0  # /api/nodes waits this long at most for a fresh list
PROBE_TIMEOUT: Final = 2.0  # a store that takes longer to answer a ping is not ready
RESERVED: Final = ("", "metrics", "healthz", "readyz", "api", "static", "favicon.ico")
_SUBMIT: Final = {
    (0, False): PacketType.SUBMIT_JOB_HIGH,
    (1, False): PacketType.SUBMIT_JOB,
    (2, False): PacketType.SUBMIT_JOB_LOW,
    (0, True): PacketType.SUBMIT_JOB_HIGH_BG,
    (1, True): PacketType.SUBMIT_JOB_BG,
    (2, True): PacketType.SUBMIT_JOB_LOW_BG,
}
_STATIC: Final = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
_PRIORITIES: Final = {"high": 0, "low": 2}
# an HTTP/1.x request line; anything else in a connection's first line is another protocol
_REQUEST_LINE: Final = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+ [^ ]+ HTTP/[0-9]\.[0-9]\r?")
_STATES: Final = {0: "queued", RUNNING: "running", SCHEDULED: "scheduled"}


class _ProcessCollector(ProcessCollector):
    """prometheus_client's process metrics, also where /proc/stat is hidden (systemd's
    ProcSubset=pid, which contrib/gearmill.service sets): without its boot time the
    original reports no process_* series at all."""

    def _boot_time(self) -> float:
        try:
            return float(super()._boot_time())  # type: ignore[no-untyped-call]
        except OSError:
            return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(
        self, status: int, body: bytes = b"", headers: list[tuple[str, str]] | None = None
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers or []


def _json(status: int, value: object) -> Response:
    body = json.dumps(value, separators=(",", ":")).encode()
    return Response(status, body, [("Content-Type", "application/json")])


def _error(status: int, message: str) -> Response:
    return _json(status, {"error": message})


def _not_allowed(allow: str, message: str) -> Response:
    # a 405 names the methods that would work (RFC 9110)
    response = _error(405, message)
    response.headers.append(("Allow", allow))
    return response


def _text(name: bytes) -> str:
    return name.decode("utf-8", "replace")


class GatewaySink:
    """A gateway peer's sink: the broker's packets to this request, decoded."""

    __slots__ = ("closed", "decoder", "events", "wake")

    def __init__(self) -> None:
        self.decoder = Decoder(server=False)
        self.events: list[tuple[int, list[bytes]]] = []
        self.wake = asyncio.Event()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.events += self.decoder.feed(data)
        self.wake.set()

    def writelines(self, data: list[bytes]) -> None:
        for piece in data:
            self.write(piece)

    def close(self) -> None:
        self.closed = True
        self.wake.set()

    def abort(self) -> None:
        self.close()

    async def next(self) -> tuple[int, list[bytes]] | None:
        while not self.events:
            if self.closed:
                return None
            self.wake.clear()
            await self.wake.wait()
        return self.events.pop(0)


class HttpFront:
    """What every HTTP connection of one server shares."""

    def __init__(
        self,
        broker: Broker,
        config: Config,
        hub: Hub,
        addresses: list[tuple[str, int]],
        policies: Policies | None = None,
        durable: Durable | None = None,
        cluster: Cluster | None = None,
    ) -> None:
        self.broker = broker
        self.cluster = cluster  # the servers sharing the store, if it is shared
        self.policies = policies  # the dead set and the schedules
        self.durable = durable  # the store's writer, unless jobs live in memory
        self.config = config
        self.hub = hub
        self.addresses = addresses  # the Gearman listeners' (filled by the server)
        cfg = config
        self.token = cfg.http.token.encode()
        self.identities = [(t.encode(), subject) for t, subject in cfg.http.identities]
        self.recorder = Recorder(float(cfg.http.keep_finished), cfg.metrics.function_histograms)
        self.recorder.attach(self.broker)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(
            Collector(  # type: ignore[arg-type]
                self.broker,
                self.recorder,
                cfg.metrics.top_functions,
                cfg.metrics.function_histograms,
                None if policies is None else policies.dead,
            )
        )
        _ProcessCollector(registry=self.registry)
        self.store_stats: StoreStats | None = None
        if durable is not None:
            self.store_stats = StoreStats(durable)
            self.registry.register(self.store_stats)  # type: ignore[arg-type]
        self.started = time.time()
        # why the store did not answer the last ping (None: it did, or none was sent)
        self.unreachable: str | None = None
        self._probe: asyncio.Task[None] | None = None
        self.listener: asyncio.AbstractServer | None = None
        self.address: tuple[str, int] | None = None
        self.connections: set[HttpProtocol] = set()

    async def start(self) -> None:
        listen = self.config.http.listen
        assert listen is not None
        loop = asyncio.get_running_loop()
        try:
            self.listener = await loop.create_server(
                lambda: HttpProtocol(self),
                host=listen.host or None,
                port=listen.port,
                reuse_address=True,
            )
        except OSError as e:
            raise OSError(
                e.errno,
                f"cannot listen for HTTP on {listen.host or '*'} port {listen.port}: "
                f"{listen_reason(e)}",
            ) from e
        addr = self.listener.sockets[0].getsockname()
        self.address = (addr[0], addr[1])
        if self.durable is not None and self.durable.store.durable:
            self._probe = loop.create_task(self.probe(self.durable))

    async def probe(self, durable: Durable) -> None:
        """Ping the store every ``probe_every`` seconds: the writer learns of a store
        gone only at its next commit, and an idle server makes none. A failed ping
        makes /readyz 503 (nothing else: the writer still decides what jobs get)."""
        store = durable.store
        while True:
            await asyncio.sleep(self.config.http.probe_every)
            if durable.down is not None:
                self.unreachable = None  # the writer knows, and retries by itself
                continue
            try:
                await asyncio.wait_for(store.ping(), PROBE_TIMEOUT)
            except Exception as e:  # StoreError, a timeout: either way not ready
                if isinstance(e, TimeoutError):  # a stalled store: its str() is empty
                    why = f"{store.url}: no answer to a ping within {PROBE_TIMEOUT:g} s"
                else:
                    why = str(e) or type(e).__name__
                if self.unreachable is None:
                    log.error(
                        "store %s does not answer: %s; /readyz answers 503",
                        store.url,
                        about(store.url, why),
                    )
                self.unreachable = why
                self._reachable(False)
                continue
            if self.unreachable is not None:
                log.warning("store %s answers again; /readyz answers 200", store.url)
            self.unreachable = None
            self._reachable(True)

    def _reachable(self, answered: bool) -> None:
        if self.store_stats is not None:
            self.store_stats.reachable = answered

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            try:
                await self._probe
            except asyncio.CancelledError:
                pass
        if self.listener is not None:
            self.listener.close()
        for conn in list(self.connections):
            conn.abort()
        if self.listener is not None:
            await self.listener.wait_closed()

    # ----------------------------------------------------------- who may

    def _given(self, headers: dict[str, str]) -> str:
        given = headers.get("authorization", "")
        if given.lower().startswith("bearer "):
            return given[7:].strip()
        return headers.get("x-gearmill-token", "")

    def identity(self, headers: dict[str, str]) -> str | None:
        """Who the request's token says it is: "" for the server's own token, an
        [[http.identity]] subject for one of those, None for no valid token."""
        given = self._given(headers).encode()
        if not given:
            return None
        found: str | None = None
        # every token is compared (in constant time), whichever matches
        if self.token and hmac.compare_digest(given, self.token):
            found = ""
        for token, subject in self.identities:
            if hmac.compare_digest(given, token) and found is None:
                found = subject
        return found

    def may_submit(self, headers: dict[str, str]) -> bool:
        """Submissions and job data: with a token when any is set (one must be
        when off loopback: the server refuses to start otherwise)."""
        return not (self.token or self.identities) or self.identity(headers) is not None

    def may_destroy(self, headers: dict[str, str]) -> bool:
        """Cancel, drop, requeue: always with a token."""
        return self.identity(headers) is not None

    def peer(self, addr: str, sink: GatewaySink | None = None, subject: str = "") -> Peer:
        """An in-process peer for one request, given its rules by the access list:
        by its address, and by the subject its token names (as a TLS certificate's)."""
        peer = Peer(-1, addr, is_loopback(addr), sink)
        peer.client_id = b"http"
        peer.subject = subject
        self.broker.connect(peer)
        return peer

    def leave(self, peer: Peer) -> None:
        self.broker.disconnect(peer)
        flush(self.hub)

    # ----------------------------------------------------------- routing

    async def handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes, addr: str
    ) -> Response:
        path, _, query = target.partition("?")
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        parts = path.lstrip("/").split("/")
        head = parts[0]
        if head not in RESERVED or (head == "" and method in ("POST", "PUT")):
            if method in ("POST", "PUT"):
                return await self.submit(path, headers, body, addr)
            return _not_allowed("POST, PUT", f"{method} never submits a job; use POST or PUT")
        if head == "api":
            if parts[1:] == ["nodes"] and method in ("GET", "HEAD"):
                return _json(200, await self.nodes())
            return self.api(method, parts[1:], params, headers, addr)
        if method not in ("GET", "HEAD"):
            return _not_allowed("GET, HEAD", f"{path} is read-only; use GET")
        if head == "metrics":
            if self.store_stats is not None:
                await self.store_stats.refresh()
            return Response(
                200, generate_latest(self.registry), [("Content-Type", CONTENT_TYPE_LATEST)]
            )
        if head == "healthz":
            return Response(200, b"ok\n", [("Content-Type", "text/plain")])
        if head == "readyz":
            plain = [("Content-Type", "text/plain")]
            if not (self.addresses and self.broker.accepting):
                return Response(503, b"not accepting jobs\n", plain)
            down = self.durable.down if self.durable is not None else None
            if down is None:
                down = self.unreachable  # an idle server's ping failed
            if down is not None:
                # background jobs get QUEUE_ERROR until the writer reaches it again
                return Response(503, f"store unreachable: {down}\n".encode(), plain)
            return Response(200, b"ready\n", plain)
        name = "index.html" if head == "" else "/".join(parts[1:])
        if head == "favicon.ico" or name not in _STATIC:
            return _error(404, f"no such file: {path}")
        data = resources.files("gearmill.server").joinpath("static", name).read_bytes()
        return Response(200, data, [("Content-Type", _STATIC[name]), ("Cache-Control", "no-cache")])

    # ----------------------------------------------------------- gateway

    async def submit(self, path: str, headers: dict[str, str], body: bytes, addr: str) -> Response:
        name = unquote_to_bytes(path.lstrip("/"))
        if not name:
            return Response(404, b"", [("Content-Length", "0")])
        if not self.may_submit(headers):
            return _error(401, "submitting needs the token: Authorization: Bearer <token>")
        unique = headers.get("x-gearman-unique", "-").encode()
        background = headers.get("x-gearman-background", "").lower() == "true"
        priority = _PRIORITIES.get(headers.get("x-gearman-priority", "").lower(), 1)
        sink = GatewaySink()
        peer = self.peer(addr, sink, self.identity(headers) or "")
        # else the broker turns a WORK_EXCEPTION into a bare WORK_FAIL, as for a client
        # without the option, and the gateway could not answer it with its text
        peer.exceptions = True
        try:
            self.broker.handle(peer, _SUBMIT[priority, background], [name, unique, body])
            flush(self.hub)
            handle = b""
            data: list[bytes] = []
            while True:
                event = await sink.next()
                if event is None:
                    return _error(503, "the server is stopping")
                ptype, args = event
                if ptype == PacketType.ERROR:
                    code = _text(args[0])
                    # the access list's refusal is gearmand's INVALID_COMMAND "Permission denied"
                    denied = code == "ERR_DENIED" or b"ermission denied" in args[1]
                    status = 403 if denied else 503
                    return _error(status, f"{code}: {_text(args[1])}")
                if ptype == PacketType.JOB_CREATED:
                    handle = args[0]
                    if background:
                        return self._gateway(handle, "JOB_CREATED", b"")
                elif ptype == PacketType.WORK_DATA:
                    data.append(args[1])
                elif ptype == PacketType.WORK_COMPLETE:
                    data.append(args[1])
                    return self._gateway(handle, "WORK_COMPLETE", b"".join(data))
                elif ptype == PacketType.WORK_FAIL:
                    return self._gateway(handle, "WORK_FAIL", b"".join(data))
                elif ptype == PacketType.WORK_EXCEPTION:
                    return self._gateway(handle, "WORK_EXCEPTION", args[1])
        finally:
            self.leave(peer)  # a client that left while its job waits abandons it

    def _gateway(self, handle: bytes, command: str, body: bytes) -> Response:
        return Response(
            200,
            body,
            [("X-Gearman-Job-Handle", _text(handle)), ("X-Gearman-Command", command)],
        )

    # ----------------------------------------------------------- JSON API

    def api(
        self,
        method: str,
        parts: list[str],
        params: dict[str, str],
        headers: dict[str, str],
        addr: str,
    ) -> Response:
        what = parts[0] if parts else ""
        rest = [unquote_to_bytes(p) for p in parts[1:]]
        if method in ("GET", "HEAD"):
            if what == "summary" and not rest:
                return _json(200, self.summary())
            if what == "functions" and not rest:
                return _json(200, self.functions())
            if what == "workers" and not rest:
                return _json(200, self.workers())
            if what == "jobs" and not rest:
                return self.jobs(params)
            if what == "jobs" and len(rest) == 1:
                return self.job(rest[0], params, headers)
            if what == "dead" and not rest:
                return self.dead(params)
            if what == "schedules" and not rest:
                return self.schedules()
            return _error(404, f"no such API path: /api/{'/'.join(parts)}")
        if what == "dead" and len(rest) == 2 and rest[1] == b"requeue" and method == "POST":
            line = b"dead requeue " + rest[0]
            return self.destroy(headers, addr, line, self._requeue, rest[0])
        if what == "jobs" and len(rest) == 2 and rest[1] == b"cancel" and method == "POST":
            return self.destroy(headers, addr, b"cancel job " + rest[0], self._cancel, rest[0])
        if what == "functions" and len(rest) == 1 and method == "DELETE":
            return self.destroy(headers, addr, b"drop function " + rest[0], self._drop, rest[0])
        return _error(405, f"{method} /api/{'/'.join(parts)}: not an API action")

    def destroy(
        self,
        headers: dict[str, str],
        addr: str,
        line: bytes,
        action: Callable[[bytes], Response],
        arg: bytes,
    ) -> Response:
        if not self.may_destroy(headers):
            if not (self.token or self.identities):
                return _error(403, "destructive actions need a token; start with --http-token")
            return _error(401, "this action needs the token: Authorization: Bearer <token>")
        peer = self.peer(addr, None, self.identity(headers) or "")
        try:
            # the same rules as the admin line over the binary protocol
            access = peer.access
            if access is not None and not access.allows(0, [line]):
                return _error(403, "ERR_DENIED: the access list does not allow it")
            return action(arg)
        finally:
            self.leave(peer)

    def _cancel(self, handle: bytes) -> Response:
        done = self.broker.cancel(handle)
        flush(self.hub)
        if not done:
            return _error(404, f"no such job: {_text(handle)}")
        return _json(200, {"cancelled": _text(handle)})

    def _requeue(self, handle: bytes) -> Response:
        if self.policies is None or handle not in self.policies.dead.jobs:
            return _error(404, f"no such dead job: {_text(handle)}")
        done, _ = self.policies.requeue([handle])
        flush(self.hub)
        if not done:
            return _error(409, f"{_text(handle)}: a live job has its unique id; try again later")
        return _json(200, {"requeued": _text(handle)})

    def dead(self, params: dict[str, str]) -> Response:
        """The dead set, newest first (paged), with each job's last failure."""
        try:
            offset = max(int(params.get("offset", "0")), 0)
            limit = min(max(int(params.get("limit", "50")), 1), 1000)
        except ValueError:
            return _error(400, "offset and limit are whole numbers")
        function = params.get("function")
        dead = [] if self.policies is None else list(self.policies.dead.jobs.values())
        if function is not None:
            dead = [d for d in dead if _text(d.function) == function]
        dead.reverse()
        rows = [
            {
                "handle": _text(d.handle),
                "function": _text(d.function),
                "unique": _text(d.unique),
                "attempts": d.attempts,
                "reason": d.reason,
                "error": _text(d.error),
                "died": round(d.died, 3),
                "size": len(d.data),
            }
            for d in dead[offset : offset + limit]
        ]
        return _json(200, {"total": len(dead), "offset": offset, "limit": limit, "jobs": rows})

    def schedules(self) -> Response:
        out: list[dict[str, Any]] = []
        if self.policies is not None:
            for sched in self.policies.scheduler.schedules.values():
                spec = sched.spec
                out.append(
                    {
                        "name": spec.name,
                        "cron": sched.expr,
                        "function": _text(spec.function),
                        "priority": ("high", "normal", "low")[spec.priority],
                        "paused": sched.paused,
                        "next_at": None if sched.paused else sched.next_at,
                        "last_at": sched.last_at or None,
                        "fired": sched.fired,
                        "last_handle": _text(sched.last_handle) or None,
                    }
                )
        # epoch-scheduled jobs (SUBMIT_JOB_EPOCH/SCHED, retries in their backoff)
        # are listed by /api/jobs?state=scheduled
        return _json(200, out)

    def _drop(self, name: bytes) -> Response:
        dropped = self.broker.drop_function(name)
        if dropped is None:
            return _error(404, f"no such function: {_text(name)}")
        if not dropped:
            return _error(409, f"{_text(name)} has workers or jobs; it can be dropped when idle")
        return _json(200, {"dropped": _text(name)})

    async def nodes(self) -> dict[str, Any]:
        """The servers sharing the store, as admin ``nodes`` lists them (read at most a
        heartbeat ago); ``shared`` false and no nodes on a store of one server."""
        c = self.cluster
        if c is None:
            return {"shared": False, "nodes": []}
        await c.fresh(NODES_WAIT)
        return {
            "shared": True,
            "lease": c.lease,
            "nodes": [
                {
                    "node": node,
                    "owner": f"{node}#{token}",
                    "heartbeat_left": round(left, 1),
                    "expired": left < 0,
                    "jobs": held,
                    "self": me,
                }
                for node, token, left, held, me in c.view()
            ],
        }

    def summary(self) -> dict[str, Any]:
        stats = self.broker.stats()
        return {
            "version": self.broker.config.version.decode(),
            "uptime": round(time.time() - self.started, 3),
            "accepting": self.broker.accepting,
            "listening": [f"{h}:{p}" for h, p in self.addresses],
            "token_set": bool(self.token),
            **stats,
        }

    def functions(self) -> list[dict[str, Any]]:
        out = []
        stats = self.recorder.functions
        for name, high, normal, low, running, workers in self.broker.function_rows():
            s = stats.get(name)
            row: dict[str, Any] = {
                "name": _text(name),
                "queued": high + normal + low,
                "queued_by_priority": [high, normal, low],
                "running": running,
                "workers": workers,
            }
            if s is not None:
                row["submitted"] = s.submitted[0] + s.submitted[1]
                row["completed"] = s.ended[0][0] + s.ended[0][1]
                row["failed"] = sum(s.ended[o][k] for o in (1, 2, 4) for k in (0, 1))
                row["retried"] = s.retried[0] + s.retried[1]
                row["bytes_in"] = s.bytes_in
                row["bytes_out"] = s.bytes_out
            else:
                row["submitted"] = row["completed"] = row["failed"] = row["retried"] = 0
                row["bytes_in"] = row["bytes_out"] = 0
            out.append(row)
        return out

    def workers(self) -> list[dict[str, Any]]:
        out = []
        for peer in self.broker.peers.values():
            if not peer.abilities:
                continue
            out.append(
                {
                    "fd": peer.fd,
                    "address": peer.addr,
                    "client_id": _text(peer.client_id),
                    "functions": [_text(a.func.name) for a in peer.abilities],
                    "running": [_text(h) for h in peer.assigned],
                    "sleeping": peer.sleeping,
                }
            )
        return out

    def job_row(self, job: Job) -> dict[str, Any]:
        more = job.more
        age = self.recorder.started_at(job)
        return {
            "handle": _text(job.handle),
            "function": _text(job.func.name),
            "unique": _text(job.unique),
            "state": _STATES.get(job.state, "queued"),
            "priority": ("high", "normal", "low")[job.priority],
            "background": job.background,
            "retries": more.retries,
            "progress": [more.num, more.den],
            "size": len(job.data),
            "seconds": None if age is None else round(age, 3),
            "worker": job.worker.addr if job.worker is not None else None,
        }

    def jobs(self, params: dict[str, str]) -> Response:
        try:
            offset = max(int(params.get("offset", "0")), 0)
            limit = min(max(int(params.get("limit", "50")), 1), 1000)
        except ValueError:
            return _error(400, "offset and limit are whole numbers")
        state = params.get("state")
        if state not in (None, "queued", "running", "scheduled"):
            return _error(400, "state: use queued, running or scheduled")
        function = params.get("function")
        rows = []
        total = 0
        for job in self.broker.jobs.values():
            if job.ignore:
                continue
            if function is not None and _text(job.func.name) != function:
                continue
            if state is not None and _STATES.get(job.state, "queued") != state:
                continue
            if offset <= total < offset + limit:
                rows.append(self.job_row(job))
            total += 1
        return _json(200, {"total": total, "offset": offset, "limit": limit, "jobs": rows})

    def job(self, handle: bytes, params: dict[str, str], headers: dict[str, str]) -> Response:
        job = self.broker.jobs.get(handle)
        if job is not None and not job.ignore:
            row = self.job_row(job)
            if params.get("data") in ("1", "true"):
                if not self.may_submit(headers):
                    return _error(401, "job data needs the token: Authorization: Bearer <token>")
                row["data_base64"] = base64.b64encode(job.data).decode()
            return _json(200, row)
        done = self.recorder.finished_job(handle)
        if done is None:
            return _error(404, f"no such job (or it ended too long ago): {_text(handle)}")
        return _json(
            200,
            {
                "handle": _text(done.handle),
                "function": _text(done.function),
                "state": "finished",
                "outcome": done.outcome,
                "background": done.background,
                "finished_at": done.at,
            },
        )


class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection: h11 parses, one request at a time."""

    def __init__(self, front: HttpFront) -> None:
        self.front = front
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        self.transport: asyncio.Transport | None = None
        self.addr = "-"
        self.request: h11.Request | None = None
        self.body: list[bytes] = []
        self.size = 0
        self.task: asyncio.Task[None] | None = None
        self.head: bytes | None = b""  # the first line until it is whole (then None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.addr = peer[0] if isinstance(peer, tuple) else "-"
        self.front.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.connections.discard(self)
        self.transport = None
        if self.task is not None:
            self.task.cancel()  # a waiting gateway request leaves (its job is abandoned)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.head is not None and self._not_http(data):
            return
        self.conn.receive_data(data)
        self._next()

    def _not_http(self, data: bytes) -> bool:
        """True, after answering 400, when the first line is not an HTTP request line:
        gearadmin or a Gearman client sent here by mistake waits for no blank line
        (h11 would wait for one), so it gets an answer at once that names the right port."""
        assert self.head is not None
        self.head += data
        line, newline, _ = self.head.lstrip(b"\r\n").partition(b"\n")
        if not newline:
            if len(self.head) > 8192:
                self.head = None  # h11 refuses a line that long itself
            return False
        self.head = None
        if _REQUEST_LINE.fullmatch(line):
            return False
        ports = ", ".join(str(p) for p in sorted({p for _, p in self.front.addresses}))
        self._fail(
            400,
            "not an HTTP request; Gearman clients, workers and gearadmin use the job"
            f" server's port ({ports}), not the HTTP one",
        )
        return True

    def eof_received(self) -> bool:
        self.conn.receive_data(b"")
        self._next()
        return False

    def _next(self) -> None:
        while self.task is None and self.transport is not None:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as e:
                self._fail(e.error_status_hint, str(e))
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self.request = event
                self.body = []
                self.size = 0
            elif isinstance(event, h11.Data):
                self.size += len(event.data)
                if self.size > MAX_BODY:
                    self._fail(413, f"the body is larger than {MAX_BODY} bytes")
                    return
                self.body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                assert self.request is not None
                self.task = asyncio.ensure_future(self._answer(self.request, b"".join(self.body)))
            elif isinstance(event, h11.ConnectionClosed):
                self.abort()
                return

    def _fail(self, status: int, message: str) -> None:
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self._send(_error(status, message), head=False)
        if self.transport is not None:
            self.transport.close()

    async def _answer(self, request: h11.Request, body: bytes) -> None:
        method = request.method.decode("ascii", "replace").upper()
        target = request.target.decode("ascii", "replace")
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in request.headers}
        try:
            response = await self.front.handle(method, target, headers, body, self.addr)
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("HTTP %s %s failed", method, target)
            response = _error(500, "internal error; see the server log")
        self.task = None
        if self.transport is None:
            return
        self._send(response, head=method == "HEAD")
        if self.conn.our_state is h11.MUST_CLOSE:
            self.transport.close()
            return
        try:
            self.conn.start_next_cycle()
        except h11.LocalProtocolError:
            self.transport.close()
            return
        self._next()

    def _send(self, response: Response, head: bool) -> None:
        headers = [
            *response.headers,
            ("Content-Length", str(len(response.body))),
            ("Server", "gearmill/" + self.front.broker.config.version.decode()),
        ]
        seen = set()
        unique_headers = []
        for k, v in headers:
            if k.lower() not in seen:
                seen.add(k.lower())
                unique_headers.append((k, v))
        out = [
            self.conn.send(
                h11.Response(
                    status_code=response.status,
                    headers=unique_headers,
                    reason=HTTPStatus(response.status).phrase,
                )
            ),
        ]
        if response.body and not head:
            out.append(self.conn.send(h11.Data(data=response.body)))
        out.append(self.conn.send(h11.EndOfMessage()))
        if self.transport is not None:
            self.transport.write(b"".join(o for o in out if o))
