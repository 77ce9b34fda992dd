#!/usr/bin/env python3
"""Many sleeping workers, few jobs: the cost of waking every sleeper for each job.

    python3 bench/herd.py                          # 1 and 8 clients against 32 echo workers
    python3 bench/herd.py --shapes 1x64 --repeat 5

gearmand NOOPs every sleeping worker of a function when one job is queued;
all of them send GRAB_JOB, one gets the job and the rest get NO_JOB and
PRE_SLEEP again (the thundering herd). gearmill by default wakes one worker
per queued job that no woken worker is coming for. This runs the load
generator's round-trip mode (C clients, W workers, each worker a thread with
its own connection) against gearmill, gearmill --worker-wakeup 0 (gearmand's
policy) and gearmand -t1, interleaved, a fresh server per run, and prints the
medians: jobs/s, latency, and the server's CPU seconds for the whole run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from multi_server import free_port, wait_ready

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def servers(bench: Path) -> dict[str, str]:
    py = shlex.quote(sys.executable)
    ours = f"{py} -m gearmill.cli.main serve -p {{port}} --log-file none"
    return {
        "gearmill": ours,
        "gearmill-wake-all": f"{ours} --worker-wakeup 0",
        "c-gearmand-t1": f"{bench}/servers/c-gearmand.sh {{port}} {{tmp}} --threads=1",
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def one_run(command: str, loadgen: Path, clients: int, workers: int, jobs: int) -> dict[str, float]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen(shlex.split(command.format(port=port, tmp=tmp)))
        try:
            wait_ready(port)
            before = cpu_seconds(server.pid)
            done = subprocess.run(
                [
                    *(str(loadgen), "--port", str(port), "-q", "-t", "120", "--max-seconds", "30"),
                    *("rt", "-n", str(jobs), "-c", str(clients), "-w", str(workers)),
                ],
                capture_output=True,
                text=True,
                timeout=180,
            )
            cpu = cpu_seconds(server.pid) - before
        finally:
            server.terminate()
            server.wait(10)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not result.get("ok"):
        raise RuntimeError(f"load generator failed against {command!r}: {result}")
    return {
        "jobs/s": float(result["value"]),
        "p50 µs": float(result["p50_us"]),
        "p99 µs": float(result["p99_us"]),
        "server CPU s": cpu,
    }


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--shapes", nargs="+", default=["1x32", "8x32"], help="CLIENTSxWORKERS (default 1x32 8x32)"
    )
    p.add_argument("--jobs", type=int, default=5000, help="round trips per run")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--bench", type=Path, default=ROOT.parent / "shared" / "bench")
    args = p.parse_args()
    loadgen = args.bench / "loadgen" / "build" / "loadgen"
    if not loadgen.exists():
        print(
            f"herd.py: no load generator at {loadgen}; build it with make -C {args.bench}/loadgen",
            file=sys.stderr,
        )
        return 2
    shapes: list[tuple[int, int]] = []
    for shape in args.shapes:
        try:
            c, w = (int(x) for x in shape.split("x"))
        except ValueError:
            print(f"herd.py: --shapes {shape}: write CLIENTSxWORKERS, e.g. 1x32", file=sys.stderr)
            return 2
        shapes.append((c, w))
    named = servers(args.bench)
    metrics = ["jobs/s", "p50 µs", "p99 µs", "server CPU s"]
    print("| clients x workers | server | " + " | ".join(metrics) + " |")
    print("|---|---|" + "---:|" * len(metrics))
    for c, w in shapes:
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in named}
        for _ in range(args.repeat):
            for name, command in named.items():
                runs[name].append(one_run(command, loadgen, c, w, args.jobs))
        for name, results in runs.items():
            cells = [
                f"{median([r[m] for r in results]):,.{2 if 'CPU' in m else 0}f}" for m in metrics
            ]
            print(f"| {c} x {w} | {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
