"""What the client's errors say: figures people write, reasons in words."""

from __future__ import annotations

import errno
import socket

import pytest

import gearmill as gm
from gearmill.errors import connect_reason, seconds


@pytest.mark.parametrize(
    ("value", "shown"),
    [(1.99984, "2"), (0.5, "0.5"), (0.29998, "0.3"), (1.25, "1.25"), (60.0, "60"), (120.4, "120")],
)
def test_seconds_are_rounded_as_people_write_them(value: float, shown: str) -> None:
    assert seconds(value) == shown


def test_connect_reasons_are_words() -> None:
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('127.0.0.1', 1)")
    assert connect_reason(refused) == "connection refused"
    # asyncio's message when localhost's ::1 and 127.0.0.1 both refuse
    both = OSError(
        "Multiple exceptions: [Errno 111] Connect call failed ('::1', 1, 0, 0),"
        " [Errno 111] Connect call failed ('127.0.0.1', 1)"
    )
    assert connect_reason(both) == "connection refused"
    assert connect_reason(TimeoutError(), 5.0) == "no answer within 5 s"
    unknown = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert connect_reason(unknown) == "unknown host (Name or service not known)"


def test_no_servers_message_names_each_server_and_hints() -> None:
    one = gm.NoServersAvailable(["h:1"], ["h:1: connection refused"])
    assert str(one).startswith("could not connect to h:1: connection refused; ")
    assert "GEARMAN_SERVERS" in str(one)
    two = gm.NoServersAvailable(["a:1", "b:2"], ["a:1: connection refused", "b:2: unknown host"])
    assert two.reason == (
        "could not connect to any of a:1, b:2 (a:1: connection refused; b:2: unknown host)"
    )
    # every address answered, but not in Gearman: not asked whether a server runs there
    wrong = gm.NotAJobServer("h:80", "unexpected text in binary stream")
    assert (
        str(wrong) == "h:80 is not a Gearman job server (it sent unexpected text in binary stream)"
    )
    three = gm.NoServersAvailable(["h:80"], [f"h:80: {wrong.reason}"], wrong_port=True)
    assert str(three) == (
        "could not connect to h:80: not a Gearman job server (it sent unexpected text in binary"
        " stream); give a job server's address (the servers argument, else $GEARMAN_SERVERS,"
        " else 127.0.0.1:4730)"
    )


def test_job_errors_say_what_the_worker_reported() -> None:
    failed = gm.JobFailed("H:x:1", function="resize")
    assert str(failed) == "job H:x:1 (resize) failed: the worker reported failure (WORK_FAIL)"
    raised = gm.JobException("H:x:2", b"ValueError: bad input", "parse")
    assert str(raised) == "job H:x:2 (parse) failed: the worker raised ValueError: bad input"
    assert raised.text == "ValueError: bad input" and raised.function == "parse"
    assert isinstance(raised, gm.JobFailed)


def test_json_result_that_is_not_json_says_so() -> None:
    with pytest.raises(ValueError, match=r"job result is not JSON .*b'olleh'"):
        gm.JSON.decode(b"olleh")
    assert gm.JSON.decode(gm.JSON.encode({"a": [1, None]})) == {"a": [1, None]}
