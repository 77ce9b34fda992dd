"""Real servers on loopback ports: gearmill (ours) and, for comparison, C gearmand."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

import gearmill as gm

T = TypeVar("T")

REQ = b"\x00REQ"
RES = b"\x00RES"
PREFIX = "H:test"

# Test servers keep their jobs in memory (a restart is a fresh, empty server) unless a
# test names a store; none writes to the state folder of whoever runs the tests.
os.environ["GEARMILL_STORE"] = "memory"
os.environ["GEARMILL_STATE_DIR"] = tempfile.mkdtemp(prefix="gearmill-test-state-")

# Servers' working folders (logs, pid files) go under pytest's own temporary
# folder, which keeps the last three runs for a look after a failure and
# removes older ones.
_TMP_ROOT: Path | None = None


@pytest.fixture(scope="session", autouse=True)
def _server_tmp_root(tmp_path_factory: pytest.TempPathFactory) -> None:
    global _TMP_ROOT
    _TMP_ROOT = tmp_path_factory.mktemp("servers")


def _server_tmp(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir=_TMP_ROOT))


# gearmill serve's start line (printed at every log level): every address it listens on
_LISTENING = re.compile(rb"Listening on (\S+):(\d+)[ ,]")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    condition: Callable[[], T], what: str, timeout: float = 10.0, every: float = 0.02
) -> T:
    """Poll ``condition`` until it returns something true, and return that; after
    ``timeout`` seconds, an AssertionError that names ``what`` was awaited."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(every)
    return value


async def async_wait_until(
    condition: Callable[[], T], what: str, timeout: float = 10.0, every: float = 0.02
) -> T:
    """:func:`wait_until` inside an event loop, which keeps running meanwhile."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        await asyncio.sleep(every)
    return value


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"version\n")
                if s.recv(100).startswith(b"OK"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start")


def wait_listening(log: Path, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """The port gearmill serve says it listens on, read from its start line in ``log``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_bytes() if log.exists() else b""
        found = _LISTENING.search(text)
        if found:
            return int(found.group(2))
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {text[-2000:]!r}")
        time.sleep(0.02)
    raise RuntimeError(f"server did not say where it listens within {timeout} s")


def _log_flag(extra: tuple[str, ...]) -> str | None:
    """The log file a test gave with -l/--log-file, if any."""
    for i, arg in enumerate(extra):
        if arg in ("-l", "--log-file") and i + 1 < len(extra):
            return extra[i + 1]
        if arg.startswith("--log-file="):
            return arg.split("=", 1)[1]
    return None


class Running:
    """A started server process."""

    def __init__(
        self,
        name: str,
        proc: subprocess.Popen[bytes],
        port: int,
        tmp: Path,
        cmd: list[str],
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.env = env
        self.cmd = cmd
        self.proc = proc
        self.port = port
        self.tmp = tmp
        self.address = f"127.0.0.1:{port}"

    def conn(self) -> Conn:
        return Conn(self.port)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> None:
        """Stop, then start the same server on the same port (a fresh, empty one unless
        it names a --store: then its stored background jobs come back)."""
        self.stop()
        with open(self.tmp / "server.log", "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=log, env=self.env)
        wait_port(self.port, self.proc)


def gearmill_cmd(port: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gearmill.cli.main",
        "serve",
        "-p",
        str(port),
        "--job-handle-prefix",
        PREFIX,
        *extra,
    ]


def start_gearmill(
    *extra: str, tmp: Path | None = None, env: dict[str, str] | None = None
) -> Running:
    """gearmill serve on a port it picks (-p 0), read back from its start line: no race
    for a free port. ``restart`` reuses the port it got."""
    tmp = tmp or _server_tmp("gearmill-")
    own_log = tmp / "server.log"
    with open(own_log, "ab") as log:
        proc = subprocess.Popen(gearmill_cmd(0, *extra), stdout=log, stderr=log, env=env)
    given = _log_flag(extra)
    if given == "none":
        raise ValueError("start_gearmill reads the port from the log: do not pass -l none")
    port = wait_listening(Path(given) if given else own_log, proc)
    return Running("gearmill", proc, port, tmp, gearmill_cmd(port, *extra), env)


def start_gearmand(*extra: str) -> Running:
    binary = shutil.which("gearmand") or "/usr/sbin/gearmand"
    port = free_port()
    tmp = _server_tmp("gearmand-")
    cmd = [
        binary,
        "--listen=127.0.0.1",
        f"--port={port}",
        f"--log-file={tmp}/gearmand.log",
        f"--pid-file={tmp}/gearmand.pid",
        "--threads=1",
        f"--job-handle-prefix={PREFIX}",
        *extra,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return Running("gearmand", proc, port, tmp, cmd)


@pytest.fixture
def gearmill() -> Iterator[Running]:
    srv = start_gearmill()
    yield srv
    srv.stop()


@pytest.fixture
def gearmand() -> Iterator[Running]:
    srv = start_gearmand()
    yield srv
    srv.stop()


@pytest.fixture(params=["gearmill", "gearmand"])
def server(request: pytest.FixtureRequest) -> Iterator[Running]:
    """The same scenario against ours and against C gearmand 1.1.20."""
    srv = start_gearmill() if request.param == "gearmill" else start_gearmand()
    yield srv
    srv.stop()


class Conn:
    """A raw Gearman connection speaking bytes, for byte-exact assertions."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, ptype: int, *args: bytes, magic: bytes = REQ) -> None:
        payload = b"\x00".join(args)
        self.sock.sendall(struct.pack(">4sII", magic, ptype, len(payload)) + payload)

    def raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("closed by server")
        self.buf += chunk

    def recv(self) -> tuple[int, bytes]:
        """One packet: (type, payload)."""
        while len(self.buf) < 12:
            self._fill()
        magic, ptype, size = struct.unpack(">4sII", self.buf[:12])
        assert magic == RES, self.buf[:12]
        while len(self.buf) < 12 + size:
            self._fill()
        payload = self.buf[12 : 12 + size]
        self.buf = self.buf[12 + size :]
        return ptype, payload

    def expect(self, ptype: int) -> bytes:
        got, payload = self.recv()
        assert got == ptype, (got, payload)
        return payload

    def quiet(self, wait: float = 0.2) -> bool:
        """True when nothing arrives within ``wait`` seconds."""
        if self.buf:
            return False
        self.sock.settimeout(wait)
        try:
            chunk = self.sock.recv(1 << 16)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(5.0)
        if not chunk:
            raise ConnectionError("closed by server")
        self.buf += chunk
        return False

    def closed_by_server(self, wait: float = 2.0) -> bool:
        self.sock.settimeout(wait)
        try:
            while True:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    return True
                self.buf += chunk
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def admin(self, line: bytes) -> bytes:
        """Send one admin line and read the whole reply (list or single line)."""
        self.sock.sendall(line)
        while True:
            if self.buf.startswith((b"OK", b"ERR")) and b"\n" in self.buf:
                end = self.buf.index(b"\n") + 1
                reply, self.buf = self.buf[:end], self.buf[end:]
                return reply
            if self.buf == b".\n" or b"\n.\n" in self.buf:
                end = 2 if self.buf.startswith(b".\n") else self.buf.index(b"\n.\n") + 3
                reply, self.buf = self.buf[:end], self.buf[end:]
                return reply
            self._fill()


def gearman_tools_available() -> bool:
    return bool(shutil.which("gearman") and shutil.which("gearadmin") and shutil.which("gearmand"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The README's test command installs the Debian tools; in CI nothing may be skipped,
    # so a missing tool fails loudly instead of skipping quietly.
    if not gearman_tools_available() and os.environ.get("CI"):
        raise pytest.UsageError("gearman-tools / gearman-job-server are not installed")


@pytest.fixture(autouse=True)
def _shared_empty_queues_stay_empty() -> Iterator[None]:
    """Functions without jobs share one set of empty queues; a job appended there
    instead of to the function's own queues would surface in another function (or
    another broker) later. Every path that queues a job must use own_queues()."""
    yield
    from gearmill.server import model

    assert all(not q for q in model.NO_QUEUES), "a job was queued on the shared empty queues"


class running_worker:
    """A blocking Worker working in a thread for the duration of a ``with``."""

    def __init__(self, worker: gm.Worker) -> None:
        self.worker = worker
        self.thread = threading.Thread(target=worker.work, daemon=True)

    def __enter__(self) -> gm.Worker:
        self.thread.start()
        return self.worker

    def __exit__(self, *exc: object) -> None:
        self.worker.stop()
        self.thread.join(30)
        assert not self.thread.is_alive()
