"""The lease methods of the shared stores (PostgreSQL, Redis): heartbeat, claim, fenced
remove; and the single-server stores saying they are not shared."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from storekit import Backend, make_backend, run

from gearmill.server.store import DeadLetter, Store, StoredJob, StoreError

SHARED = ["postgresql", "redis"]


@pytest.fixture(params=SHARED, name="common_store")
def shared_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from make_backend(request.param, tmp_path)


def jobs(n: int, prefix: str = "u") -> list[StoredJob]:
    return [StoredJob(b"f", f"{prefix}{i}".encode(), b"d%d" % i) for i in range(n)]


async def opened(b: Backend) -> Store:
    s = b.store()
    await s.open()
    return s


def test_a_live_heartbeat_keeps_its_node_id_and_a_stale_one_can_be_replaced(
    common_store: Backend,
) -> None:
    async def go() -> None:
        a, b = await opened(common_store), await opened(common_store)
        try:
            assert await a.join("n1#aaaa", 30) is None
            held = await b.join("n1#bbbb", 30)
            assert held is not None and held[0] == "n1#aaaa"
            # a renewal moves the expiry: the observed one no longer matches
            await asyncio.sleep(0.01)
            assert await a.renew("n1#aaaa", 30)
            assert await b.join("n1#bbbb", 30, held) is not None
            # not renewed since it was observed (a crashed earlier run): replaced
            held = await b.join("n1#bbbb", 30)
            assert held is not None
            assert await b.join("n1#bbbb", 30, held) is None
            assert not await a.renew("n1#aaaa", 30)  # a finds it lost its heartbeat
            assert await b.join("n2#cccc", 30) is None  # another node id is free
        finally:
            await a.close()
            await b.close()

    run(go())


def test_a_dead_servers_jobs_go_to_exactly_one_claimer_with_a_new_fence(
    common_store: Backend,
) -> None:
    async def go() -> None:
        dead, s1, s2 = (
            await opened(common_store),
            await opened(common_store),
            await opened(common_store),
        )
        try:
            assert await dead.join("dead#1", 0.3) is None
            dead.owner = "dead#1"
            await dead.commit(jobs(50), [])
            for s, owner in ((s1, "s1#1"), (s2, "s2#1")):
                assert await s.join(owner, 30) is None
                s.owner = owner
            # alive: nothing to claim
            assert await s1.claim("s1#1", 100) == []
            await asyncio.sleep(0.5)
            assert await s1.reap() == [("dead#1", False)]  # it stopped renewing
            assert await s2.reap() == []  # declared dead once
            got1, got2 = await asyncio.gather(s1.claim("s1#1", 30), s2.claim("s2#1", 30))
            more = await s1.claim("s1#1", 100) + await s2.claim("s2#1", 100)
            claimed = [j.unique for _, j in got1 + got2 + more]
            assert sorted(claimed) == sorted(j.unique for j in jobs(50))  # each once
            seqs = [q for q, _ in got1]
            assert seqs == sorted(seqs)  # oldest first
            # the dead one's late remove is fenced out: the new owner's job stays
            victim = got1[0][1]
            key = (victim.function, victim.unique)
            await dead.commit([], [key])
            assert await s1.count() == 50
            # the new owner's remove (with the claimed fence) deletes it
            await s1.commit([], [key])
            assert await s1.count() == 49
            # a server's own jobs are not claimable by itself or others while it lives
            await s1.commit(jobs(3, "mine"), [])
            assert await s2.claim("s2#1", 100) == []
        finally:
            for s in (dead, s1, s2):
                await s.close()

    run(go())


def test_a_clean_leave_hands_the_jobs_on_at_once_and_unowned_jobs_are_claimed(
    common_store: Backend,
) -> None:
    async def go() -> None:
        a, b = await opened(common_store), await opened(common_store)
        try:
            await a.commit(jobs(5, "legacy"), [])  # stored with no owner (gearmand import)
            assert await a.join("a#1", 30) is None
            a.owner = "a#1"
            await a.commit(jobs(4, "a"), [])
            assert await b.join("b#1", 30) is None
            b.owner = "b#1"
            first = await b.claim("b#1", 100)
            assert sorted(j.unique for _, j in first) == sorted(j.unique for j in jobs(5, "legacy"))
            await a.leave("a#1")
            assert await b.reap() == [("a#1", True)]  # it left cleanly
            second = await b.claim("b#1", 100)
            assert sorted(j.unique for _, j in second) == sorted(j.unique for j in jobs(4, "a"))
        finally:
            await a.close()
            await b.close()

    run(go())


def test_a_dead_letter_taken_by_two_servers_is_taken_by_one(common_store: Backend) -> None:
    async def go() -> None:
        a, b = await opened(common_store), await opened(common_store)
        try:
            ids = await a.add_dead([DeadLetter(j, "fail", 1) for j in jobs(3, "dead")])
            assert sorted(await b.dead_ids()) == sorted(ids)
            assert await b.take_dead(ids[:2]) == ids[:2]
            assert await a.take_dead(ids) == ids[2:]  # the two b took are gone: not again
            assert await a.take_dead(ids) == []
            assert await b.dead_ids() == []
        finally:
            await a.close()
            await b.close()

    run(go())


def test_nodes_lists_each_heartbeat_with_its_expiry_and_its_jobs(common_store: Backend) -> None:
    async def go() -> None:
        a, b = await opened(common_store), await opened(common_store)
        try:
            assert await a.nodes() == []
            assert await a.join("a#1", 30) is None
            a.owner = "a#1"
            await a.commit(jobs(4, "a"), [])
            assert await b.join("b#1", 30) is None
            rows = await b.nodes()
            assert [(owner, held) for owner, _, held in rows] == [("a#1", 4), ("b#1", 0)]
            assert all(0 < left <= 30_000 for _, left, _ in rows)
            await a.leave("a#1")
            assert (await b.nodes())[0][1] < 0  # expired, listed until reaped
            assert await b.reap() == [("a#1", True)]
            assert [owner for owner, _, _ in await b.nodes()] == ["b#1"]
        finally:
            await a.close()
            await b.close()

    run(go())


@pytest.mark.parametrize("kind", ["memory", "sqlite", "mysql"])
def test_single_server_stores_say_they_are_not_shared(kind: str, tmp_path: Path) -> None:
    for b in make_backend(kind, tmp_path):

        async def go(b: Backend = b) -> None:
            s = b.store()
            await s.open()
            try:
                assert not s.shared
                with pytest.raises(StoreError, match="one server at a time"):
                    await s.join("n#1", 10)
                with pytest.raises(StoreError, match="one server at a time"):
                    await s.nodes()
            finally:
                await s.close()

        run(go())


def test_a_schedule_fires_once_per_tick_across_servers_sharing_the_store(
    common_store: Backend,
) -> None:
    """Three servers' schedulers (each with the same schedule, as from one config file)
    reach the same minute: the store gives each tick to one of them."""
    from gearmill.server.broker import Broker, BrokerConfig
    from gearmill.server.policy import Policies, RetryConfig, ScheduleSpec
    from gearmill.server.policy_store import PolicyStore

    t0 = 1_700_000_000.0

    async def go() -> None:
        servers = []
        for i in range(3):
            broker = Broker(BrokerConfig(handle_prefix=b"H:%d" % i), lambda: t0)
            policies = Policies(broker, RetryConfig())
            policies.scheduler.add(ScheduleSpec("every", "* * * * *", b"report", b"x", 1, False))
            store = common_store.store()
            await store.open()
            keeper = PolicyStore(policies, store)
            await keeper.open()
            servers.append((broker, policies, keeper, store))
        sched = [p.scheduler.schedules["every"] for _, p, _, _ in servers]
        first = sched[0].next_at

        def settled(total: int) -> bool:
            idle = all(k._queue.empty() for _, _, k, _ in servers)
            return idle and sum(s.fired for s in sched) == total

        try:
            # the last: a late second look at a minute already fired (a restart)
            for minute, total in ((first, 1), (first + 60, 2), (first + 60, 2)):
                for s in sched:
                    s.next_at = min(s.next_at, minute)
                for _, p, _, _ in servers:
                    p.scheduler.fire(minute)
                for _ in range(500):  # each server's store writer decides
                    if settled(total):
                        break
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.2)  # a second firing of the minute would show by now
                assert settled(total), [s.fired for s in sched]
            fired = [s.fired for s in sched]
            queued = [len(b.job_rows()) for b, _, _, _ in servers]
            assert queued == fired
        finally:
            for _, _, keeper, store in servers:
                await keeper.close()
                await store.close()

    run(go())


def test_jobs_stored_by_schema_1_are_claimed_after_the_migration(
    common_store: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A store written before leases (schema 1) is migrated at open, and says so; its
    jobs belong to nobody, so the first server to claim takes them, once."""
    caplog.set_level(logging.INFO, logger="gearmill.store")

    async def write_v1() -> None:
        s = await opened(common_store)
        try:
            await s.commit(jobs(7, "old"), [])
        finally:
            await s.close()

    run(write_v1())
    if common_store.kind == "postgresql":
        for sql in (
            "DROP TABLE gearmill_nodes",
            "DROP INDEX gearmill_jobs_owner",
            "UPDATE gearmill_schema SET version = 1",
        ):
            common_store.sql(sql)
    else:
        from storekit import redis_client

        r = redis_client()
        p = common_store.prefix
        r.delete(p + "leases", p + "owners", p + "own:")
        r.set(p + "schema", 1)
        r.close()

    async def claim() -> None:
        caplog.clear()
        a, b = await opened(common_store), await opened(common_store)
        said = [r.getMessage() for r in caplog.records if "schema" in r.getMessage()]
        # an upgrade of existing data is a migration (the first open does it), said for
        # each version it passes on the way to the latest (Redis: only the last)
        from gearmill.server.store._base import SCHEMA_VERSION

        steps = [SCHEMA_VERSION] if common_store.kind == "redis" else range(2, SCHEMA_VERSION + 1)
        assert said == [f"store {a.url}: schema migrated to version {v}" for v in steps]
        try:
            assert await a.join("a#1", 30) is None
            assert await b.join("b#1", 30) is None
            got = await a.claim("a#1", 100) + await b.claim("b#1", 100)
            assert sorted(j.unique for _, j in got) == sorted(j.unique for j in jobs(7, "old"))
        finally:
            await a.close()
            await b.close()

    run(claim())


def test_jobs_stored_by_redis_schema_2_come_back_with_their_owners_and_fences(
    tmp_path: Path,
) -> None:
    """Redis's version 2 kept a lease "<owner> <fence>" for every job; version 3 keeps
    one only for a claimed job. Jobs written in the old layout load in order, each is
    claimed once (a claimed one with its next fence), and their holders' fenced removes
    still delete them."""
    from storekit import redis_client

    from gearmill.server.store._base import field_of, pack_job

    own_a, own_b, legacy = jobs(3, "a"), jobs(2, "b"), jobs(2, "legacy")
    for common in make_backend("redis", tmp_path):
        p = common.prefix
        r = redis_client()
        seq = 0
        # as version 2 wrote them: a#1's own jobs (fence 0), b#1's claimed (fence 2),
        # and jobs nobody holds (from version 1)
        for owner, fence, batch in (("a#1", 0, own_a), ("b#1", 2, own_b), ("", -1, legacy)):
            for j in batch:
                seq += 1
                f = field_of(j.function, j.unique)
                r.hset(p + "jobs", f, pack_job(0, j))
                r.zadd(p + "order", {f: seq})
                r.sadd(p + "own:" + owner, f)
                if fence >= 0:
                    r.hset(p + "leases", f, f"{owner} {fence}")
            r.sadd(p + "owners", owner)
        r.set(p + "seq", seq)
        r.set(p + "schema", 2)
        r.close()

        async def go(b: Backend = common) -> None:
            a, c = await opened(b), await opened(b)
            try:
                everything = own_a + own_b + legacy
                assert [j for _, j in await a.load(0, 100)] == everything
                assert await a.last_seq() == len(everything)
                # a#1 still runs: its fence-0 remove deletes its job
                a.owner = "a#1"
                await a.commit([], [(own_a[0].function, own_a[0].unique)])
                assert await a.count() == len(everything) - 1
                # b#1 is gone: c claims its jobs once, with the fence after 2, and the
                # jobs nobody held; not a#1's (it heartbeats)
                assert await a.join("a#1", 30) is None
                assert await c.join("c#1", 30) is None
                c.owner = "c#1"
                got = [j for _, j in await c.claim("c#1", 100)]
                assert sorted(j.unique for j in got) == sorted(j.unique for j in own_b + legacy)
                assert await c.claim("c#1", 100) == []
                assert {c.fences[(j.function, j.unique)] for j in own_b} == {3}
                # b#1's late remove is fenced out; the claimer's removes delete
                b1 = await opened(b)
                b1.owner = "b#1"
                b1.fences = {(j.function, j.unique): 2 for j in own_b}
                await b1.commit([], [(j.function, j.unique) for j in own_b])
                await b1.close()
                assert await c.count() == len(everything) - 1
                await c.commit([], [(j.function, j.unique) for j in got])
                await a.commit([], [(j.function, j.unique) for j in own_a[1:]])
                assert await c.count() == 0
                held = {owner: n for owner, _, n in await c.nodes()}
                assert held == {"a#1": 0, "c#1": 0}
                # new jobs are numbered after the old ones
                await a.commit(jobs(1, "new"), [])
                assert await a.last_seq() == len(everything) + 1
            finally:
                await a.close()
                await c.close()

        run(go())


def test_a_store_without_an_owner_removes_any_servers_job_and_its_count_follows(
    common_store: Backend,
) -> None:
    """Removes from a store with no owner (not a server sharing the store) delete the
    jobs whoever holds them: stored by a server, claimed by one, or held by nobody."""

    async def go() -> None:
        a, c, free = (
            await opened(common_store),
            await opened(common_store),
            await opened(common_store),
        )
        try:
            await free.commit(jobs(2, "nobody"), [])
            assert await a.join("a#1", 0.3) is None
            a.owner = "a#1"
            await a.commit(jobs(3, "a") + jobs(2, "gone"), [])
            await a.leave("a#1")
            assert await c.join("c#1", 30) is None
            c.owner = "c#1"
            assert await c.reap() == [("a#1", True)]
            claimed = await c.claim("c#1", 4)  # some of a#1's (and nobody's) jobs
            assert len(claimed) == 4
            assert await a.join("a#2", 30) is None
            a.owner = "a#2"
            await a.commit(jobs(2, "a2"), [])
            doomed = [claimed[0][1], *jobs(1, "a2")]
            await free.commit([], [(j.function, j.unique) for j in doomed])
            assert await free.count() == 9 - len(doomed)
            held = {owner: n for owner, _, n in await free.nodes()}
            assert held == {"a#2": 1, "c#1": 3}
            left = [j for _, j in await free.load(0, 100)]
            await free.commit([], [(j.function, j.unique) for j in left])
            assert await free.count() == 0
            held = {owner: n for owner, _, n in await free.nodes()}
            assert held == {"a#2": 0, "c#1": 0}
        finally:
            for s in (a, c, free):
                await s.close()

    run(go())


def test_schedules_changed_on_one_server_reach_the_others_sharing_the_store(
    common_store: Backend,
) -> None:
    """A schedule added, paused and removed through one server's admin commands is
    taken in by another server at its next sync, so it fires even if the first dies."""
    from gearmill.server import admin_policy
    from gearmill.server.broker import Broker, BrokerConfig
    from gearmill.server.policy import Policies, RetryConfig
    from gearmill.server.policy_store import PolicyStore

    async def go() -> None:
        servers = []
        for i in range(2):
            broker = Broker(BrokerConfig(handle_prefix=b"H:%d" % i), lambda: 1_700_000_000.0)
            policies = Policies(broker, RetryConfig())
            store = common_store.store()
            await store.open()
            keeper = PolicyStore(policies, store)
            await keeper.open()
            servers.append((policies, keeper, store))
        (p1, k1, _), (p2, k2, _) = servers

        async def synced(check: Any) -> None:
            for _ in range(100):  # the first server's writer, then the second's sync
                await asyncio.sleep(0.02)
                if k1._queue.empty():
                    break
            k2.sync_soon()
            for _ in range(200):
                await asyncio.sleep(0.02)
                if check():
                    return
            raise AssertionError("not synced")

        def admin(line: bytes) -> None:
            assert admin_policy.run(p1, line) == b"OK\r\n"

        try:
            admin(b"schedule add nightly report 30 2 * * * all")
            await synced(lambda: "nightly" in p2.scheduler.schedules)
            got = p2.scheduler.schedules["nightly"]
            assert (got.expr, got.spec.function, got.spec.data) == ("30 2 * * *", b"report", b"all")
            admin(b"schedule pause nightly")
            await synced(lambda: p2.scheduler.schedules["nightly"].paused)
            admin(b"schedule remove nightly")
            await synced(lambda: "nightly" not in p2.scheduler.schedules)
        finally:
            for _, keeper, store in servers:
                await keeper.close()
                await store.close()

    run(go())
