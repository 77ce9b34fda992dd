"""The store's edge: background jobs made durable before their JOB_CREATED goes out.

A :class:`Durable` is the broker journal's consumer (``hold_created=True``). Every
read batch it is handed what the broker decided; it keeps the background jobs
accepted (to add) and finished (to remove) and wakes its writer task, which commits
them in one transaction and then releases the held JOB_CREATED replies.

Group commit: while a commit runs, whatever arrives waits and goes in the next one;
a lone job is committed at once (no timer). Foreground jobs are never written.

When the store fails (unreachable, full, refused), the jobs of the failed group and
every background submission until it is back get ``ERROR QUEUE_ERROR`` instead of
their JOB_CREATED and are dropped from memory; foreground work goes on; the writer
retries with backoff (the removes it still owes first) and recovers by itself.

At start, :meth:`Durable.replay` loads the stored jobs in pages (submission order;
the broker's per-priority queues restore priority order), with their uniques and
epoch times, while the server already accepts new work. A job that was running
when the server died was never removed, so it runs again: at-least-once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

from . import fanout
from .broker import Broker
from .journal import Entry, JobAccepted, JobFinished
from .model import Job, Peer
from .replies import error, job_created
from .sink import BufferSink
from .store import Key, Store, StoredJob, StoreError, hide_password, open_store

log = logging.getLogger("gearmill.store")
# replay counts and a store coming back: logged at every --verbose level (as app.py's)
lifecycle = logging.getLogger("gearmill.lifecycle")

ERR_STORE = error(b"QUEUE_ERROR", b"Job queue store is unavailable")

# A job the client gave no unique id (or "-", which coalesces by data) is stored
# under a generated one, marked so that replay gives the job its own back.
_MARK = b"\x1fgm"
REPLAY_PAGE = 2000
COMMIT_TIMEOUT = 10.0  # a store that does not answer counts as gone
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 2.0


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


class Durable:
    def __init__(self, store: Store, broker: Broker, flush: Callable[[], None]) -> None:
        self.store = store
        self.broker = broker
        self._flush = flush  # write the released replies (the server's flush)
        # the next group: adds by key (with their jobs, to refuse them on failure)
        self.adds: dict[Key, StoredJob] = {}
        self.add_jobs: dict[Key, Job] = {}
        self.removes: dict[Key, None] = {}  # an ordered set
        self.held: list[Peer] = []
        # handle -> stored unique, for the jobs stored under a generated one
        self.generated: dict[bytes, bytes] = {}
        self._token = os.urandom(6).hex().encode()
        self._seq = 0
        # handles refused with QUEUE_ERROR whose end the journal has yet to report
        self.rejected: set[bytes] = set()
        self.down: str | None = None  # why the store is unusable, while it is
        self.busy = False
        self.commits = 0  # groups committed (and jobs in them), for tests and stats
        self.committed_jobs = 0
        # metrics (--http): told each commit's seconds and size (adds + removes)
        self.observe: Callable[[float, int], None] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.replay_peer = Peer(-1, "replay", True, _Discard())
        self._replay_seen: set[Key] | None = None
        self.replayed = 0

    # ------------------------------------------------------------ the journal

    def start(self) -> None:
        fanout.attach(self.broker, self, hold_created=True)  # beside metrics, if any
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _key(self, job: Job, new: bool) -> Key:
        name = job.func.name
        if new:
            unique = job.unique
            if unique and unique != b"-":
                return (name, unique)
            self._seq += 1
            stored = b"%b%b\x1f%b.%d" % (_MARK, unique, self._token, self._seq)
            self.generated[job.handle] = stored
            return (name, stored)
        made = self.generated.pop(job.handle, None)
        return (name, job.unique if made is None else made)

    def consume(self, entries: list[Entry], held: list[Peer]) -> None:
        replay_peer = self.replay_peer
        down = self.down is not None
        refuse: list[Job] = []
        for e in entries:
            if type(e) is JobAccepted:
                job = e.job
                if not job.background or e.peer is replay_peer:
                    continue
                if down:
                    refuse.append(job)
                    continue
                key = self._key(job, True)
                self.adds[key] = StoredJob(
                    job.func.name,
                    key[1],
                    bytes(job.data),
                    job.priority,
                    e.when,
                    job.more.reducer,
                )
                self.add_jobs[key] = job
                if self._replay_seen is not None:
                    self._replay_seen.add(key)
            elif type(e) is JobFinished:
                job = e.job
                if not job.background:
                    continue
                if job.handle in self.rejected:
                    self.rejected.discard(job.handle)
                    self.generated.pop(job.handle, None)
                    continue
                key = self._key(job, False)
                if self.adds.pop(key, None) is not None:
                    del self.add_jobs[key]
                self.removes[key] = None
        if replay_peer.holds:
            replay_peer.holds = 0
            held = [p for p in held if p is not replay_peer]
        if down:
            self._refuse(refuse, held)
        elif held or self.adds or self.removes:
            self.held += held
            if not self.busy:
                self._wake.set()

    def _refuse(self, jobs: list[Job], held: list[Peer]) -> None:
        """Answer QUEUE_ERROR instead of the held JOB_CREATEDs of ``jobs`` (and of
        coalesced submissions onto them), drop the jobs, let the peers' output go."""
        for job in jobs:
            self.rejected.add(job.handle)
            self.generated.pop(job.handle, None)
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
            while self.adds or self.removes or self.held:
                adds, add_jobs, removes, held = self.adds, self.add_jobs, self.removes, self.held
                self.adds, self.add_jobs, self.removes, self.held = {}, {}, {}, []
                self.busy = True
                began = time.monotonic()  # for metrics: one reading per commit, not per job
                try:
                    await asyncio.wait_for(
                        self.store.commit(list(adds.values()), list(removes)), COMMIT_TIMEOUT
                    )
                except Exception as e:  # any failure refuses the group
                    self.busy = False
                    why = str(e) or type(e).__name__
                    # the removes are still owed; the adds and what came meanwhile are
                    # refused, and the group's adds removed once the store is back: a
                    # commit cut off after the store made it durable must not run a job
                    # its client was told was refused
                    removes.update(self.removes)
                    removes.update(dict.fromkeys(adds))
                    self.removes = removes
                    self._went_down(why)
                    jobs = list(add_jobs.values()) + list(self.add_jobs.values())
                    later = self.held
                    self.adds, self.add_jobs, self.held = {}, {}, []
                    self._refuse(jobs, held + later)
                    self._flush()
                    await self._recover()
                    if self._closing:
                        return
                    continue
                finally:
                    self.busy = False
                self.commits += 1
                self.committed_jobs += len(adds)
                if self.observe is not None:
                    self.observe(time.monotonic() - began, len(adds) + len(removes))
                release = self.broker.release
                for peer in held:
                    release(peer)
                self._flush()
            if self._closing:
                return

    def _went_down(self, why: str) -> None:
        if self.down is None:
            log.error(
                "store %s failed: %s; background jobs get QUEUE_ERROR until it is back",
                self.store.url,
                why,
                extra={"gearman_level": "ERROR"},
            )
        self.down = why

    async def _recover(self) -> None:
        """Retry, with backoff, until the store takes the removes still owed."""
        delay = BACKOFF_FIRST
        while not self._closing:
            await asyncio.sleep(delay)
            removes = list(self.removes)
            try:
                # count() reaches the store even when no remove is owed
                await asyncio.wait_for(self.store.count(), COMMIT_TIMEOUT)
                await asyncio.wait_for(self.store.commit([], removes), COMMIT_TIMEOUT)
            except Exception as e:  # still down, whatever the reason
                self.down = str(e) or type(e).__name__
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            for key in removes:
                self.removes.pop(key, None)
            lifecycle.warning(
                "store %s is back; background jobs are accepted again",
                self.store.url,
                extra={"gearman_level": "WARNING"},
            )
            self.down = None
            return

    # ----------------------------------------------------------------- replay

    async def replay(self) -> int:
        """Queue the stored jobs again, a page at a time, while new work is accepted."""
        broker = self.broker
        peer = self.replay_peer
        seen = self._replay_seen = set()
        after = 0
        started = time.monotonic()
        try:
            while True:
                try:
                    page = await self.store.load(after, REPLAY_PAGE)
                except StoreError as e:
                    log.error("store %s: replay stopped: %s", self.store.url, e)
                    return self.replayed
                if not page:
                    break
                for seq, stored in page:
                    after = seq
                    key = (stored.function, stored.unique)
                    if key in seen:  # submitted (and stored) since this start
                        continue
                    before = broker.counters.submitted
                    job = broker.submit(
                        peer,
                        stored.function,
                        _original_unique(stored.unique),
                        stored.data,
                        stored.priority,
                        True,
                        stored.when,
                        stored.reducer,
                    )
                    if job is None:
                        continue
                    if broker.counters.submitted == before:
                        # joined a job already queued (same unique): this row is not its
                        if (job.func.name, self._stored_unique(job)) != key:
                            self.removes[key] = None
                        continue
                    if stored.unique.startswith(_MARK):
                        self.generated[job.handle] = stored.unique
                    self.replayed += 1
                peer.out.clear()
                self._flush()
                await asyncio.sleep(0)
        finally:
            self._replay_seen = None
            peer.out.clear()
        if self.replayed:
            lifecycle.info(
                "%d stored background job%s queued again from %s in %.1f s",
                self.replayed,
                "" if self.replayed == 1 else "s",
                self.store.url,
                time.monotonic() - started,
                extra={"gearman_level": "NOTICE"},
            )
        if self.removes and not self.busy:
            self._wake.set()
        return self.replayed

    def _stored_unique(self, job: Job) -> bytes:
        return self.generated.get(job.handle, job.unique)

    # --------------------------------------------------------------- closing

    async def close(self, timeout: float = 5.0) -> None:
        """Commit what is owed (removes of finished jobs), then close the store."""
        self._closing = True
        self._wake.set()
        task = self._task
        if task is not None:
            try:
                await asyncio.wait_for(task, timeout)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
        self.broker.detach_journal()
        try:
            await self.store.close()
        except StoreError as e:
            log.error("store %s: %s", self.store.url, e)


async def open_durable(
    url: str, source: str | None, broker: Broker, flush: Callable[[], None]
) -> Durable:
    """Open the store a URL names, import what a gearmand left there, and return the
    writer (not yet attached). Raises StoreError with one line: the URL (password
    hidden), why, and the fix."""
    shown = hide_password(url)
    try:
        store = open_store(url)
        if url.lower().startswith("sqlite:"):
            from .store._sqlite import path_of

            os.makedirs(os.path.dirname(path_of(url)) or ".", mode=0o700, exist_ok=True)
        await store.open()
    except OSError as e:
        raise StoreError(
            f"cannot create the folder of the store {shown}: {e.strerror or e}; "
            "give a writable path to --store (or --state-dir)"
        ) from None
    # a StoreError of open() already names the URL (password hidden) and the fix
    try:
        await store.import_gearmand(source)  # it logs how many jobs came
    except StoreError as e:
        await store.close()
        raise StoreError(f"store {shown}: importing gearmand's queue failed: {e}") from None
    return Durable(store, broker, flush)
