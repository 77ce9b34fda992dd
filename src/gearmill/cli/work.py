"""``gearmill work``: run a command per job, like ``gearman -w``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys

from ..worker.aio import AsyncWorker, WorkerJob
from .common import WRONG_PORT_HINT, add_server_arguments, server_list, tls_context


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
        help="per-job limit: told to the server (CAN_DO_TIMEOUT); the command is killed then",
    )
    p.add_argument("--client-id", help="identifier shown by 'gearmill admin --workers'")
    p.add_argument(
        "--exceptions",
        action="store_true",
        help="a failing command always sends WORK_EXCEPTION with its stderr"
        " (default: on gearmill servers only; gearmand 1.1 clients hang on it)",
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
        tls = tls_context(args)
    except ValueError as e:
        print(f"gearmill work: {e}", file=sys.stderr)
        return 2
    if args.concurrency < 1:
        print("gearmill work: --concurrency must be at least 1", file=sys.stderr)
        return 2
    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if command and not _executable(command[0]):
        print(
            f"gearmill work: command not found: {command[0]}"
            " (give a program on $PATH or a path to an executable file)",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=logging.WARNING, format="gearmill work: %(message)s")
    logging.getLogger("gearmill.worker").addFilter(_no_command_traceback)
    worker = AsyncWorker(
        servers,
        client_id=args.client_id,
        concurrency=args.concurrency,
        exceptions=True if args.exceptions else None,
        tls=tls,
    )
    worker.wrong_port_hint = WRONG_PORT_HINT
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
        # like `gearman -w`: an interrupted job goes back to the server for another worker
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: worker.stop(requeue=True))
        await worker.work()

    asyncio.run(main())
    return 0


def _executable(program: str) -> bool:
    if os.sep in program:
        return os.path.isfile(program) and os.access(program, os.X_OK)
    return shutil.which(program) is not None


class CommandFailed(Exception):
    """The command exited non-zero (its stderr is the message)."""


def _no_command_traceback(record: logging.LogRecord) -> bool:
    # a failing command is one log line; a traceback would show only gearmill's own frames
    if record.exc_info and isinstance(record.exc_info[1], CommandFailed):
        record.exc_info = None
    return True


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """The command's whole group goes, so a shell's own children do not outlive it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    await proc.wait()


async def _run_command(job: WorkerJob, command: list[str], args: argparse.Namespace) -> bytes:
    spawn = asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            # its own process group: a Ctrl-C at the terminal reaches only gearmill work,
            # which then decides the command's fate (killed, job given back)
            process_group=0,
        )
    )
    try:
        # shielded: a stop that comes while the command starts must still find it to kill
        proc = await asyncio.shield(spawn)
    except asyncio.CancelledError:
        await _kill(await spawn)
        raise
    try:
        out, err = await proc.communicate(job.data)
    except asyncio.CancelledError:
        # past --timeout, or stopping on a signal: the job goes back to the server
        await _kill(proc)
        raise
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
