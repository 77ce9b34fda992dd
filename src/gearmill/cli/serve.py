"""gearmill serve: the job server, with gearmand's flags where they mean something."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import difflib
import gc
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

from ..server import config as settings
from ..server.app import Server, lifecycle
from ..server.config import LEVELS, Config, ConfigError, Given, Layer, LogFormat
from ..server.notify import Notifier
from ..server.store import StoreError
from .jsonlog import JsonFormatter

DESCRIPTION = """Run the Gearman job server (gearmand 1.1.20 compatible).

Settings come from, strongest first: these flags (a gearmand --config-file counts
as flags; the ones typed here win), environment variables (GEARMILL_PORT,
GEARMILL_JOB_RETRIES, ... one per setting, and GEARMAND_PORT), the TOML file
given by --config or GEARMILL_CONFIG, then the defaults."""

# gearmand options we know but do not implement (yet): a clear message instead of argparse's.
_UNSUPPORTED = {
    "-u": "switching user is not supported; start gearmill as the target user",
    "--user": "switching user is not supported; start gearmill as the target user",
    "--libmemcached-servers": "the memcached queue is not supported",
    "--libmemcached-prefix": "the memcached queue is not supported",
    "--syslog": "syslog output is not supported; use --log-file",
}


class GearmandFormatter(logging.Formatter):
    """gearmand's log line: LEVEL YYYY-MM-DD HH:MM:SS.uuuuuu [  main ] message."""

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

# each flag's setting key -> the spelling used in messages
_FLAG_NAMES: dict[str, str] = {}


class _Parser(argparse.ArgumentParser):
    """Parses a gearmand --config-file's flags: an error raises instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


class _CommandLine(argparse.ArgumentParser):
    """The command line's parser: a bad flag is one line (what is wrong, the flag it
    looks like, where the rest is), not the usage's two dozen lines first."""

    def error(self, message: str) -> NoReturn:
        hint = f"see {self.prog} --help"
        unknown = message.removeprefix("unrecognized arguments: ")
        if unknown != message:
            flags = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
            word = unknown.split()[0].split("=", 1)[0]
            near = difflib.get_close_matches(word, flags, n=1, cutoff=0.8)
            if near:
                hint = f"did you mean {near[0]}? ({hint})"
        self.exit(2, f"{self.prog}: {message}; {hint}\n")


def _opt(p: argparse.ArgumentParser, *names: str, **kw: object) -> None:
    action = p.add_argument(*names, default=argparse.SUPPRESS, **kw)  # type: ignore[arg-type]
    _FLAG_NAMES[action.dest] = max(names, key=len)


def add_arguments(p: argparse.ArgumentParser) -> None:
    _opt(
        p,
        "-L",
        "--listen",
        action="append",
        metavar="ADDR",
        help="address to listen on (repeatable; default 127.0.0.1; 0.0.0.0 or :: for all); "
        "tls://HOST:PORT or tcp://HOST:PORT add a listener of that kind on its own port",
    )
    _opt(p, "-p", "--port", help="TCP port (default 4730; 0 picks one free on every -L address)")
    _opt(p, "-b", "--backlog", metavar="N", help="listen backlog (default 32)")
    _opt(
        p,
        "-j",
        "--job-retries",
        metavar="N",
        help="attempts before a job whose worker keeps dying gives up "
        "(0 = the retry default, 25 attempts)",
    )
    _opt(
        p,
        "--retry-max-attempts",
        metavar="N",
        help="attempts of a job in all before it gives up (default 25, or -j N; 0 = no limit)",
    )
    _opt(
        p,
        "--retry-backoff",
        metavar="BASE",
        help="background retries wait BASE*(15+n^4+rand*(n+1)) s after the n-th attempt "
        "(default 0: at once)",
    )
    _opt(
        p,
        "--retry-on",
        metavar="ENDINGS",
        help="endings that retry: lost,timeout,cant_do (default) and opt-in fail,exception",
    )
    _opt(
        p, "--dead-max", metavar="N", help="jobs kept in the dead set (default 10000; 0 = no limit)"
    )
    _opt(
        p,
        "--dead-max-age",
        metavar="S",
        help="seconds a dead job is kept (default 604800, a week; 0 = no limit)",
    )
    _opt(
        p,
        "--submit-sched",
        action="store_true",
        help="SUBMIT_JOB_SCHED makes a one-shot job at the next matching minute (gearmand: ERROR)",
    )
    _opt(p, "--job-handle-prefix", metavar="P", help='job handle prefix (default "H:<host>")')
    _opt(p, "-P", "--pid-file", metavar="FILE", help="write the process id to this file")
    _opt(
        p,
        "-l",
        "--log-file",
        metavar="FILE",
        help="log file, or 'stderr' (default) or 'none'",
    )
    _opt(
        p,
        "--log-format",
        metavar="plain|json",
        help="log lines as gearmand writes them (plain, the default) or one JSON object each",
    )
    _opt(
        p,
        "--verbose",
        metavar="LEVEL",
        help="log level: " + ", ".join(LEVELS) + " (default ERROR)",
    )
    _opt(p, "-v", action="count", dest="more_verbose", help="one log level more verbose")
    _opt(p, "-d", "--daemon", action="store_true", help="detach and run in the background")
    _opt(
        p,
        "-R",
        "--round-robin",
        action="store_true",
        help="rotate a worker's functions after each job",
    )
    _opt(
        p,
        "--global-priority",
        action="store_true",
        help="priority across functions (gearmand 2.0): HIGH of any function first",
    )
    _opt(
        p,
        "-w",
        "--worker-wakeup",
        metavar="N",
        help="sleeping workers woken per new job: 0 = all (gearmand's default), N = at "
        "most N; unset: one per queued job that no woken worker is coming for",
    )
    _opt(
        p,
        "--graceful-timeout",
        metavar="S",
        help="seconds a graceful stop (SIGUSR1, 'shutdown graceful') waits for running jobs "
        "before stopping as SIGTERM does (default 30; 0 = no limit)",
    )
    _opt(
        p,
        "--exceptions",
        action="store_true",
        help="every connection starts with the exceptions option on (workers' WORK_EXCEPTION "
        "reaches every client)",
    )
    _opt(p, "--keepalive", action="store_true", help="tune TCP keepalive on connections")
    _opt(p, "--keepalive-idle", metavar="S", help="TCP_KEEPIDLE with --keepalive")
    _opt(p, "--keepalive-interval", metavar="S", help="TCP_KEEPINTVL with --keepalive")
    _opt(p, "--keepalive-count", metavar="N", help="TCP_KEEPCNT with --keepalive")
    _opt(
        p,
        "--admin-shutdown",
        metavar="off|local|any",
        help="who may use the admin 'shutdown [graceful]' command (default local: loopback peers)",
    )
    _opt(
        p,
        "--store",
        metavar="URL",
        help="where background jobs are kept: sqlite:///path/queue.db (default: queue.db in "
        "the state folder), postgresql://..., mysql://..., redis://..., or memory",
    )
    _opt(
        p,
        "--node-id",
        metavar="ID",
        help="this server's name among several sharing one postgresql:// or redis:// store "
        "(default host:port, so a restarted server takes its own jobs back at once)",
    )
    _opt(
        p,
        "--lease",
        metavar="SECONDS",
        help="how long a server sharing a store may go without a heartbeat before the others "
        "take its jobs over, and a mysql:// store's owner without renewing before another "
        "server may start on it (default 15; renewed every third of it)",
    )
    _opt(
        p,
        "--memory-jobs",
        metavar="N",
        help="background jobs kept in memory; queued ones beyond wait in the store and are "
        "loaded as the queues drain (default 200000, 0 = no limit)",
    )
    _opt(
        p,
        "--state-dir",
        metavar="DIR",
        help="the state folder of the default SQLite store (default $GEARMILL_STATE_DIR, "
        "$STATE_DIRECTORY, else $XDG_STATE_HOME/gearmill or ~/.local/state/gearmill)",
    )
    _opt(
        p,
        "-q",
        "--queue-type",
        metavar="TYPE",
        help="gearmand's queue: builtin (memory), libsqlite3, Postgres, MySQL or redis, "
        "with gearmand's --libsqlite3-*, --libpq-*, --mysql-* and --redis-* flags",
    )
    for flag in (
        "--libsqlite3-db",
        "--libsqlite3-table",
        "--libpq-conninfo",
        "--libpq-table",
        "--mysql-host",
        "--mysql-port",
        "--mysql-user",
        "--mysql-password",
        "--mysql-db",
        "--mysql-table",
        "--redis-server",
        "--redis-port",
        "--redis-password",
        "--redis-prefix",
    ):
        _opt(p, flag, metavar="VALUE", help=argparse.SUPPRESS)
    _opt(
        p,
        "--store-queue-on-shutdown",
        action="store_true",
        help=argparse.SUPPRESS,  # gearmand's; every store here keeps its jobs anyway
    )
    _opt(p, "-t", "--threads", metavar="N", help="accepted for gearmand compatibility; ignored")
    _opt(
        p,
        "--hashtable-buckets",
        metavar="N",
        help="accepted for gearmand compatibility; ignored (tables grow by themselves)",
    )
    _opt(p, "-f", "--file-descriptors", metavar="N", help="raise the open-files limit")
    _opt(
        p,
        "--tls-cert",
        "--ssl-certificate",
        dest="tls_cert",
        metavar="FILE",
        help="PEM certificate (chain): the -p listener speaks TLS (unless tls:// listeners "
        "are given, which use it)",
    )
    _opt(
        p,
        "--tls-key",
        "--ssl-key",
        dest="tls_key",
        metavar="FILE",
        help="PEM private key of --tls-cert (default: in that file)",
    )
    _opt(
        p,
        "--tls-ca",
        "--ssl-ca-file",
        dest="tls_ca",
        metavar="FILE",
        help="PEM CA certificates that client certificates must chain to",
    )
    _opt(
        p,
        "--tls-verify-client",
        metavar="none|optional|required",
        help="ask TLS clients for a certificate (default: required with --tls-ca, else none)",
    )
    _opt(
        p,
        "--tls",
        "--ssl",
        dest="tls",
        action="store_true",
        help="speak TLS on the -p listener (needs --tls-cert; gearmand's --ssl)",
    )
    _opt(
        p,
        "--http",
        metavar="HOST:PORT",
        help="serve /metrics, the dashboard, a JSON API and gearmand's HTTP gateway here "
        "(off by default; an address other than loopback needs --http-token)",
    )
    _opt(
        p,
        "--http-token",
        metavar="TOKEN",
        help="bearer token the HTTP listener asks for submissions, job data and "
        "destructive actions (better: GEARMILL_HTTP_TOKEN, not seen in ps)",
    )
    _opt(p, "-r", "--protocol", metavar="http", help="gearmand's -r http: same as --http")
    _opt(p, "--http-port", metavar="N", help="gearmand's HTTP port (default 8080)")
    _opt(
        p,
        "--metrics-top-functions",
        metavar="N",
        help="per-function metric series for the N busiest functions, the rest as "
        'function="_other" (default 50)',
    )
    _opt(
        p,
        "--metrics-function-histograms",
        action="store_true",
        help="queue-wait and run-time histograms per function (default: one for all)",
    )
    # limits: docs/threat-model.md
    _opt(
        p,
        "--max-payload",
        dest="max_packet",
        metavar="BYTES",
        help="largest packet accepted (default 4294967295, as gearmand)",
    )
    _opt(
        p,
        "--max-owed",
        metavar="BYTES",
        help="bytes owed to a connection above which it is read no more until it reads "
        "(default 33554432)",
    )
    _opt(p, "--max-connections", metavar="N", help="connections in all (default 0: no limit)")
    _opt(
        p,
        "--max-connections-per-address",
        metavar="N",
        help="connections from one address (default 0: no limit)",
    )
    _opt(
        p,
        "--max-functions-per-worker",
        metavar="N",
        help="functions one connection may register (default 0: no limit)",
    )
    _opt(
        p,
        "--max-function-name",
        metavar="BYTES",
        help="longest function name (default 0: no limit but the packet's)",
    )
    _opt(
        p,
        "--idle-timeout",
        metavar="S",
        help="close a connection that sends nothing for S seconds after connecting "
        "(default 0: never)",
    )
    _opt(p, "--config", metavar="FILE", help="a TOML file of settings (see README)")
    _opt(
        p,
        "--config-file",
        metavar="FILE",
        help="a file of gearmand flags (--port=4730 ...), as gearmand reads it",
    )
    for key, name in (
        ("tls_cert", "--tls-cert"),
        ("tls_key", "--tls-key"),
        ("tls_ca", "--tls-ca"),
        ("tls", "--tls"),
    ):
        _FLAG_NAMES[key] = name  # messages use our spelling, not gearmand's alias


def build_parser(
    prog: str = "gearmill serve", cls: type[argparse.ArgumentParser] = argparse.ArgumentParser
) -> argparse.ArgumentParser:
    p = cls(
        prog=prog, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(p)
    return p


def check_unsupported(argv: Sequence[str]) -> str | None:
    for arg in argv:
        name = arg.split("=", 1)[0]
        if name in _UNSUPPORTED:
            return f"gearmand option {name} is not supported: {_UNSUPPORTED[name]}"
    return None


def _flag_layer(ns: argparse.Namespace, where: str = "", sep: str = " ") -> Layer:
    """The flags given (defaults are suppressed), labelled for messages."""
    layer: Layer = {}
    for key, raw in vars(ns).items():
        flag = where + _FLAG_NAMES.get(key, key)
        if isinstance(raw, bool) or key == "more_verbose":
            label = flag
        elif isinstance(raw, list):
            label = f"{flag}{sep}{','.join(raw)}"
        else:
            label = f"{flag}{sep}{raw}"
        layer[key] = Given(raw, label, True)
    return layer


# the file of flags gearmand reads when no --config-file is given
GEARMAND_CONFIG = "/etc/gearmand.conf"


def _gearmand_file(path: str) -> Layer:
    """gearmand's --config-file: its words, split on blanks and lines, read as flags.

    gearmand ignores words that are not flags (``port=4731`` does nothing there);
    here they are an error, and ``#`` starts a comment to the end of the line.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "not a text file"
        raise ConfigError(
            f"--config-file {path}: cannot read it: {why}; give a file of gearmand flags"
        ) from None
    tokens: list[str] = []
    for line in text.splitlines():
        for word in line.split():
            if word.startswith("#"):
                break
            tokens.append(word)
    problem = check_unsupported(tokens)
    if problem:
        raise ConfigError(f"{path}: {problem}")
    try:
        ns, extra = build_parser(cls=_Parser).parse_known_args(tokens)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}; fix that line") from None
    for word in extra:
        if word.startswith("-"):
            raise ConfigError(
                f"{path}: {word}: not a gearmill serve flag; see gearmill serve --help"
            )
        known = "=" in word and "--" + word.split("=", 1)[0] in _FLAG_NAMES.values()
        fix = f"write --{word}" if known else "remove it, or write it as a --flag"
        raise ConfigError(f"{path}: {word!r} is not a flag (gearmand ignores it); {fix}")
    for nested in ("config", "config_file"):
        if nested in vars(ns):
            raise ConfigError(
                f"{path}: --{nested.replace('_', '-')} inside a config file; "
                "give it on the command line"
            )
    return _flag_layer(ns, f"{path}: ", "=")


def load(ns: argparse.Namespace, env: Mapping[str, str]) -> Config:
    """Flags, then a gearmand --config-file, then the environment, then the TOML file."""
    flags = _flag_layer(ns)
    extra = vars(ns)
    gearmand = _gearmand_file(extra["config_file"]) if "config_file" in extra else {}
    environ = settings.from_env(env)
    if extra.get("config"):
        toml = settings.from_toml(extra["config"])
    elif env.get("GEARMILL_CONFIG"):
        toml = settings.from_toml(env["GEARMILL_CONFIG"], "GEARMILL_CONFIG=")
    else:
        toml = {}
    return settings.build([flags, gearmand, environ, toml])


class _Log:
    """Log destination that SIGHUP can reopen."""

    def __init__(self, target: str, level: str, fmt: LogFormat = LogFormat.PLAIN) -> None:
        self.target = target
        self.formatter = JsonFormatter() if fmt == LogFormat.JSON else GearmandFormatter()
        self.handler: logging.Handler | None = None
        self.root = logging.getLogger("gearmill")
        self.root.setLevel(_PY_LEVEL[level])
        self.root.propagate = False
        # start, stop and jobs lost at exit are logged at every level
        lifecycle.setLevel(min(_PY_LEVEL[level], logging.INFO))
        self.open()

    @property
    def is_file(self) -> bool:
        return self.target not in ("stderr", "none")

    def open(self) -> None:
        """(Re)open the log; raises OSError when the file cannot be opened."""
        handler: logging.Handler
        if self.target == "none":
            handler = logging.NullHandler()
        elif self.target == "stderr":
            handler = logging.StreamHandler(sys.stderr)
        else:
            handler = logging.FileHandler(self.target)
        handler.setFormatter(self.formatter)
        if self.handler is not None:
            self.root.removeHandler(self.handler)
            self.handler.close()
        self.handler = handler
        self.root.addHandler(handler)


class _Report:
    """Where a failure to start goes: the terminal (or the daemon's parent) and the log file."""

    def __init__(self, logs: _Log, notify: int | None) -> None:
        self.logs = logs
        self.notify = notify  # the pipe to the waiting parent of a daemon

    def fail(self, message: str) -> int:
        if self.logs.is_file:
            lifecycle.error("%s", message)
        line = f"gearmill serve: {message}\n"
        if self.notify is not None:
            os.write(self.notify, line.encode())
            os.close(self.notify)
            self.notify = None
        else:
            sys.stderr.write(line)
        return 1

    def ready(self) -> None:
        if self.notify is not None:
            os.write(self.notify, b"ok")
            os.close(self.notify)
            self.notify = None


def _daemonize() -> int:
    """Detach; the parent exits only once the server listens (0) or failed (1, on stderr).

    Returns, in the daemon, the pipe on which to say which.
    """
    read_end, write_end = os.pipe()
    if os.fork():
        os.close(write_end)
        said = b""
        while chunk := os.read(read_end, 4096):
            said += chunk
        if said == b"ok":
            os._exit(0)
        message = said.decode(errors="replace") or (
            "gearmill serve: the daemon stopped before it listened; see its log file\n"
        )
        sys.stderr.write(message)
        sys.stderr.flush()
        os._exit(1)
    os.close(read_end)
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    return write_end


def main(argv: Sequence[str]) -> int:
    problem = check_unsupported(argv)
    if problem:
        print(f"gearmill serve: {problem}", file=sys.stderr)
        return 2
    ns = build_parser(cls=_CommandLine).parse_args(argv)
    try:
        config = load(ns, os.environ)
    except ConfigError as e:
        print(f"gearmill serve: {e}", file=sys.stderr)
        return 2
    for line in settings.unknown_env(os.environ):
        print(f"gearmill serve: warning: {line}", file=sys.stderr)
    if "config_file" not in vars(ns) and os.path.exists(GEARMAND_CONFIG):
        # gearmand reads it without being asked: its -q flags may name the queue its
        # jobs wait in, which would stay there unnoticed
        print(
            f"gearmill serve: warning: {GEARMAND_CONFIG} exists, and gearmand reads it"
            f" by default; gearmill does only with --config-file {GEARMAND_CONFIG}",
            file=sys.stderr,
        )
    return run(config)


def run(config: Config) -> int:
    if config.file_descriptors:
        import resource

        n = config.file_descriptors
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
        except (ValueError, OSError) as e:
            print(f"gearmill serve: --file-descriptors {n}: {e}", file=sys.stderr)
            return 2
    target = config.log_file
    if config.daemon and target == "stderr":
        target = "none"  # a daemon has no terminal
    try:
        logs = _Log(target, config.verbose.value, config.log_format)
    except OSError as e:
        print(f"gearmill serve: cannot open log file {target}: {e.strerror or e}", file=sys.stderr)
        return 1
    notify = _daemonize() if config.daemon else None
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    report = _Report(logs, notify)
    try:
        return asyncio.run(_serve(config, logs, report))
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were in place
        return report.fail("interrupted while starting (SIGINT)")


async def _serve(config: Config, logs: _Log, report: _Report) -> int:
    # read here, after a --daemon fork: the watchdog is meant for this process
    server = Server(config, Notifier.from_env(os.environ))
    try:
        await server.start()
    except OSError as e:
        return report.fail(str(e.strerror or e))
    except (StoreError, ImportError) as e:  # ImportError: an extra (--http's) is missing
        await server.close("start-up failed")
        return report.fail(str(e))
    server.install_signals()
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, _reopen, logs)
    _tune_gc()
    pid_file = config.pid_file
    if pid_file:
        try:
            with open(pid_file, "w") as f:
                f.write(f"{os.getpid()}\n")
        except OSError as e:
            await server.close("start-up failed")
            return report.fail(f"cannot write pid file {pid_file}: {e.strerror or e}")
    server.announce()
    report.ready()
    try:
        await server.serve_forever()
    finally:
        if pid_file:
            try:
                os.unlink(pid_file)
            except OSError:
                pass
    return server.exit_code


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
    try:
        logs.open()
    except OSError as e:
        # keep logging where we were: a server does not stop over its log file
        logging.getLogger("gearmill.server").error(
            "SIGHUP: cannot reopen log file %s: %s; still logging to the old one",
            logs.target,
            e.strerror or e,
        )
        return
    # log rotation's normal signal: gearmand's NOTICE line (shown from --verbose NOTICE on)
    logging.getLogger("gearmill.server").info(
        "SIGHUP, reopening log file", extra={"gearman_level": "NOTICE"}
    )
