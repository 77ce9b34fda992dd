"""The dead set and the schedules kept in a durable store (the hook for server/store/).

The broker and the policy are synchronous; a store is asynchronous. So the
policy's ``sink`` calls (a job entered or left the dead set, a schedule was
put or removed) are queued here, in order, and one task writes them to the
store. At start, :meth:`PolicyStore.open` loads what the store kept: dead
letters (they get new handles: handles belong to one server's run) and
schedules (which then fire from their next matching minute, with no catch-up).

Wiring, where the server opens its store::

    keeper = PolicyStore(server.policies, store)
    await keeper.open()        # before the server accepts connections
    ...
    await keeper.close()       # after the last change, before store.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace

from .policy import ENDINGS, DeadJob, Policies, RuleError, Schedule, ScheduleSpec
from .store import DeadLetter, Store, StoredJob, StoredSchedule, StoreError

log = logging.getLogger("gearmill.policy")

_PAGE = 1000
# a dead-set write the store refused is tried again after this, doubling up to the last
RETRY_FIRST = 1.0
RETRY_MAX = 30.0


def to_letter(dead: DeadJob) -> DeadLetter:
    job = StoredJob(dead.function, dead.unique, dead.data, dead.priority, attempts=dead.attempts)
    error = dead.error.decode(errors="replace")
    return DeadLetter(job, f"{dead.reason}: {error}" if error else dead.reason, int(dead.died))


def from_letter(handle: bytes, letter: DeadLetter) -> DeadJob:
    reason, _, error = letter.error.partition(": ")
    if reason not in ENDINGS:
        reason, error = "lost", letter.error
    j = letter.job
    return DeadJob(
        handle,
        j.function,
        j.unique,
        j.data,
        j.priority,
        j.attempts,
        reason,
        error.encode(),
        float(letter.failed_at),
    )


class PolicyStore:
    """The DeadSet's and the Scheduler's ``sink``, written to ``store`` in order."""

    def __init__(
        self, policies: Policies, store: Store, flush: Callable[[], None] | None = None
    ) -> None:
        self.policies = policies
        self.store = store
        self._flush = flush  # writes a tick's NOOPs to sleeping workers (the server's flush)
        self.ids: dict[bytes, int] = {}  # dead job handle -> the store's id
        self._queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        # schedules changed here since the last sync began: the store's copy may be older
        self._touched: set[str] = set()
        self._dead_sync_queued = False
        # dead-set writes the store refused, in order, tried again from a timer: a
        # letter's add (its DeadJob) and the removal of a stored one (its id)
        self._owed: list[DeadJob | int] = []
        self._retry_delay = RETRY_FIRST
        self._retry_timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._retrying = False  # the writer is trying an owed write again

    async def open(self) -> None:
        policies = self.policies
        after = 0
        for _ in range(1_000_000):
            rows = await self.store.list_dead(after, _PAGE)
            if not rows:
                break
            for i, letter in rows:
                handle = policies.broker.new_handle()
                policies.dead.jobs[handle] = from_letter(handle, letter)
                self.ids[handle] = i
            after = rows[-1][0]
        stored = await self.store.list_schedules()
        for s in stored:
            spec = ScheduleSpec(s.name, s.cron, s.function, s.data, s.priority, not s.enabled)
            try:
                policies.scheduler.add(spec)
            except RuleError as e:
                log.error("Stored schedule %s not loaded: %s", s.name, e)
        # the config file's schedules are the store's too
        names = {s.name for s in stored}
        for name, sched in policies.scheduler.schedules.items():
            if name not in names:
                await self.store.put_schedule(self._stored(sched.spec))
        policies.dead.sink = self
        policies.scheduler.sink = self
        if self.store.shared:
            # several servers fire the same schedules: the store picks one per tick
            policies.scheduler.gate = self.tick
            # and see one dead set: a requeue runs only if this server removed the letter
            policies.requeue_gate = self.requeue
        policies.dead_added()  # the loaded jobs' age limit
        self._writer = asyncio.get_running_loop().create_task(self._write())

    async def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (within ``timeout``), then stop. A dead-set write the
        store refused before is not tried again here (the store is most likely still
        down, and a stop must not wait on it): each is logged as lost with the stop."""
        self.policies.dead.sink = None
        self.policies.scheduler.sink = None
        self.policies.scheduler.gate = None
        self.policies.requeue_gate = None
        self._closing = True
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        writer, self._writer = self._writer, None
        if writer is not None:
            self._queue.put_nowait(("stop", None))
            if self._retrying:  # a write the store refused before: not waited for
                timeout = 0
            try:
                await asyncio.wait_for(asyncio.shield(writer), timeout)
            except TimeoutError:  # the store does not answer: what is owed is lost
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
                self._unwritten()
        for item in self._owed:
            if isinstance(item, DeadJob):
                if self.policies.dead.jobs.get(item.handle) is item:
                    log.error(
                        "Dead job %s is lost with the stop: the store never took it",
                        item.handle.decode(errors="replace"),
                    )
            else:
                log.error(
                    "Dead letter %d stays in the store though it left the dead set: "
                    "it is in the dead set again after the next start",
                    item,
                )
        self._owed.clear()

    def _unwritten(self) -> None:
        """The writer stopped before the queue's end: its dead-set changes join the
        owed ones (logged as lost by close), the rest is logged here."""
        while not self._queue.empty():
            kind, item = self._queue.get_nowait()
            if isinstance(item, DeadJob) and kind == "add":
                self._owed.append(item)
            elif isinstance(item, bytes) and kind == "remove":
                i = self.ids.pop(item, None)
                if i is not None:
                    self._owed.append(i)
            elif kind in ("put", "unschedule"):
                log.error("Schedules not written to the store before the stop (%s)", kind)

    # ------------------------------------------------ the sinks (synchronous)

    def add(self, dead: DeadJob) -> None:
        self._queue.put_nowait(("add", dead))

    def remove(self, key: bytes | str) -> None:
        kind = "unschedule" if isinstance(key, str) else "remove"
        if isinstance(key, str):
            self._touched.add(key)
        self._queue.put_nowait((kind, key))

    def put(self, spec: ScheduleSpec) -> None:
        self._touched.add(spec.name)
        self._queue.put_nowait(("put", spec))

    def tick(self, sched: Schedule, minute: float) -> None:
        self._queue.put_nowait(("tick", (sched, minute)))

    def sync_soon(self) -> None:
        """Take in, after what is queued, the schedules other servers sharing the store
        added, changed or removed (server/cluster.py calls it every few heartbeats)."""
        self._queue.put_nowait(("sync", None))

    def sync_dead_soon(self) -> None:
        """Take in the dead letters other servers sharing the store added, and drop those
        they requeued or purged (server/cluster.py calls it every heartbeat)."""
        if not self._dead_sync_queued:
            self._dead_sync_queued = True
            self._queue.put_nowait(("sync_dead", None))

    def requeue(self, dead: DeadJob) -> None:
        """A shared store's requeue (``Policies.requeue_gate``): the letter has left this
        server's dead set; it is queued again once this server has removed it from the
        store, so of two servers requeueing it at once, one runs it."""
        self._queue.put_nowait(("requeue", dead))

    # ------------------------------------------------------------ the writer

    async def _requeue(self, dead: DeadJob) -> None:
        """Take the letter from the store, then queue the job (``Broker.enqueue``; its add
        is committed by the store's writer, server/durable.py, and kept owed in memory if
        that commit fails). Until that commit is done the job is in memory only: a crash
        in between loses it. Adding first would need the job held off the queues until
        the store says this server took the letter (else two servers requeueing it both
        run it), and a loser that must not remove a row its add may have shared."""
        i = self.ids.pop(dead.handle, None)
        try:
            taken = i is None or bool(await self.store.take_dead([i]))
        except StoreError as e:
            log.error(
                "Dead job %s not requeued (the store could not be reached): %s; kept dead",
                dead.handle.decode(errors="replace"),
                e,
            )
            assert i is not None
            self.ids[dead.handle] = i
            self.policies.dead.jobs[dead.handle] = dead  # as it is in the store
            return
        if not taken:
            log.info(
                "Dead job %s was requeued or purged on another server",
                dead.handle.decode(errors="replace"),
            )
            return
        policies = self.policies
        job = policies.broker.enqueue(
            dead.function, dead.unique, dead.data, dead.priority, handle=dead.handle
        )
        if job is None:
            # a live job took its unique id meanwhile: back to the dead set, not lost
            log.warning(
                "Dead job %s not requeued: a live job has its unique id %s; kept dead",
                dead.handle.decode(errors="replace"),
                dead.unique.decode(errors="replace"),
            )
            policies.dead.add(dead)
            return
        if self._flush is not None:
            self._flush()  # wake sleeping workers

    async def _sync_dead(self) -> None:
        self._dead_sync_queued = False
        there = set(await self.store.dead_ids())
        dead = self.policies.dead
        # the writer is here, so every letter of this server's is written: no id is missing
        for handle, i in list(self.ids.items()):
            if i not in there:
                del self.ids[handle]
                if dead.jobs.pop(handle, None) is not None:
                    log.info(
                        "Dead job %s requeued or purged on another server",
                        handle.decode(errors="replace"),
                    )
        new = there - set(self.ids.values())
        if not new:
            return
        after = min(new) - 1
        for _ in range(1_000_000):
            rows = await self.store.list_dead(after, _PAGE)
            if not rows:
                break
            for i, letter in rows:
                if i in new:
                    handle = self.policies.broker.new_handle()
                    dead.jobs[handle] = from_letter(handle, letter)
                    self.ids[handle] = i
            after = rows[-1][0]
        self.policies.dead_added()  # their age limit

    async def _tick(self, sched: Schedule, minute: float) -> None:
        name = sched.spec.name
        if not await self.store.claim_tick(name, int(minute), int(sched.next_at)):
            log.info("Schedule %s: the tick of %s fired on another server", name, int(minute))
            return
        if self.policies.scheduler.schedules.get(name) is sched:  # not removed meanwhile
            self.policies.scheduler.submit_tick(sched, minute)
            if self._flush is not None:
                self._flush()

    async def _sync(self) -> None:
        self._touched.clear()
        stored = await self.store.list_schedules()
        scheduler = self.policies.scheduler
        touched = self._touched  # changed here while the list was read: keep ours
        sink, scheduler.sink = scheduler.sink, None  # what the store says is not written back
        try:
            names = {s.name for s in stored}
            for name in [n for n in scheduler.schedules if n not in names | touched]:
                scheduler.remove(name)
                log.info("Schedule %s removed on another server", name)
            for s in stored:
                if s.name in touched:
                    continue
                spec = ScheduleSpec(s.name, s.cron, s.function, s.data, s.priority, not s.enabled)
                have = scheduler.schedules.get(s.name)
                if have is not None and have.spec == spec:
                    continue
                if have is not None and replace(have.spec, paused=spec.paused) == spec:
                    scheduler.pause(s.name, spec.paused)
                    continue
                try:
                    scheduler.add(spec)
                except RuleError as e:
                    log.error("Stored schedule %s not loaded: %s", s.name, e)
                    continue
                log.info("Schedule %s taken in from the store", s.name)
        finally:
            scheduler.sink = sink

    @staticmethod
    def _stored(spec: ScheduleSpec) -> StoredSchedule:
        return StoredSchedule(
            spec.name, spec.function, spec.cron, spec.data, spec.priority, not spec.paused
        )

    async def _write(self) -> None:
        while True:
            kind, item = await self._queue.get()
            if kind == "stop":
                return
            if kind == "retry":
                await self._retry()
                continue
            i: int | None = None
            try:
                if kind == "add":
                    assert isinstance(item, DeadJob)
                    if self._owed:  # after the writes still owed, never before them
                        self._owe(item, "an earlier write is still owed")
                        continue
                    (self.ids[item.handle],) = await self.store.add_dead([to_letter(item)])
                elif kind == "remove":
                    assert isinstance(item, bytes)
                    if self._owed and self._owed_add(item):
                        continue  # never stored: nothing to remove
                    i = self.ids.pop(item, None)
                    if i is not None:
                        await self.store.remove_dead([i])
                elif kind == "sync":
                    await self._sync()
                elif kind == "sync_dead":
                    await self._sync_dead()
                elif kind == "requeue":
                    assert isinstance(item, DeadJob)
                    await self._requeue(item)
                elif kind == "tick":
                    assert isinstance(item, tuple)
                    await self._tick(*item)
                elif kind == "put":
                    assert isinstance(item, ScheduleSpec)
                    await self.store.put_schedule(self._stored(item))
                else:
                    assert isinstance(item, str)
                    await self.store.remove_schedule(item)
            except StoreError as e:
                if kind == "sync_dead":
                    self._dead_sync_queued = False
                    log.error("Dead set not read from the store: %s", e)
                    continue
                if kind == "tick":
                    assert isinstance(item, tuple)
                    log.error(
                        "Schedule %s: tick not fired (the store decides which server fires it): %s",
                        item[0].spec.name,
                        e,
                    )
                    continue
                if kind == "add":
                    assert isinstance(item, DeadJob)
                    self._owe(item, str(e))
                    continue
                if kind == "remove" and i is not None:
                    self._owe(i, str(e))
                    continue
                # the in-memory state stays right; the store catches up at the next change
                log.error("Dead set / schedules not written to the store: %s", e)

    def _owe(self, item: DeadJob | int, why: str) -> None:
        """Keep a dead-set write the store refused (a letter to add, or the id of one to
        remove), to try again from a timer."""
        self._owed.append(item)
        what = (
            f"Dead job {item.handle.decode(errors='replace')} not written to the store"
            if isinstance(item, DeadJob)
            else f"Dead letter {item} left the dead set but not the store"
        )
        log.error("%s: %s; trying again in %.0f s", what, why, self._retry_delay)
        if self._retry_timer is None and not self._closing:
            loop = asyncio.get_running_loop()
            self._retry_timer = loop.call_later(
                self._retry_delay, self._queue.put_nowait, ("retry", None)
            )

    def _owed_add(self, handle: bytes) -> bool:
        """Drop an owed add of ``handle`` (the letter left the dead set before the store
        took it); whether there was one."""
        for n, item in enumerate(self._owed):
            if isinstance(item, DeadJob) and item.handle == handle:
                del self._owed[n]
                return True
        return False

    async def _retry(self) -> None:
        """Write the owed dead-set changes in order; stop at the first the store still
        refuses (the delay doubles), else the next refusal starts from RETRY_FIRST."""
        self._retry_timer = None
        owed, self._owed = self._owed, []
        dead = self.policies.dead.jobs
        for n, item in enumerate(owed):
            self._retrying = True
            try:
                if isinstance(item, DeadJob):
                    if dead.get(item.handle) is not item:
                        continue  # requeued or purged meanwhile: nothing to store
                    (self.ids[item.handle],) = await self.store.add_dead([to_letter(item)])
                else:
                    await self.store.remove_dead([item])
            except (StoreError, asyncio.CancelledError) as e:
                self._retrying = False
                self._owed = owed[n:] + self._owed
                if isinstance(e, asyncio.CancelledError):  # close: logged there
                    raise
                self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)
                if not self._closing:
                    self._retry_timer = asyncio.get_running_loop().call_later(
                        self._retry_delay, self._queue.put_nowait, ("retry", None)
                    )
                log.error(
                    "Dead set still not written to the store: %s; trying again in %.0f s",
                    e,
                    self._retry_delay,
                )
                return
        self._retrying = False
        if owed:
            log.warning(
                "Dead set written to the store: %d change%s it refused before",
                len(owed),
                "" if len(owed) == 1 else "s",
            )
        self._retry_delay = RETRY_FIRST
