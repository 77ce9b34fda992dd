"""The ``gearmill`` command: serve | submit | work | admin."""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from . import admin, serve, submit, work


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gearmill", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gearmill {__version__}")
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("serve", help="run the job server (gearmand compatible)")
    serve.add_arguments(p)
    p = sub.add_parser("submit", help="submit jobs (like gearman)", add_help=False)
    submit.add_arguments(p)
    p = sub.add_parser("work", help="run a command per job (like gearman -w)", add_help=False)
    work.add_arguments(p)
    p = sub.add_parser("admin", help="server status and control (like gearadmin)", add_help=False)
    admin.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if argv[:1] == ["serve"]:
        problem = serve.check_unsupported(argv[1:])
        if problem:
            print(problem, file=sys.stderr)
            return 2
    args = parser.parse_args(argv)
    if args.subcommand == "serve":
        return serve.run(args, argv[1:])
    if args.subcommand == "submit":
        return submit.run(args)
    if args.subcommand == "work":
        return work.run(args)
    if args.subcommand == "admin":
        return admin.run(args)
    parser.error(f"unknown command {args.subcommand}")


if __name__ == "__main__":
    sys.exit(main())
