"""systemd notifications and JSON log lines, on their own: the watchdog belongs to
the process systemd named, STOPPING=1 is said once, and every log record (with an
exception or an extra value JSON has no type for) is one parseable line."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from pathlib import Path

from gearmill.cli.jsonlog import JsonFormatter
from gearmill.server.notify import Notifier


def test_watchdog_only_for_the_process_systemd_named() -> None:
    mine = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"}
    assert Notifier.from_env(mine).watchdog_usec == 30_000_000
    assert Notifier.from_env({**mine, "WATCHDOG_PID": str(os.getpid())}).watchdog_usec > 0
    # a parent's watchdog, inherited through a fork or an exec, is not ours to feed
    assert Notifier.from_env({**mine, "WATCHDOG_PID": "1"}).watchdog_usec == 0
    assert not Notifier.from_env({}).enabled


def test_stopping_is_said_once_then_only_the_status(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(tmp_path / "n"))
        manager.settimeout(5)
        notify = Notifier(str(tmp_path / "n"))
        notify.stopping("Stopping (SIGUSR1); 1 running")
        notify.stopping("Stopping (SIGUSR1)")
        notify.close()
        assert manager.recv(4096) == b"STOPPING=1\nSTATUS=Stopping (SIGUSR1); 1 running"
        assert manager.recv(4096) == b"STATUS=Stopping (SIGUSR1)"


def test_json_line_with_an_exception_and_odd_extras() -> None:
    logger = logging.getLogger("gearmill.test")
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = logger.makeRecord(
            "gearmill.test",
            logging.ERROR,
            __file__,
            1,
            "job %s failed",
            ("H:x:1",),
            sys.exc_info(),
            extra={"peer": ("127.0.0.1", 4730), "path": Path("/tmp/q")},
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["level"] == "ERROR" and data["logger"] == "gearmill.test"
    assert data["message"] == "job H:x:1 failed"
    assert data["peer"] == ["127.0.0.1", 4730] and data["path"] == "/tmp/q"
    assert data["exception"].endswith("ValueError: bad\nthing")
