"""One contract every store keeps, run against real SQLite, PostgreSQL, MariaDB and Redis."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from storekit import Backend, backend_fixture, durable_fixture, network_fixture, run  # noqa: F401

from gearmill.server.store import SCHEMA_VERSION, Store, StoredJob, StoreError
from gearmill.server.store._redis import SCHEMA as REDIS_SCHEMA


def job(n: int, **kw: Any) -> StoredJob:
    return StoredJob(kw.pop("function", b"fn"), b"u%d" % n, b"data %d" % n, **kw)


async def load_all(store: Store, page: int = 1000) -> list[tuple[int, StoredJob]]:
    out: list[tuple[int, StoredJob]] = []
    after = 0
    for _ in range(100_000):
        rows = await store.load(after, page)
        if not rows:
            return out
        out.extend(rows)
        after = rows[-1][0]
    raise AssertionError("load never ended")


def with_store(b: Backend, body: Any) -> Any:
    async def main() -> Any:
        store = b.store()
        await store.open()
        try:
            return await body(store)
        finally:
            await store.close()

    return run(main())


def test_add_remove_and_load_in_submission_order(backend: Backend) -> None:
    async def body(s: Store) -> None:
        assert isinstance(s, Store) and s.durable == (backend.kind != "memory")
        await s.ping()  # answers while the store is there (readiness probes)
        await s.commit([job(i) for i in range(5)], [])
        await s.commit([], [(b"fn", b"u1"), (b"fn", b"u3")])
        await s.commit([job(5)], [(b"fn", b"absent")])
        rows = await load_all(s)
        assert [j.unique for _, j in rows] == [b"u0", b"u2", b"u4", b"u5"]
        seqs = [q for q, _ in rows]
        assert seqs == sorted(seqs) and len(set(seqs)) == 4
        # Keyset pages of 1 give the same jobs in the same order.
        assert await load_all(s, page=1) == rows
        assert await s.load(seqs[-1], 10) == []
        assert await s.count() == 4

    with_store(backend, body)


def test_paging_counts_loads_one_function_and_priority_and_finds_keys(backend: Backend) -> None:
    async def body(s: Store) -> None:
        assert await s.last_seq() == 0
        jobs = [job(i, priority=i % 3, function=b"fa" if i < 9 else b"fb") for i in range(12)]
        await s.commit(jobs, [])
        await s.commit([], [(b"fa", b"u4")])
        rows = await load_all(s)
        seqs = [q for q, _ in rows]
        top = await s.last_seq()
        assert top == seqs[-1]
        # counts per function and priority in a range of sequence numbers
        assert sorted(await s.queued_counts(0, top)) == [
            (b"fa", 0, 3),
            (b"fa", 1, 2),
            (b"fa", 2, 3),
            (b"fb", 0, 1),
            (b"fb", 1, 1),
            (b"fb", 2, 1),
        ]
        # (u2, u6]: u3 and u6 (high), u5 (low); u4 is gone
        assert sorted(await s.queued_counts(seqs[2], seqs[5])) == [(b"fa", 0, 2), (b"fa", 2, 1)]
        # one function and priority, in submission order, from a cursor, in pages
        got = await s.load_queued(b"fa", 1, 0, 10)
        assert [j.unique for _, j in got] == [b"u1", b"u7"]
        first = await s.load_queued(b"fa", 2, 0, 1)
        assert [j.unique for _, j in first] == [b"u2"]
        rest = await s.load_queued(b"fa", 2, first[0][0], 10)
        assert [j.unique for _, j in rest] == [b"u5", b"u8"]
        assert await s.load_queued(b"fc", 0, 0, 10) == []
        # found past thousands of other jobs (stores that read the order in windows)
        await s.commit([job(100 + i, function=b"fc") for i in range(6000)], [])
        await s.commit([job(7000 + i, function=b"fd") for i in range(3)], [])
        got = await s.load_queued(b"fd", 1, 0, 2)
        assert [j.unique for _, j in got] == [b"u7000", b"u7001"]
        got = await s.load_queued(b"fd", 1, got[-1][0], 5)
        assert [j.unique for _, j in got] == [b"u7002"]
        wanted = [(b"fa", b"u0"), (b"fa", b"u4"), (b"fb", b"u9"), (b"fb", b"u0")]
        assert await s.find(wanted) == [(b"fa", b"u0"), (b"fb", b"u9")]
        assert await s.find([]) == []

    with_store(backend, body)


def test_a_group_of_thousands_is_one_commit(backend: Backend) -> None:
    n = 5000

    async def body(s: Store) -> None:
        await s.commit([job(i) for i in range(n)], [])
        assert await s.count() == n
        rows = await load_all(s, page=700)
        assert [j.unique for _, j in rows] == [b"u%d" % i for i in range(n)]
        await s.commit([job(n)], [(b"fn", b"u%d" % i) for i in range(n)])
        assert [j.unique for _, j in await load_all(s)] == [b"u%d" % n]

    with_store(backend, body)


def test_every_field_round_trips(backend: Backend) -> None:
    jobs = [
        StoredJob(b"high", b"h", b"x", priority=0),
        StoredJob(b"normal", b"n", b"y", priority=1),
        StoredJob(b"low", b"l", b"z", priority=2),
        StoredJob(b"epoch", b"e", b"at", when=1_900_000_000),
        StoredJob(b"reduce", b"r", b"map", reducer=b"sum", attempts=3),
        # Bytes that are not UTF-8, NULs and the separators gearmand's keys use.
        StoredJob(b"f\xff-\x00:x", b"\x00u-\xfe:1", b"\x00\x01\xff", priority=2),
        StoredJob(b"empty", b"d", b""),
    ]

    async def body(s: Store) -> None:
        await s.commit(jobs, [])
        assert [j for _, j in await load_all(s)] == jobs

    with_store(backend, body)


def test_big_payloads_with_nuls(backend: Backend) -> None:
    # Random bytes (no compression can hide them) with NULs inside, 5 MiB and a bit.
    big = os.urandom(5 << 20).replace(b"\x07", b"\x00") + b"\x00" * 1000
    other = b"\x00" * (3 << 20)

    async def body(s: Store) -> None:
        await s.commit([StoredJob(b"big", b"1", big), StoredJob(b"big", b"2", other)], [])
        rows = await load_all(s)
        assert [j.data for _, j in rows] == [big, other]
        assert await s.size_bytes() >= len(big)

    with_store(backend, body)


def test_adding_a_stored_key_again_changes_nothing(backend: Backend) -> None:
    async def body(s: Store) -> None:
        await s.commit([job(1), job(2)], [])
        before = await load_all(s)
        again = StoredJob(b"fn", b"u1", b"second submission", priority=0)
        await s.commit([again, job(3)], [])
        await s.commit([again, again], [])
        rows = await load_all(s)
        assert rows[:2] == before
        assert [j.unique for _, j in rows] == [b"u1", b"u2", b"u3"]
        assert await s.count() == 3

    with_store(backend, body)


def test_removed_and_submitted_again_in_one_group_is_stored_anew(backend: Backend) -> None:
    async def body(s: Store) -> None:
        await s.commit([job(1), job(2)], [])
        fresh = StoredJob(b"fn", b"u1", b"new data")
        await s.commit([fresh], [(b"fn", b"u1")])
        rows = await load_all(s)
        assert [j for _, j in rows] == [job(2), fresh]

    with_store(backend, body)


def test_a_bad_priority_is_refused_and_nothing_is_written(backend: Backend) -> None:
    async def body(s: Store) -> None:
        with pytest.raises(StoreError, match="priority"):
            await s.commit([job(1), job(2, priority=7)], [])
        assert await s.count() == 0

    with_store(backend, body)


def test_closing_and_reopening_keeps_everything(durable: Backend) -> None:
    jobs = [job(i, priority=i % 3, when=i * 100) for i in range(300)]

    async def fill(s: Store) -> None:
        await s.commit(jobs, [])
        await s.commit([], [(b"fn", b"u7")])

    with_store(durable, fill)
    rows = with_store(durable, load_all)
    assert [j for _, j in rows] == [j for j in jobs if j.unique != b"u7"]


def test_a_commit_survives_sigkill_right_after_it_returns(durable: Backend) -> None:
    child = textwrap.dedent(
        f"""
        import asyncio, os, signal
        from gearmill.server.store import StoredJob, open_store

        async def main():
            # MariaDB's owner lease: the next open waits out the killed owner's (short)
            s = open_store({durable.url!r}, lease=0.5)
            await s.open()
            for g in range(5):
                await s.commit([StoredJob(b"fn", b"%d-%d" % (g, i), b"x" * 100)
                                for i in range(200)], [(b"fn", b"0-7")] if g else [])
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
        """
    )
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    rows = with_store(durable, load_all)
    expected = [b"%d-%d" % (g, i) for g in range(5) for i in range(200) if (g, i) != (0, 7)]
    assert [j.unique for _, j in rows] == expected


def test_an_unreachable_store_is_one_line_naming_the_url_without_password(
    network: Backend,
) -> None:
    # A port nothing listens on: bind one, then close it.
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = {
        "postgresql": f"postgresql://gm:s3cretpw@127.0.0.1:{port}/db",
        "mysql": f"mysql://gm:s3cretpw@127.0.0.1:{port}/db",
        "redis": f"redis://:s3cretpw@127.0.0.1:{port}/0",
    }[network.kind]
    from gearmill.server.store import open_store

    store = open_store(url, connect_timeout=3)
    assert "s3cretpw" not in store.url
    with pytest.raises(StoreError) as err:
        run(store.open())
    text = str(err.value)
    assert "\n" not in text
    assert "s3cretpw" not in text
    assert f"127.0.0.1:{port}" in text and "***" in text
    assert "start" in text  # the fix


def test_sqlite_in_a_folder_that_cannot_exist_is_one_line(tmp_path: Any) -> None:
    (tmp_path / "file").write_text("not a folder")
    from gearmill.server.store import open_store

    store = open_store(f"sqlite://{tmp_path}/file/queue.db")
    with pytest.raises(StoreError, match="cannot create folder"):
        run(store.open())


def _schema(b: Backend) -> tuple[int, set[str]]:
    if b.kind == "redis":
        r = __import__("storekit").redis_client(b.url.split("?")[0])
        try:
            return int(r.get(b.prefix + "schema")), set()
        finally:
            r.close()
    version = b.sql("SELECT version FROM gearmill_schema")[0][0]
    if b.kind == "sqlite":
        tables = {r[0] for r in b.sql("SELECT name FROM sqlite_master WHERE type = 'table'")}
    else:
        schema = "current_schema()" if b.kind == "postgresql" else "DATABASE()"
        tables = {
            r[0]
            for r in b.sql(
                f"SELECT table_name FROM information_schema.tables WHERE table_schema = {schema}"
            )
        }
    return int(version), tables


def schema_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the store said about its schema (then forgotten, for the next look)."""
    said = [r.getMessage() for r in caplog.records if r.name == "gearmill.store"]
    caplog.clear()
    return [line for line in said if "schema" in line]


def test_migrations_from_an_empty_database_and_a_newer_schema_is_refused(
    durable: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gearmill.store")
    with_store(durable, lambda s: s.count())
    version, tables = _schema(durable)
    # Redis versions its key layout apart from the SQL stores' tables
    current = REDIS_SCHEMA if durable.kind == "redis" else SCHEMA_VERSION
    assert version == current
    # a new store says it is new, in one line: no "migrated" for data that was never there
    assert schema_lines(caplog) == [
        f"store {durable.store().url}: created a new queue, schema version {current}"
    ]
    if durable.kind != "redis":
        assert {"gearmill_jobs", "gearmill_dead_letters", "gearmill_schedules"} <= tables
        columns = {
            "sqlite": "SELECT lease_owner, lease_expires, fence, attempts FROM gearmill_jobs",
            "postgresql": "SELECT lease_owner, lease_expires, fence, attempts FROM gearmill_jobs",
            "mysql": "SELECT lease_owner, lease_expires, fence, attempts FROM gearmill_jobs",
        }[durable.kind]
        assert durable.sql(columns) == []
    # Opening again migrates nothing (and says nothing about it) and keeps the data.
    with_store(durable, lambda s: s.commit([job(1)], []))
    assert with_store(durable, lambda s: s.count()) == 1
    assert schema_lines(caplog) == []
    # A database written by a newer gearmill is refused, not damaged.
    if durable.kind == "redis":
        r = __import__("storekit").redis_client(durable.url.split("?")[0])
        r.set(durable.prefix + "schema", current + 1)
        r.close()
    else:
        durable.sql(f"UPDATE gearmill_schema SET version = {current + 1}")
    with pytest.raises(StoreError, match="newer gearmill"):
        with_store(durable, lambda s: s.count())


def test_the_url_shown_hides_the_password(backend: Backend) -> None:
    s = backend.store()
    assert s.url == backend.url  # no password in these: shown as given
