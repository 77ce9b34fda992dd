#!/usr/bin/env python3
"""Scale past one core the Gearman way: N gearmill servers, load spread across them.

    python3 bench/multi_server.py --servers 1 2      # compare 1 and 2 servers

For each N, starts N `gearmill serve` processes on free loopback ports and runs
one load generator per server at the same time (round trips: 8 clients, 4
echo workers each, every result checked), then reports the summed jobs/s. With
as many cores as servers plus load generators the sum grows with N; on a
2-core machine the load generators take a core too, so the gain is smaller.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from harness import BenchError, Server, ensure_loadgen, gearmill_command, loadgen_argv, parse_result

LIMIT = 120.0  # seconds, each load generator's hard limit


def run(n: int, jobs: int, workdir: Path) -> float:
    with ExitStack() as stack:
        servers = [
            stack.enter_context(Server(gearmill_command(sys.executable), workdir / str(i)))
            for i in range(n)
        ]
        for s in servers:
            s.wait_ready()
        args = ["-t", str(LIMIT), "rt", "-n", str(jobs), "-c", "8", "-w", "4"]
        gens = [
            subprocess.Popen(loadgen_argv(s.port, args), stdout=subprocess.PIPE, text=True)
            for s in servers
        ]
        total = 0.0
        for g in gens:
            out, _ = g.communicate(timeout=LIMIT + 30)
            result = parse_result(out, "multi_server")
            if not result.get("ok"):
                raise RuntimeError(f"load generator failed: {result.get('error')}")
            total += float(result["value"])
        return total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--servers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--jobs", type=int, default=20000, help="round trips per server")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    try:
        ensure_loadgen()
    except BenchError as e:
        print(f"multi_server.py: {e}", file=sys.stderr)
        return 2
    print("| servers | round trips/s (sum, median) | runs |\n|---:|---:|---|")
    with tempfile.TemporaryDirectory(prefix="gearmill-multi-") as tmp:
        for n in args.servers:
            try:
                runs = [run(n, args.jobs, Path(tmp) / f"{n}.{r}") for r in range(args.repeat)]
            except RuntimeError as e:
                print(f"multi_server.py: {n} servers: {e}", file=sys.stderr)
                return 1
            cells = ", ".join(f"{r:,.0f}" for r in runs)
            print(f"| {n} | {statistics.median(runs):,.0f} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
