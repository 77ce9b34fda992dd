"""The dead-letter and schedule methods every store keeps (the durable side of the
dead set and the recurring jobs), against real SQLite, PostgreSQL, MariaDB and Redis."""

from __future__ import annotations

import pytest
from storekit import Backend, backend_fixture, durable_fixture, run  # noqa: F401

from gearmill.server.store import DeadLetter, Store, StoredJob, StoredSchedule, StoreError


def dead(n: int, **kw: object) -> DeadLetter:
    job = StoredJob(b"fn", b"u%d" % n, b"data\x00%d" % n, attempts=n, **kw)  # type: ignore[arg-type]
    return DeadLetter(job, f"exception: boom {n}\nline 2", 1_700_000_000 + n)


def test_dead_letters_are_kept_listed_in_order_and_removed(backend: Backend) -> None:
    async def main() -> None:
        store: Store = backend.store()
        await store.open()
        try:
            ids = await store.add_dead([dead(1), dead(2, priority=0, when=5, reducer=b"r")])
            ids += await store.add_dead([dead(3)])
            assert ids == sorted(ids) and len(set(ids)) == 3
            rows = await store.list_dead(0, 100)
            assert rows == [
                (ids[0], dead(1)),
                (ids[1], dead(2, priority=0, when=5, reducer=b"r")),
                (ids[2], dead(3)),
            ]
            assert await store.list_dead(ids[0], 1) == [(ids[1], rows[1][1])]
            await store.remove_dead([ids[1], 999_999])
            assert [i for i, _ in await store.list_dead(0, 100)] == [ids[0], ids[2]]
            assert await store.add_dead([]) == []
            # dead letters are not jobs: nothing to replay
            assert await store.load(0, 10) == []
        finally:
            await store.close()

    run(main())


def test_dead_letters_survive_a_reopen(durable: Backend) -> None:
    async def main() -> None:
        store = durable.store()
        await store.open()
        (i,) = await store.add_dead([dead(7)])
        await store.close()
        store = durable.store()
        await store.open()
        try:
            assert await store.list_dead(0, 10) == [(i, dead(7))]
        finally:
            await store.close()

    run(main())


def test_schedules_are_put_replaced_listed_and_removed(backend: Backend) -> None:
    nightly = StoredSchedule(
        "nightly", b"report", "30 2 * * *", b"all\x00x", 2, True, 1_700_000_000
    )
    tick = StoredSchedule("tick", b"cleanup", "*/5 * * * *")

    async def main() -> None:
        store: Store = backend.store()
        await store.open()
        try:
            await store.put_schedule(tick)
            await store.put_schedule(nightly)
            assert await store.list_schedules() == [nightly, tick]
            paused = StoredSchedule("tick", b"cleanup", "*/5 * * * *", b"", 1, False, 60, 30)
            await store.put_schedule(paused)
            assert await store.list_schedules() == [nightly, paused]
            assert await store.remove_schedule("nightly") is True
            assert await store.remove_schedule("nightly") is False
            assert await store.list_schedules() == [paused]
            with pytest.raises(StoreError, match="schedule priority must be 0, 1 or 2"):
                await store.put_schedule(StoredSchedule("bad", b"f", "@daily", priority=7))
        finally:
            await store.close()

    run(main())


def test_the_dead_set_and_schedules_survive_a_restart_through_the_store(durable: Backend) -> None:
    from gearmill.protocol.packets import PacketType as T
    from gearmill.server import admin_policy
    from gearmill.server.broker import Broker, BrokerConfig, Peer
    from gearmill.server.policy import Policies, RetryConfig, RetryRule
    from gearmill.server.policy_store import PolicyStore
    from gearmill.server.sink import BufferSink

    def server() -> tuple[Broker, Policies]:
        broker = Broker(BrokerConfig(handle_prefix=b"H:t"), lambda: 1_700_000_000.0)
        return broker, Policies(broker, RetryConfig(default=RetryRule(max_attempts=1)))

    def admin(p: Policies, line: bytes) -> bytes:
        reply = admin_policy.run(p, line)
        assert reply is not None
        return reply

    async def first_run() -> None:
        broker, policies = server()
        store = durable.store()
        await store.open()
        keeper = PolicyStore(policies, store)
        await keeper.open()
        assert admin(policies, b"schedule add nightly report 30 2 * * * all") == b"OK\r\n"
        c = broker.connect(Peer(1, "127.0.0.1", sink=BufferSink()))
        for n in (1, 2):
            broker.handle(c, T.SUBMIT_JOB_BG, [b"resize", b"img-%d" % n, b"data %d" % n])
            w = broker.connect(Peer(10 + n, "127.0.0.1", sink=BufferSink()))
            broker.handle(w, T.CAN_DO, [b"resize"])
            broker.handle(w, T.GRAB_JOB, [])
            broker.disconnect(w)  # worker lost, max_attempts 1: dead
        assert admin(policies, b"dead purge H:t:1") == b"OK 1\n"
        await keeper.close()
        await store.close()

    async def second_run() -> None:
        broker, policies = server()
        store = durable.store()
        await store.open()
        keeper = PolicyStore(policies, store)
        await keeper.open()
        (dead,) = policies.dead.jobs.values()
        assert (dead.unique, dead.data, dead.attempts, dead.reason) == (
            b"img-2",
            b"data 2",
            1,
            "lost",
        )
        assert policies.scheduler.schedules["nightly"].expr == "30 2 * * *"
        assert admin(policies, b"dead requeue all") == b"OK 1\n"
        assert admin(policies, b"schedule remove nightly") == b"OK\r\n"
        await keeper.close()
        # (on a shared store the job is queued once the store's letter is removed)
        assert broker.job_rows()[0][1] == b"img-2"
        assert await store.list_dead(0, 10) == [] and await store.list_schedules() == []
        await store.close()

    run(first_run())
    run(second_run())
