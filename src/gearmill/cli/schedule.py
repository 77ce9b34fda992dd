"""``gearmill schedule``: recurring jobs on a gearmill server (add, list, pause, resume, remove).

A schedule lives on the server it is added to; with several servers (-s) each
command goes to the first.
"""

from __future__ import annotations

import argparse
import sys

from ..client.admin import AdminClient
from ..errors import GearmanError, ServerError
from .common import add_server_arguments, server_list, tls_context


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_server_arguments(p)
    sub = p.add_subparsers(dest="schedule_command", metavar="add|list|pause|resume|remove")
    sub.required = True
    a = sub.add_parser(
        "add",
        help="a background job each minute that CRON matches",
        description="Submit FUNCTION as a background job each minute CRON matches (UTC).",
    )
    a.add_argument("name", help="the schedule's name (up to 32 characters, no spaces)")
    a.add_argument("function", help="the function the job is for")
    a.add_argument("cron", help="five fields in quotes, '*/5 * * * *', or @hourly, @daily, ...")
    a.add_argument("--data", default="", help="the job's payload (default empty)")
    a.add_argument("--priority", choices=("high", "normal", "low"), default="normal")
    sub.add_parser("list", help="every schedule, its next run and how often it fired")
    for verb, text in (
        ("pause", "stop firing until resumed"),
        ("resume", "fire again from the next match"),
        ("remove", "forget it"),
    ):
        sub.add_parser(verb, help=text).add_argument("name")


def run(args: argparse.Namespace) -> int:
    try:
        server = server_list(args)[0]
        tls = tls_context(args)
    except ValueError as e:  # a bad address or certificate file, as the other commands
        print(f"gearmill schedule: {e}", file=sys.stderr)
        return 2
    try:
        with AdminClient(server, tls=tls) as admin:
            command = args.schedule_command
            if command == "add":
                admin.add_schedule(args.name, args.function, args.cron, args.data, args.priority)
            elif command == "list":
                for s in admin.schedules():
                    state = "paused" if s.paused else "active"
                    print(
                        f"{s.name}\t{s.cron}\t{s.function}\t{state}\tnext {s.next_run}\t{s.fired}"
                    )
            elif command == "pause":
                admin.pause_schedule(args.name)
            elif command == "resume":
                admin.resume_schedule(args.name)
            else:
                admin.remove_schedule(args.name)
    except ServerError as e:
        print(f"gearmill schedule: {e.text}", file=sys.stderr)
        return 1
    except (GearmanError, ValueError) as e:
        print(f"gearmill schedule: {e}", file=sys.stderr)
        return 1
    return 0
