"""The gearmill command: serve | submit | work | admin | schedule."""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from . import admin, schedule, serve, submit, work


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(prog="gearmill", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gearmill {__version__}")
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND")
    sub.required = True
    commands = {}
    p = sub.add_parser(
        "serve",
        help="run the job server (gearmand compatible)",
        description=serve.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_arguments(p)
    commands["serve"] = p
    p = sub.add_parser("submit", help="submit jobs (like gearman)", add_help=False)
    submit.add_arguments(p)
    commands["submit"] = p
    p = sub.add_parser("work", help="run a command per job (like gearman -w)", add_help=False)
    work.add_arguments(p)
    commands["work"] = p
    p = sub.add_parser("admin", help="server status and control (like gearadmin)", add_help=False)
    admin.add_arguments(p)
    commands["admin"] = p
    p = sub.add_parser(
        "schedule", help="recurring (cron) jobs on a gearmill server", add_help=False
    )
    schedule.add_arguments(p)
    commands["schedule"] = p
    return parser, commands


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        # its own parser: its usage, and its one-line errors for every setting source
        return serve.main(argv[1:])
    parser, commands = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # the subcommand's usage, not the top-level one
        commands[args.subcommand].error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.subcommand == "submit":
        return submit.run(args)
    if args.subcommand == "work":
        return work.run(args)
    if args.subcommand == "admin":
        return admin.run(args)
    if args.subcommand == "schedule":
        return schedule.run(args)
    parser.error(f"unknown command {args.subcommand}")


if __name__ == "__main__":
    sys.exit(main())
