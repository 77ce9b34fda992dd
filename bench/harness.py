"""What the benchmark drivers share: building the load generator (loadgen/gmload.c), and
starting, probing, measuring and stopping one server on a free loopback port.

Standard library only, so the drivers run with any Python 3.11; the server commands say
which Python runs gearmill.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

BENCH = Path(__file__).resolve().parent
LOADGEN_SRC = BENCH / "loadgen" / "gmload.c"
LOADGEN = BENCH / "loadgen" / "build" / "gmload"
GEARMAND = "/usr/sbin/gearmand"
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class BenchError(Exception):
    """A setup problem, said in one line with how to fix it."""


def ensure_loadgen() -> Path:
    """Builds the load generator when it is missing or older than its source."""
    if LOADGEN.exists() and LOADGEN.stat().st_mtime >= LOADGEN_SRC.stat().st_mtime:
        return LOADGEN
    LOADGEN.parent.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC", "cc")
    tmp = LOADGEN.with_suffix(".tmp")
    cmd = [cc, "-O2", "-std=c11", "-Wall", "-o", str(tmp), str(LOADGEN_SRC), "-lgearman"]
    cmd.append("-lpthread")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise BenchError(
            f"no C compiler ({cc}) to build the load generator: install gcc and "
            "libgearman-dev (./scripts/setup does)"
        ) from None
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["(no message)"])[0]
        raise BenchError(
            f"building the load generator failed ({shlex.join(cmd)}): {first}; "
            "install libgearman-dev (./scripts/setup does)"
        )
    tmp.replace(LOADGEN)
    return LOADGEN


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gearman_status_ok(port: int, timeout: float = 1.0) -> bool:
    """One binary GET_STATUS (type 15) round trip: answered with STATUS_RES (type 20)."""
    handle = b"H:ready:0"
    request = b"\0REQ" + struct.pack(">II", 15, len(handle)) + handle
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(request)
            header = b""
            while len(header) < 12:
                chunk = s.recv(12 - len(header))
                if not chunk:
                    return False
                header += chunk
    except OSError:
        return False
    magic, kind, _ = struct.unpack(">4sII", header)
    return bool(magic == b"\0RES" and kind == 20)


def gearmill_command(python: str, extra: str = "") -> str:
    """`gearmill serve` under the given Python, as a server command template; jobs in
    memory (gearmand's default, which the scenarios compare with) unless extra names a store."""
    cmd = f"{shlex.quote(python)} -m gearmill.cli.main serve -p {{port}} --log-file none"
    if "--store" not in extra:
        cmd += " --store memory"
    return f"{cmd} {extra}".strip()


def gearmand_command(extra: str = "--threads=1") -> str:
    return (
        f"{GEARMAND} --listen=127.0.0.1 --port={{port}} --log-file={{tmp}}/gearmand.log "
        f"--pid-file={{tmp}}/gearmand.pid {extra}"
    ).strip()


def check_gearmand() -> None:
    if not os.access(GEARMAND, os.X_OK):
        raise BenchError(
            f"{GEARMAND} not found: install gearman-job-server (./scripts/setup does), "
            "or leave gearmand out"
        )


def check_python(python: str) -> None:
    """The Python that serves gearmill must import it."""
    try:
        done = subprocess.run(
            [python, "-c", "import gearmill"], capture_output=True, text=True, timeout=60
        )
    except OSError as e:
        raise BenchError(f"{python}: cannot run it ({e.strerror})") from None
    if done.returncode != 0:
        raise BenchError(
            f"{python} cannot import gearmill: run the driver with the project's "
            ".venv/bin/python (./scripts/setup makes it), or point at a Python that has it"
        )


def _raise_nofile() -> None:
    # thousands of idle connections need as many descriptors in the server
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _tree(root: int) -> list[int]:
    """root and its descendants."""
    pids, i = [root], 0
    while i < len(pids):
        try:
            tasks = Path(f"/proc/{pids[i]}/task").iterdir()
            for task in tasks:
                pids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
        i += 1
    return pids


def rss_bytes(root: int) -> int:
    total = 0
    for pid in _tree(root):
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total


def cpu_seconds(root: int) -> float:
    total = 0
    for pid in _tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, IndexError, ValueError):
            pass
    return total / TICK


def machine_busy_seconds() -> float:
    """CPU time used by everything on the machine (all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks[:8]) - idle) / TICK


def children_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class Server:
    """One server process in its own process group, stopped by signalling the group."""

    def __init__(self, command: str, workdir: Path, pin: str | None = None) -> None:
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.argv = shlex.split(command.format(port=self.port, tmp=workdir))
        if pin:
            self.argv = ["taskset", "-c", pin, *self.argv]
        self.log = (workdir / "server.log").open("wb")
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_raise_nofile,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_tail()}")
            if gearman_status_ok(self.port):
                return
            time.sleep(0.05)
        raise RuntimeError(f"server did not answer GET_STATUS within {timeout:.0f} s")

    def log_tail(self) -> str:
        self.log.flush()
        lines = (self.workdir / "server.log").read_text(errors="replace").strip().splitlines()
        return " | ".join(lines[-3:]) or "(no output)"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss(self) -> int:
        return rss_bytes(self.proc.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        self.log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def loadgen_argv(port: int, args: Sequence[str], pin: str | None = None) -> list[str]:
    argv = [str(LOADGEN), "--port", str(port), *args]
    return ["taskset", "-c", pin, *argv] if pin else argv


def parse_result(text: str, what: str) -> dict[str, Any]:
    lines = [line for line in text.strip().splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{what}: the load generator printed no result")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def run_loadgen(
    port: int, args: Sequence[str], limit: float, pin: str | None = None
) -> dict[str, Any]:
    """One load generator run; its JSON, with ok false (and an error) when unverified."""
    argv = loadgen_argv(port, args, pin)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=limit + 30)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"load generator still running after {limit + 30:.0f} s"}
    try:
        return parse_result(done.stdout, shlex.join(argv))
    except (RuntimeError, ValueError):
        err = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        return {"ok": False, "error": f"no result from the load generator: {err[0]}"}


def hold_connections(
    port: int, args: Sequence[str], limit: float, pin: str | None, measure: Any
) -> tuple[dict[str, Any], Any]:
    """Runs `gmload --hold conns`; calls measure() while every connection is open."""
    argv = loadgen_argv(port, [*args, "--hold"], pin)
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    measured = None
    try:
        deadline = time.monotonic() + limit
        for line in _lines(proc.stdout, deadline):
            if line.startswith("# holding"):
                measured = measure()
                break
            if line.startswith("{"):  # it failed before holding
                proc.wait(10)
                return json.loads(line), None
        # communicate() closes stdin: the load generator then checks and reports
        out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()) + 30)
        return parse_result(out, shlex.join(argv)), measured
    except (subprocess.TimeoutExpired, RuntimeError, ValueError) as e:
        proc.kill()
        proc.wait()
        return {"ok": False, "error": f"connection hold failed: {e}"}, None


def _lines(stream: IO[str], deadline: float) -> Iterator[str]:
    import select

    buf = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 0.2)
        if not ready:
            continue
        chunk = os.read(stream.fileno(), 65536).decode()
        if not chunk:
            return
        buf += chunk
        while "\n" in buf:
            line, buf = buf.split("\n", 1)
            yield line
    raise RuntimeError("timed out waiting for the load generator")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
