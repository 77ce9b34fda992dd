#!/usr/bin/env python3
"""Scale past one core the Gearman way: N gearmill servers, load spread across them.

    python3 bench/multi_server.py --servers 1 2      # compare 1 and 2 servers

For each N, starts N `gearmill serve` processes on free loopback ports and runs
one load generator per server at the same time (round trips: 8 clients, 4
echo workers each), then reports the summed jobs/s. With as many cores as
servers plus load generators the sum grows with N; on a 2-core machine the
load generators take a core too, so the gain is smaller.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"version\n")
                if s.recv(64).startswith(b"OK"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on {port} did not start")


def run(n: int, loadgen: str, jobs: int) -> float:
    ports = [free_port() for _ in range(n)]
    servers = [
        subprocess.Popen(
            [sys.executable, "-m", "gearmill.cli.main", "serve", "-p", str(p), "--log-file", "none"]
        )
        for p in ports
    ]
    try:
        for p in ports:
            wait_ready(p)
        gens = [
            subprocess.Popen(
                [
                    *(loadgen, "--host", "127.0.0.1", "--port", str(p), "-q", "-t", "120"),
                    *("--max-seconds", "30", "rt", "-n", str(jobs), "-c", "8", "-w", "4"),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for p in ports
        ]
        total = 0.0
        for g in gens:
            out, _ = g.communicate(timeout=180)
            result = json.loads(out.strip().splitlines()[-1])
            if not result.get("ok"):
                raise RuntimeError(f"load generator failed: {result}")
            total += float(result["value"])
        return total
    finally:
        for s in servers:
            s.terminate()
        for s in servers:
            s.wait(10)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--servers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--jobs", type=int, default=20000, help="round trips per server")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--loadgen", default=str(ROOT.parent / "shared" / "bench" / "loadgen" / "build" / "loadgen")
    )
    args = p.parse_args()
    if not Path(args.loadgen).exists():
        print(
            f"multi_server.py: no load generator at {args.loadgen}; build it with "
            "make -C ../shared/bench/loadgen",
            file=sys.stderr,
        )
        return 2
    print("| servers | round trips/s (sum, median) | runs |\n|---:|---:|---|")
    for n in args.servers:
        runs = sorted(run(n, args.loadgen, args.jobs) for _ in range(args.repeat))
        median = runs[len(runs) // 2]
        print(f"| {n} | {median:,.0f} | {', '.join(f'{r:,.0f}' for r in runs)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
