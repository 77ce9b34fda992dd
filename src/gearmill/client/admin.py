"""Blocking client for the admin text protocol (what `gearadmin` speaks)."""

from __future__ import annotations

import base64
import re
import socket
import ssl
from dataclasses import dataclass

from ..errors import CannotConnect, ConnectionLost, NotAJobServer, ServerError, connect_reason
from .servers import Address, TLSAddress, format_address, parse_server

# commands whose reply is a list ending in ".\n"
_LISTS = ("status", "prioritystatus", "workers", "show jobs", "show unique jobs")
# gearmill's own list commands, by their first two words
_OWN_LISTS = ("dead status", "dead list", "dead show", "retry show", "schedule list", "nodes")


def _is_list(line: str) -> bool:
    words = line.split()
    return " ".join(words).lower() in _LISTS or " ".join(words[:2]).lower() in _OWN_LISTS


@dataclass(frozen=True, slots=True)
class FunctionStatus:
    name: str
    total: int
    running: int
    workers: int

    @property
    def queued(self) -> int:
        return self.total - self.running


@dataclass(frozen=True, slots=True)
class PriorityStatus:
    name: str
    high: int
    normal: int
    low: int
    workers: int


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    fd: str
    address: str
    client_id: str
    functions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class JobInfo:
    handle: str
    retries: int
    ignored: bool
    background: bool


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A server sharing the store with the one asked (gearmill only)."""

    node: str  # its --node-id
    token: str  # new at each start: the owner of its stored jobs is node#token
    expires_in: float | None  # seconds until its heartbeat expires; None: expired
    jobs: int  # stored jobs it holds
    me: bool  # the server asked


@dataclass(frozen=True, slots=True)
class DeadJobInfo:
    """A job in the server's dead set (gearmill only)."""

    handle: str
    function: str
    unique: str
    attempts: int
    reason: str  # the last ending: lost, timeout, cant_do, fail, exception
    died: str  # UTC, ISO 8601
    error: str = ""  # filled by dead_job(): the last WORK_EXCEPTION text
    data: bytes = b""  # filled by dead_job(): the payload


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    """A recurring job (gearmill only)."""

    name: str
    cron: str
    function: str
    paused: bool
    next_run: str  # UTC, ISO 8601
    fired: int


class AdminClient:
    def __init__(
        self,
        server: str | Address = "127.0.0.1:4730",
        timeout: float = 5.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.address = parse_server(server) if isinstance(server, str) else server
        self.tls = tls  # the context for a tls:// server (None: gearmill.client.tls's default)
        self.name = format_address(self.address)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connect(self) -> socket.socket:
        if self._sock is None:
            try:
                sock = socket.create_connection(self.address, timeout=self.timeout)
                if isinstance(self.address, TLSAddress):
                    from .tls import default_context

                    context = self.tls or self.address.context or default_context()
                    try:
                        sock = context.wrap_socket(sock, server_hostname=self.address[0])
                    except BaseException:
                        sock.close()
                        raise
                self._sock = sock
            except OSError as e:
                raise CannotConnect(self.name, connect_reason(e, self.timeout)) from e
        return self._sock

    def command(self, line: str) -> bytes:
        """Send one admin line; the raw reply, including its line endings."""
        sock = self._connect()
        is_list = _is_list(line)
        try:
            sock.sendall(line.encode() + b"\r\n")
            while True:
                buf = self._buf
                if is_list:
                    if buf.startswith(b".\n") or b"\n.\n" in buf:
                        end = 2 if buf.startswith(b".\n") else buf.index(b"\n.\n") + 3
                        break
                    if buf.startswith(b"ERR") and b"\n" in buf:
                        end = buf.index(b"\n") + 1
                        break
                elif b"\n" in buf:
                    end = buf.index(b"\n") + 1
                    break
                chunk = sock.recv(65536)
                if not chunk:
                    if self._buf:  # it answered, then hung up mid-reply: not a job server
                        raise NotAJobServer(self.name, _first_line(self._buf))
                    raise ConnectionLost(self.name, "closed by server")
                self._buf += chunk
                if self._buf.startswith(b"HTTP/"):  # a web server's port given by mistake
                    raise NotAJobServer(self.name, _first_line(self._buf))
        except OSError as e:
            self.close()
            raise ConnectionLost(self.name, str(e)) from e
        except NotAJobServer:
            self.close()
            raise
        reply, self._buf = self._buf[:end], self._buf[end:]
        return reply

    def _value(self, line: str) -> str:
        reply = self.command(line).decode(errors="replace").rstrip("\r\n")
        if reply.startswith("ERR "):
            code, _, text = reply[4:].partition(" ")
            raise ServerError(code, text.replace("+", " "))
        return reply[3:] if reply.startswith("OK ") else reply

    def _rows(self, line: str) -> list[list[str]]:
        reply = self.command(line).decode(errors="replace")
        if reply.startswith("ERR "):
            code, _, text = reply[4:].rstrip("\r\n").partition(" ")
            raise ServerError(code, text.replace("+", " "))
        lines = reply.split("\n")
        return [row.split("\t") for row in lines[: lines.index(".")]]

    def status(self) -> list[FunctionStatus]:
        return [FunctionStatus(r[0], int(r[1]), int(r[2]), int(r[3])) for r in self._rows("status")]

    def priority_status(self) -> list[PriorityStatus]:
        return [
            PriorityStatus(r[0], int(r[1]), int(r[2]), int(r[3]), int(r[4]))
            for r in self._rows("prioritystatus")
        ]

    def workers(self) -> list[WorkerInfo]:
        out = []
        for (row,) in self._rows("workers"):
            head, _, funcs = row.partition(" :")
            fd, address, client_id = [*head.split(" ", 2), "", ""][:3]
            out.append(WorkerInfo(fd, address, client_id, tuple(funcs.split())))
        return out

    def jobs(self) -> list[JobInfo]:
        return [JobInfo(r[0], int(r[1]), r[2] == "1", r[3] == "1") for r in self._rows("show jobs")]

    def unique_jobs(self) -> list[str]:
        return [r[0] for r in self._rows("show unique jobs")]

    def version(self) -> str:
        return self._value("version")

    def getpid(self) -> int:
        return int(self._value("getpid"))

    def verbose(self) -> str:
        return self._value("verbose")

    def cancel_job(self, handle: str) -> None:
        self._value(f"cancel job {handle}")

    def create_function(self, name: str) -> None:
        self._value(f"create function {name}")

    def drop_function(self, name: str) -> None:
        self._value(f"drop function {name}")

    def maxqueue(self, function: str, *sizes: int) -> None:
        self._value(" ".join(["maxqueue", function, *map(str, sizes)]))

    # ------------------------------------------- gearmill's own: retries, dead set, schedules

    def retry_rules(self) -> dict[str, str]:
        """Each function with its own retry rule, and ``*`` for the default."""
        return {r[0]: r[1] for r in self._rows("retry show")}

    def set_retry(self, function: str, **settings: object) -> None:
        """Change a function's retry rule (``*``: the default) live, e.g.
        ``set_retry("resize", max_attempts=5, backoff=2, retry_on="lost,timeout,fail")``."""
        words = [f"{k}={_word(v)}" for k, v in settings.items()]
        self._value(" ".join(["retry set", function, *words]))

    def nodes(self) -> list[NodeInfo]:
        """The servers sharing the store (ServerError NOT_SHARED when it is not shared)."""
        return [
            NodeInfo(
                r[0], r[1], None if r[2] == "expired" else float(r[2]), int(r[3]), r[4] == "self"
            )
            for r in self._rows("nodes")
        ]

    def dead_status(self) -> dict[str, int]:
        """Jobs in the dead set per function."""
        return {r[0]: int(r[1]) for r in self._rows("dead status")}

    def dead_jobs(self, function: str | None = None) -> list[DeadJobInfo]:
        rows = self._rows("dead list" + (f" {function}" if function else ""))
        return [DeadJobInfo(r[0], r[1], r[2], int(r[3]), r[4], r[5]) for r in rows]

    def dead_job(self, handle: str) -> DeadJobInfo:
        fields = {r[0]: r[1] for r in self._rows(f"dead show {handle}")}
        return DeadJobInfo(
            fields["handle"],
            fields["function"],
            fields["unique"],
            int(fields["attempts"]),
            fields["reason"],
            fields["died"],
            _unescape(fields["error"]),
            base64.b64decode(fields["data_base64"]),
        )

    def dead_requeue(self, handle: str | None = None, function: str | None = None) -> int:
        """Back to their queues (same handle): one job, a function's, or all (no argument)."""
        return int(self._value("dead requeue " + _which(handle, function)))

    def dead_purge(self, handle: str | None = None, function: str | None = None) -> int:
        """Forget dead jobs: one, a function's, or all (no argument)."""
        return int(self._value("dead purge " + _which(handle, function)))

    def schedules(self) -> list[ScheduleInfo]:
        return [
            ScheduleInfo(r[0], r[1].replace("_", " "), r[2], r[3] == "paused", r[4], int(r[5]))
            for r in self._rows("schedule list")
        ]

    def add_schedule(
        self, name: str, function: str, cron: str, data: str = "", priority: str = "normal"
    ) -> None:
        """A recurring background job: ``cron`` is five fields in UTC or @hourly, @daily, ..."""
        words = ["schedule add", name, function, cron.strip().replace(" ", "_")]
        if priority != "normal":
            words.append(f"priority={priority}")
        self._value(" ".join(words) + (" " + data if data else ""))

    def pause_schedule(self, name: str) -> None:
        self._value(f"schedule pause {name}")

    def resume_schedule(self, name: str) -> None:
        self._value(f"schedule resume {name}")

    def remove_schedule(self, name: str) -> None:
        self._value(f"schedule remove {name}")


def _first_line(reply: bytes) -> str:
    """What another service said, short enough for a one-line message."""
    line = reply.split(b"\n", 1)[0].rstrip(b"\r").decode(errors="replace")
    return repr(line if len(line) <= 60 else line[:57] + "...")


def _unescape(text: str) -> str:
    """The server's one-line form of an exception text, undone (\\n, \\t, \\\\)."""
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m[1], m[1]), text)


def _word(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list | tuple | set | frozenset):
        return ",".join(str(v) for v in value) or "none"
    return str(value)


def _which(handle: str | None, function: str | None) -> str:
    if handle:
        return handle
    return f"function {function}" if function else "all"
