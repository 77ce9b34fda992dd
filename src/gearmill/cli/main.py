"""The ``gearmill`` command: serve | submit | work | admin."""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from . import serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gearmill", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gearmill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("serve", help="run the job server (gearmand compatible)")
    serve.add_arguments(p)
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
    if args.command == "serve":
        return serve.run(args, argv[1:])
    parser.error(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
