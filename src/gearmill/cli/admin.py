"""``gearmill admin``: every gearadmin option, tables on a terminal, and a Nagios check."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from ..client.admin import AdminClient
from ..errors import GearmanError, NotAJobServer, ServerError
from .common import WRONG_PORT_HINT, add_server_arguments, server_list, tls_context

# gearadmin runs several options in this fixed order on one connection
_ORDER = (
    ("status", "status"),
    ("priority_status", "prioritystatus"),
    ("workers", "workers"),
    ("server_version", "version"),
    ("server_verbose", "verbose"),
    ("cancel_job", "cancel job"),
    ("show_unique_jobs", "show unique jobs"),
    ("show_jobs", "show jobs"),
    ("drop_function", "drop function"),
    ("create_function", "create function"),
    ("getpid", "getpid"),
)

_HEADERS = {
    "status": ("FUNCTION", "TOTAL", "RUNNING", "WORKERS"),
    "prioritystatus": ("FUNCTION", "HIGH", "NORMAL", "LOW", "WORKERS"),
    "show jobs": ("HANDLE", "RETRIES", "IGNORED", "BACKGROUND"),
    "show unique jobs": ("UNIQUE",),
    "dead status": ("FUNCTION", "DEAD"),
    "dead list": ("HANDLE", "FUNCTION", "UNIQUE", "ATTEMPTS", "LAST ENDING", "DIED (UTC)"),
    "dead show": ("FIELD", "VALUE"),
    "retry show": ("FUNCTION", "RULE"),
    "nodes": ("NODE", "TOKEN", "LEASE LEFT (S)", "JOBS", "SELF"),
}

# gearmill's own commands, run after gearadmin's
_OWN = (
    ("dead_status", "dead status"),
    ("dead_list", "dead list"),
    ("dead_show", "dead show"),
    ("dead_requeue", "dead requeue"),
    ("dead_purge", "dead purge"),
    ("retry_set", "retry set"),
    ("retry_show", "retry show"),
    ("nodes", "nodes"),
)

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3


class _CheckParser(argparse.ArgumentParser):
    """``check``'s parser: a usage error is Nagios' UNKNOWN (3) in one line, not
    argparse's status 2, which Nagios would read as CRITICAL."""

    def error(self, message: str) -> NoReturn:
        print(f"GEARMAN UNKNOWN - {message} (see gearmill admin check --help)")
        sys.exit(UNKNOWN)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extra = super().parse_known_args(args, namespace)
        if extra:  # else the admin parser reports them, with its usage and status 2
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed, extra


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_server_arguments(p)
    p.add_argument("--status", action="store_true", help="functions: total, running, workers")
    p.add_argument("--priority-status", action="store_true", help="queued jobs per priority")
    p.add_argument("--workers", action="store_true", help="connections and their functions")
    p.add_argument("--show-jobs", action="store_true", help="every job")
    p.add_argument("--show-unique-jobs", action="store_true", help="unique ids of every job")
    p.add_argument("--getpid", action="store_true", help="server process id")
    p.add_argument("--server-version", action="store_true", help="server version")
    p.add_argument("--server-verbose", action="store_true", help="server log level")
    p.add_argument("--cancel-job", metavar="HANDLE", help="remove a job")
    p.add_argument("--create-function", metavar="NAME", help="create a function")
    p.add_argument("--drop-function", metavar="NAME", help="drop an idle function")
    p.add_argument("--raw", action="store_true", help="print the server's reply verbatim")
    g = p.add_argument_group("gearmill's own: the dead set and retries")
    g.add_argument("--dead-status", action="store_true", help="dead jobs per function")
    g.add_argument(
        "--dead-list", nargs="?", const="", metavar="FUNCTION", help="dead jobs (of one function)"
    )
    g.add_argument("--dead-show", metavar="HANDLE", help="one dead job: failure, attempts, data")
    g.add_argument(
        "--dead-requeue",
        nargs="+",
        metavar="WHAT",
        help="back to the queue: HANDLE, 'function NAME' or 'all'",
    )
    g.add_argument(
        "--dead-purge", nargs="+", metavar="WHAT", help="forget: HANDLE, 'function NAME' or 'all'"
    )
    g.add_argument("--retry-show", action="store_true", help="the retry rules")
    g.add_argument(
        "--retry-set",
        nargs="+",
        metavar="ARG",
        help="FUNCTION|* KEY=VALUE...: max_attempts, backoff, retry_on, dead, dead_on_fail",
    )
    g.add_argument(
        "--nodes", action="store_true", help="the servers sharing the store, their jobs and leases"
    )
    sub = p.add_subparsers(dest="admin_command", metavar="check", parser_class=_CheckParser)
    c = sub.add_parser(
        "check",
        help="Nagios health check (exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)",
        description="Health check with Nagios exit codes and performance data.",
        add_help=False,
        # the server flags may also follow `check` (as a Nagios command line puts them);
        # unset ones keep what was given before it
        argument_default=argparse.SUPPRESS,
    )
    add_server_arguments(c)
    c.add_argument(
        "--warn-queue", type=int, default=None, metavar="N", help="WARNING when a queue holds >= N"
    )
    c.add_argument(
        "--crit-queue", type=int, default=None, metavar="N", help="CRITICAL when a queue holds >= N"
    )
    c.add_argument(
        "--function",
        action="append",
        default=[],
        metavar="NAME",
        help="only look at these functions (repeatable)",
    )
    c.add_argument(
        "--require-workers",
        action="store_true",
        default=False,
        help="CRITICAL when a function with queued jobs has no worker",
    )
    c.add_argument(
        "--min-workers",
        type=int,
        default=0,
        metavar="N",
        help="CRITICAL when a checked function has fewer than N workers",
    )


def _table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row[: len(widths)]):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        cells = list(row[: len(widths)]) + [""] * (len(widths) - len(row))
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    return "\n".join(lines) + "\n"


def _show(command: str, reply: bytes, raw: bool, pretty: bool) -> int:
    """Print like gearadmin (or a table); returns 1 for an ERR reply, else 0."""
    text = reply.decode(errors="replace")
    if raw:
        sys.stdout.write(text)
        return 1 if text.startswith("ERR") else 0
    if text.startswith("ERR "):
        # the text is gearmand's, spaces as '+' (AdminClient reads it the same way)
        print("Error: " + text[4:].rstrip("\r\n").replace("+", " "), file=sys.stderr)
        return 1
    if text.startswith("OK"):
        value = text[3:].rstrip("\r\n") if text.startswith("OK ") else "OK"
        print(value)
        return 0
    lines = text.split("\n")
    body = lines[: lines.index(".")] if "." in lines else lines
    if pretty and command in _HEADERS:
        sys.stdout.write(_table([line.split("\t") for line in body], _HEADERS[command]))
    elif pretty and command == "workers":
        rows = []
        for line in body:
            head, _, funcs = line.partition(" :")
            fd, addr, cid = [*head.split(" ", 2), "", ""][:3]
            rows.append([fd, addr, cid, funcs.strip()])
        sys.stdout.write(_table(rows, ("FD", "ADDRESS", "CLIENT-ID", "FUNCTIONS")))
    else:
        sys.stdout.write(text)
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        servers = server_list(args)
        args.tls = tls_context(args)
    except ValueError as e:
        print(f"gearmill admin: {e}", file=sys.stderr)
        return 2
    if args.admin_command == "check":
        return _check(args, servers[0])
    chosen = [(attr, cmd) for attr, cmd in _ORDER if getattr(args, attr)]
    chosen += [(attr, cmd) for attr, cmd in _OWN if getattr(args, attr) not in (None, False)]
    if not chosen:
        print("gearmill admin: no option given; see gearmill admin --help", file=sys.stderr)
        return 2
    pretty = sys.stdout.isatty() and not args.raw
    failed = 0
    for server in servers:
        try:
            with AdminClient(server, tls=args.tls) as admin:
                if len(servers) > 1:
                    print(f"# {server}")
                for attr, cmd in chosen:
                    value = getattr(args, attr)
                    if isinstance(value, list):
                        value = " ".join(value)
                    line = f"{cmd} {value}" if isinstance(value, str) and value else cmd
                    failed |= _show(cmd, admin.command(line), args.raw, pretty)
        except NotAJobServer as e:  # e.g. the --http port: say which port to give instead
            print(f"gearmill admin: {e}; {WRONG_PORT_HINT}", file=sys.stderr)
            return 1
        except GearmanError as e:
            print(f"gearmill admin: {e}", file=sys.stderr)
            return 1
    return failed


def _check(args: argparse.Namespace, server: str) -> int:
    try:
        with AdminClient(server, tls=args.tls) as admin:
            functions = admin.status()
    except NotAJobServer as e:
        print(f"GEARMAN CRITICAL - {e}; {WRONG_PORT_HINT}")
        return CRITICAL
    except (GearmanError, ServerError, ValueError) as e:
        print(f"GEARMAN CRITICAL - {server}: {e}")
        return CRITICAL
    if args.function:
        wanted = set(args.function)
        missing = wanted - {f.name for f in functions}
        functions = [f for f in functions if f.name in wanted]
    else:
        missing = set()
    state = OK
    problems: list[str] = []
    for name in sorted(missing):
        if args.min_workers > 0 or args.require_workers:
            problems.append(f"{name}: unknown function")
            state = CRITICAL
    for f in functions:
        if args.crit_queue is not None and f.queued >= args.crit_queue:
            problems.append(f"{f.name}: {f.queued} queued >= {args.crit_queue}")
            state = max(state, CRITICAL)
        elif args.warn_queue is not None and f.queued >= args.warn_queue:
            problems.append(f"{f.name}: {f.queued} queued >= {args.warn_queue}")
            state = max(state, WARNING)
        if args.require_workers and f.queued and not f.workers:
            problems.append(f"{f.name}: {f.queued} queued, no worker")
            state = CRITICAL
        if f.workers < args.min_workers:
            problems.append(f"{f.name}: {f.workers} workers < {args.min_workers}")
            state = CRITICAL
    label = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL"}[state]
    queued = sum(f.queued for f in functions)
    running = sum(f.running for f in functions)
    summary = (
        "; ".join(problems)
        if problems
        else f"{len(functions)} functions, {queued} queued, {running} running"
    )
    perf = " ".join(
        f"'{f.name}_queued'={f.queued} '{f.name}_running'={f.running} "
        f"'{f.name}_workers'={f.workers}"
        for f in functions
    )
    print(f"GEARMAN {label} - {summary}" + (f" | {perf}" if perf else ""))
    return state
