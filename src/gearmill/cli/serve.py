"""``gearmill serve``: the job server, with gearmand's flags where they mean something."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import logging
import os
import signal
import sys

from .. import __version__
from ..server.app import Server, ServerConfig, default_handle_prefix
from ..server.broker import LEVELS, BrokerConfig

GEARMAND_VERSION = "1.1.20"

# gearmand options we know but do not implement (yet): a clear message instead of argparse's.
_UNSUPPORTED = {
    "--ssl": "TLS is not implemented yet",
    "--ssl-ca-file": "TLS is not implemented yet",
    "--ssl-certificate": "TLS is not implemented yet",
    "--ssl-key": "TLS is not implemented yet",
    "-r": "protocol modules (http) are not implemented yet",
    "--protocol": "protocol modules (http) are not implemented yet",
    "--http-port": "the HTTP protocol module is not implemented yet",
    "-u": "switching user is not supported; start gearmill as the target user",
    "--user": "switching user is not supported; start gearmill as the target user",
    "--libsqlite3-db": "durable queues are not implemented yet (only -q builtin)",
    "--libsqlite3-table": "durable queues are not implemented yet (only -q builtin)",
    "--store-queue-on-shutdown": "durable queues are not implemented yet (only -q builtin)",
    "--libpq-conninfo": "durable queues are not implemented yet (only -q builtin)",
    "--libpq-table": "durable queues are not implemented yet (only -q builtin)",
    "--mysql-host": "durable queues are not implemented yet (only -q builtin)",
    "--mysql-port": "durable queues are not implemented yet (only -q builtin)",
    "--mysql-user": "durable queues are not implemented yet (only -q builtin)",
    "--mysql-password": "durable queues are not implemented yet (only -q builtin)",
    "--mysql-db": "durable queues are not implemented yet (only -q builtin)",
    "--mysql-table": "durable queues are not implemented yet (only -q builtin)",
    "--redis-server": "durable queues are not implemented yet (only -q builtin)",
    "--redis-port": "durable queues are not implemented yet (only -q builtin)",
    "--redis-password": "durable queues are not implemented yet (only -q builtin)",
    "--redis-prefix": "durable queues are not implemented yet (only -q builtin)",
    "--libmemcached-servers": "the memcached queue is not supported",
    "--libmemcached-prefix": "the memcached queue is not supported",
    "--syslog": "syslog output is not supported; use --log-file",
    "--config-file": "configuration files are not supported yet; pass flags",
}


class GearmandFormatter(logging.Formatter):
    """gearmand's log line: ``%7s YYYY-MM-DD HH:MM:SS.uuuuuu [  main ] message``."""

    _names = {"CRITICAL": "CRITICAL", "WARNING": "WARNING", "ERROR": "ERROR", "INFO": "INFO"}

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M:%S.%f")
        level = getattr(record, "gearman_level", None) or record.levelname
        return f"{level:>7} {when} [  main ] {record.getMessage()}"


_PY_LEVEL = {
    "FATAL": logging.CRITICAL,
    "ALERT": logging.CRITICAL,
    "CRITICAL": logging.CRITICAL,
    "ERROR": logging.ERROR,
    "WARNING": logging.WARNING,
    "NOTICE": logging.INFO,
    "INFO": logging.INFO,
    "DEBUG": logging.DEBUG,
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-L",
        "--listen",
        action="append",
        metavar="ADDR",
        help="address to listen on (repeatable; default 127.0.0.1; 0.0.0.0 or :: for all)",
    )
    p.add_argument(
        "-p",
        "--port",
        type=int,
        default=None,
        help="TCP port (default $GEARMAND_PORT or 4730; 0 picks a free one)",
    )
    p.add_argument("-b", "--backlog", type=int, default=32, help="listen backlog (default 32)")
    p.add_argument(
        "-j",
        "--job-retries",
        type=int,
        default=0,
        metavar="N",
        help="attempts before a job whose worker keeps dying is dropped (0 = no limit)",
    )
    p.add_argument(
        "--job-handle-prefix", default=None, help='job handle prefix (default "H:<host>")'
    )
    p.add_argument("-P", "--pid-file", default=None, help="write the process id to this file")
    p.add_argument(
        "-l", "--log-file", default="stderr", help="log file, or 'stderr' (default) or 'none'"
    )
    p.add_argument(
        "--verbose",
        default="ERROR",
        type=str.upper,
        choices=LEVELS,
        metavar="LEVEL",
        help="log level: " + ", ".join(LEVELS) + " (default ERROR)",
    )
    p.add_argument(
        "-v", action="count", default=0, dest="more_verbose", help="one log level more verbose"
    )
    p.add_argument("-d", "--daemon", action="store_true", help="detach and run in the background")
    p.add_argument(
        "-R",
        "--round-robin",
        action="store_true",
        help="rotate a worker's functions after each job",
    )
    p.add_argument(
        "--global-priority",
        action="store_true",
        help="priority across functions (gearmand 2.0): HIGH of any function first",
    )
    p.add_argument(
        "-w",
        "--worker-wakeup",
        type=int,
        default=None,
        metavar="N",
        help="sleeping workers woken per new job: 0 = all (gearmand's default), N = at "
        "most N; unset: one per queued job that no woken worker is coming for",
    )
    p.add_argument("--exceptions", action="store_true", help="enable the exceptions option for all")
    p.add_argument("--keepalive", action="store_true", help="tune TCP keepalive on connections")
    p.add_argument("--keepalive-idle", type=int, default=-1, metavar="S")
    p.add_argument("--keepalive-interval", type=int, default=-1, metavar="S")
    p.add_argument("--keepalive-count", type=int, default=-1, metavar="N")
    p.add_argument(
        "--admin-shutdown",
        choices=("off", "local", "any"),
        default="local",
        help="who may use the admin 'shutdown [graceful]' command (default: loopback peers)",
    )
    p.add_argument(
        "-q",
        "--queue-type",
        default="builtin",
        type=str.lower,
        help="persistent queue: only 'builtin' (in memory) for now",
    )
    p.add_argument(
        "-t",
        "--threads",
        type=int,
        default=None,
        help="accepted for gearmand compatibility; ignored",
    )
    p.add_argument(
        "--hashtable-buckets",
        type=int,
        default=None,
        help="accepted for gearmand compatibility; ignored (tables grow by themselves)",
    )
    p.add_argument("-f", "--file-descriptors", type=int, default=None, help="raise RLIMIT_NOFILE")


def check_unsupported(argv: list[str]) -> str | None:
    for arg in argv:
        name = arg.split("=", 1)[0]
        if name in _UNSUPPORTED:
            return f"gearmill serve: gearmand option {name} is not supported: {_UNSUPPORTED[name]}"
    return None


def configure(args: argparse.Namespace) -> tuple[ServerConfig, str]:
    """Turn parsed flags into a config; raises ValueError with a one-line fix."""
    if args.queue_type != "builtin":
        raise ValueError(
            f"-q {args.queue_type}: only the in-memory 'builtin' queue exists so far; "
            "drop -q or use -q builtin"
        )
    port = args.port
    if port is None:
        env = os.environ.get("GEARMAND_PORT")
        try:
            port = int(env) if env else 4730
        except ValueError:
            raise ValueError(f"GEARMAND_PORT={env!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"--port {port}: a port is 0..65535")
    if not 0 <= args.job_retries <= 255:
        raise ValueError(f"--job-retries {args.job_retries}: use 0 (no limit) to 255")
    if args.worker_wakeup is not None and args.worker_wakeup < 0:
        raise ValueError(
            f"--worker-wakeup {args.worker_wakeup}: use 0 (all), N (at most N), or leave it "
            "out (one per queued job)"
        )
    level_index = min(LEVELS.index(args.verbose) + args.more_verbose, len(LEVELS) - 1)
    level = LEVELS[level_index]
    prefix = args.job_handle_prefix.encode() if args.job_handle_prefix else default_handle_prefix()
    broker = BrokerConfig(
        handle_prefix=prefix,
        job_retries=args.job_retries,
        worker_wakeup=-1 if args.worker_wakeup is None else args.worker_wakeup,
        round_robin=args.round_robin,
        global_priority=args.global_priority,
        exceptions=args.exceptions,
        version=f"{GEARMAND_VERSION}+gearmill.{__version__}".encode(),
        pid=os.getpid(),
        verbose=level,
        admin_shutdown=args.admin_shutdown,
    )
    config = ServerConfig(
        listen=args.listen or ["127.0.0.1"],
        port=port,
        backlog=args.backlog,
        keepalive=args.keepalive,
        keepalive_idle=args.keepalive_idle,
        keepalive_interval=args.keepalive_interval,
        keepalive_count=args.keepalive_count,
        broker=broker,
    )
    return config, level


class _Log:
    """Log destination that SIGHUP can reopen."""

    def __init__(self, target: str, level: str) -> None:
        self.target = target
        self.handler: logging.Handler | None = None
        self.root = logging.getLogger("gearmill")
        self.root.setLevel(_PY_LEVEL[level])
        self.root.propagate = False
        self.open()

    def open(self) -> None:
        if self.handler is not None:
            self.root.removeHandler(self.handler)
            self.handler.close()
        if self.target == "none":
            self.handler = logging.NullHandler()
        elif self.target == "stderr":
            self.handler = logging.StreamHandler(sys.stderr)
        else:
            try:
                self.handler = logging.FileHandler(self.target)
            except OSError as e:
                print(f"gearmill serve: cannot open log file {self.target}: {e}", file=sys.stderr)
                self.handler = logging.StreamHandler(sys.stderr)
        self.handler.setFormatter(GearmandFormatter())
        self.root.addHandler(self.handler)


def _daemonize() -> None:
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    problem = check_unsupported(argv)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    try:
        config, level = configure(args)
    except ValueError as e:
        print(f"gearmill serve: {e}", file=sys.stderr)
        return 2
    if args.file_descriptors:
        import resource

        try:
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (args.file_descriptors, args.file_descriptors)
            )
        except (ValueError, OSError) as e:
            print(f"gearmill serve: --file-descriptors: {e}", file=sys.stderr)
            return 2
    if args.daemon:
        if args.log_file == "stderr":
            args.log_file = "none"
        _daemonize()
        config.broker.pid = os.getpid()
    logs = _Log(args.log_file, level)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    return asyncio.run(_serve(config, logs, args.pid_file))


async def _serve(config: ServerConfig, logs: _Log, pid_file: str | None) -> int:
    server = Server(config)
    try:
        await server.start()
    except OSError as e:
        print(
            f"gearmill serve: cannot listen on {','.join(config.listen)} port {config.port}: "
            f"{e.strerror or e}",
            file=sys.stderr,
        )
        return 1
    server.install_signals()
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, _reopen, logs)
    _tune_gc()
    if pid_file:
        try:
            with open(pid_file, "w") as f:
                f.write(f"{os.getpid()}\n")
        except OSError as e:
            print(f"gearmill serve: cannot write pid file {pid_file}: {e}", file=sys.stderr)
            return 1
    try:
        await server.serve_forever()
    finally:
        if pid_file:
            try:
                os.unlink(pid_file)
            except OSError:
                pass
    return 0


def _tune_gc() -> None:
    """Keep the cycle collector from rescanning the job queue.

    Every queued job is a container object. With Python's default thresholds
    the collector runs every 700 allocations and keeps re-walking a growing
    queue (12 % of the server's time while 100k background jobs were queued);
    the server's data does not form garbage cycles (a finished job or a closed
    connection drops its references), so collections can be rarer. What exists
    at start-up (modules, classes) is frozen out of every collection.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 1_000)


def _reopen(logs: _Log) -> None:
    logs.open()
    logging.getLogger("gearmill.server").warning("SIGHUP, reopening log file")
