"""Retries with backoff, the dead set and cron schedules, on the real broker with a
clock the test moves (the same Policies object the server wires to its broker)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from gearmill.protocol.codec import Decoder
from gearmill.protocol.packets import PacketType as T
from gearmill.server import admin_policy
from gearmill.server.broker import Broker, BrokerConfig, Peer
from gearmill.server.model import SCHEDULED
from gearmill.server.policy import Policies, RetryConfig, RetryRule, ScheduleSpec
from gearmill.server.sink import BufferSink


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(rule: RetryRule | None = None, **kw: object) -> tuple[Broker, Clock, Policies]:
    clock = Clock(kw.pop("now", 1_000_000.0))  # type: ignore[arg-type]
    b = Broker(BrokerConfig(handle_prefix=b"H:t"), clock)
    config = RetryConfig(default=rule or RetryRule(), **kw)  # type: ignore[arg-type]
    return b, clock, Policies(b, config, rand=lambda: 0.5)


def peer(b: Broker, fd: int) -> Peer:
    return b.connect(Peer(fd, "127.0.0.1", sink=BufferSink()))


def received(b: Broker, p: Peer) -> list[tuple[int, list[bytes]]]:
    b.flush()
    assert isinstance(p.sink, BufferSink)
    return Decoder(server=False).feed(p.sink.take())


def worker(b: Broker, fd: int, func: bytes = b"f", timeout: int = 0) -> Peer:
    w = peer(b, fd)
    if timeout:
        b.handle(w, T.CAN_DO_TIMEOUT, [func, b"%d" % timeout])
    else:
        b.handle(w, T.CAN_DO, [func])
    return w


def grab(b: Broker, w: Peer) -> list[bytes] | None:
    """The JOB_ASSIGN_UNIQ arguments, or None for NO_JOB."""
    received(b, w)
    b.handle(w, T.GRAB_JOB_UNIQ, [])
    replies = [r for r in received(b, w) if r[0] != T.NOOP]
    assert len(replies) == 1, replies
    ptype, args = replies[0]
    return args if ptype == T.JOB_ASSIGN_UNIQ else None


def admin(p: Policies, line: str) -> str:
    reply = admin_policy.run(p, line.encode())
    assert reply is not None
    return reply.decode()


def test_failed_background_job_retries_after_backoff_with_same_handle_and_unique() -> None:
    b, clock, _ = make(RetryRule(backoff=0.01, retry_on=frozenset({"fail"})))
    c, w = peer(b, 1), worker(b, 2)
    b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"u1", b"payload"])
    assert grab(b, w) == [b"H:t:1", b"f", b"u1", b"payload"]
    b.handle(w, T.WORK_FAIL, [b"H:t:1"])
    # first retry: 0.01 * (15 + 1**4 + 0.5 * 2) = 0.17 s, shown with its attempt count
    job = b.jobs[b"H:t:1"]
    assert job.state == SCHEDULED
    assert b.job_rows() == [(b"H:t:1", b"u1", 1, False, True)]
    assert b.next_deadline() == pytest.approx(clock.now + 0.17)
    clock.now += 0.16
    b.tick()
    assert grab(b, w) is None  # not yet
    clock.now += 0.02
    b.tick()
    assert grab(b, w) == [b"H:t:1", b"f", b"u1", b"payload"]
    b.handle(w, T.WORK_FAIL, [b"H:t:1"])
    # second retry: 0.01 * (15 + 2**4 + 0.5 * 3) = 0.325 s
    assert b.next_deadline() == pytest.approx(clock.now + 0.325)


def test_work_fail_is_final_by_default_and_not_kept() -> None:
    b, _, p = make()
    c, w = peer(b, 1), worker(b, 2)
    b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"", b"x"])
    grab(b, w)
    b.handle(w, T.WORK_FAIL, [b"H:t:1"])
    assert b.jobs == {} and p.dead.jobs == {}
    assert b.counters.failed == 1


def test_exhausted_job_is_dead_with_its_exception_text_and_requeues_with_its_handle() -> None:
    b, _, p = make(RetryRule(max_attempts=2, retry_on=frozenset({"exception"})))
    c, w = peer(b, 1), worker(b, 2)
    b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"u", b"data"])
    for _ in range(2):
        assert grab(b, w) is not None
        b.handle(w, T.WORK_EXCEPTION, [b"H:t:1", b"boom\nline 2"])
    assert b.jobs == {}
    assert admin(p, "dead status") == "f\t1\n.\n"
    row = admin(p, "dead list f").splitlines()[0].split("\t")
    assert row[:5] == ["H:t:1", "f", "u", "2", "exception"]
    show = dict(line.split("\t", 1) for line in admin(p, "dead show H:t:1").splitlines()[:-1])
    assert show["error"] == "boom\\nline 2" and show["data_base64"] == "ZGF0YQ=="
    assert admin(p, "dead requeue H:t:1") == "OK 1\n"
    assert admin(p, "dead status") == ".\n"
    assert grab(b, w) == [b"H:t:1", b"f", b"u", b"data"]


def test_a_job_that_always_times_out_stops_by_default() -> None:
    b, clock, p = make()  # gearmand's -j 0 would run it forever
    c, w = peer(b, 1), worker(b, 2, timeout=1000)
    b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"", b"x"])
    attempts = 0
    while attempts < 30 and grab(b, w) is not None:
        attempts += 1
        clock.now += 1.0
        b.tick()
    assert attempts == 25
    assert [(d.attempts, d.reason) for d in p.dead.jobs.values()] == [(25, "timeout")]


def test_foreground_retry_is_immediate_and_its_client_gets_work_fail_at_the_end() -> None:
    b, _, p = make(RetryRule(max_attempts=2, backoff=5.0))
    c = peer(b, 1)
    b.handle(c, T.SUBMIT_JOB, [b"f", b"", b"x"])
    for fd in (2, 3):
        w = worker(b, fd)
        assert grab(b, w) is not None
        b.disconnect(w)  # worker lost: retried at once despite the backoff
    assert [r[0] for r in received(b, c)] == [T.JOB_CREATED, T.WORK_FAIL]
    assert p.dead.jobs == {}  # a foreground job's client got the failure


def test_dead_on_fail_keeps_a_final_failure() -> None:
    b, _, p = make(RetryRule(dead_on_fail=True))
    c, w = peer(b, 1), worker(b, 2)
    b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"", b"x"])
    grab(b, w)
    b.handle(w, T.WORK_FAIL, [b"H:t:1"])
    assert [(d.attempts, d.reason) for d in p.dead.jobs.values()] == [(1, "fail")]


def test_retry_set_changes_a_function_live() -> None:
    b, _, p = make()
    assert admin(p, "retry set f max_attempts=1 retry_on=fail") == "OK\r\n"
    assert "f\tmax_attempts=1 backoff=0 retry_on=fail" in admin(p, "retry show f")
    assert admin(p, "retry set f colour=red").startswith("ERR INVALID_ARGUMENTS unknown+setting")
    c, w = peer(b, 1), worker(b, 2)
    b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"", b"x"])
    grab(b, w)
    b.handle(w, T.WORK_FAIL, [b"H:t:1"])
    assert [d.reason for d in p.dead.jobs.values()] == ["fail"]


def test_dead_set_bounds_log_each_job_that_leaves(caplog: pytest.LogCaptureFixture) -> None:
    b, clock, p = make(RetryRule(max_attempts=1), dead_max=2, dead_max_age=100.0)
    c = peer(b, 1)
    for i in range(3):
        b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"", b"x"])
        w = worker(b, 10 + i)
        grab(b, w)
        b.disconnect(w)
        clock.now += 10
    assert list(p.dead.jobs) == [b"H:t:2", b"H:t:3"]
    assert "Dead job removed (more than 2 dead jobs): H:t:1" in caplog.text
    # the age limit is on the broker's timer heap: no traffic needed
    clock.now += 85  # H:t:2 died 105 s ago, H:t:3 95 s ago
    b.tick()
    assert list(p.dead.jobs) == [b"H:t:3"]
    assert "Dead job removed (older than 100 s): H:t:2" in caplog.text
    caplog.set_level(logging.WARNING)
    assert admin(p, "dead purge all") == "OK 1\n" and p.dead.jobs == {}


def _at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_cron_fires_once_per_matching_minute_with_no_traffic() -> None:
    b, clock, p = make(now=_at("2026-01-01T00:00:59.5"))
    w = worker(b, 2, func=b"report")
    b.handle(w, T.PRE_SLEEP, [])
    assert admin(p, "schedule add every report * * * * * hello") == "OK\r\n"
    assert b.next_deadline() == _at("2026-01-01T00:01:00")
    clock.now = _at("2026-01-01T00:01:00")
    b.tick()
    assert [r[0] for r in received(b, w)] == [T.NOOP]  # the sleeping worker is woken
    assert grab(b, w) == [b"H:t:1", b"report", b"cron:every:202601010001", b"hello"]
    # the boundary again, and later in the same minute: nothing more
    b.tick()
    clock.now = _at("2026-01-01T00:01:59.9")
    b.tick()
    assert grab(b, w) is None
    assert b.next_deadline() == _at("2026-01-01T00:02:00")
    clock.now = _at("2026-01-01T00:02:00.3")
    b.tick()
    assert grab(b, w) is not None
    listed = admin(p, "schedule list").split("\t")
    assert listed[:4] == ["every", "*_*_*_*_*", "report", "active"] and listed[-1] == "2\n.\n"


def test_cron_late_wakeup_fires_once_and_pause_skips() -> None:
    b, clock, p = make(now=_at("2026-01-01T00:00:30"))
    p.scheduler.add(ScheduleSpec("five", "*/5 * * * *", b"g"))
    clock.now = _at("2026-01-01T00:17:00")  # asleep through 00:05, 00:10, 00:15
    b.tick()
    assert b.function_rows()[0][:3] == (b"g", 0, 1)
    assert admin(p, "schedule pause five") == "OK\r\n"
    clock.now = _at("2026-01-01T00:20:00")
    b.tick()
    assert b.function_rows()[0][:3] == (b"g", 0, 1)
    assert admin(p, "schedule resume five") == "OK\r\n"
    assert p.scheduler.schedules["five"].next_at == _at("2026-01-01T00:25:00")
    assert admin(p, "schedule remove five") == "OK\r\n"
    assert admin(p, "schedule remove five") == "ERR UNKNOWN_SCHEDULE no+schedule+named+five\r\n"
    assert admin(p, "schedule add x g 61 * * * *").startswith(
        "ERR INVALID_ARGUMENTS bad+cron+expression"
    )


def test_submit_job_sched_is_an_error_unless_enabled_then_one_shot_at_the_next_match() -> None:
    fields = [b"report", b"", b"30", b"2", b"", b"", b"", b"x"]
    b, clock, _ = make(now=_at("2026-01-01T03:00:00"))
    c = peer(b, 1)
    b.handle(c, T.SUBMIT_JOB_SCHED, fields)
    assert received(b, c) == [(T.ERROR, [b"INVALID_COMMAND", b"Command not expected"])]

    b, clock, _ = make(now=_at("2026-01-01T03:00:00"), submit_sched=True)
    c, w = peer(b, 1), worker(b, 2, func=b"report")
    b.handle(c, T.SUBMIT_JOB_SCHED, fields)
    assert received(b, c) == [(T.JOB_CREATED, [b"H:t:1"])]
    assert b.job_rows() == [(b"H:t:1", b"", 0, False, True)]  # shown, not yet runnable
    assert b.next_deadline() == _at("2026-01-02T02:30:00")
    clock.now = _at("2026-01-02T02:30:00")
    b.tick()
    assert grab(b, w) == [b"H:t:1", b"report", b"", b"x"]
    b.handle(c, T.SUBMIT_JOB_SCHED, [b"f", b"", b"99", b"", b"", b"", b"", b""])
    assert received(b, c)[0][1][0] == b"INVALID_SCHEDULE"


def test_a_schedule_from_the_config_is_on_the_event_loop_timer_before_any_traffic() -> None:
    import asyncio
    import time

    from gearmill.server.app import Server
    from gearmill.server.config import Config, Listener

    spec = ScheduleSpec("every", "* * * * *", b"report")
    config = Config(listeners=(Listener("127.0.0.1", 0),), retry=RetryConfig(schedules=(spec,)))

    async def armed() -> tuple[float, float]:
        server = Server(config)
        await server.start()
        try:
            assert server._timer is not None
            return server._timer_at, server.policies.scheduler.schedules["every"].next_at
        finally:
            await server.close("test")

    timer_at, next_at = asyncio.run(armed())
    assert timer_at == next_at and next_at % 60 == 0 and next_at - time.time() <= 60


def test_a_graceful_stop_does_not_wait_for_a_retry_in_its_backoff() -> None:
    b, _, _ = make(RetryRule(backoff=60.0))
    c, w = peer(b, 1), worker(b, 2)
    b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"", b"x"])
    b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"", b"y"])
    grab(b, w)
    b.disconnect(w)  # H:t:1 waits out its backoff (60 * 16.5 s)
    w = worker(b, 3)
    assert not b.idle()  # H:t:2 is runnable
    grab(b, w)
    assert not b.idle()  # and running
    b.handle(w, T.WORK_COMPLETE, [b"H:t:2", b""])
    assert b.function_rows() == [(b"f", 0, 1, 0, 0, 1)]
    assert b.idle()  # only the scheduled retry is left
