"""``gearmill submit``: the client half of gearmand's ``gearman`` tool."""

from __future__ import annotations

import argparse
import asyncio
import os
import stat
import sys
import time
from collections.abc import Iterator

from ..client.aio import AsyncClient, Job, JobRequest, StatusCallback
from ..errors import GearmanError, JobFailed, NoServersAvailable, Timeout
from .common import add_server_arguments, server_list, tls_context
from .progress import Progress

BATCH = 1000
# On a terminal, say once that a foreground job is still waiting after this long
# with no word from a worker (gearman waits silently; a new user thinks it hung).
WAIT_HINT = 5.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_server_arguments(p)
    p.add_argument(
        "-f",
        "--function",
        action="append",
        required=True,
        metavar="FUNC",
        help="function to run (repeatable: each gets the same workload)",
    )
    p.add_argument("-u", "--unique", help="unique id (jobs with the same id coalesce)")
    p.add_argument("-b", "--background", action="store_true", help="background job")
    prio = p.add_mutually_exclusive_group()
    prio.add_argument("-I", "--high", action="store_true", help="high priority")
    prio.add_argument("-L", "--low", action="store_true", help="low priority")
    p.add_argument("-n", "--lines", action="store_true", help="one job per input line")
    p.add_argument(
        "-N",
        "--lines-strip",
        action="store_true",
        help="like -n, without the newline in the workload",
    )
    p.add_argument(
        "-e", "--epoch", type=int, metavar="UNIXTIME", help="run at this time (a background job)"
    )
    p.add_argument(
        "-P",
        "--print-status",
        action="store_true",
        help="print progress (WORK_STATUS) as 'N%% Complete' on stderr",
    )
    p.add_argument(
        "--prefix", action="store_true", help="prefix output with the function name (gearman -P)"
    )
    p.add_argument(
        "-t",
        "--timeout",
        type=int,
        metavar="MS",
        help="give up on a job not done MS milliseconds after it was submitted, exit 1"
        " (default: wait as long as it takes, like gearman)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="print 'Task created: HANDLE'")
    p.add_argument("workload", nargs="*", help="workloads (one job each); default: stdin")


class _Input:
    """Bytes of stdin consumed so far, for the progress bar."""

    position = 0


def _stdin_size() -> int | None:
    try:
        st = os.fstat(sys.stdin.fileno())
    except (OSError, ValueError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _workloads(args: argparse.Namespace) -> Iterator[bytes]:
    if args.workload:
        for w in args.workload:
            yield w.encode()
        return
    stdin = sys.stdin.buffer
    if args.lines or args.lines_strip:
        for line in stdin:
            _Input.position += len(line)
            yield line.rstrip(b"\r\n") if args.lines_strip else line
        return
    yield b"" if sys.stdin.isatty() else stdin.read()


def run(args: argparse.Namespace) -> int:
    try:
        servers = server_list(args)
        args.tls = tls_context(args)
    except ValueError as e:
        print(f"gearmill submit: {e}", file=sys.stderr)
        return 2
    if args.epoch is not None:
        args.background = True
    if args.timeout is not None and args.timeout < 0:
        print(
            f"gearmill submit: -t {args.timeout}: milliseconds must be 0 (no limit) or more",
            file=sys.stderr,
        )
        return 2
    try:
        return asyncio.run(_submit(args, servers))
    except NoServersAvailable as e:
        where = "with -s HOST:PORT or -h/-p, or set $GEARMAN_SERVERS"
        if e.wrong_port:  # something answered there, but not a job server
            hint = f"give a job server's address {where}"
        else:
            hint = (
                "is a job server running there? (`gearmill serve` starts one;"
                f" give its address {where})"
            )
        print(f"gearmill submit: {e.reason}; {hint}", file=sys.stderr)
        return 1
    except GearmanError as e:
        print(f"gearmill submit: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


async def _submit(args: argparse.Namespace, servers: list[str]) -> int:
    priority = "high" if args.high else "low" if args.low else "normal"
    timeout = args.timeout / 1000 if args.timeout else None
    out = sys.stdout.buffer
    status = 0
    progress = Progress(
        enabled=sys.stderr.isatty() and (args.lines or args.lines_strip),
        total=_stdin_size() if not args.workload else None,
    )
    async with AsyncClient(servers, timeout=timeout, tls=args.tls) as client:
        batch: list[JobRequest] = []
        done = 0

        async def flush() -> int:
            nonlocal done
            failed = 0
            if args.epoch is not None or args.unique is not None:
                jobs = []
                for r in batch:
                    jobs.append(
                        await client.submit(
                            r.function,
                            r.data,
                            unique=r.unique,
                            priority=r.priority,
                            background=r.background,
                            when=args.epoch,
                            on_status=_status(args),
                        )
                    )
            else:
                jobs = await client.submit_many(batch)
            for job in jobs:
                if args.verbose:
                    out.write(f"Task created: {job.handle}\n".encode())
                if not job.background:
                    failed |= await _follow(job, args)
                done += 1
                progress.update(done, _Input.position)
            out.flush()
            batch.clear()
            return failed

        started = time.monotonic()
        for workload in _workloads(args):
            for function in args.function:
                batch.append(
                    JobRequest(
                        function, workload, args.unique, priority, args.background, _status(args)
                    )
                )
            if len(batch) >= BATCH or not (args.lines or args.lines_strip):
                status |= await flush()
        if batch:
            status |= await flush()
        progress.finish(done, time.monotonic() - started)
    return status


def _status(args: argparse.Namespace) -> StatusCallback | None:
    if not args.print_status:
        return None

    def show(num: int, den: int) -> None:
        pct = num * 100 // den if den else 0
        print(f"{pct}% Complete", file=sys.stderr)

    return show


async def _follow(job: Job, args: argparse.Namespace) -> int:
    """Print the job's data and result; waits end at the job's deadline (``-t``)."""
    prefix = (job.function + b": ") if args.prefix else b""
    write = sys.stdout.buffer.write
    hint = None
    if sys.stderr.isatty():
        hint = asyncio.get_running_loop().call_later(WAIT_HINT, _still_waiting, job, args)
    try:
        async for chunk in job:
            write(prefix + chunk)
        result = await job.result()
        write(prefix + result)
        for warning in job.warnings:
            sys.stderr.buffer.write(warning)
        return 0
    except JobFailed as e:
        print(f"gearmill submit: {e}", file=sys.stderr)
        return 1
    except Timeout:
        fn = job.function.decode(errors="replace")
        if job.status is None and not job.data_chunks:
            why = f"no word from a worker: is one for {fn!r} running?"
        else:
            why = "its worker is still on it"
        print(
            f"gearmill submit: gave up on job {job.handle} ({fn}) after {args.timeout} ms"
            f" (-t {args.timeout}): {why}",
            file=sys.stderr,
        )
        return 1
    finally:
        if hint is not None:
            hint.cancel()


def _still_waiting(job: Job, args: argparse.Namespace) -> None:
    if job.done() or job.status is not None or job.data_chunks:
        return
    fn = job.function.decode(errors="replace")
    tail = f"gives up after {args.timeout} ms" if args.timeout else "-t MS gives up on its own"
    print(
        f"gearmill submit: still waiting for job {job.handle} ({fn}): no word from a worker"
        f" yet (Ctrl-C stops; {tail})",
        file=sys.stderr,
        flush=True,
    )
