"""Server instructions per operation, counted by valgrind (deterministic, unlike timings).

    python bench/micro/icount.py [--python PY] [--n 20000] ping drain rt bg

For each loadgen mode it runs ``PY -m gearmill.cli.main serve`` under
``valgrind --tool=callgrind`` twice, once for one operation and once for
``--n``, and prints (Ir(n) - Ir(1)) / (n - 1): the server's own instructions
(user space, event loop included) per GET_STATUS round trip (ping), per
queued-then-drained job (drain: 2 clients, 4 workers), per foreground job
(rt: 8 clients, 4 workers) or per background submission (bg: 2 clients, 256
pipelined, left queued) or per lone one (lone: 1 client, 1 in flight, left
queued), or per admin ``status`` command (admin: 1 connection, one line at a
time, 4 functions known; sent from here, the load generator has no admin mode).
Compare two builds by passing each one's Python.
Needs valgrind; the load generator (bench/loadgen) is built when missing.
"""

from __future__ import annotations

import argparse
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import ensure_loadgen  # bench/ is not a package

MODES = {
    "ping": ["status", "-c", "1"],
    "drain": ["drain", "-c", "2", "-w", "4"],
    "rt": ["rt", "-c", "8", "-w", "4"],
    # background submissions only (256 pipelined per batch), left queued
    "bg": ["bg", "-c", "2", "-b", "256", "--no-drain"],
    # one-at-a-time background submissions (each waits for its JOB_CREATED), left queued:
    # with --serve-arg=--store=URL, what a durable store's commit costs a lone job
    "lone": ["bg", "-c", "1", "-b", "1", "--no-drain"],
}
# sent by admin_status() below, not by the load generator
ADMIN = "admin"
ADMIN_FUNCTIONS = 4


def admin_status(port: int, n: int) -> None:
    """``n`` admin ``status`` round trips on one connection, after registering a few
    functions (one with a queued job) so that the reply has lines to render."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        for i in range(ADMIN_FUNCTIONS):
            name = b"icount.f%d" % i
            s.sendall(b"\0REQ" + struct.pack(">II", 1, len(name)) + name)  # CAN_DO
        body = b"icount.f0\0\0x"
        s.sendall(b"\0REQ" + struct.pack(">II", 18, len(body)) + body)  # SUBMIT_JOB_BG
        reply = b""
        while len(reply) < 12:
            reply += s.recv(4096)  # JOB_CREATED: everything above is in
        for _ in range(n):
            s.sendall(b"status\n")
            reply = b""
            while not reply.endswith(b"\n.\n"):
                chunk = s.recv(65536)
                if not chunk:
                    raise SystemExit("icount: the server closed the admin connection")
                reply += chunk


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def instructions(python: str, loadgen: Path, mode: str, n: int, extra: Sequence[str] = ()) -> int:
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "valgrind.log"
        server = subprocess.Popen(
            [
                *("valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg"),
                *(f"--log-file={log}", python, "-m", "gearmill.cli.main", "serve"),
                *("-p", str(port), "--log-file", f"{tmp}/server.log", "--store", "memory"),
                *extra,
            ]
        )
        try:
            # its start line comes once every listener (--http's too) is up: a SIGINT
            # before that would stop a server half started
            deadline = time.monotonic() + 120
            started = Path(tmp) / "server.log"
            while time.monotonic() < deadline:
                if started.exists() and "Listening on" in started.read_text():
                    break
                if server.poll() is not None:
                    raise SystemExit(f"icount: the server exited ({server.returncode})")
                time.sleep(0.5)
            else:
                raise SystemExit("icount: the server under valgrind did not start in 120 s")
            if mode == ADMIN:
                admin_status(port, n)
            else:
                args = [str(loadgen), "--host", "127.0.0.1", "--port", str(port), "-t", "300"]
                run = [*args, *MODES[mode][:1], "-n", str(n), *MODES[mode][1:]]
                subprocess.run(run, check=True, stdout=subprocess.DEVNULL)
        finally:
            server.send_signal(2)
            server.wait(60)
        found = re.search(r"Collected : (\d+)", log.read_text())
        if found is None:
            raise SystemExit(f"icount: no instruction count in {log}")
        return int(found.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("modes", nargs="*", default=list(MODES), choices=[*MODES, ADMIN])
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--loadgen", type=Path, default=None, help="default: bench/loadgen's")
    ap.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for gearmill serve (repeatable): --serve-arg=--http=127.0.0.1:0",
    )
    a = ap.parse_args()
    if a.loadgen is None:
        a.loadgen = ensure_loadgen()
    for mode in a.modes:
        one = instructions(a.python, a.loadgen, mode, 1, a.serve_arg)
        many = instructions(a.python, a.loadgen, mode, a.n, a.serve_arg)
        print(f"{mode}: {(many - one) / (a.n - 1):,.0f} server instructions per operation")


if __name__ == "__main__":
    main()
