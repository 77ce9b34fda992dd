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
