"""The packets off the benchmarked paths, and peers leaving.

``Handlers`` extends the hot :class:`~.core.Core` with the rest of the packet
table (abilities, the other work results, status by unique id,
echo, options) and with what happens when a worker loses a job. Compiled
with the core; split off so that the hot module stays small enough to read.
"""

from __future__ import annotations

import logging

from ..protocol import admin as text
from ..protocol.packets import BIG_PIECE, SUBMIT_TYPES, PacketType, encode, encode_pieces
from .core import Core, Handler
from .journal import (
    ABANDONED,
    CANCELLED,
    DROPPED,
    EXCEPTION,
    FAILED,
    LOST,
    REASONS,
    RELEASED,
    RETRY_EXCEPTION,
    RETRY_FAILED,
    TIMED_OUT,
    JobRequeued,
    WorkerCame,
    WorkerLeft,
)
from .model import (
    MAX_CLIENT_ID,
    MAX_HANDLE,
    MAX_OPTION,
    MAX_UNIQUE,
    NO_MORE,
    QUEUED,
    RUNNING,
    SCHEDULED,
    TIMER_EPOCH,
    Ability,
    Function,
    Job,
    Peer,
    forget_unique,
)
from .replies import (
    ERR_DATA_NOT_FOUND,
    ERR_EXCEPTION_NOT_FOUND,
    ERR_HANDLE_SIZE,
    ERR_NAME_SIZE,
    ERR_OPTION,
    ERR_RESULT_NOT_FOUND,
    ERR_TOO_MANY_FUNCTIONS,
    ERR_UNIQUE,
)

log = logging.getLogger("gearmill.broker")


def _uint32(value: bytes) -> int:
    return text.atoi(value) & 0xFFFFFFFF


class Handlers(Core):
    def _table(self) -> dict[PacketType, Handler]:
        table = super()._table()
        table.update(
            {
                PacketType.CAN_DO: self._can_do,
                PacketType.CANT_DO: self._cant_do,
                PacketType.RESET_ABILITIES: self._reset_abilities,
                PacketType.WORK_STATUS: self._work_status,
                PacketType.WORK_FAIL: self._work_fail,
                PacketType.WORK_EXCEPTION: self._work_exception,
                PacketType.WORK_DATA: self._work_data,
                PacketType.WORK_WARNING: self._work_warning,
                PacketType.GET_STATUS_UNIQUE: self._get_status_unique,
                PacketType.ECHO_REQ: self._echo,
                PacketType.SET_CLIENT_ID: self._set_client_id,
                PacketType.CAN_DO_TIMEOUT: self._can_do_timeout,
                PacketType.OPTION_REQ: self._option,
            }
        )
        for ptype in SUBMIT_TYPES:
            table[PacketType(ptype)] = self._submit_handler(ptype)
        return table

    # ---------------------------------------------------------------- workers

    def _add_ability(self, peer: Peer, name: bytes, timeout: int) -> None:
        config = self.config
        if config.max_function_name and len(name) > config.max_function_name:
            self.refuse(peer, ERR_NAME_SIZE, "function name longer than --max-function-name")
            return
        if (
            config.max_functions_per_worker
            and len(peer.abilities) >= config.max_functions_per_worker
        ):
            self.refuse(
                peer, ERR_TOO_MANY_FUNCTIONS, "more functions than --max-functions-per-worker"
            )
            return
        func = self.function(name)
        peer.abilities.insert(0, Ability(func, timeout))
        peer.rank = None
        func.workers.append(peer)
        journal = self.journal
        if journal is not None:
            journal.entries.append(WorkerCame(peer, name))

    def _can_do(self, peer: Peer, args: list[bytes]) -> None:
        self._add_ability(peer, args[0], 0)

    def _can_do_timeout(self, peer: Peer, args: list[bytes]) -> None:
        # milliseconds since gearmand 1.1.19; below one second rounds up to one second
        ms = max(text.atoi(args[1]), 0)
        if 0 < ms < 1000:
            ms = 1000
        self._add_ability(peer, args[0], ms)

    def _cant_do(self, peer: Peer, args: list[bytes]) -> None:
        func = self.functions.get(args[0])
        if func is not None:
            self._remove_abilities(peer, func)

    def _reset_abilities(self, peer: Peer, args: list[bytes]) -> None:
        self._remove_abilities(peer, None)

    def _remove_abilities(self, peer: Peer, only: Function | None) -> None:
        keep: list[Ability] = []
        journal = self.journal
        for ability in peer.abilities:
            func = ability.func
            if only is None or func is only:
                func.workers.remove(peer)
                if journal is not None:
                    journal.entries.append(WorkerLeft(peer, func.name))
            else:
                keep.append(ability)
        peer.abilities = keep
        peer.rank = None
        woken_for = peer.woken_for
        if woken_for is not None and (only is None or only is woken_for):
            self._answered(peer)
            self._wake(woken_for)
        for job in list(peer.assigned.values()):
            if only is None or job.func is only:
                self._requeue(job, RELEASED)

    # ------------------------------------------------------------------- jobs

    def _submit_handler(self, ptype: int) -> Handler:
        priority, background = SUBMIT_TYPES[ptype]
        prio = int(priority)
        epoch = ptype == PacketType.SUBMIT_JOB_EPOCH
        reduce = ptype in (PacketType.SUBMIT_REDUCE_JOB, PacketType.SUBMIT_REDUCE_JOB_BACKGROUND)

        def submit(peer: Peer, args: list[bytes]) -> None:
            when = 0
            reducer = b""
            if epoch:
                when = max(text.atoi(args[2]), 0)
            elif reduce:
                reducer = args[2]
                if len(reducer) > MAX_UNIQUE:
                    self.reply(peer, ERR_UNIQUE)
                    return
            self.submit(peer, args[0], args[1], args[-1], prio, background, when, reducer)

        return submit

    def _work_status(self, peer: Peer, args: list[bytes]) -> None:
        job = peer.assigned.get(args[0])
        if job is None:
            self.reply(peer, ERR_RESULT_NOT_FOUND)
            return
        more = job.extra()
        more.num = _uint32(args[1])
        more.den = _uint32(args[2])
        if job.clients:
            self._forward(job, encode(PacketType.WORK_STATUS, *args))

    def _work_fail(self, peer: Peer, args: list[bytes]) -> None:
        if len(args[0]) >= MAX_HANDLE:
            self.reply(peer, ERR_HANDLE_SIZE)
            return
        job = peer.assigned.get(args[0])
        if job is None:
            self.reply(peer, ERR_RESULT_NOT_FOUND)
            return
        policy = self.policy
        if policy is not None and job.background and not job.ignore:
            if policy.retries(job, RETRY_FAILED):
                self._requeue(job, RETRY_FAILED)
                return
            policy.bury(job, RETRY_FAILED, b"")
        if job.clients:
            self._forward(job, encode(PacketType.WORK_FAIL, args[0]))
        self._finish(job, FAILED)

    def _work_exception(self, peer: Peer, args: list[bytes]) -> None:
        job = peer.assigned.get(args[0])
        if job is None:
            self.reply(peer, ERR_EXCEPTION_NOT_FOUND)
            return
        journal = self.journal
        if journal is not None:
            tally = journal.tally  # metrics (--http): bytes out per function
            if tally is not None:
                tally.result(job, len(args[1]))
        policy = self.policy
        if policy is not None and job.background and not job.ignore:
            if policy.retries(job, RETRY_EXCEPTION):
                self._requeue(job, RETRY_EXCEPTION, args[1])
                return
            policy.bury(job, RETRY_EXCEPTION, args[1])
        if job.clients:
            exception = encode(PacketType.WORK_EXCEPTION, args[0], args[1])
            # gearmand sends ``handle\0`` here, which libgearman <= 1.1.x drops (#166):
            # a bare handle is what every client version understands.
            fail = encode(PacketType.WORK_FAIL, args[0])
            for client in job.clients:
                self.reply(client, exception if client.exceptions else fail)
        self._finish(job, EXCEPTION)

    def _work_data(self, peer: Peer, args: list[bytes]) -> None:
        self._work_chunk(peer, args, PacketType.WORK_DATA)

    def _work_warning(self, peer: Peer, args: list[bytes]) -> None:
        self._work_chunk(peer, args, PacketType.WORK_WARNING)

    def _work_chunk(self, peer: Peer, args: list[bytes], ptype: int) -> None:
        job = peer.assigned.get(args[0])
        if job is None:
            self.reply(peer, ERR_DATA_NOT_FOUND)
            return
        journal = self.journal
        if journal is not None:
            tally = journal.tally  # metrics (--http): bytes out per function
            if tally is not None:
                tally.result(job, len(args[1]))
        if job.clients:
            if len(args[1]) < BIG_PIECE:
                self._forward(job, encode(ptype, args[0], args[1]))
            else:
                self._forward_pieces(job, encode_pieces(ptype, args[0], args[1]))

    # ---------------------------------------------------------------- queries

    def find_unique(self, unique: bytes) -> Job | None:
        """The job with this unique id in the first function (by when its
        first unique id came) that has one; functions without any are not
        looked at."""
        found: Job | None = None
        empty: list[Function] = []
        for func in self.with_unique:
            uniques = func.unique
            if not uniques:
                empty.append(func)
                continue
            job = uniques.get(unique)
            if job is not None:
                found = job
                break
        for func in empty:
            del self.with_unique[func]
        return found

    def _get_status_unique(self, peer: Peer, args: list[bytes]) -> None:
        unique = args[0]
        job = self.find_unique(unique) if unique else None
        if job is None:
            reply = encode(PacketType.STATUS_RES_UNIQUE, unique, b"0", b"0", b"0", b"0", b"0")
        else:
            reply = encode(
                PacketType.STATUS_RES_UNIQUE,
                unique,
                b"1",
                b"1" if job.state == RUNNING else b"0",
                b"%d" % job.more.num,
                b"%d" % job.more.den,
                b"%d" % len(job.clients),
            )
        self.reply(peer, reply)

    def _echo(self, peer: Peer, args: list[bytes]) -> None:
        self.reply(peer, encode(PacketType.ECHO_RES, args[0]))

    def _set_client_id(self, peer: Peer, args: list[bytes]) -> None:
        peer.client_id = args[0][:MAX_CLIENT_ID] or b"-"

    def _option(self, peer: Peer, args: list[bytes]) -> None:
        name = args[0]
        if len(name) < MAX_OPTION and name.split(b"\x00", 1)[0].lower() == b"exceptions":
            peer.exceptions = True
            self.reply(peer, encode(PacketType.OPTION_RES, name))
        else:
            self.reply(peer, ERR_OPTION)

    # ---------------------------------------------------------- leaving peers

    def disconnect(self, peer: Peer) -> None:
        """The peer is gone: requeue its running jobs, abandon its waits."""
        if self.peers.pop(id(peer), None) is None:
            return
        peer.sleeping = False  # requeueing its jobs below must not wake it
        woken_for = self._answered(peer)
        for job in list(peer.assigned.values()):
            self._requeue(job, LOST)
        journal = self.journal
        for ability in peer.abilities:
            func = ability.func
            try:
                func.workers.remove(peer)
            except ValueError:
                pass
            if journal is not None:
                journal.entries.append(WorkerLeft(peer, func.name))
        peer.abilities.clear()
        peer.rank = None
        if woken_for is not None:
            self._wake(woken_for)  # its NOOP was for a job that still waits
        for job in peer.waiting:
            job.remove_client(peer)
            if not job.clients and not job.background:
                self._abandon(job)
        peer.waiting.clear()
        peer.out.clear()
        if peer.paused:
            peer.paused = False
            self.paused_peers -= 1
        self.unpark(peer)  # jobs other clients still wait for
        if peer.holds:
            peer.holds = 0
            if peer in self.parked:
                self.parked.remove(peer)

    def _requeue(self, job: Job, why: int, error: bytes = b"") -> None:
        """The job's attempt ended without a result (``why``: LOST .. RETRY_EXCEPTION):
        run it again, now or after the retry policy's backoff, or give up."""
        func = job.func
        worker = job.worker
        if worker is not None:
            del worker.assigned[job.handle]
        job.worker = None
        func.running -= 1
        job.state = QUEUED
        more = job.more
        if more is not NO_MORE:
            more.num = more.den = 0
            if more.timer is not None:
                self._cancel_timer(more)
        if job.ignore:
            # abandoned or cancelled while running: nobody wants the result
            self.jobs.pop(job.handle, None)
            self._count(job, CANCELLED if job.cancelled else ABANDONED)
            return
        more = job.extra()
        more.retries += 1
        policy = self.policy
        if policy is not None:
            delay = policy.retry_delay(job, why, error)
        else:
            limit = self.config.job_retries
            delay = -1.0 if limit and more.retries >= limit else 0.0
        if delay < 0:
            if policy is not None and policy.bury(job, why, error):
                handle = job.handle.decode(errors="replace")
                log.warning(
                    "Moved job to the dead set after max retry count: %s %s (function %s, "
                    "last attempt: %s; gearmill admin --dead-requeue %s runs it again)",
                    handle,
                    job.unique.decode(errors="replace"),
                    func.name.decode(errors="replace"),
                    REASONS[why],
                    handle,
                )
            else:  # gearmand's words
                log.warning(
                    "Dropped job due to max retry count: %s %s",
                    job.handle.decode(errors="replace"),
                    job.unique.decode(errors="replace"),
                )
            if job.clients:
                self._forward(job, encode(PacketType.WORK_FAIL, job.handle))
            func.queued[job.priority] += 1
            self._finish(job, DROPPED)
            return
        counters = self.counters
        counters.requeued += 1
        if why == TIMED_OUT:
            counters.timed_out += 1
        when = self.clock() + delay if delay > 0 else 0.0
        journal = self.journal
        if journal is not None:
            journal.entries.append(JobRequeued(job, worker, why, when))
        func.queued[job.priority] += 1
        if when:
            # the backoff: scheduled like an epoch job, shown by "show jobs"
            job.state = SCHEDULED
            self._push_timer(when, TIMER_EPOCH, job, None)
            return
        func.own_queues()[job.priority].append(job)
        if not func.ready:
            self.make_ready(func)
        self._wake(func)

    def _abandon(self, job: Job) -> None:
        """The last foreground client left: a queued job is dropped, a running one ignored."""
        forget_unique(job)
        if job.state == RUNNING:
            job.ignore = True
            return
        self._finish(job, ABANDONED)
        self.bury(job)

    def bury(self, job: Job) -> None:
        """A job left its queue (abandoned, cancelled): its payload goes now,
        not when a worker of its function reaches it; the small husks left in
        the queue are swept once they outnumber the live jobs."""
        job.data = b""
        if job.state != QUEUED:
            return  # a scheduled job: its epoch timer drops it
        func = job.func
        func.dead += 1
        if func.dead > 64 and func.dead > func.queued[0] + func.queued[1] + func.queued[2]:
            for queue in func.queues:
                live = [j for j in queue if not j.ignore]
                queue.clear()
                queue.extend(live)
            func.dead = 0
