#!/usr/bin/env python3
"""Many sleeping workers, few jobs: the cost of waking every sleeper for each job.

    python3 bench/herd.py                          # 1 and 8 clients against 32 echo workers
    python3 bench/herd.py --shapes 1x64 --repeat 5

gearmand NOOPs every sleeping worker of a function when one job is queued;
all of them send GRAB_JOB, one gets the job and the rest get NO_JOB and
PRE_SLEEP again (the thundering herd). gearmill by default wakes one worker
per queued job that no woken worker is coming for. This runs the load
generator's round-trip mode (C clients, W workers, each worker a thread with
its own connection; every result is checked) against gearmill, gearmill
--worker-wakeup 0 (gearmand's policy) and gearmand -t1, interleaved, a fresh
server per run, and prints the medians: jobs/s, latency, and the server's CPU
seconds for the whole run. A run that loses or corrupts a job fails the script.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from harness import (
    BenchError,
    Server,
    check_gearmand,
    ensure_loadgen,
    gearmand_command,
    gearmill_command,
    run_loadgen,
)

LIMIT = 120.0  # seconds, the load generator's hard limit per run


def servers() -> dict[str, str]:
    ours = gearmill_command(sys.executable)
    return {
        "gearmill": ours,
        "gearmill-wake-all": f"{ours} --worker-wakeup 0",
        "c-gearmand-t1": gearmand_command("--threads=1"),
    }


def one_run(command: str, workdir: Path, clients: int, workers: int, jobs: int) -> dict[str, float]:
    with Server(command, workdir) as server:
        server.wait_ready()
        before = server.cpu()
        args = ["rt", "-n", str(jobs), "-c", str(clients), "-w", str(workers), "-t", str(LIMIT)]
        result = run_loadgen(server.port, [*args, "--cap", "30"], LIMIT)
        cpu = server.cpu() - before
    if not result.get("ok"):
        raise RuntimeError(f"{command}: {result.get('error')}")
    return {
        "jobs/s": float(result["value"]),
        "p50 µs": float(result["p50_us"]),
        "p99 µs": float(result["p99_us"]),
        "server CPU s": cpu,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--shapes", nargs="+", default=["1x32", "8x32"], help="CLIENTSxWORKERS (default 1x32 8x32)"
    )
    p.add_argument("--jobs", type=int, default=5000, help="round trips per run")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    shapes: list[tuple[int, int]] = []
    for shape in args.shapes:
        try:
            c, w = (int(x) for x in shape.split("x"))
        except ValueError:
            print(f"herd.py: --shapes {shape}: write CLIENTSxWORKERS, e.g. 1x32", file=sys.stderr)
            return 2
        shapes.append((c, w))
    try:
        check_gearmand()
        ensure_loadgen()
    except BenchError as e:
        print(f"herd.py: {e}", file=sys.stderr)
        return 2
    named = servers()
    metrics = ["jobs/s", "p50 µs", "p99 µs", "server CPU s"]
    print("| clients x workers | server | " + " | ".join(metrics) + " |")
    print("|---|---|" + "---:|" * len(metrics))
    with tempfile.TemporaryDirectory(prefix="gearmill-herd-") as tmp:
        for c, w in shapes:
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in named}
            for rep in range(args.repeat):
                for name, command in named.items():
                    try:
                        runs[name].append(
                            one_run(command, Path(tmp) / f"{name}.{rep}", c, w, args.jobs)
                        )
                    except RuntimeError as e:
                        print(f"herd.py: {c}x{w} {name} failed: {e}", file=sys.stderr)
                        return 1
            for name, results in runs.items():
                cells = [
                    f"{statistics.median(r[m] for r in results):,.{2 if 'CPU' in m else 0}f}"
                    for m in metrics
                ]
                print(f"| {c} x {w} | {name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
