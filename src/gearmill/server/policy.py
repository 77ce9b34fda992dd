"""Retries with backoff, the dead-letter set and recurring (cron) jobs.

The broker stays pure: it asks the :class:`RetryPolicy` (``broker.policy``)
only when a job's attempt ended without a result (worker lost, CAN_DO
timeout, CANT_DO/RESET, and opted-in WORK_FAIL / WORK_EXCEPTION of background
jobs). A retry after a backoff is a scheduled job on the broker's timer heap;
cron ticks and the dead set's age limit run from the same heap through
``broker.call_at`` and ``broker.timer_hook``. Every time comes from the
broker's clock, so tests can drive it.

The dead set and the schedules live in memory here. A durable store plugs in
by giving :class:`DeadSet` and :class:`Scheduler` a ``sink`` with the same
calls (``add``, ``remove``; ``put``, ``remove``): they call it after each
change, and load from it at start (see ``Sink``).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Protocol

from cronsim import CronSim, CronSimError

from ..protocol.packets import PacketType, encode
from .broker import Broker, Peer
from .journal import REASONS, RETRY_EXCEPTION, RETRY_FAILED
from .model import MAX_UNIQUE, Job

log = logging.getLogger("gearmill.policy")

ENDINGS: Final = REASONS  # lost, timeout, cant_do, fail, exception
# gearmand's --job-retries counts these; WORK_FAIL / WORK_EXCEPTION are opt-in
DEFAULT_RETRY_ON: Final = frozenset(("lost", "timeout", "cant_do"))
# gearmand's -j 0 meant "no limit": a job that always times out ran forever
DEFAULT_MAX_ATTEMPTS: Final = 25


@dataclass(frozen=True, slots=True)
class RetryRule:
    """How one function's jobs are retried."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS  # attempts in all; 0 = no limit
    # backoff of background jobs: base * (15 + n**4 + rand * (n + 1)) seconds
    # after the n-th failed attempt; 0 = run again at once (gearmand)
    backoff: float = 0.0
    retry_on: frozenset[str] = DEFAULT_RETRY_ON
    dead: bool = True  # a background job that gives up is kept in the dead set
    dead_on_fail: bool = False  # so is one ending in a WORK_FAIL/EXCEPTION not retried

    def describe(self) -> str:
        on = ",".join(e for e in ENDINGS if e in self.retry_on) or "none"
        dead = "on" if self.dead else "off"
        on_fail = "on" if self.dead_on_fail else "off"
        return (
            f"max_attempts={self.max_attempts} backoff={self.backoff:g} retry_on={on} "
            f"dead={dead} dead_on_fail={on_fail}"
        )


class RuleError(ValueError):
    """A bad retry setting; the text says what is wrong and the fix."""


def parse_endings(value: str) -> frozenset[str]:
    names = [v.strip().lower() for v in value.split(",") if v.strip()]
    if names == ["none"]:
        return frozenset()
    bad = [n for n in names if n not in ENDINGS]
    if bad:
        raise RuleError(f"unknown ending {bad[0]!r}; use some of {', '.join(ENDINGS)} or none")
    return frozenset(names)


def _switch(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "on", "true", "yes"):
        return True
    if v in ("0", "off", "false", "no"):
        return False
    raise RuleError(f"{value!r} is not on or off")


def change_rule(rule: RetryRule, settings: Iterable[tuple[str, str]]) -> RetryRule:
    """``rule`` with ``key=value`` settings applied (the admin ``retry set`` words)."""
    values = {
        "max_attempts": rule.max_attempts,
        "backoff": rule.backoff,
        "retry_on": rule.retry_on,
        "dead": rule.dead,
        "dead_on_fail": rule.dead_on_fail,
    }
    for key, value in settings:
        key = key.strip().lower().replace("-", "_")
        if key == "max_attempts":
            try:
                n = int(value)
            except ValueError:
                n = -1
            if not 0 <= n <= 1_000_000:
                raise RuleError(f"max_attempts={value}: use a whole number, 0 for no limit")
            values[key] = n
        elif key == "backoff":
            try:
                base = float(value)
            except ValueError:
                base = -1.0
            if not 0 <= base <= 86400:
                raise RuleError(f"backoff={value}: use a base in seconds from 0 to 86400")
            values[key] = base
        elif key == "retry_on":
            values[key] = parse_endings(value)
        elif key in ("dead", "dead_on_fail"):
            values[key] = _switch(value)
        else:
            raise RuleError(
                f"unknown setting {key!r}; use max_attempts, backoff, retry_on, dead, dead_on_fail"
            )
    return RetryRule(**values)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """A recurring job as written in the config file or an admin command."""

    name: str
    cron: str
    function: bytes
    data: bytes = b""
    priority: int = 1  # 0 high, 1 normal, 2 low
    paused: bool = False


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """The ``[retry]`` section, its ``[[retry.function]]`` tables and ``[[schedule]]``."""

    default: RetryRule = RetryRule()
    functions: tuple[tuple[bytes, RetryRule], ...] = ()
    dead_max: int = 10_000  # jobs kept in the dead set; the oldest leaves first
    dead_max_age: float = 7 * 86400.0  # seconds a dead job is kept; 0 = no limit
    # SUBMIT_JOB_SCHED: ERROR as gearmand (False), or a one-shot job at the next match
    submit_sched: bool = False
    schedules: tuple[ScheduleSpec, ...] = ()


# ---------------------------------------------------------------- dead set


@dataclass(slots=True)
class DeadJob:
    handle: bytes
    function: bytes
    unique: bytes
    data: bytes
    priority: int
    attempts: int
    reason: str  # the last ending: lost, timeout, cant_do, fail, exception
    error: bytes  # the WORK_EXCEPTION text, if the last ending had one
    died: float  # when it entered the dead set


class Sink(Protocol):
    """Where a durable store keeps the dead set (the store's dead-letter table)."""

    def add(self, dead: DeadJob) -> None: ...
    def remove(self, handle: bytes) -> None: ...


class DeadSet:
    """Background jobs that gave up, oldest first, bounded by count and age."""

    def __init__(
        self, max_count: int, max_age: float, clock: Callable[[], float], sink: Sink | None = None
    ) -> None:
        self.max_count = max_count
        self.max_age = max_age
        self.clock = clock
        self.sink = sink
        self.jobs: dict[bytes, DeadJob] = {}  # by handle, in the order they died
        self.evicted = 0  # left by the bounds since the start
        self.on_add: Callable[[], None] | None = None  # arms the age limit's timer

    def add(self, dead: DeadJob) -> None:
        self.jobs.pop(dead.handle, None)
        self.jobs[dead.handle] = dead
        if self.sink is not None:
            self.sink.add(dead)
        while self.max_count and len(self.jobs) > self.max_count:
            self._evict(next(iter(self.jobs.values())), f"more than {self.max_count} dead jobs")
        if self.on_add is not None:
            self.on_add()

    def _evict(self, dead: DeadJob, why: str) -> None:
        self.remove(dead.handle)
        self.evicted += 1
        log.warning(
            "Dead job removed (%s): %s %s function %s after %d attempts (%s)",
            why,
            dead.handle.decode(errors="replace"),
            dead.unique.decode(errors="replace"),
            dead.function.decode(errors="replace"),
            dead.attempts,
            dead.reason,
        )

    def prune(self, now: float) -> float:
        """Remove the jobs older than the age limit; when the next one expires, or 0."""
        if not self.max_age:
            return 0.0
        for dead in list(self.jobs.values()):
            if dead.died + self.max_age > now:
                return dead.died + self.max_age
            self._evict(dead, f"older than {self.max_age:g} s")
        return 0.0

    def remove(self, handle: bytes) -> DeadJob | None:
        dead = self.jobs.pop(handle, None)
        if dead is not None and self.sink is not None:
            self.sink.remove(handle)
        return dead

    def select(self, function: bytes | None = None) -> list[DeadJob]:
        return [d for d in self.jobs.values() if function is None or d.function == function]

    def counts(self) -> dict[bytes, int]:
        out: dict[bytes, int] = {}
        for dead in self.jobs.values():
            out[dead.function] = out.get(dead.function, 0) + 1
        return out


# ---------------------------------------------------------------- retries


class RetryPolicy:
    """The broker's ``policy``: per-function rules, changed live by admin ``retry set``."""

    def __init__(
        self,
        config: RetryConfig,
        dead: DeadSet,
        clock: Callable[[], float],
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.default = config.default
        self.rules: dict[bytes, RetryRule] = dict(config.functions)
        self.dead = dead
        self.clock = clock
        self.rand = rand

    def rule(self, function: bytes) -> RetryRule:
        return self.rules.get(function, self.default)

    def backoff(self, rule: RetryRule, attempts: int) -> float:
        n = attempts
        return rule.backoff * (15 + n**4 + self.rand() * (n + 1))

    # ------------------------------------------------ asked by the broker

    def retries(self, job: Job, why: int) -> bool:
        return ENDINGS[why] in self.rule(job.func.name).retry_on

    def retry_delay(self, job: Job, why: int, error: bytes) -> float:
        rule = self.rule(job.func.name)
        attempts = job.more.retries
        if ENDINGS[why] not in rule.retry_on:
            return -1.0
        if rule.max_attempts and attempts >= rule.max_attempts:
            return -1.0
        if not job.background or rule.backoff <= 0:
            return 0.0  # a waiting client gets its retry at once
        return self.backoff(rule, attempts)

    def bury(self, job: Job, why: int, error: bytes) -> bool:
        """Keep a background job that gave up in the dead set, where its rule says so;
        True when it went there."""
        if not job.background:
            return False
        rule = self.rule(job.func.name)
        final_failure = why in (RETRY_FAILED, RETRY_EXCEPTION) and not self.retries(job, why)
        if not (rule.dead_on_fail if final_failure else rule.dead):
            return False
        attempts = job.more.retries + (1 if final_failure else 0)
        self.dead.add(
            DeadJob(
                job.handle,
                job.func.name,
                job.unique,
                job.data,
                job.priority,
                attempts,
                ENDINGS[why],
                error,
                self.clock(),
            )
        )
        return True


# ------------------------------------------------------------------- cron

_MACROS: Final = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


def check_cron(expr: str) -> str:
    """The expression (macros expanded), or RuleError saying what is wrong."""
    expr = " ".join(expr.split())
    expr = _MACROS.get(expr.lower(), expr)
    try:
        CronSim(expr, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as e:
        raise RuleError(
            f"bad cron expression {expr!r}: {e}; write five fields "
            "(minute hour day month weekday, in UTC) or @hourly, @daily, ..."
        ) from None
    return expr


def next_match(expr: str, after: float) -> float:
    """The first minute matching ``expr`` strictly after ``after`` (UTC)."""
    start = datetime.fromtimestamp(after, UTC)
    return next(CronSim(expr, start)).timestamp()


@dataclass(slots=True)
class Schedule:
    spec: ScheduleSpec
    expr: str  # macros expanded
    next_at: float  # the next matching minute
    fired: int = 0
    last_at: float = 0.0  # the minute it last fired for
    last_handle: bytes = b""
    paused: bool = field(default=False)


class ScheduleSink(Protocol):
    """Where a durable store keeps the schedules (the store's schedules table)."""

    def put(self, spec: ScheduleSpec) -> None: ...
    def remove(self, name: str) -> None: ...


MAX_NAME: Final = 32  # the unique id of a tick is cron:<name>:<YYYYmmddHHMM, UTC>


class Scheduler:
    """Recurring jobs: each fires once per matching minute as a background job.

    The tick's unique id (``cron:<name>:<minute>``) makes a tick that is
    still queued or running coalesce with a second firing of the same minute.
    """

    def __init__(self, broker: Broker, sink: ScheduleSink | None = None) -> None:
        self.broker = broker
        self.sink = sink
        # servers sharing a store: a due tick goes to the gate, which submits it (with
        # submit_tick) only if this server won the tick in the store; None: submit here
        self.gate: Callable[[Schedule, float], None] | None = None
        self.schedules: dict[str, Schedule] = {}
        self._armed = 0.0

    def add(self, spec: ScheduleSpec) -> Schedule:
        if not spec.name or len(spec.name) > MAX_NAME or any(c.isspace() for c in spec.name):
            raise RuleError(
                f"schedule name {spec.name!r}: use 1 to {MAX_NAME} characters, no spaces"
            )
        if not spec.function or len(spec.function) > 512:
            raise RuleError("give the function the schedule submits to")
        if not 0 <= spec.priority <= 2:
            raise RuleError("priority: use 0 (high), 1 (normal) or 2 (low)")
        expr = check_cron(spec.cron)
        now = self.broker.clock()
        sched = Schedule(spec, expr, next_match(expr, now), paused=spec.paused)
        self.schedules[spec.name] = sched
        if self.sink is not None:
            self.sink.put(spec)
        self.arm()
        return sched

    def remove(self, name: str) -> bool:
        if self.schedules.pop(name, None) is None:
            return False
        if self.sink is not None:
            self.sink.remove(name)
        return True

    def pause(self, name: str, paused: bool) -> bool:
        sched = self.schedules.get(name)
        if sched is None:
            return False
        sched.paused = paused
        spec = sched.spec
        sched.spec = ScheduleSpec(
            spec.name, spec.cron, spec.function, spec.data, spec.priority, paused
        )
        if not paused:
            # no catch-up of the minutes it was paused for
            sched.next_at = next_match(sched.expr, max(self.broker.clock(), sched.last_at))
            self.arm()
        if self.sink is not None:
            self.sink.put(sched.spec)
        return True

    def arm(self) -> None:
        """Put the next due minute on the broker's timer heap (once)."""
        due = [s.next_at for s in self.schedules.values() if not s.paused]
        if not due:
            return
        when = min(due)
        if self._armed and self._armed <= when:
            return
        self._armed = when
        self.broker.call_at(when)

    def fire(self, now: float) -> int:
        """Submit every schedule due by ``now``, once each; how many were submitted."""
        if self._armed and self._armed <= now:
            self._armed = 0.0
        fired = 0
        for sched in self.schedules.values():
            if sched.paused or sched.next_at > now:
                continue
            minute = sched.next_at
            sched.last_at = minute
            # the next match after this minute and after now: a late wake-up
            # fires once, not once per missed minute
            sched.next_at = next_match(sched.expr, max(minute, now))
            if self.gate is not None:
                self.gate(sched, minute)
            elif self.submit_tick(sched, minute):
                fired += 1
        self.arm()
        return fired

    def submit_tick(self, sched: Schedule, minute: float) -> bool:
        """Submit the tick of ``minute``; False when a live job already has its unique id."""
        spec = sched.spec
        stamp = time.strftime("%Y%m%d%H%M", time.gmtime(minute)).encode()
        unique = b"cron:%s:%s" % (spec.name.encode(), stamp)
        job = self.broker.enqueue(spec.function, unique[:MAX_UNIQUE], spec.data, spec.priority)
        if job is None:
            return False
        sched.fired += 1
        sched.last_handle = job.handle
        return True


class Timers:
    """The broker's ``timer_hook``: the scheduler's ticks and the dead set's ages."""

    def __init__(self, broker: Broker, scheduler: Scheduler, dead: DeadSet) -> None:
        self.broker = broker
        self.scheduler = scheduler
        self.dead = dead
        self._prune_at = 0.0

    def __call__(self, now: float) -> None:
        self.scheduler.fire(now)
        if self._prune_at and self._prune_at <= now:
            self._prune_at = 0.0
        self.arm_prune(now)

    def arm_prune(self, now: float) -> None:
        expiry = self.dead.prune(now)
        if expiry and (not self._prune_at or expiry < self._prune_at):
            self._prune_at = expiry
            self.broker.call_at(expiry)


class Policies:
    """Everything of this module wired to one broker (server/app.py makes one)."""

    def __init__(
        self,
        broker: Broker,
        config: RetryConfig,
        rand: Callable[[], float] = random.random,
    ) -> None:
        clock = broker.clock
        self.config = config
        self.dead = DeadSet(config.dead_max, config.dead_max_age, clock)
        self.retry = RetryPolicy(config, self.dead, clock, rand)
        self.scheduler = Scheduler(broker)
        self.timers = Timers(broker, self.scheduler, self.dead)
        self.broker = broker
        # a shared store's requeue (server/policy_store.py): it queues the job only once
        # the store says this server, not another, removed the letter
        self.requeue_gate: Callable[[DeadJob], None] | None = None
        broker.policy = self.retry
        broker.timer_hook = self.timers
        self.dead.on_add = self.dead_added
        for spec in config.schedules:
            self.scheduler.add(spec)
        if config.submit_sched:
            broker.set_handler(PacketType.SUBMIT_JOB_SCHED, self.submit_sched)

    def submit_sched(self, peer: Peer, args: list[bytes]) -> None:
        """SUBMIT_JOB_SCHED (FUNC UNIQ MIN HOUR MDAY MON WDAY DATA): a background
        job at the next minute its fields match (UTC; an empty field is ``*``),
        as the protocol document describes; once, not every time they match."""
        fields = [f.decode(errors="replace").strip() or "*" for f in args[2:7]]
        try:
            expr = check_cron(" ".join(fields))
        except RuleError as e:
            message = str(e).split(";")[0].encode()
            self.broker.reply(peer, encode(PacketType.ERROR, b"INVALID_SCHEDULE", message))
            return
        when = next_match(expr, self.broker.clock())
        self.broker.submit(peer, args[0], args[1], args[7], 1, True, int(when))

    def dead_added(self) -> None:
        """After jobs entered the dead set: make sure its age limit is on the heap."""
        self.timers.arm_prune(self.broker.clock())

    def requeue(self, handles: Iterable[bytes]) -> tuple[int, int]:
        """Dead jobs back to their queues (same handle, unique, attempts so far
        reset): (requeued, refused because a live job holds the unique id)."""
        done = refused = 0
        for handle in list(handles):
            dead = self.dead.jobs.get(handle)
            if dead is None:
                continue
            if self.requeue_gate is not None:
                del self.dead.jobs[handle]  # the gate removes it from the store
                self.requeue_gate(dead)
                done += 1
                continue
            job = self.broker.enqueue(
                dead.function, dead.unique, dead.data, dead.priority, handle=dead.handle
            )
            if job is None:
                refused += 1
                continue
            self.dead.remove(handle)
            done += 1
        return done, refused


def now_text(when: float) -> bytes:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when)).encode()
