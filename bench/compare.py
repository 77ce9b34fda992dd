#!/usr/bin/env python3
"""Benchmark gearmill beside C gearmand with our load generator and print a table of ratios.

    python3 bench/compare.py                      # every scenario, median of 3 interleaved runs
    python3 bench/compare.py --quick              # 1/10 sizes, 1 run (a smoke test)
    python3 bench/compare.py --scenarios bg_100k,big_64MiB --repeat 5
    python3 bench/compare.py --cpus 0 --scenarios lat_5k_c1_w1,status_20k_c1   # pinned
    python3 bench/compare.py --gearmill-python old=/tmp/old/.venv/bin/python   # two builds
    python3 bench/compare.py --no-gearmill --no-gearmand \
        --gearmill-python before=/v/before/bin/python --gearmill-python after=/v/after/bin/python

Servers run interleaved (A B C A B C ...), each run on a fresh server on a free loopback
port, started when it answers GET_STATUS. The load generator (bench/loadgen/gmload.c, on
libgearman, built on first use) verifies every job: a server that loses, duplicates or
corrupts one fails the run and the script exits non-zero.

The ratio column is "how many times better this server is than the best gearmand
configuration" (gearmand --threads=1, or with a 1M-bucket hashtable, whichever did better
in that scenario): throughput ours / gearmand, latency and memory gearmand / ours.
Above 1.00 ours is ahead.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import (
    BenchError,
    Server,
    check_gearmand,
    check_python,
    children_cpu_seconds,
    ensure_loadgen,
    gearmand_command,
    gearmill_command,
    hold_connections,
    machine_busy_seconds,
    run_loadgen,
    say,
)

HIGHER_IS_BETTER = {"jobs/s", "req/s", "MB/s"}
MIB = 1 << 20
GEARMANDS = {
    "c-gearmand-t1": gearmand_command("--threads=1"),
    "c-gearmand-t1-hash1M": gearmand_command("--threads=1 --hashtable-buckets=1000003"),
}
# context only in the ratio table: the targets are per queued job and per connection (a
# server capped before queueing every job has a smaller total RSS)
CONTEXT_ONLY = ("idle_rss_MiB", ".max_us", "_bg16.rss_MiB", "conns_5k.rss_MiB")


@dataclass
class Scenario:
    name: str
    args: list[str]
    metrics: list[tuple[str, str, str]]  # (suffix, field of the run record, unit)
    limit: float  # the load generator's hard time limit, seconds
    kind: str = "load"  # load, mem (RSS after a fill) or conns (RSS while holding)
    cap: float = 10.0  # --cap for a slow server (0: none)
    repeat: int | None = None  # runs, when not --repeat
    doc: str = ""


def scenarios(scale: float) -> list[Scenario]:
    def n(x: int) -> str:
        return str(max(1, int(x * scale)))

    jobs, lat = ("", "value", "jobs/s"), [(".p50_us", "p50_us", "us"), (".p99_us", "p99_us", "us")]
    return [
        Scenario(
            "bg_100k",
            ["bg", "-n", n(100_000), "-c", "2", "-b", "256", "-w", "4"],
            [jobs],
            150,
            doc="2 clients submit background jobs, 256 pipelined per batch, timed to the last "
            "JOB_CREATED; 4 workers then drain and check them (untimed)",
        ),
        Scenario(
            "drain_100k_w4",
            ["drain", "-n", n(100_000), "-c", "2", "-w", "4"],
            [jobs],
            150,
            doc="background jobs queued (untimed); 4 connected workers register and drain them",
        ),
        Scenario(
            "rt_20k_c8_w4",
            ["rt", "-n", n(20_000), "-c", "8", "-w", "4"],
            [jobs, *lat],
            120,
            doc="8 clients, foreground jobs through 4 echo workers",
        ),
        Scenario(
            "lat_5k_c1_w1",
            ["rt", "-n", n(5_000), "-c", "1", "-w", "1"],
            [*lat, (".max_us", "max_us", "us"), jobs],
            120,
            doc="1 client, 1 echo worker, one job at a time: unloaded latency",
        ),
        Scenario(
            "status_20k_c1",
            ["status", "-n", n(20_000), "-c", "1"],
            [("", "value", "req/s"), (".p50_us", "p50_us", "us")],
            60,
            doc="1 client, GET_STATUS round trips: the protocol floor without job logic",
        ),
        Scenario(
            "big_64MiB",
            ["big", "-s", str(max(MIB, int(64 * MIB * scale)))],
            [("", "value", "MB/s")],
            20,
            cap=0,
            doc="one 64 MiB foreground job through 1 echo worker, compared on return",
        ),
        Scenario(
            "mem_1M_bg16",
            ["bg", "-n", n(1_000_000), "-s", "16", "-c", "2", "-b", "1024", "--no-drain"],
            [
                (".rss_MiB", "rss_MiB", "MiB"),
                (".bytes_per_job", "bytes_per_job", "B"),
                (".idle_rss_MiB", "idle_rss_MiB", "MiB"),
            ],
            120,
            kind="mem",
            cap=30,
            repeat=1,
            doc="server RSS after queueing 16-byte background jobs, no workers (1 run)",
        ),
        Scenario(
            "conns_5k",
            ["conns", "-n", n(5_000)],
            [(".rss_MiB", "rss_MiB", "MiB"), (".bytes_per_conn", "bytes_per_conn", "B")],
            90,
            kind="conns",
            cap=0,
            doc="server RSS while idle client connections are open (each did one GET_STATUS)",
        ),
    ]


@dataclass
class Result:
    server: str
    scenario: str
    unit: str
    runs: list[float] = field(default_factory=list)
    error: str | None = None
    note: str | None = None

    def record(self) -> dict[str, Any]:
        value = None if self.error or not self.runs else statistics.median(self.runs)
        rec: dict[str, Any] = {
            "server": self.server,
            "scenario": self.scenario,
            "value": None if value is None else round(value, 3),
            "unit": self.unit,
            "runs": [round(r, 3) for r in self.runs],
        }
        if self.error:
            rec["error"] = self.error
        if self.note:
            rec["note"] = self.note
        return rec


def one_run(
    name: str, command: str, sc: Scenario, rep: int, workdir: Path, pin: str | None
) -> dict[str, Any]:
    """A fresh server, one load generator run, the server's RSS and CPU around it."""
    args = [*sc.args, "-t", str(sc.limit)] + (["--cap", str(sc.cap)] if sc.cap else [])
    rec: dict[str, Any] = {"server": name, "scenario": sc.name, "rep": rep, "command": command}
    try:
        server = Server(command, workdir / f"{name}.{sc.name}.{rep}", pin)
    except OSError as e:
        rec.update(ok=False, error=f"cannot start the server: {e}")
        return rec
    with server:
        rec["argv"] = server.argv
        try:
            server.wait_ready()
        except RuntimeError as e:
            rec.update(ok=False, error=str(e))
            return rec
        rec["loadgen_args"] = args
        idle = server.rss()
        cpu0, gen0, busy0, t0 = server.cpu(), children_cpu_seconds(), machine_busy_seconds(), 0.0
        t0 = time.monotonic()
        held = None
        if sc.kind == "conns":
            result, held = hold_connections(server.port, args, sc.limit, pin, server.rss)
        else:
            result = run_loadgen(server.port, args, sc.limit, pin)
        wall = time.monotonic() - t0
        rss = server.rss()
        server_cpu = server.cpu() - cpu0
        gen_cpu = children_cpu_seconds() - gen0
        busy = machine_busy_seconds() - busy0
        alive = server.alive()
    rec.update(result)
    rec.update(
        idle_rss_MiB=round(idle / MIB, 2),
        server_rss_MiB=round(rss / MIB, 2),
        server_cpu_s=round(server_cpu, 3),
        generator_cpu_s=round(gen_cpu, 3),
        other_cpu_s=round(max(0.0, busy - server_cpu - gen_cpu), 3),
        run_wall_s=round(wall, 3),
    )
    if not alive:
        rec.update(ok=False, error=f"the server died during the run: {rec.get('error', '')}")
    if sc.kind == "mem" and rec.get("ok"):
        accepted = int(rec.get("accepted") or 0)
        rec["rss_MiB"] = round(rss / MIB, 2)
        rec["bytes_per_job"] = round((rss - idle) / accepted, 1) if accepted else None
    if sc.kind == "conns" and rec.get("ok"):
        if held is None:
            rec.update(ok=False, error="no measurement while the connections were open")
        else:
            rec["rss_MiB"] = round(held / MIB, 2)
            rec["bytes_per_conn"] = round((held - idle) / int(rec["n"]), 1)
    return rec


def ratio(unit: str, ours: float, theirs: float) -> float:
    if unit in HIGHER_IS_BETTER:
        return ours / theirs if theirs else float("inf")
    return theirs / ours if ours else float("inf")


def ratio_table(results: list[dict[str, Any]], ours: str, against: list[str], label: str) -> str:
    """One row per scenario metric: ours against the best of `against`."""
    by: dict[str, dict[str, dict[str, Any]]] = {}
    for r in results:
        by.setdefault(r["scenario"], {})[r["server"]] = r
    lines = [
        f"| scenario | unit | {ours} | {label} | which | ratio (>1 = {ours} ahead) |",
        "|---|---|---:|---:|---|---:|",
    ]
    for scenario, row in by.items():
        mine = row.get(ours)
        others = [(n, r) for n, r in row.items() if n in against and r["value"] is not None]
        if mine is None or not others or scenario.endswith(CONTEXT_ONLY):
            continue
        unit = mine["unit"]
        pick = max if unit in HIGHER_IS_BETTER else min
        name, best = pick(others, key=lambda nr: float(nr[1]["value"]))
        theirs = float(best["value"])
        if mine["value"] is None:
            lines.append(f"| {scenario} | {unit} | failed | {theirs:,.1f} | {name} | - |")
            continue
        value = float(mine["value"])
        times = ratio(unit, value, theirs)
        mark = "" if times >= 1.0 else " (behind)"
        if best.get("note") or mine.get("note"):
            mark += " *"
        lines.append(
            f"| {scenario} | {unit} | {value:,.1f} | {theirs:,.1f} | {name} | {times:.2f}{mark} |"
        )
    return "\n".join(lines) + "\n"


def full_table(results: list[dict[str, Any]], servers: list[str]) -> str:
    """Every metric, every server: medians (failed runs say so)."""
    by: dict[str, dict[str, dict[str, Any]]] = {}
    for r in results:
        by.setdefault(r["scenario"], {})[r["server"]] = r
    lines = [
        "| scenario | unit | " + " | ".join(servers) + " |",
        "|---|---|" + "---:|" * len(servers),
    ]
    for scenario, row in by.items():
        unit = next(iter(row.values()))["unit"]
        cells = []
        for s in servers:
            cell = row.get(s)
            if cell is None:
                cells.append("")
            elif cell["value"] is None:
                cells.append("failed")
            else:
                cells.append(f"{cell['value']:,.1f}" + (" *" if cell.get("note") else ""))
        lines.append(f"| {scenario} | {unit} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_servers(args: argparse.Namespace) -> tuple[dict[str, str], list[str]]:
    """(name -> command template, names of the gearmand configurations)."""
    servers: dict[str, str] = {}
    if not args.no_gearmill:
        servers["gearmill"] = gearmill_command(sys.executable, args.gearmill_args)
    if args.with_pure:
        pure = gearmill_command(sys.executable, args.gearmill_args)
        servers["gearmill-pure"] = "env GEARMILL_PURE=1 " + pure
    for spec in args.gearmill_python:
        label, _, python = spec.rpartition("=")
        check_python(python)
        if not label:  # the folder holding the venv: /tmp/old/.venv/bin/python -> old
            parents = Path(python).absolute().parents
            label = (parents[2].name if len(parents) > 2 else "") or python
        servers[f"gearmill@{label}"] = gearmill_command(python, args.gearmill_args)
    for spec in args.server:
        name, eq, command = spec.partition("=")
        if not eq or not name or "{port}" not in command:
            raise BenchError(f"-s {spec!r}: write NAME=COMMAND with {{port}} in the command")
        servers[name] = command
    gearmands = []
    if not args.no_gearmand:
        check_gearmand()
        for name, command in GEARMANDS.items():
            if not (name.endswith("hash1M") and args.no_hash):
                servers[name] = command
                gearmands.append(name)
    if not args.no_gearmill or args.with_pure:
        check_python(sys.executable)
    if len(servers) == len(gearmands):
        raise BenchError("--no-gearmill: name a build with --gearmill-python or a server with -s")
    return servers, gearmands


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1/10 sizes, 1 repeat")
    p.add_argument("--repeat", type=int, default=3, help="interleaved runs per scenario (3)")
    p.add_argument("--scenarios", help="comma-separated (default: every scenario); see --list")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--gearmill-args", default="", help="extra flags for every gearmill serve")
    p.add_argument(
        "--with-pure", action="store_true", help="also measure GEARMILL_PURE=1 (the reference)"
    )
    p.add_argument(
        "--gearmill-python",
        action="append",
        default=[],
        metavar="[LABEL=]PYTHON",
        help="also measure the gearmill another Python has installed, e.g. an older build's "
        "venv: old=/tmp/old/.venv/bin/python (repeatable; shown as gearmill@LABEL)",
    )
    p.add_argument(
        "-s",
        "--server",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="also measure any server: a command with {port} (and optionally {tmp}, a "
        "scratch folder), in the foreground, on 127.0.0.1 (repeatable)",
    )
    p.add_argument(
        "--no-gearmill",
        action="store_true",
        help="leave out this checkout's gearmill: only the builds given with "
        "--gearmill-python (the first is the one the others are compared with)",
    )
    p.add_argument("--no-hash", action="store_true", help="skip the -t1-hash1M configuration")
    p.add_argument("--no-gearmand", action="store_true", help="measure no gearmand at all")
    p.add_argument(
        "--cpus",
        help="run every server and load generator under taskset -c CPUS (stable software-"
        "path latencies; for lat_*/status_* only: it also takes CPU away)",
    )
    p.add_argument("--out", help="folder for results (default: a new temporary folder)")
    args = p.parse_args()
    all_scenarios = scenarios(0.1 if args.quick else 1.0)
    if args.list:
        for sc in all_scenarios:
            print(f"{sc.name:16} gmload {shlex.join(sc.args)}\n{'':16} {sc.doc}")
        return 0
    repeat = 1 if args.quick else args.repeat
    if repeat < 1:
        p.error("--repeat must be at least 1")
    chosen = all_scenarios
    if args.scenarios:
        names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
        known = {sc.name: sc for sc in all_scenarios}
        unknown = [n for n in names if n not in known]
        if unknown:
            p.error(f"unknown scenario {', '.join(unknown)}; known: {', '.join(known)}")
        chosen = [known[n] for n in names]
    try:
        servers, gearmands = parse_servers(args)
        ensure_loadgen()
    except BenchError as e:
        print(f"compare.py: {e}", file=sys.stderr)
        return 2
    out = Path(args.out or tempfile.mkdtemp(prefix="gearmill-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    workdir = out / "servers"  # one folder per run: the server's log and scratch files
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for name, command in servers.items():
        say(f"{name}: {command}")

    results: list[Result] = []
    with (out / "runs.jsonl").open("w") as runs_file:
        for sc in chosen:
            per: dict[str, list[Result]] = {
                name: [Result(name, sc.name + suffix, unit) for suffix, _, unit in sc.metrics]
                for name in servers
            }
            for rep in range(min(repeat, sc.repeat or repeat)):
                for name, command in servers.items():
                    metrics = per[name]
                    if metrics[0].error:
                        continue  # after a failure, the rest of this scenario is skipped
                    rec = one_run(name, command, sc, rep, workdir, args.cpus)
                    runs_file.write(json.dumps(rec) + "\n")
                    runs_file.flush()
                    if not rec.get("ok"):
                        for m in metrics:
                            m.error = str(rec.get("error"))
                        say(f"{sc.name} {name} #{rep + 1}: FAILED: {rec.get('error')}")
                        continue
                    for m, (_, key, _) in zip(metrics, sc.metrics, strict=True):
                        m.runs.append(float(rec[key]))
                        if rec.get("capped_s"):
                            m.note = f"capped at {rec['capped_s']} s: a rate over the jobs done"
                    first = sc.metrics[0]
                    say(
                        f"{sc.name} {name} #{rep + 1}: {rec[first[1]]:,.1f} {first[2]} "
                        f"(server cpu {rec['server_cpu_s']:.2f} s, rss {rec['server_rss_MiB']} MiB)"
                    )
            for metrics in per.values():
                results += metrics

    records = [r.record() for r in results]
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    names = list(servers)
    runs = 1 if args.quick else repeat
    head = f"Run {started}; medians of {runs} interleaved runs (mem_*: 1 run).\n\n"
    (out / "table.md").write_text(head + full_table(records, names))
    ours = [n for n in names if n not in gearmands]
    text = head
    for i, name in enumerate(ours):
        if gearmands:
            text += f"{name} against the best gearmand in the same run:\n\n"
            text += ratio_table(records, name, gearmands, "best gearmand") + "\n"
        if i > 0:
            text += f"{name} against {ours[0]} in the same run:\n\n"
            text += ratio_table(records, name, [ours[0]], ours[0]) + "\n"
    if any(r.get("note") for r in records):
        text += "\\* capped: the server was too slow to finish; the value is over what it did.\n"
    (out / "ratios.md").write_text(text)
    print(text)
    say(f"results in {out}")
    failed = {(r["server"], r["scenario"].split(".")[0]): r for r in records if r["value"] is None}
    for (server, scenario), r in failed.items():
        say(f"compare.py: {server} {scenario} failed: {r.get('error')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
