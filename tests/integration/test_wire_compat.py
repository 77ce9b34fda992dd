"""Byte-exact scenarios run against gearmill and a real C gearmand 1.1.20 alike."""

from __future__ import annotations

import pytest

from conftest import Running
from gearmill.protocol.packets import ARG_COUNT

CAN_DO, CANT_DO, RESET, PRE_SLEEP, NOOP = 1, 2, 3, 4, 6
SUBMIT_JOB, JOB_CREATED, GRAB_JOB, NO_JOB, JOB_ASSIGN = 7, 8, 9, 10, 11
WORK_STATUS, WORK_COMPLETE, WORK_FAIL, GET_STATUS, ECHO_REQ, ECHO_RES = 12, 13, 14, 15, 16, 17
SUBMIT_JOB_BG, ERROR, STATUS_RES, SUBMIT_JOB_HIGH, SET_CLIENT_ID, CAN_DO_TIMEOUT = (
    18,
    19,
    20,
    21,
    22,
    23,
)
WORK_EXCEPTION, OPTION_REQ, OPTION_RES, WORK_DATA, WORK_WARNING = 25, 26, 27, 28, 29
GRAB_JOB_UNIQ, JOB_ASSIGN_UNIQ, SUBMIT_JOB_HIGH_BG, SUBMIT_JOB_LOW, SUBMIT_JOB_LOW_BG = (
    30,
    31,
    32,
    33,
    34,
)
SUBMIT_JOB_SCHED, SUBMIT_JOB_EPOCH, SUBMIT_REDUCE_JOB, GRAB_JOB_ALL, JOB_ASSIGN_ALL = (
    35,
    36,
    37,
    39,
    40,
)
GET_STATUS_UNIQUE, STATUS_RES_UNIQUE = 41, 42


def test_echo_and_status_of_unknown(server: Running) -> None:
    with server.conn() as c:
        c.send(ECHO_REQ, b"hello\x00world")
        assert c.expect(ECHO_RES) == b"hello\x00world"
        c.send(ECHO_REQ, b"")
        assert c.expect(ECHO_RES) == b""
        c.send(GET_STATUS, b"H:nope:1")
        assert c.expect(STATUS_RES) == b"H:nope:1\x000\x000\x000\x000"
        c.send(GET_STATUS_UNIQUE, b"u")
        assert c.expect(STATUS_RES_UNIQUE) == b"u\x000\x000\x000\x000\x000"


def test_foreground_round_trip_with_progress(server: Running) -> None:
    with server.conn() as w, server.conn() as cl:
        w.send(CAN_DO, b"rev")
        w.send(GRAB_JOB)
        assert w.expect(NO_JOB) == b""
        w.send(PRE_SLEEP)
        assert w.quiet()
        cl.send(SUBMIT_JOB, b"rev", b"u1", b"abc")
        assert cl.expect(JOB_CREATED) == b"H:test:1"
        assert w.expect(NOOP) == b""
        w.send(GRAB_JOB_UNIQ)
        assert w.expect(JOB_ASSIGN_UNIQ) == b"H:test:1\x00rev\x00u1\x00abc"
        cl.send(GET_STATUS, b"H:test:1")
        assert cl.expect(STATUS_RES) == b"H:test:1\x001\x001\x000\x000"
        w.send(WORK_STATUS, b"H:test:1", b"3", b"10")
        assert cl.expect(WORK_STATUS) == b"H:test:1\x003\x0010"
        w.send(WORK_DATA, b"H:test:1", b"part")
        assert cl.expect(WORK_DATA) == b"H:test:1\x00part"
        w.send(WORK_WARNING, b"H:test:1", b"careful")
        assert cl.expect(WORK_WARNING) == b"H:test:1\x00careful"
        cl.send(GET_STATUS, b"H:test:1")
        assert cl.expect(STATUS_RES) == b"H:test:1\x001\x001\x003\x0010"
        w.send(WORK_COMPLETE, b"H:test:1", b"cba")
        assert cl.expect(WORK_COMPLETE) == b"H:test:1\x00cba"
        cl.send(GET_STATUS, b"H:test:1")
        assert cl.expect(STATUS_RES) == b"H:test:1\x000\x000\x000\x000"
        # a late result for a finished job
        w.send(WORK_COMPLETE, b"H:test:1", b"again")
        assert w.expect(ERROR) == b"JOB_NOT_FOUND\x00Job given in work result not found"


def test_priorities_fifo_within_priority(server: Running) -> None:
    with server.conn() as cl, server.conn() as w:
        order = [
            (SUBMIT_JOB_LOW_BG, b"p0"),
            (SUBMIT_JOB_BG, b"p1"),
            (SUBMIT_JOB_HIGH_BG, b"p2"),
            (SUBMIT_JOB_LOW_BG, b"p3"),
            (SUBMIT_JOB_BG, b"p4"),
            (SUBMIT_JOB_HIGH_BG, b"p5"),
        ]
        for ptype, data in order:
            cl.send(ptype, b"f", b"", data)
            cl.expect(JOB_CREATED)
        w.send(CAN_DO, b"f")
        got = []
        for _ in order:
            w.send(GRAB_JOB)
            handle, _func, data = w.expect(JOB_ASSIGN).split(b"\x00")
            got.append(data)
            w.send(WORK_COMPLETE, handle, b"")
        assert got == [b"p2", b"p5", b"p1", b"p4", b"p0", b"p3"]
        w.send(GRAB_JOB)
        w.expect(NO_JOB)


def test_unique_coalescing(server: Running) -> None:
    with server.conn() as a, server.conn() as b, server.conn() as w:
        a.send(SUBMIT_JOB, b"f", b"same", b"one")
        h = a.expect(JOB_CREATED)
        b.send(SUBMIT_JOB, b"f", b"same", b"two")
        assert b.expect(JOB_CREATED) == h
        # "-" coalesces on identical data
        a.send(SUBMIT_JOB_BG, b"f", b"-", b"payload")
        h2 = a.expect(JOB_CREATED)
        a.send(SUBMIT_JOB_BG, b"f", b"-", b"payload")
        assert a.expect(JOB_CREATED) == h2
        a.send(SUBMIT_JOB_BG, b"f", b"-", b"other")
        assert a.expect(JOB_CREATED) != h2
        # empty unique never coalesces
        a.send(SUBMIT_JOB_BG, b"f", b"", b"x")
        h3 = a.expect(JOB_CREATED)
        a.send(SUBMIT_JOB_BG, b"f", b"", b"x")
        assert a.expect(JOB_CREATED) != h3
        a.send(GET_STATUS_UNIQUE, b"same")
        assert a.expect(STATUS_RES_UNIQUE) == b"same\x001\x000\x000\x000\x002"
        w.send(CAN_DO, b"f")
        w.send(GRAB_JOB_UNIQ)
        assert w.expect(JOB_ASSIGN_UNIQ) == h + b"\x00f\x00same\x00one"
        w.send(WORK_COMPLETE, h, b"done")
        assert a.expect(WORK_COMPLETE) == h + b"\x00done"
        assert b.expect(WORK_COMPLETE) == h + b"\x00done"
        w.send(GRAB_JOB_UNIQ)
        assert w.expect(JOB_ASSIGN_UNIQ).split(b"\x00")[2:] == [b"-", b"payload"]


def test_exception_forwarding_with_and_without_option(server: Running) -> None:
    with server.conn() as plain, server.conn() as exc, server.conn() as w:
        exc.send(OPTION_REQ, b"EXCEPTIONS")
        assert exc.expect(OPTION_RES) == b"EXCEPTIONS"
        exc.send(OPTION_REQ, b"bogus")
        assert exc.expect(ERROR) == b"UNKNOWN_OPTION\x00Server does not recognize given option"
        plain.send(SUBMIT_JOB, b"f", b"k", b"x")
        h = plain.expect(JOB_CREATED)
        exc.send(SUBMIT_JOB, b"f", b"k", b"x")
        assert exc.expect(JOB_CREATED) == h
        w.send(CAN_DO, b"f")
        w.send(GRAB_JOB)
        w.expect(JOB_ASSIGN)
        w.send(WORK_EXCEPTION, h, b"boom")
        assert exc.expect(WORK_EXCEPTION) == h + b"\x00boom"
        # gearmand appends a NUL here (its bug #166); both forms end the job for the client
        assert plain.expect(WORK_FAIL).rstrip(b"\x00") == h


def test_errors_keep_connection_open(server: Running) -> None:
    with server.conn() as c:
        c.send(ECHO_REQ, b"x", magic=b"\x00RES")
        assert c.expect(ERROR) == b"INVALID_MAGIC\x00Request magic expected"
        for ptype in (5, 6, 8, 10, 11, 17, 19, 20, 24, 27, 31, 40, 42):
            c.send(ptype, *[b"a"] * ARG_COUNT[ptype])
            assert c.expect(ERROR) == b"INVALID_COMMAND\x00Command not expected", ptype
        c.send(SUBMIT_JOB_SCHED, b"f", b"u", b"1", b"1", b"1", b"1", b"1", b"d")
        assert c.expect(ERROR) == b"INVALID_COMMAND\x00Command not expected"
        c.send(SUBMIT_JOB, b"f", b"u" * 65, b"x")
        assert c.expect(ERROR) == b"ARGUMENT_TOO_LARGE\x00Unique value too large"
        c.send(WORK_DATA, b"H:x:1", b"d")
        assert c.expect(ERROR) == b"JOB_NOT_FOUND\x00Job does not exist on server"
        c.send(WORK_EXCEPTION, b"H:x:1", b"d")
        assert c.expect(ERROR) == (
            b"JOB_NOT_FOUND\x00An exception was received for a job that does not exist"
        )
        c.send(WORK_FAIL, b"H:" + b"x" * 70)
        assert c.expect(ERROR).startswith(b"ARGUMENT_TOO_LARGE\x00Error occurred due to")
        c.send(WORK_FAIL, b"H:x:1")
        assert c.expect(ERROR) == b"JOB_NOT_FOUND\x00Job given in work result not found"
        c.send(ECHO_REQ, b"still here")
        assert c.expect(ECHO_RES) == b"still here"


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00XYZ" + b"\x00" * 8,
        b"\x00REQ\x00\x00\x00\x00\x00\x00\x00\x00",
        b"\x00REQ\x00\x00\x00\x2b\x00\x00\x00\x00",
    ],
    ids=["bad-magic", "type-0", "type-43"],
)
def test_bad_framing_closes_only_that_connection(server: Running, garbage: bytes) -> None:
    with server.conn() as other, server.conn() as bad:
        other.send(SUBMIT_JOB_BG, b"f", b"", b"kept")
        h = other.expect(JOB_CREATED)
        bad.raw(garbage)
        assert bad.closed_by_server()
        other.send(GET_STATUS, h)
        assert other.expect(STATUS_RES) == h + b"\x001\x000\x000\x000"


def test_admin_replies(server: Running) -> None:
    with server.conn() as c, server.conn() as w:
        for data, ptype, uniq in (
            (b"1", SUBMIT_JOB_LOW_BG, b"a"),
            (b"2", SUBMIT_JOB_BG, b"b"),
            (b"3", SUBMIT_JOB_HIGH_BG, b""),
        ):
            c.send(ptype, b"nobody_works", uniq, data)
            c.expect(JOB_CREATED)
        w.send(CAN_DO, b"reverse")
        w.send(ECHO_REQ, b"sync")
        w.expect(ECHO_RES)
        status = c.admin(b"status\n")
        assert sorted(status.split(b"\n")) == sorted(
            b"nobody_works\t3\t0\t0\nreverse\t0\t0\t1\n.\n".split(b"\n")
        )
        prio = c.admin(b"prioritystatus\n")
        assert sorted(prio.split(b"\n")) == sorted(
            b"nobody_works\t1\t1\t1\t0\nreverse\t0\t0\t0\t1\n.\n".split(b"\n")
        )
        assert c.admin(b"show jobs\n") == (
            b"H:test:1\t0\t0\t1\nH:test:2\t0\t0\t1\nH:test:3\t0\t0\t1\n.\n"
        )
        # gearmand lists in hash-bucket order: compare as sets of lines
        assert sorted(c.admin(b"show unique jobs\n").split(b"\n")) == sorted(
            b"a\nb\n\n.\n".split(b"\n")
        )
        workers = c.admin(b"workers\n").split(b"\n")
        assert [line.split(b" ", 1)[1] for line in workers[:-2]] == [
            b"127.0.0.1 - :",
            b"127.0.0.1 - : reverse",
        ] or sorted(line.split(b" ", 1)[1] for line in workers[:-2]) == [
            b"127.0.0.1 - :",
            b"127.0.0.1 - : reverse",
        ]
        assert workers[-2:] == [b".", b""]
        assert c.admin(b"maxqueue\n") == (
            b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+"
            b"maxqueue\r\n"
        )
        assert c.admin(b"maxqueue nobody_works 10\n") == b"OK\r\n"
        assert c.admin(b"cancel job H:test:2\n") == b"OK\r\n"
        assert c.admin(b"cancel job H:test:999\n") == b"ERR UNKNOWN_JOB\r\n"
        assert c.admin(b"cancel\n") == b"ERR UNKNOWN_COMMAND Unknown+server+commandcancel\r\n"
        assert c.admin(b"cancel foo bar\n") == b"ERR UNKNOWN_ERROR\r\n"
        assert c.admin(b"create function newq\r\n") == b"OK\r\n"
        assert c.admin(b"drop function newq\r\n") == b"OK\r\n"
        assert c.admin(b"drop function reverse\n") == (
            b"ERR there are still connected workers or executing clients\r\n"
        )
        assert c.admin(b"drop function nothere\n") == b"ERR function not found\r\n"
        assert c.admin(b"foo\n") == b"ERR UNKNOWN_COMMAND Unknown+server+commandfoo\r\n"
        assert c.admin(b"show foo\n") == b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"
        assert c.admin(b"show\n") == b"ERR UNKNOWN_COMMAND Unknown+server+commandshow\r\n"
        assert c.admin(b" version\n") == b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n"
        assert c.admin(b"VERSION   x\n").startswith(b"OK 1.1.20")
        assert c.admin(b"verbose\n").startswith(b"OK ")
        assert c.admin(b"getpid x\n") == b"OK %d\n" % server.proc.pid
        c.send(ECHO_REQ, b"mixed")  # binary and text on one connection
        assert c.expect(ECHO_RES) == b"mixed"
        c.raw(b"a b c d e f\n")
        assert c.closed_by_server()


def test_maxqueue_rejects(server: Running) -> None:
    with server.conn() as c:
        assert c.admin(b"create function mq\r\n") == b"OK\r\n"
        assert c.admin(b"maxqueue mq 2\n") == b"OK\r\n"
        for i in range(2):
            c.send(SUBMIT_JOB_BG, b"mq", b"", b"%d" % i)
            c.expect(JOB_CREATED)
        c.send(SUBMIT_JOB_BG, b"mq", b"", b"3")
        assert c.expect(ERROR) == b"QUEUE_ERROR\x00Job queue is full"
        assert c.admin(b"maxqueue mq\n") == b"OK\r\n"
        c.send(SUBMIT_JOB_BG, b"mq", b"", b"3")
        c.expect(JOB_CREATED)


def test_worker_disconnect_requeues_and_retry_limit_is_attempts() -> None:
    from conftest import start_gearmand, start_gearmill

    for srv in (start_gearmill("--job-retries", "2"), start_gearmand("--job-retries=2")):
        try:
            with srv.conn() as cl:
                cl.send(SUBMIT_JOB, b"f", b"j1", b"x")
                h = cl.expect(JOB_CREATED)
                for attempt in range(2):
                    with srv.conn() as w:
                        w.send(CAN_DO, b"f")
                        w.send(GRAB_JOB)
                        assert w.expect(JOB_ASSIGN).startswith(h), srv.name
                    if attempt == 0:
                        assert cl.quiet(0.3), srv.name
                assert cl.expect(WORK_FAIL) == h, srv.name
        finally:
            srv.stop()


def test_cant_do_requeues_and_reset_abilities(server: Running) -> None:
    with server.conn() as c, server.conn() as w:
        c.send(SUBMIT_JOB, b"f", b"", b"x")
        h = c.expect(JOB_CREATED)
        w.send(CAN_DO, b"f")
        w.send(GRAB_JOB)
        assert w.expect(JOB_ASSIGN).startswith(h)
        w.send(CANT_DO, b"f")
        w.send(GRAB_JOB)
        w.expect(NO_JOB)
        w.send(CAN_DO, b"f")
        w.send(GRAB_JOB)
        assert w.expect(JOB_ASSIGN).startswith(h)
        assert c.admin(b"show jobs\n") == h + b"\t1\t0\t0\n.\n"
        w.send(RESET, b"")
        w.send(GRAB_JOB)
        w.expect(NO_JOB)


def test_reduce_job_and_grab_all(server: Running) -> None:
    with server.conn() as c, server.conn() as w:
        c.send(SUBMIT_REDUCE_JOB, b"fR", b"r1", b"reducerfn", b"", b"mapdata")
        h = c.expect(JOB_CREATED)
        c.send(SUBMIT_JOB_BG, b"fR", b"r2", b"plain")
        h2 = c.expect(JOB_CREATED)
        w.send(CAN_DO, b"fR")
        w.send(GRAB_JOB_ALL)
        assert w.expect(JOB_ASSIGN_ALL) == h + b"\x00fR\x00r1\x00reducerfn\x00mapdata"
        w.send(GRAB_JOB_ALL)
        assert w.expect(JOB_ASSIGN_UNIQ) == h2 + b"\x00fR\x00r2\x00plain"


def test_client_disconnect_drops_queued_foreground_job(server: Running) -> None:
    with server.conn() as c:
        c.send(SUBMIT_JOB, b"gone", b"", b"x")
        c.expect(JOB_CREATED)
    with server.conn() as w:
        w.send(CAN_DO, b"gone")
        w.send(GRAB_JOB)
        assert w.expect(NO_JOB) == b""


def test_pre_sleep_with_work_waiting_gets_noop(server: Running) -> None:
    with server.conn() as c, server.conn() as w:
        c.send(SUBMIT_JOB_BG, b"f", b"", b"x")
        c.expect(JOB_CREATED)
        w.send(CAN_DO, b"f")
        w.send(PRE_SLEEP)
        assert w.expect(NOOP) == b""


def test_one_noop_per_sleep(server: Running) -> None:
    with server.conn() as c, server.conn() as w:
        w.send(CAN_DO, b"f")
        w.send(PRE_SLEEP)
        w.send(ECHO_REQ, b"sync")
        w.expect(ECHO_RES)
        for _ in range(3):
            c.send(SUBMIT_JOB_BG, b"f", b"", b"x")
            c.expect(JOB_CREATED)
        assert w.expect(NOOP) == b""
        assert w.quiet(0.3)


def test_set_client_id_shows_in_workers(server: Running) -> None:
    with server.conn() as w:
        w.send(SET_CLIENT_ID, b"my worker")
        w.send(CAN_DO, b"f1")
        w.send(CAN_DO, b"f1")
        w.send(ECHO_REQ, b"sync")
        w.expect(ECHO_RES)
        workers = w.admin(b"workers\n")
        assert b" 127.0.0.1 my worker : f1 f1\n" in workers
        assert w.admin(b"status\n") == b"f1\t0\t0\t2\n.\n"
