"""The store's edge: background jobs made durable before their JOB_CREATED goes out.

A :class:`Durable` is the broker journal's consumer (``hold_created=True``). Every
read batch it is handed what the broker decided; it keeps the background jobs
accepted (to add) and finished (to remove) and wakes its writer task, which commits
them in one transaction and then releases the held JOB_CREATED replies.

Group commit: while a commit runs, whatever arrives waits and goes in the next one;
a lone job is committed at once (no timer). Removes hold no reply: a group of removes
only waits until REMOVES_EVERY after the last one (a submission ends the wait), so a
drain commits them in large groups. Foreground jobs are never written. A lone new
job with nothing else pending goes through the store's lane where it has one (see
`Lane`): written in the loop turn it arrived in, released from the lane's answer.

When the store fails (unreachable, full, refused), the jobs of the failed group and
every background submission until it is back get ``ERROR QUEUE_ERROR`` instead of
their JOB_CREATED and are dropped from memory; foreground work goes on; the writer
retries with backoff (the removes it still owes first) and recovers by itself.

The server's own background jobs (``Broker.enqueue``: a schedule's tick, a job
requeued from the dead set; no client waits for their JOB_CREATED) are queued at once
and never refused for the store: while it is down, or when their commit failed, they
stay queued in memory only (a WARNING per job says so; they may run meanwhile) and
their add is still owed, committed once the store is back (an add keeps a key already
stored, so a commit cut off after the store made it durable does no harm). One that
finishes first needs no write. Those still owed when the server stops are lost with
it: an ERROR per job (`close`).

At start, :meth:`Durable.replay` loads the stored jobs in pages (submission order;
the broker's per-priority queues restore priority order), with their uniques and
epoch times, while the server already accepts new work. A job that was running
when the server died was never removed, so it runs again: at-least-once.

Paging (``budget``, --memory-jobs): once this many background jobs are in memory,
replay stops loading, and a new background job is committed and then taken out of
memory (``Broker.unload``); the broker counts these stored-only jobs per function
and priority (``Broker.stored``) for status. A (function, priority) with stored-only
jobs sends every new job of its own to the store too, so none overtakes them. When a
function's queue in memory runs low, the writer loads its next page, highest
priority first, in submission order (``Store.load_queued`` from a cursor per
function and priority). A submission whose unique id names a stored-only job is
coalesced onto it (``Store.find`` before the commit). See docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Final

from . import fanout
from .broker import Broker
from .journal import Entry, JobAccepted, JobFinished
from .model import PENDING, QUEUED, Job, Peer, unique_key
from .replies import error, job_created
from .sink import BufferSink
from .store import Key, Lane, Store, StoredJob, StoreError, about, hide_password, open_store
from .store._base import FIX_URL

log = logging.getLogger("gearmill.store")
# replay counts and a store coming back: logged at every --verbose level (as app.py's)
lifecycle = logging.getLogger("gearmill.lifecycle")

ERR_STORE = error(b"QUEUE_ERROR", b"Job queue store is unavailable")

# A job the client gave no unique id (or "-", which coalesces by data) is stored
# under a generated one, marked so that replay gives the job its own back.
_MARK = b"\x1fgm"
REPLAY_PAGE = 2000
MEMORY_JOBS = 200_000  # the default budget of background jobs in memory
COMMIT_TIMEOUT = 10.0  # a store that does not answer counts as gone
# removes wait for no one: a commit of removes only begins at least this long after the
# last one (a submission or a held reply starts it at once), so that a drain commits
# them in a few large groups, not as fast as the store answers (seconds)
REMOVES_EVERY = 0.002
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 2.0
# a lone job's data beyond this goes through the driver, not the lane: its commit takes
# as long as its bytes do anyway, and the driver's checks of a store's limits apply
LANE_MAX: Final = 1 << 20


def _original_unique(stored: bytes) -> bytes:
    if stored.startswith(_MARK):
        end = stored.find(b"\x1f", len(_MARK))
        if end > 0:
            return stored[len(_MARK) : end]
    return stored


class _Discard(BufferSink):
    """The replaying peer's sink: its JOB_CREATEDs go nowhere."""

    def write(self, data: bytes) -> None:
        pass

    def writelines(self, data: list[bytes]) -> None:
        pass


FP = tuple[bytes, int]  # (function, priority)
_NO_KEY: Final[Key] = (b"", b"")  # consume's one add, while it has none
_NO_STORED: Final = StoredJob(b"", b"", b"")
_DONE: Final = 0
_MADE: Final = 1
_KEPT: Final = 2


class Durable:
    def __init__(
        self,
        store: Store,
        broker: Broker,
        flush: Callable[[], None],
        budget: int = MEMORY_JOBS,
    ) -> None:
        self.store = store
        self.broker = broker
        # paging: at most about this many background jobs in memory (0: no limit)
        self.budget = budget
        self.page = max(1, min(REPLAY_PAGE, budget // 4))
        self.resident = 0  # background jobs in the broker's memory
        self.paging = False  # on once replay is done
        # jobs of the next group to take out of memory once committed, and how many
        # such are pending per (function, priority) (later ones must follow them)
        self.spill: dict[Key, Job] = {}
        self.pending_spill: dict[FP, int] = {}
        # where each (function, priority)'s next page starts (past the replayed rows
        # for one that had none stored then)
        self.cursors: dict[FP, int] = {}
        self.replay_top = 0  # the highest seq stored when replay began
        self.paged_in = 0  # jobs loaded back from the store by paging
        self.claims = 0  # pages of claimed jobs counted as stored-only (queue_stored)
        self._flush = flush  # write the released replies (the server's flush)
        # the next group: adds by key (with their jobs, to refuse them on failure)
        self.adds: dict[Key, StoredJob] = {}
        self.add_jobs: dict[Key, Job] = {}
        self.removes: dict[Key, None] = {}  # an ordered set
        self.held: list[Peer] = []
        # handle -> stored unique, for the jobs stored under a generated one (and
        # the set of those uniques: which stored rows are in memory)
        self.generated: dict[bytes, bytes] = {}
        self.generated_in: set[bytes] = set()
        self._token = os.urandom(6).hex().encode()
        self._seq = 0
        # handles refused with QUEUE_ERROR whose end the journal has yet to report
        self.rejected: set[bytes] = set()
        # the server's own jobs (Broker.enqueue) whose add is not committed yet: _MADE
        # (or _KEPT once a WARNING said it is in memory only) while the job lives, _DONE
        # once it finished while its add was in a commit
        self.made: dict[Job, int] = {}
        self.down: str | None = None  # why the store is unusable, while it is
        self.busy = False
        self.commits = 0  # groups committed (and jobs in them), for tests and stats
        self.committed_jobs = 0
        # --verbose DEBUG, read once: a line per commit then, a bool test per commit else
        self.debug = log.isEnabledFor(logging.DEBUG)
        # metrics (--http): told each commit's seconds and size (adds + removes)
        self.observe: Callable[[float, int], None] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # the commit running since (monotonic seconds; 0: none), for the watchdog
        self._began = 0.0
        self._timed_out = False  # the watchdog cancelled that commit
        self._watchdog: asyncio.TimerHandle | None = None
        self._removes_at = 0.0  # when the last commit of removes only began
        self.gathering = False  # waiting for more removes: only adds or held wake it
        self._closing = False
        # the lone job the store's lane is committing (key, stored, job, held peers)
        self._lone: tuple[Key, StoredJob, Job, list[Peer]] | None = None
        self._lone_idle: asyncio.Future[None] | None = None  # close() waits on it
        self._lone_sent = 0  # lone commits sent, and the one the watchdog saw in flight
        self._lone_watched = 0
        self._lone_ticks = 0  # at how many ticks in a row
        # the store's lane while it is ready (a lane that was ready and is not is never
        # ready again: the store makes a new one), so that a lone job does not ask the
        # store for it
        self._lane: Lane | None = None
        self._on_lone_done = self._lone_done  # bound once, not per job
        self.replay_peer = Peer(-1, "replay", True, _Discard())
        self.replayed = 0

    # ------------------------------------------------------------ the journal

    def start(self) -> None:
        fanout.attach(self.broker, self, hold_created=True)  # beside metrics, if any
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._watch()

    def _watch(self) -> None:
        """Every quarter of COMMIT_TIMEOUT: a commit running longer counts as a store gone
        (its task is cancelled there, and _run takes that as the commit's failure). One
        timer for all commits: a timeout armed and cancelled per commit cost a lone job
        about 5 us of its latency."""
        began = self._began
        if self._lone is not None:
            # the lone commit in flight, counted in ticks (no clock read per lone job):
            # seen at the fifth tick, it has run for four of them at least
            if self._lone_watched == self._lone_sent:
                self._lone_ticks += 1
                lane = self.store.lane
                if self._lone_ticks > 4 and lane is not None:
                    lane.abort(f"no answer in {COMMIT_TIMEOUT:.0f} s")
            else:
                self._lone_watched = self._lone_sent
                self._lone_ticks = 1
        elif began and time.monotonic() - began > COMMIT_TIMEOUT and self._task is not None:
            # the task is suspended in the commit (_began is set and cleared around it
            # with no other await between), so that is where the cancellation lands
            self._timed_out = True
            self._task.cancel()
        if not self._closing:
            loop = asyncio.get_running_loop()
            self._watchdog = loop.call_later(COMMIT_TIMEOUT / 4, self._watch)

    def _key(self, job: Job, new: bool) -> Key:
        name = job.func.name
        if new:
            unique = job.unique
            if unique and unique != b"-":
                return (name, unique)
            self._seq += 1
            stored = b"%b%b\x1f%b.%d" % (_MARK, unique, self._token, self._seq)
            self.generated[job.handle] = stored
            self.generated_in.add(stored)
            return (name, stored)
        made = self._forget_generated(job.handle)
        return (name, job.unique if made is None else made)

    def _forget_generated(self, handle: bytes) -> bytes | None:
        made = self.generated.pop(handle, None)
        if made is not None:
            self.generated_in.discard(made)
        return made

    def consume(self, entries: list[Entry], held: list[Peer]) -> None:
        replay_peer = self.replay_peer
        down = self.down is not None
        refuse: list[Job] = []
        adds = self.adds
        # the batch's one add while it may go through the lane alone: kept out of the
        # group's dicts until another entry needs them (it goes in first, in order)
        one = _NO_STORED
        one_key: Key = _NO_KEY
        one_job: Job | None = None
        for e in entries:
            if type(e) is JobAccepted:
                job = e.job
                if not job.background:
                    continue
                self.resident += 1
                peer = e.peer
                if peer is replay_peer:
                    continue
                if peer is None:  # the server's own: never refused for the store
                    self.made[job] = _MADE
                    if down:
                        self._keep(job, e.when, "the store is down")
                        continue
                elif down:
                    refuse.append(job)
                    continue
                key = self._key(job, True)
                if self.paging and not e.when:
                    fp = (job.func.name, job.priority)
                    if (
                        self.resident > self.budget
                        or self.pending_spill.get(fp)
                        or self._stored(fp)
                    ):
                        self.spill[key] = job
                        self.pending_spill[fp] = self.pending_spill.get(fp, 0) + 1
                stored = StoredJob(
                    job.func.name,
                    key[1],
                    job.data,
                    job.priority,
                    e.when,
                    job.more.reducer,
                )
                if one_job is None and not adds:
                    one, one_key, one_job = stored, key, job
                    continue
                if one_job is not None:
                    adds[one_key] = one
                    self.add_jobs[one_key] = one_job
                    one_job = None
                adds[key] = stored
                self.add_jobs[key] = job
            elif type(e) is JobFinished:
                job = e.job
                if not job.background:
                    continue
                if one_job is not None:
                    adds[one_key] = one
                    self.add_jobs[one_key] = one_job
                    one_job = None
                self.resident -= 1
                if job.handle in self.rejected:
                    self.rejected.discard(job.handle)
                    self._forget_generated(job.handle)
                    continue
                key = self._key(job, False)
                if self.adds.pop(key, None) is not None:
                    del self.add_jobs[key]
                    if self.spill.pop(key, None) is not None:
                        self._spill_done((key[0], job.priority))
                    if self.made:
                        self.made.pop(job, None)  # never stored: nothing is owed
                elif self.made and job in self.made:
                    self.made[job] = _DONE  # its add is in a commit now
                self.removes[key] = None
        if replay_peer.holds:
            replay_peer.holds = 0
            held = [p for p in held if p is not replay_peer]
        if down:
            self._refuse(refuse, held)
            return
        if one_job is not None:
            if (
                not self.busy
                and not self.removes
                and not self.spill
                and not self.broker.stored
                and len(one.data) <= LANE_MAX
            ):
                lane = self._ready_lane()
                if lane is not None:
                    if self.held:
                        held = self.held + held
                        self.held = []
                    self._send_lone(lane, one_key, one, one_job, held)
                    return
            adds[one_key] = one
            self.add_jobs[one_key] = one_job
        if held or self.adds or self.removes:
            self.held += held
            if not self.busy and (not self.gathering or held or self.adds):
                self._next()

    def _ready_lane(self) -> Lane | None:
        """The store's lane when a lone job may go through it now."""
        lane = self._lane
        if lane is None or not lane.ready():
            lane = self._lane = self.store.lane
            if lane is None or not lane.ready():
                self._lane = None
                return None
        return None if self._closing else lane

    def _next(self) -> None:
        """Start the next commit: a lone new job through the store's lane, where it has
        one (written now, released from the store's answer), anything else by the
        writer task."""
        if len(self.adds) == 1 and not self.removes and not self.spill and not self.broker.stored:
            lane = self._ready_lane()
            if lane is not None:
                key, stored = self.adds.popitem()
                if len(stored.data) <= LANE_MAX:
                    job = self.add_jobs.pop(key)
                    held, self.held = self.held, []
                    self._send_lone(lane, key, stored, job, held)
                    return
                self.adds[key] = stored
        self._wake.set()

    def _send_lone(
        self, lane: Lane, key: Key, stored: StoredJob, job: Job, held: list[Peer]
    ) -> None:
        """Write one new job's commit on the lane (none pending besides): its held
        replies go from the lane's answer."""
        self._lone = (key, stored, job, held)
        self._lone_sent += 1
        self.busy = True
        if self.observe is not None or self.debug:  # no clock read per lone job without
            self._began = time.monotonic()
        try:
            lane.send(stored, self._on_lone_done)
        except Exception as e:  # a bug or a value it cannot encode: the job is refused,
            # as from a failed commit, and the writer goes on (never left busy)
            why = f"the lone-job connection failed: {e or type(e).__name__}"
            lane.abort(why)  # it may hold half a message: the store connects a new one
            if self._lone is not None:
                self._lone_done(why)

    def _lone_done(self, why: str | None) -> None:
        """The lane's answer: release the held replies (or refuse the job as a failed
        group is), then start whatever came meanwhile."""
        lone, self._lone = self._lone, None
        if lone is None:  # a late call after abort(); the lane promises none
            return
        key, stored, job, held = lone
        began = self._began
        self.busy = False
        self._began = 0.0
        if self._lone_idle is not None and not self._lone_idle.done():
            self._lone_idle.set_result(None)
        if why is not None:
            self._fail(why, {key: stored}, {key: job}, {}, held)
            self._wake.set()  # the writer task recovers (self.down is set)
            return
        self.commits += 1
        self.committed_jobs += 1
        if self.observe is not None and began:
            self.observe(time.monotonic() - began, 1)
        if self.debug:
            log.debug(
                "store %s: committed 1 job through the lane in %.1f ms",
                self.store.url,
                (time.monotonic() - began) * 1000,
            )
        broker = self.broker
        broker.publish(job)
        if self.made:
            self.made.pop(job, None)
        for peer in held:
            broker.release(peer)  # a native call (a bound method would be a generic one)
        self._flush()
        if self.adds or self.removes or self.held:
            self._next()

    def _refuse(self, jobs: list[Job], held: list[Peer]) -> None:
        """Answer QUEUE_ERROR instead of the held JOB_CREATEDs of ``jobs`` (and of
        coalesced submissions onto them), drop the jobs, let the peers' output go."""
        for job in jobs:
            self.rejected.add(job.handle)
            self._forget_generated(job.handle)
        if self.rejected and held:
            created = {job_created(h) for h in self.rejected}
            for peer in set(held):
                out = peer.out
                for i, piece in enumerate(out):
                    if piece in created:
                        out[i] = ERR_STORE
        broker = self.broker
        for job in jobs:
            broker.cancel(job.handle)
        for peer in held:
            broker.release(peer)

    # ------------------------------------------------------------- the writer

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.down is not None and not self._closing:  # the lane's commit failed
                await self._recover()
            paged = True  # the last page-in moved on (else wait for the next event)
            while self.adds or self.removes or self.held or (paged and self._low()):
                if self.busy:  # the lane's commit: its answer wakes us again
                    break
                if self.removes and not (self.adds or self.held or self._closing):
                    await self._gather()
                adds, add_jobs, removes, held = self.adds, self.add_jobs, self.removes, self.held
                spill = self.spill
                self.adds, self.add_jobs, self.removes, self.held = {}, {}, {}, []
                self.spill = {}
                self.busy = True
                # for the watchdog, and metrics: one reading per commit, not per job
                began = self._began = time.monotonic()
                if not adds and not held:
                    self._removes_at = began
                why = None
                try:
                    joined = await self._coalesce(adds, add_jobs, removes)
                    await self.store.commit(list(adds.values()), list(removes))
                except asyncio.CancelledError:
                    if not self._timed_out:
                        raise  # closing
                    self._timed_out = False
                    if self._task is not None:
                        self._task.uncancel()
                    why = f"no answer in {COMMIT_TIMEOUT:.0f} s"
                except Exception as e:  # any failure refuses the group
                    why = str(e) or type(e).__name__
                finally:
                    self.busy = False
                    self._began = 0.0
                if why is not None:
                    self._fail(why, adds, add_jobs, removes, held)
                    await self._recover()
                    if self._closing:
                        return
                    continue
                self.commits += 1
                self.committed_jobs += len(adds)
                broker = self.broker
                for job in add_jobs.values():  # durable now: workers may have them
                    broker.publish(job)
                if self.made:
                    for job in add_jobs.values():
                        self.made.pop(job, None)
                if spill or joined:
                    self._unload(spill, joined)
                if self.observe is not None:
                    self.observe(time.monotonic() - began, len(adds) + len(removes))
                if self.debug:
                    log.debug(
                        "store %s: committed a group of %d new and %d finished jobs "
                        "(held replies: %d) in %.1f ms",
                        self.store.url,
                        len(adds),
                        len(removes),
                        len(held),
                        (time.monotonic() - began) * 1000,
                    )
                for peer in held:
                    broker.release(peer)
                self._flush()
                if self.broker.stored and not self._closing:
                    paged = await self._page_in()
            if self._closing:
                return

    def _fail(
        self,
        why: str,
        adds: dict[Key, StoredJob],
        add_jobs: dict[Key, Job],
        removes: dict[Key, None],
        held: list[Peer],
    ) -> None:
        """A group's commit failed: the store counts as down until `_recover`."""
        # the server's own jobs are kept, their adds still owed (next, after the removes)
        kept: dict[Key, StoredJob] = {}
        kept_jobs: dict[Key, Job] = {}
        if self.made:
            for group, jobs_of in ((adds, add_jobs), (self.adds, self.add_jobs)):
                for key, job in list(jobs_of.items()):
                    alive = self.made.get(job)
                    if alive is None:
                        continue  # a client's
                    del jobs_of[key]
                    stored = group.pop(key, None)
                    if alive and stored is not None:
                        kept[key] = stored
                        kept_jobs[key] = job
                    else:  # finished (its remove is owed), or it joined a stored job
                        del self.made[job]
        # the removes are still owed; the adds and what came meanwhile are refused, and
        # the group's adds removed once the store is back: a commit cut off after the
        # store made it durable must not run a job its client was told was refused
        removes.update(self.removes)
        removes.update(dict.fromkeys(adds))
        self.removes = removes
        self._went_down(why)
        jobs = list(add_jobs.values()) + list(self.add_jobs.values())
        later = self.held
        self.adds, self.add_jobs, self.held = kept, kept_jobs, []
        self.spill, self.pending_spill = {}, {}
        for job in kept_jobs.values():
            self._kept(job, f"its commit failed: {why}")
        self._refuse(jobs, held + later)
        self._flush()

    def _keep(self, job: Job, when: int, why: str) -> None:
        """One of the server's own jobs while the store is down: queued in memory, its
        add owed until the store is back (`_recover` commits it with the owed removes)."""
        key = self._key(job, True)
        self.adds[key] = StoredJob(
            job.func.name, key[1], job.data, job.priority, when, job.more.reducer
        )
        self.add_jobs[key] = job
        self._kept(job, why)

    def _kept(self, job: Job, why: str) -> None:
        """Say once per job (at every --verbose level) that it is in memory only."""
        if self.made.get(job) == _KEPT:
            return
        self.made[job] = _KEPT
        lifecycle.warning(
            "store %s: job %s of %s (the server's own: a schedule's tick or a requeued "
            "dead job) is kept in memory only until the store is back (%s); it may run "
            "meanwhile",
            self.store.url,
            job.handle.decode(errors="replace"),
            job.func.name.decode(errors="replace"),
            why,
            extra={"gearman_level": "WARNING"},
        )

    async def _gather(self) -> None:
        """Before a commit of removes only: wait until REMOVES_EVERY has passed since the
        last one, unless a submission or a held reply comes (consume wakes us then)."""
        wait = self._removes_at + REMOVES_EVERY - time.monotonic()
        if wait <= 0:
            return
        self.gathering = True
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), wait)
        except TimeoutError:
            pass
        finally:
            self.gathering = False

    def _went_down(self, why: str) -> None:
        if self.down is None:
            log.error(
                "store %s failed: %s; background jobs get QUEUE_ERROR until it is back"
                " (the server's own stay queued in memory)",
                self.store.url,
                about(self.store.url, why),
                extra={"gearman_level": "ERROR"},
            )
        self.down = why

    async def _recover(self) -> None:
        """Retry, with backoff, until the store takes the removes still owed, and the adds
        of the server's own jobs kept meanwhile."""
        delay = BACKOFF_FIRST
        made = self.made
        while not self._closing:
            await asyncio.sleep(delay)
            removes = list(self.removes)
            jobs = self.add_jobs
            adds = {k: s for k, s in self.adds.items() if jobs[k] in made}
            try:
                # count() reaches the store even when no remove is owed
                await asyncio.wait_for(self.store.count(), COMMIT_TIMEOUT)
                await asyncio.wait_for(
                    self.store.commit(list(adds.values()), removes), COMMIT_TIMEOUT
                )
            except Exception as e:  # still down, whatever the reason
                self.down = str(e) or type(e).__name__
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            for key in removes:
                self.removes.pop(key, None)
            for key, stored in adds.items():
                if self.adds.get(key) is stored:  # (not finished meanwhile)
                    del self.adds[key]
                    self.made.pop(self.add_jobs.pop(key), None)
            lifecycle.warning(
                "store %s is back; background jobs are accepted again",
                self.store.url,
                extra={"gearman_level": "WARNING"},
            )
            self.down = None
            return

    # ----------------------------------------------------------------- paging

    def _stored(self, fp: FP) -> int:
        counts = self.broker.stored.get(fp[0])
        return 0 if counts is None else counts[fp[1]]

    def _count_stored(self, fp: FP, n: int) -> None:
        stored = self.broker.stored
        counts = stored.get(fp[0])
        if counts is None:
            self.broker.function(fp[0])  # status lists it before any job is loaded
            counts = stored[fp[0]] = [0, 0, 0]
        counts[fp[1]] = max(0, counts[fp[1]] + n)
        if not (counts[0] or counts[1] or counts[2]):
            del stored[fp[0]]

    def _spill_done(self, fp: FP) -> None:
        left = self.pending_spill.get(fp, 0) - 1
        if left > 0:
            self.pending_spill[fp] = left
        else:
            self.pending_spill.pop(fp, None)

    async def _coalesce(
        self, adds: dict[Key, StoredJob], add_jobs: dict[Key, Job], removes: dict[Key, None]
    ) -> set[Job]:
        """The group's new jobs whose unique id names a job kept only in the store:
        they join it (they are not added, and leave memory once committed)."""
        stored = self.broker.stored
        if not stored or not self.paging:  # replay skips the rows a new job joined
            return set()
        keys = [
            k for k in adds if k[0] in stored and not k[1].startswith(_MARK) and k not in removes
        ]
        if not keys:
            return set()
        found = await self.store.find(keys)  # watched as the commit is
        for key in found:
            del adds[key]
        return {add_jobs[key] for key in found}

    def _unload(self, spill: dict[Key, Job], joined: set[Job]) -> None:
        """After the commit: the group's jobs beyond the budget leave memory (the
        store has them); those that joined a stored job leave it too."""
        unload = self.broker.unload
        for key, job in spill.items():
            fp = (key[0], job.priority)
            self._spill_done(fp)
            if job in joined:
                continue
            if unload(job):
                self.resident -= 1
                self._forget_generated(job.handle)
                self._count_stored(fp, 1)
        for job in joined:
            if unload(job):
                self.resident -= 1

    def _low(self) -> bool:
        """Some function with jobs kept in the store runs low in memory."""
        if not self.paging or not self.broker.accepting:
            return False
        functions = self.broker.functions
        for name in self.broker.stored:
            func = functions.get(name)
            if func is None:
                return True
            q = func.queued
            if q[0] + q[1] + q[2] < self.page:
                return True
        return False

    async def _page_in(self) -> bool:
        """Load the next page of each function that runs low, highest priority first;
        False when nothing moved (no row read, no count changed)."""
        if not self.paging or not self.broker.accepting:
            return False
        broker = self.broker
        moved = False
        for name in list(broker.stored):
            func = broker.function(name)
            q = func.queued
            room = self.page * 2 - (q[0] + q[1] + q[2])
            for priority in (0, 1, 2):
                counts = broker.stored.get(name)
                if counts is None or room <= 0:
                    break
                if not counts[priority]:
                    continue
                fp = (name, priority)
                want = min(room, counts[priority])
                claims = self.claims
                try:
                    rows = await asyncio.wait_for(
                        self.store.load_queued(
                            name, priority, self.cursors.get(fp, self.replay_top), want
                        ),
                        COMMIT_TIMEOUT,
                    )
                except (StoreError, TimeoutError) as e:
                    url = self.store.url
                    log.error("store %s: loading queued jobs failed: %s", url, about(url, e))
                    return False  # the next commit tries again
                claimed_from = self.cursors.get(fp, self.replay_top)
                loaded = self._queue_rows(rows, fp)
                room -= loaded
                moved = moved or bool(rows)
                if self.claims != claims:
                    # jobs claimed while the page was read (queue_stored) may lie before
                    # it, or be missing from it: the next page starts from the first of
                    # them, and the count stands (rows already queued are skipped then)
                    moved = True
                    self.cursors[fp] = min(self.cursors.get(fp, claimed_from), claimed_from)
                elif len(rows) < want:  # the store has no more: the count was high
                    moved = True
                    self._count_stored(fp, -self._stored(fp))
        self.replay_peer.out.clear()
        self._flush()
        return moved

    def _queue_rows(self, rows: list[tuple[int, StoredJob]], fp: FP) -> int:
        """Queue a page of stored-only jobs of one (function, priority)."""
        func = self.broker.function(fp[0])
        loaded = refused = 0
        for seq, stored in rows:
            self.cursors[fp] = seq
            key = (stored.function, stored.unique)
            if key in self.removes:
                continue  # finished; its remove is not committed yet
            if stored.unique.startswith(_MARK):
                here = stored.unique in self.generated_in
            else:
                ukey = unique_key(stored.unique, stored.data)
                here = ukey is not None and ukey in func.unique
            if here:
                job = self.add_jobs.get(key) if self.paging else None
                if job is not None:
                    # submitted while this page was read, not yet committed: the row is
                    # that job (its data wins while no worker has it), so the add goes
                    # and _coalesce must not unload it as well
                    self._adopt(key, job, stored)
                    self._count_stored(fp, -1)
                elif seq <= self.replay_top:  # a replayed row a new submission joined
                    self._count_stored(fp, -1)
                continue
            self._count_stored(fp, -1)
            taken = self._take(stored, key)
            if taken is None:
                refused += 1
            elif taken:
                loaded += 1
                self.paged_in += 1
        if refused:
            log.warning(
                "store %s: %d stored job%s of %s could not be queued; they stay in the "
                "store and come back at the next start",
                self.store.url,
                refused,
                "" if refused == 1 else "s",
                fp[0].decode(errors="replace"),
            )
        return loaded

    def _adopt(self, key: Key, job: Job, stored: StoredJob) -> None:
        """A pending add whose stored row was just read: the row stands for it."""
        del self.adds[key]
        del self.add_jobs[key]
        if self.made:
            self.made.pop(job, None)  # the stored row stands for it
        if self.spill.pop(key, None) is not None:
            self._spill_done((key[0], job.priority))
        if (job.state == QUEUED or job.state == PENDING) and job.worker is None:
            job.data = stored.data
        self.broker.publish(job)  # the stored row makes it durable

    def _take(self, stored: StoredJob, key: Key) -> bool | None:
        """Queue a stored row as the replay peer's: True when queued, False when it joined
        a queued job (same unique, or same data under "-"; a row that is not that job's is
        removed), None when the broker refused it (--max-queue, stopping): it stays
        stored."""
        before = self.broker.counters.submitted
        job = self.broker.submit(
            self.replay_peer,
            stored.function,
            _original_unique(stored.unique),
            stored.data,
            stored.priority,
            True,
            stored.when,
            stored.reducer,
        )
        if job is None:
            return None
        if self.broker.counters.submitted == before:
            if (job.func.name, self._stored_unique(job)) != key:
                self.removes[key] = None
            return False
        self.broker.publish(job)  # stored already: no commit to wait for
        if stored.unique.startswith(_MARK):
            self.generated[job.handle] = stored.unique
            self.generated_in.add(stored.unique)
        return True

    # ----------------------------------------------------------------- replay

    async def replay(self) -> int:
        """Queue the stored jobs again while new work is accepted: per function, highest
        priority first, in submission order, a page at a time, up to the memory budget;
        the rest are counted and paged in as the queues drain."""
        broker = self.broker
        budget = self.budget
        started = time.monotonic()
        try:
            top = self.replay_top = await self.store.last_seq()
            if top:
                for function, priority, n in await self.store.queued_counts(0, top):
                    self._count_stored((function, priority), n)
                    self.cursors[(function, priority)] = 0
            for name in list(broker.stored):
                for priority in (0, 1, 2):
                    fp = (name, priority)
                    while self._stored(fp) and not (budget and self.resident >= budget):
                        want = min(REPLAY_PAGE, self._stored(fp))
                        if budget:
                            want = min(want, budget - self.resident)
                        rows = await self.store.load_queued(name, priority, self.cursors[fp], want)
                        self.replayed += self._queue_rows(rows, fp)
                        if len(rows) < want:
                            self._count_stored(fp, -self._stored(fp))
                        self.replay_peer.out.clear()
                        self._flush()  # the journal's consumer counts them resident
                        await asyncio.sleep(0)
        except StoreError as e:
            log.error("store %s: replay stopped: %s", self.store.url, about(self.store.url, e))
            return self.replayed
        finally:
            self.replay_peer.out.clear()
        self.paging = budget > 0
        left = sum(sum(c) for c in broker.stored.values())
        if self.replayed or left:
            lifecycle.info(
                "%d stored background job%s queued again from %s in %.1f s%s",
                self.replayed,
                "" if self.replayed == 1 else "s",
                self.store.url,
                time.monotonic() - started,
                f"; {left} more wait in the store until the queues drain (--memory-jobs)"
                if left
                else "",
                extra={"gearman_level": "NOTICE"},
            )
        if (self.removes or self._low()) and not self.busy:
            self._wake.set()
        return self.replayed

    async def start_shared(self) -> None:
        """On a store shared by several servers (server/cluster.py), instead of
        `replay`: the claimer queues the jobs this server takes (its own from an earlier
        run included), and paging is on for the jobs it accepts beyond the budget. The
        paging queries see only this server's jobs (the store's `owner`)."""
        self.replay_top = await self.store.last_seq()
        self.paging = self.budget > 0

    def queue_stored(self, page: list[tuple[int, StoredJob]]) -> int:
        """Take on jobs claimed from the store (server/cluster.py), its own from an
        earlier run included. With a memory budget they are counted as stored-only and
        paged in as the queues drain, highest priority first, like replay (a claim comes
        in submission order, or none in Redis); without one they are queued at once, as
        the replay peer's (not stored again). Either way sleeping workers are NOOPed.
        How many it took on."""
        if self.paging:
            self.claims += 1  # a page being read now must not pass over these (_page_in)
            cursors = self.cursors
            for seq, stored in page:
                fp = (stored.function, stored.priority)
                self._count_stored(fp, 1)
                # claimed rows may be older than this server's own: page from before them
                cursors[fp] = min(cursors.get(fp, self.replay_top), seq - 1)
            if self._low() and not self.busy:
                self._wake.set()
            return len(page)
        queued = refused = 0
        for _, stored in page:
            taken = self._take(stored, (stored.function, stored.unique))
            if taken is None:
                refused += 1
            elif taken:
                queued += 1
        if refused:
            log.warning(
                "store %s: %d claimed job%s could not be queued; they stay in the store "
                "and are claimed again after this server's next start",
                self.store.url,
                refused,
                "" if refused == 1 else "s",
            )
        self.replay_peer.out.clear()
        self._flush()
        if self.removes and not self.busy:
            self._wake.set()
        return queued

    def _stored_unique(self, job: Job) -> bytes:
        return self.generated.get(job.handle, job.unique)

    # --------------------------------------------------------------- closing

    async def close(
        self, timeout: float = 5.0, last: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Commit what is owed (removes of finished jobs, adds of the server's own jobs),
        await ``last`` (a shared store's goodbye), then close the store. Each of the
        server's own jobs whose add the store never took is lost with the stop: an ERROR
        line each (the store down, or its commit cut off after ``timeout``)."""
        self._closing = True
        if self._lone is not None:  # the lane's commit in flight: its answer first
            self._lone_idle = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._lone_idle), timeout)
            except TimeoutError:
                pass
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._wake.set()
        task = self._task
        if task is not None:
            try:
                await asyncio.wait_for(task, timeout)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
        self.broker.detach_journal()
        for job, alive in self.made.items():
            if alive and not job.ignore:
                log.error(
                    "store %s: job %s of %s (the server's own) is lost with the stop: "
                    "the store did not confirm its add",
                    self.store.url,
                    job.handle.decode(errors="replace"),
                    job.func.name.decode(errors="replace"),
                )
        self.made.clear()
        if last is not None:
            await last()
        try:
            await self.store.close()
        except StoreError as e:
            log.error("store %s: %s", self.store.url, about(self.store.url, e))


async def open_durable(
    url: str,
    source: str | None,
    broker: Broker,
    flush: Callable[[], None],
    budget: int = MEMORY_JOBS,
    origin: str = FIX_URL,
    lease: float | None = None,
) -> Durable:
    """Open the store a URL names, import what a gearmand left there, and return the
    writer (not yet attached). Raises StoreError with one line: the URL (password
    hidden), why, and the fix."""
    shown = hide_password(url)
    try:
        store = open_store(url, lease=lease)
        await store.open()  # an SQLite store creates its folder, and says so
    except OSError as e:
        raise StoreError(
            f"cannot create the folder of the store {shown}: {e.strerror or e}; "
            + (
                "give a writable path to --store (or --state-dir)"
                if origin == FIX_URL
                else f"give a writable path: fix {origin}"
            )
        ) from None
    except StoreError as e:
        raise StoreError(str(e).replace(FIX_URL, origin)) from None
    except (TypeError, ValueError) as e:  # a driver refusing an option in the URL's query
        raise StoreError(f"store {shown}: {e}; fix {origin}") from None
    # a StoreError of open() already names the URL (password hidden) and the fix
    try:
        moved = await store.import_gearmand(source)
    except StoreError as e:
        await store.close()
        raise StoreError(f"store {shown}: importing gearmand's queue failed: {e}") from None
    if moved:
        # once per switch from gearmand: the operator should see it at every level
        lifecycle.info(
            "imported %d job%s gearmand left in its queue on %s; gone from gearmand's"
            " table or keys, so they run once, here",
            moved,
            "" if moved == 1 else "s",
            shown,
            extra={"gearman_level": "NOTICE"},
        )
    return Durable(store, broker, flush, budget)
