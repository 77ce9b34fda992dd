#!/usr/bin/env python3
"""Run the shared harness with gearmill beside C gearmand and print a table of ratios.

    python3 bench/compare.py                      # full run, 3 interleaved repeats
    python3 bench/compare.py --quick              # 1/10 sizes, 1 repeat (a smoke test)
    python3 bench/compare.py --scenarios bg_100k,big_64MiB --repeat 5
    python3 bench/compare.py --cpus 0 --scenarios lat_5k_c1_w1,status_20k_c1   # pinned

The ratio column is "how many times better gearmill is than the best gearmand
configuration" (c-gearmand -t1, or -t1 with a 1M-bucket hashtable, whichever
did better in that scenario): throughput gearmill / gearmand, latency and
memory gearmand / gearmill. Above 1.00 gearmill is ahead.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HIGHER_IS_BETTER = {"jobs/s", "req/s", "MB/s"}

GEARMANDS = {
    "c-gearmand-t1": "{bench}/servers/c-gearmand.sh {port} {tmp} --threads=1",
    "c-gearmand-t1-hash1M": (
        "{bench}/servers/c-gearmand.sh {port} {tmp} --threads=1 --hashtable-buckets=1000003"
    ),
}


def gearmill_command(extra: str) -> str:
    python = shlex.quote(sys.executable)
    return f"{python} -m gearmill.cli.main serve -p {{port}} --log-file none {extra}".strip()


def ratio(unit: str, ours: float, theirs: float) -> float:
    if unit in HIGHER_IS_BETTER:
        return ours / theirs if theirs else float("inf")
    return theirs / ours if ours else float("inf")


def table(results: list[dict[str, object]], ours: str) -> str:
    by: dict[str, dict[str, dict[str, object]]] = {}
    order: list[str] = []
    for r in results:
        scenario = str(r["scenario"])
        if scenario not in by:
            order.append(scenario)
        by.setdefault(scenario, {})[str(r["server"])] = r
    lines = [
        f"| scenario | unit | {ours} | best gearmand | which | ratio (>1 = gearmill ahead) |",
        "|---|---|---:|---:|---|---:|",
    ]
    for scenario in order:
        row = by[scenario]
        mine = row.get(ours)
        others = [(n, r) for n, r in row.items() if n in GEARMANDS and r.get("value") is not None]
        if mine is None or not others:
            continue
        unit = str(mine["unit"])
        if scenario.endswith(("idle_rss_MiB", ".max_us", "_bg16.rss_MiB", "conns_5k.rss_MiB")):
            # context only: the targets are per queued job and per connection (a
            # server capped before queueing all 1M jobs has a smaller total RSS)
            continue
        pick = max if unit in HIGHER_IS_BETTER else min
        name, best = pick(others, key=lambda nr: float(nr[1]["value"]))  # type: ignore[arg-type]
        if mine.get("value") is None:
            lines.append(f"| {scenario} | {unit} | failed | {best['value']:,} | {name} | - |")
            continue
        value, theirs = float(mine["value"]), float(best["value"])  # type: ignore[arg-type]
        r = ratio(unit, value, theirs)
        mark = "" if r >= 1.0 else " (behind)"
        if best.get("note") or mine.get("note"):
            mark += " *"
        lines.append(
            f"| {scenario} | {unit} | {value:,.1f} | {theirs:,.1f} | {name} | {r:.2f}{mark} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--bench",
        default=os.environ.get("GEARMAN_BENCH", str(ROOT.parent / "shared" / "bench")),
        help="the shared harness folder (default ../shared/bench or $GEARMAN_BENCH)",
    )
    p.add_argument("--quick", action="store_true", help="1/10 sizes, 1 repeat")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--scenarios", help="comma-separated (default: every scenario)")
    p.add_argument("--gearmill-args", default="", help="extra flags for gearmill serve")
    p.add_argument(
        "--with-pure", action="store_true", help="also measure GEARMILL_PURE=1 (the reference)"
    )
    p.add_argument("--no-hash", action="store_true", help="skip the -t1-hash1M configuration")
    p.add_argument(
        "--cpus",
        help="run every server and load generator under taskset -c CPUS (the harness's "
        "stable software-path latencies; for lat_*/status_* only)",
    )
    p.add_argument("--out", help="folder for results (default: a new temporary folder)")
    args = p.parse_args()

    run_py = Path(args.bench) / "run.py"
    if not run_py.exists():
        print(f"compare.py: {run_py} not found; pass --bench DIR", file=sys.stderr)
        return 2
    out = Path(args.out or tempfile.mkdtemp(prefix="gearmill-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(run_py), "--out", str(out)]
    cmd += ["--quick"] if args.quick else ["--repeat", str(args.repeat)]
    if args.scenarios:
        cmd += ["--scenarios", args.scenarios]
    if args.cpus:
        cmd += ["--cpus", args.cpus]
    cmd += ["-s", "gearmill=" + gearmill_command(args.gearmill_args)]
    if args.with_pure:
        cmd += ["-s", "gearmill-pure=env GEARMILL_PURE=1 " + gearmill_command(args.gearmill_args)]
    for name, command in GEARMANDS.items():
        if name.endswith("hash1M") and args.no_hash:
            continue
        cmd += ["-s", f"{name}={command}"]
    print("$ " + shlex.join(cmd), file=sys.stderr)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL)
    results_file = out / "results.jsonl"
    if not results_file.exists():
        print(f"compare.py: the harness wrote no results (exit {done.returncode})", file=sys.stderr)
        return 1
    results = [json.loads(line) for line in results_file.read_text().splitlines() if line]
    text = f"Run {started}; medians of {1 if args.quick else args.repeat} interleaved runs.\n\n"
    text += table(results, "gearmill")
    if args.with_pure:
        text += "\nThe pure-Python reference (GEARMILL_PURE=1) in the same run:\n\n"
        text += table(results, "gearmill-pure")
    (out / "ratios.md").write_text(text)
    print(text)
    print(f"results in {out}", file=sys.stderr)
    failed = [r for r in results if r.get("value") is None]
    for r in failed:
        print(
            f"compare.py: {r['server']} {r['scenario']} failed: {r.get('error')}", file=sys.stderr
        )
    return done.returncode or (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
