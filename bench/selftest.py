#!/usr/bin/env python3
"""Proves the load generator refuses to score a faulty server.

    python3 bench/selftest.py

A proxy between the load generator and a real gearmill server breaks one job in a
chosen way; the load generator must exit non-zero and name the fault, and must pass
when the proxy changes nothing:

    drop       swallows one SUBMIT_JOB_BG and answers JOB_CREATED itself  -> stalled, 1 missing
    dup        sends one SUBMIT_JOB_BG twice (a second unique), hides the
               extra JOB_CREATED                                          -> 1 duplicated
    corrupt    flips the last payload byte of one SUBMIT_JOB_BG           -> 1 malformed, 1 missing
    result     flips a byte of one WORK_COMPLETE (foreground)             -> result differs
    stall      holds one SUBMIT_JOB forever                               -> stalled
"""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from harness import BenchError, Server, ensure_loadgen, gearmill_command, loadgen_argv, parse_result

SUBMIT_JOB, SUBMIT_JOB_BG, JOB_CREATED, WORK_COMPLETE = 7, 18, 8, 13
NTH = 50  # the packet of its kind that gets broken


class Proxy:
    def __init__(self, upstream: int, fault: str) -> None:
        self.upstream, self.fault = upstream, fault
        self.count = 0  # packets of the faulted kind seen, over all connections
        self.port = 0
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._listen(), self.loop)
        if not self.ready.wait(10):
            raise RuntimeError("proxy did not start")

    async def _listen(self) -> None:
        server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)

    async def _shutdown(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _hit(self) -> bool:
        self.count += 1
        return self.count == NTH

    async def _conn(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream)
        hide = {"created": -1, "seen": 0, "sent": 0}  # dup: which JOB_CREATED to hide

        async def to_server() -> None:
            while True:
                head = await down_r.readexactly(12)
                data = await down_r.readexactly(struct.unpack(">I", head[8:])[0])
                kind = struct.unpack(">I", head[4:8])[0]
                if kind == SUBMIT_JOB_BG:
                    hide["sent"] += 1
                if self.fault == "stall" and kind == SUBMIT_JOB and self._hit():
                    await asyncio.sleep(3600)
                if kind == SUBMIT_JOB_BG and self.fault in ("drop", "dup", "corrupt"):
                    if self._hit():
                        if self.fault == "drop":
                            handle = b"H:selftest:1"
                            down_w.write(b"\0RES" + struct.pack(">II", JOB_CREATED, len(handle)))
                            down_w.write(handle)
                            continue
                        if self.fault == "corrupt":
                            data = data[:-1] + bytes([data[-1] ^ 0x5A])
                        if self.fault == "dup":
                            func, unique, payload = data.split(b"\0", 2)
                            again = b"\0".join([func, unique + b"-again", payload])
                            up_w.write(head[:8] + struct.pack(">I", len(again)) + again)
                            hide["created"] = hide["sent"]  # the reply to the second copy
                            hide["sent"] += 1
                up_w.write(head + data)

        async def to_client() -> None:
            while True:
                head = await up_r.readexactly(12)
                data = await up_r.readexactly(struct.unpack(">I", head[8:])[0])
                kind = struct.unpack(">I", head[4:8])[0]
                if kind == JOB_CREATED:
                    hide["seen"] += 1
                    if hide["seen"] - 1 == hide["created"]:
                        continue
                down_w.write(head + data)

        # WORK_COMPLETE goes worker -> server, so "result" breaks the upstream direction
        async def results() -> None:
            while True:
                head = await down_r.readexactly(12)
                data = await down_r.readexactly(struct.unpack(">I", head[8:])[0])
                kind = struct.unpack(">I", head[4:8])[0]
                if kind == WORK_COMPLETE and self._hit():
                    data = data[:-1] + bytes([data[-1] ^ 0x5A])
                up_w.write(head + data)

        up = results() if self.fault == "result" else to_server()
        try:
            await asyncio.gather(up, to_client())
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the peer left, or the self-test is over
        finally:
            up_w.close()
            down_w.close()


CASES = [
    # fault, load generator arguments, what its error must say (None: it must pass)
    ("none", ["bg", "-n", "2000", "-c", "2", "-b", "64", "-w", "2"], None),
    ("none", ["rt", "-n", "500", "-c", "2", "-w", "2"], None),
    ("drop", ["bg", "-n", "2000", "-c", "2", "-b", "64", "-w", "2", "--stall", "1"], "1 missing"),
    ("dup", ["bg", "-n", "2000", "-c", "2", "-b", "64", "-w", "2"], "1 duplicated"),
    (
        "corrupt",
        ["bg", "-n", "2000", "-c", "2", "-b", "64", "-w", "2", "--stall", "1"],
        "1 malformed",
    ),
    ("result", ["rt", "-n", "500", "-c", "2", "-w", "2"], "came back different"),
    ("stall", ["rt", "-n", "500", "-c", "2", "-w", "2", "--stall", "1"], "stalled"),
]


def main() -> int:
    try:
        ensure_loadgen()
    except BenchError as e:
        print(f"selftest.py: {e}", file=sys.stderr)
        return 2
    failures = 0
    with tempfile.TemporaryDirectory(prefix="gearmill-selftest-") as tmp:
        for i, (fault, args, expect) in enumerate(CASES):
            with Server(gearmill_command(sys.executable), Path(tmp) / str(i)) as server:
                server.wait_ready()
                proxy = Proxy(server.port, fault)
                argv = loadgen_argv(proxy.port, [*args, "-t", "30"])
                done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
                proxy.close()
            result = parse_result(done.stdout, fault)
            error = str(result.get("error", ""))
            if expect is None:
                good = done.returncode == 0 and result.get("ok") is True
            else:
                good = done.returncode != 0 and result.get("ok") is False and expect in error
            failures += not good
            said = "passes" if expect is None else f"fails: {error}"
            print(f"{'ok ' if good else 'BAD'} {fault:8} {args[0]:3} {said}", flush=True)
    print("selftest: every fault was caught" if not failures else f"selftest: {failures} BAD")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
