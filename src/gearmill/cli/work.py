"""``gearmill work``: run a command per job, like ``gearman -w``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from ..worker.aio import AsyncWorker, WorkerJob
from .common import add_server_arguments, server_list


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_server_arguments(p)
    p.add_argument(
        "-f",
        "--function",
        action="append",
        required=True,
        metavar="FUNC",
        help="function to register (repeatable)",
    )
    p.add_argument(
        "--concurrency", type=int, default=1, metavar="N", help="jobs run in parallel (default 1)"
    )
    p.add_argument(
        "-c",
        "--count",
        type=int,
        default=0,
        metavar="N",
        help="exit after N jobs (default: run until SIGTERM)",
    )
    p.add_argument(
        "-n",
        "--lines",
        action="store_true",
        help="send each output line as WORK_DATA, then an empty WORK_COMPLETE",
    )
    p.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="per-job limit: told to the server (CAN_DO_TIMEOUT) and the command is killed",
    )
    p.add_argument("--client-id", help="identifier shown by 'gearmill admin --workers'")
    p.add_argument(
        "--exceptions",
        action="store_true",
        help="a failing command sends WORK_EXCEPTION with its stderr",
    )
    p.add_argument(
        "cmd",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND",
        help="run per job: workload on stdin, stdout is the result",
    )


def run(args: argparse.Namespace) -> int:
    try:
        servers = server_list(args)
    except ValueError as e:
        print(f"gearmill work: {e}", file=sys.stderr)
        return 2
    if args.concurrency < 1:
        print("gearmill work: --concurrency must be at least 1", file=sys.stderr)
        return 2
    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    logging.basicConfig(level=logging.WARNING, format="gearmill work: %(message)s")
    worker = AsyncWorker(
        servers, client_id=args.client_id, concurrency=args.concurrency, exceptions=args.exceptions
    )
    done = 0

    async def handle(job: WorkerJob) -> bytes:
        nonlocal done
        try:
            if not command:
                sys.stdout.buffer.write(job.data)
                sys.stdout.buffer.flush()
                return b""
            return await _run_command(job, command, args)
        finally:
            done += 1
            if args.count and done >= args.count:
                worker.stop()

    for function in args.function:
        worker.register(function, handle, timeout=args.timeout)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        await worker.work()

    asyncio.run(main())
    return 0


class CommandFailed(Exception):
    pass


async def _run_command(job: WorkerJob, command: list[str], args: argparse.Namespace) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(job.data), args.timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise CommandFailed(f"{command[0]} timed out after {args.timeout:g} s") from None
    if proc.returncode != 0:
        if out:
            job.send_data(out)
        raise CommandFailed(
            err.decode(errors="replace").strip() or f"exit status {proc.returncode}"
        )
    if args.lines:
        for line in out.splitlines(keepends=True):
            job.send_data(line)
        return b""
    return out
