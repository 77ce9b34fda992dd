"""The dead-letter methods every store keeps (the dead set's durable side), against
real SQLite, PostgreSQL, MariaDB and Redis."""

from __future__ import annotations

from storekit import Backend, backend_fixture, durable_fixture, run  # noqa: F401

from gearmill.server.store import DeadLetter, Store, StoredJob


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
