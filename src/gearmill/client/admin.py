"""Blocking client for the admin text protocol (what `gearadmin` speaks)."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

from ..errors import CannotConnect, ConnectionLost, ServerError, connect_reason
from .servers import Address, TLSAddress, format_address, parse_server

# commands whose reply is a list ending in ".\n"
_LISTS = ("status", "prioritystatus", "workers", "show jobs", "show unique jobs")


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
        is_list = line.strip().lower() in _LISTS
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
                    raise ConnectionLost(self.name, "closed by server")
                self._buf += chunk
        except OSError as e:
            self.close()
            raise ConnectionLost(self.name, str(e)) from e
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
