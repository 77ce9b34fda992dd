"""Several servers on one store: heartbeats, leases and takeover (PostgreSQL, Redis).

Every server sharing a store has a node id (``--node-id``; by default the host name
and the listening port, so a server restarted on the same port takes its own jobs
back at once) and, per run, an owner ``<node id>#<token>``. It keeps a heartbeat in
the store, renewed every third of the lease; the jobs it accepts are stored as its
own. When a heartbeat is not renewed within the lease, the first survivor to notice
deletes it (the server is declared dead) and the survivors claim its jobs: each job
goes to exactly one of them (a row lock, a Lua script), its fencing number grows,
and it is queued in memory the way start-up replay queues stored jobs, which wakes
sleeping workers. Every claim also takes jobs nobody owns (stored before leases,
imported from gearmand, or left by an earlier run of the same node id).

Fencing: a server removes a finished job only while it still holds it with the
fencing number it knows, so a server that was paused past its lease cannot delete
the copy the new owner runs. A server that finds its heartbeat gone has lost its
jobs to the others: it says so loudly and stops (its supervisor starts it again,
and it claims what nobody holds), rather than run jobs that are now someone else's.

The promise is at-least-once: a job that was running on a server when it died runs
again elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable

from .durable import Durable
from .store import StoreError, about

log = logging.getLogger("gearmill.cluster")
lifecycle = logging.getLogger("gearmill.lifecycle")

CLAIM_PAGE = 2000
SWEEP_EVERY = 10  # heartbeats between two looks for jobs nobody holds
CALL_TIMEOUT = 10.0


def _why(e: BaseException, url: str) -> str:
    """A failed store call in words: a timeout's str() is empty."""
    return about(url, e) if str(e) else f"no answer within {CALL_TIMEOUT:g} s"


def default_node_id(port: int) -> str:
    """Host name and listening port: stable across restarts of the same server."""
    return f"{socket.gethostname() or 'localhost'}:{port}"


class Cluster:
    """One server's membership of a shared store."""

    def __init__(
        self,
        durable: Durable,
        node: str,
        lease: float,
        on_lost: Callable[[str], None],
    ) -> None:
        self.durable = durable
        self.store = durable.store
        self.node = node
        self.owner = f"{node}#{os.urandom(6).hex()}"
        self.lease = lease
        self.interval = lease / 3
        self.on_lost = on_lost
        self.taken = 0  # jobs claimed from others (and from nobody), for tests and stats
        self._claim = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.lost = False
        # called every few heartbeats (PolicyStore.sync_soon: schedules changed elsewhere)
        self.on_sweep: Callable[[], None] | None = None
        # called every heartbeat (PolicyStore.sync_dead_soon: the dead set changed elsewhere)
        self.on_beat: Callable[[], None] | None = None
        # the servers sharing the store as of the last heartbeat (admin ``nodes``):
        # (owner, ms until its heartbeat expires, stored jobs it holds), and when read
        self.members: list[tuple[str, int, int]] = []
        self.members_at = 0.0
        # counting each server's jobs is not free (PostgreSQL counts index entries): the
        # counts are read every heartbeat only while an operator asks, else every sweep
        self._asked_at = -1e9
        self._looking: asyncio.Task[None] | None = None
        # servers declared dead since the last claim (its log line names them)
        self._gone: list[str] = []

    async def join(self, restarted: bool = False) -> None:
        """Take this node id (before any job is accepted). Raises StoreError with one
        line when a live server holds it. ``restarted``: the caller knows a holder is an
        earlier run of this server (it holds the port the id is made of): no wait."""
        store = self.store
        held = await store.join(self.owner, self.lease)
        if held is not None:
            # a live holder renews within one interval; an earlier run that crashed does not
            if not restarted:
                await asyncio.sleep(self.interval * 1.5)
            again = await store.join(self.owner, self.lease, held)
            if again is not None:
                raise StoreError(
                    f"node id {self.node} is held by a running server ({again[0]}) on "
                    f"{store.url}; give each server its own --node-id"
                )
        store.owner = self.owner
        await self._look()
        lifecycle.info(
            "joined the shared store %s as %s (lease %.3g s)",
            store.url,
            self.owner,
            self.lease,
            extra={"gearman_level": "NOTICE"},
        )

    def start(self) -> None:
        """Claim what nobody holds, then heartbeat and take over the dead."""
        loop = asyncio.get_running_loop()
        self._claim.set()
        self._tasks = [loop.create_task(self._heartbeat()), loop.create_task(self._claimer())]

    async def _heartbeat(self) -> None:
        store = self.store
        beats = 0
        failing = False
        # after an outage of the store no server could renew its lease, so an expired
        # heartbeat says nothing until the others have had time to renew theirs (a
        # call that hung through the outage gives up after CALL_TIMEOUT, then a beat)
        settle = max(self.lease, CALL_TIMEOUT + self.interval)
        reap_from = 0.0
        while not self._stopping:
            await asyncio.sleep(self.interval)
            try:
                alive = await asyncio.wait_for(store.renew(self.owner, self.lease), CALL_TIMEOUT)
                if failing:
                    failing = False
                    reap_from = time.monotonic() + settle
                    log.warning(
                        "heartbeat to %s is back; servers that do not renew their lease "
                        "within %.3g s are taken over",
                        store.url,
                        settle,
                    )
                reap = alive and time.monotonic() >= reap_from
                dead = await asyncio.wait_for(store.reap(), CALL_TIMEOUT) if reap else []
            except (StoreError, TimeoutError) as e:
                if not failing:
                    log.error("heartbeat to %s failed: %s; retrying", store.url, _why(e, store.url))
                failing = True
                continue
            if not alive:
                self._lost()
                return
            beats += 1
            # the leases every beat (a few rows), so that the first ``nodes`` after a
            # quiet while shows none expired that renews; the job counts while watched
            watched = time.monotonic() - self._asked_at < self.interval * SWEEP_EVERY
            await self._look(bool(dead) or watched or beats % SWEEP_EVERY == 0)
            if self.on_beat is not None:
                self.on_beat()
            crashed = [owner for owner, left in dead if not left]
            gone = [owner for owner, left in dead if left]
            if crashed:
                lifecycle.warning(
                    "server%s %s stopped renewing %s lease on %s; taking over %s jobs",
                    "" if len(crashed) == 1 else "s",
                    ", ".join(crashed),
                    "its" if len(crashed) == 1 else "their",
                    store.url,
                    "its" if len(crashed) == 1 else "their",
                    extra={"gearman_level": "WARNING"},
                )
            if gone:  # a clean stop (SIGTERM, SIGUSR1): nothing went wrong
                lifecycle.info(
                    "server%s %s left %s cleanly; taking over %s jobs",
                    "" if len(gone) == 1 else "s",
                    ", ".join(gone),
                    store.url,
                    "its" if len(gone) == 1 else "their",
                    extra={"gearman_level": "INFO"},
                )
            if dead or beats % SWEEP_EVERY == 0:
                self._gone += [owner for owner, _ in dead]
                self._claim.set()
            if beats % SWEEP_EVERY == 0 and self.on_sweep is not None:
                self.on_sweep()

    def asked(self) -> None:
        """Admin ``nodes`` was asked: read the list every heartbeat for a while, and now if
        what is known is older than a heartbeat (the next ask sees it)."""
        now = time.monotonic()
        self._asked_at = now
        stale = now - self.members_at > self.interval
        if stale and (self._looking is None or self._looking.done()) and not self._stopping:
            self._looking = asyncio.get_running_loop().create_task(self._look())

    async def fresh(self, wait: float) -> None:
        """As ``asked``, and wait up to ``wait`` seconds for the list it reads (the HTTP
        API answers with it, not with the one before)."""
        self.asked()
        looking = self._looking
        if looking is not None and not looking.done():
            try:
                await asyncio.wait_for(asyncio.shield(looking), wait)
            except TimeoutError:
                pass  # the last list it has, with its age

    def view(self) -> list[tuple[str, str, float, int, bool]]:
        """The servers as of the last read: node id, owner token, seconds until its
        heartbeat expires (negative: expired), stored jobs it holds, whether it is this one."""
        age = time.monotonic() - self.members_at
        out = []
        for owner, left_ms, held in self.members:
            node, _, token = owner.rpartition("#")
            out.append((node, token, left_ms / 1000 - age, held, owner == self.owner))
        return out

    async def _look(self, count: bool = True) -> None:
        """Read who shares the store, with the jobs each holds or (not ``count``) the
        counts of the last read (a failure keeps the last list: it is only shown)."""
        store = self.store
        try:
            rows = await asyncio.wait_for(store.nodes(count), CALL_TIMEOUT)
            if not count:
                held = {owner: n for owner, _, n in self.members}
                if all(owner in held for owner, _, _ in rows):
                    rows = [(owner, left, held[owner]) for owner, left, _ in rows]
                else:  # a server joined: count its jobs too
                    rows = await asyncio.wait_for(store.nodes(), CALL_TIMEOUT)
            self.members = rows
            self.members_at = time.monotonic()
        except (StoreError, TimeoutError) as e:
            log.warning(
                "listing the servers on %s failed: %s", self.store.url, _why(e, self.store.url)
            )

    def _lost(self) -> None:
        log.critical(
            "LEASE LOST: this server's heartbeat on %s (%s) is gone: another server declared "
            "it dead and took its jobs over, or the store lost it (restarted without its "
            "data); stopping without running them (a restart claims what nobody holds)",
            self.store.url,
            self.owner,
            extra={"gearman_level": "ERROR"},
        )
        # the store keeps the owner: this server's late removes stay fenced (no-ops)
        self.lost = True
        self.on_lost("lease lost")

    async def _claimer(self) -> None:
        while not self._stopping:
            await self._claim.wait()
            self._claim.clear()
            gone, self._gone = self._gone, []  # whose jobs this claim takes, if any
            started = time.monotonic()
            taken = 0
            try:
                while not self._stopping:
                    page = await asyncio.wait_for(
                        self.store.claim(self.owner, CLAIM_PAGE), CALL_TIMEOUT
                    )
                    if not page or self.lost:
                        break
                    taken += self.durable.queue_stored(page)
                    await asyncio.sleep(0)
            except (StoreError, TimeoutError) as e:
                url = self.store.url
                log.error("taking over jobs from %s failed: %s; retrying", url, _why(e, url))
                await asyncio.sleep(self.interval)
                self._gone = gone + self._gone  # the retry takes them
                self._claim.set()
            if taken:
                self.taken += taken
                lifecycle.info(
                    "took %d stored job%s %s on %s in %.2f s",
                    taken,
                    "" if taken == 1 else "s",
                    f"of {', '.join(gone)} (or nobody's)" if gone else "nobody held",
                    self.store.url,
                    time.monotonic() - started,
                    extra={"gearman_level": "NOTICE"},
                )

    async def close(self) -> None:
        """Stop heartbeating and hand the jobs on: the others claim them at once."""
        self._stopping = True
        self._claim.set()
        if self._looking is not None:
            self._tasks.append(self._looking)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # a failed heartbeat was logged
                pass

    async def leave(self) -> None:
        """After the last commit: drop the heartbeat (unless it was lost)."""
        if self.lost:
            return
        try:
            await asyncio.wait_for(self.store.leave(self.owner), CALL_TIMEOUT)
        except (StoreError, TimeoutError) as e:
            log.error(
                "leaving %s failed: %s; the others take over after the lease",
                self.store.url,
                _why(e, self.store.url),
            )
