"""What only one kind of store does: SQLite's single-server lock and bounded disk use,
Redis's AOF check."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from storekit import PrivateMariaDB, PrivatePostgres, PrivateRedis, run

from gearmill.server.store import StoredJob, StoreError, open_store


def test_a_second_server_on_the_same_sqlite_file_is_refused_naming_the_first_pid(
    tmp_path: Path,
) -> None:
    url = f"sqlite://{tmp_path}/queue.db"
    child = textwrap.dedent(
        f"""
        import asyncio, sys
        from gearmill.server.store import open_store

        async def main():
            s = open_store({url!r})
            await s.open()
            print("open", flush=True)
            sys.stdin.readline()  # hold the store until told (or killed)

        asyncio.run(main())
        """
    )
    first = subprocess.Popen(
        [sys.executable, "-c", child], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert first.stdout is not None
        assert first.stdout.readline() == b"open\n"
        with pytest.raises(StoreError) as err:
            run(open_store(url).open())
        text = str(err.value)
        assert f"pid {first.pid}" in text and "\n" not in text
    finally:
        first.kill()
        first.wait(10)

    # The kernel drops the lock of a killed server: the next one starts.
    async def reopen() -> int:
        s = open_store(url)
        await s.open()
        try:
            return await s.count()
        finally:
            await s.close()

    assert run(reopen()) == 0


def test_sqlite_gives_back_the_disk_of_deleted_jobs(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/queue.db"
    files = [tmp_path / "queue.db", tmp_path / "queue.db-wal"]

    def on_disk() -> int:
        return sum(f.stat().st_size for f in files if f.exists())

    async def main() -> tuple[int, int, int]:
        s = open_store(url)
        await s.open()
        try:
            jobs = [StoredJob(b"fn", b"%d" % i, os.urandom(100_000)) for i in range(400)]
            for i in range(0, 400, 40):
                await s.commit(jobs[i : i + 40], [])
            full = on_disk()
            await s.commit([], [(j.function, j.unique) for j in jobs])
            # Ordinary traffic goes on; housekeeping runs every few dozen commits.
            for i in range(200):
                await s.commit([StoredJob(b"fn", b"small%d" % i, b"x")], [])
            return full, on_disk(), await s.size_bytes()
        finally:
            await s.close()

    full, after, reported = run(main())
    assert full > 40_000_000
    assert after < 5_000_000, f"{after} bytes still used after deleting 40 MB of jobs"
    assert reported == after


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    import sqlite3

    async def main() -> None:
        s = open_store(f"sqlite://{tmp_path}/queue.db")
        await s.open()
        await s.close()

    run(main())
    con = sqlite3.connect(tmp_path / "queue.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


@pytest.mark.parametrize(
    ("args", "window"),
    [
        ((), "since its last RDB snapshot"),
        (("--appendonly", "yes", "--appendfsync", "everysec"), "the last second"),
        (("--appendonly", "yes", "--appendfsync", "always"), None),
    ],
)
def test_redis_warns_naming_the_loss_window_unless_appendfsync_always(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, args: tuple[str, ...], window: str | None
) -> None:
    redis = PrivateRedis(tmp_path, *args)
    try:

        async def main() -> None:
            s = open_store(redis.url)
            await s.open()
            await s.commit([StoredJob(b"fn", b"1", b"x")], [])
            await s.close()

        with caplog.at_level(logging.WARNING, logger="gearmill.store"):
            run(main())
    finally:
        redis.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if window is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and window in warnings[0] and "appendfsync always" in warnings[0]


def test_redis_with_appendfsync_always_keeps_commits_across_its_crash_and_the_store_recovers(
    tmp_path: Path,
) -> None:
    """A store outage: commits fail with one StoreError line while Redis is down, and the
    same store object works again once Redis is back (no reopen), with every job it had
    acknowledged before Redis was SIGKILLed."""
    args = ("--appendonly", "yes", "--appendfsync", "always")
    redis = PrivateRedis(tmp_path, *args)

    async def main() -> tuple[str, list[bytes]]:
        s = open_store(redis.url, connect_timeout=2)
        await s.open()
        try:
            await s.commit([StoredJob(b"fn", b"%d" % i, b"x") for i in range(100)], [])
            redis.kill()
            with pytest.raises(StoreError) as err:
                await s.commit([StoredJob(b"fn", b"lost", b"x")], [])
            redis.start()
            await s.commit([StoredJob(b"fn", b"after", b"x")], [(b"fn", b"0")])
            return str(err.value), [j.unique for _, j in await s.load(0, 1000)]
        finally:
            await s.close()

    try:
        error, uniques = run(main())
    finally:
        redis.close()
    assert f"127.0.0.1:{redis.port}" in error and "\n" not in error
    assert uniques == [b"%d" % i for i in range(1, 100)] + [b"after"]


def test_postgresql_killed_keeps_every_commit_and_the_store_recovers() -> None:
    """A PostgreSQL of the test's own on a free port, SIGKILLed with all its processes:
    commits fail with one StoreError line while it is down; once it is back (crash
    recovery from its WAL), the same store object commits again and has every job it
    acknowledged before the kill."""
    pg = PrivatePostgres()

    async def main() -> tuple[str, list[bytes]]:
        s = open_store(pg.url, connect_timeout=2)
        await s.open()
        try:
            await s.commit([StoredJob(b"fn", b"%d" % i, b"x") for i in range(100)], [])
            pg.kill()
            with pytest.raises(StoreError) as err:
                await s.commit([StoredJob(b"fn", b"lost", b"x")], [])
            pg.start()
            # The caller retries a failed group; the store reconnects by itself.
            for _attempt in range(20):
                try:
                    await s.commit([StoredJob(b"fn", b"after", b"x")], [(b"fn", b"0")])
                    break
                except StoreError:
                    await asyncio.sleep(0.2)
            return str(err.value), [j.unique for _, j in await s.load(0, 1000)]
        finally:
            await s.close()

    try:
        error, uniques = run(main())
    finally:
        pg.close()
    assert f"127.0.0.1:{pg.port}" in error and "\n" not in error
    assert uniques == [b"%d" % i for i in range(1, 100)] + [b"after"]


def test_redis_sequence_numbers_stay_exact_when_large(tmp_path: Path) -> None:
    """Scores and the counter are written as integers (a Lua number would be rounded)."""
    server = PrivateRedis(tmp_path)
    start = 2**52 - 10
    try:
        import redis

        r = redis.Redis(port=server.port)
        r.set("gearmill:seq", start)
        r.close()

        async def main() -> list[int]:
            s = open_store(server.url)
            await s.open()
            try:
                await s.commit([StoredJob(b"fn", b"%d" % i, b"x") for i in range(3)], [])
                return [seq for seq, _ in await s.load(start, 10)]
            finally:
                await s.close()

        assert run(main()) == [start + 1, start + 2, start + 3]
    finally:
        server.close()


def test_redis_commits_a_group_larger_than_one_argument_whole_and_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adds and removes travel a few to an argument (Redis refuses one over 512 MB): a
    group spread over many arguments is stored whole, in order, once, and removed."""
    from gearmill.server.store import _redis

    monkeypatch.setattr(_redis, "_FRAME_BYTES", 1000)
    server = PrivateRedis(tmp_path)
    try:

        async def main() -> list[bytes]:
            s = open_store(server.url)
            await s.open()
            try:
                jobs = [StoredJob(b"fn", b"%d" % i, b"x" * (i * 37 % 1500)) for i in range(60)]
                await s.commit(jobs + jobs[:5], [])
                assert await s.count() == 60
                stored = [j.data for _, j in await s.load(0, 100)]
                keys = [(b"fn", b"%d" % i) for i in range(200)]  # 140 never stored
                await s.commit([], keys)
                assert await s.count() == 0
                return stored
            finally:
                await s.close()

        assert run(main()) == [b"x" * (i * 37 % 1500) for i in range(60)]
    finally:
        server.close()


def test_mariadb_killed_keeps_every_commit_and_the_store_recovers() -> None:
    """The same outage for a MariaDB of the test's own: SIGKILLed, InnoDB recovers from
    its redo log, and the store object commits again with nothing acknowledged lost."""
    maria = PrivateMariaDB()

    async def main() -> tuple[str, list[bytes]]:
        s = open_store(maria.url, connect_timeout=2)
        await s.open()
        try:
            await s.commit([StoredJob(b"fn", b"%d" % i, b"x") for i in range(100)], [])
            maria.kill()
            with pytest.raises(StoreError) as err:
                await s.commit([StoredJob(b"fn", b"lost", b"x")], [])
            maria.start()
            for _attempt in range(20):
                try:
                    await s.commit([StoredJob(b"fn", b"after", b"x")], [(b"fn", b"0")])
                    break
                except StoreError:
                    await asyncio.sleep(0.2)
            return str(err.value), [j.unique for _, j in await s.load(0, 1000)]
        finally:
            await s.close()

    try:
        error, uniques = run(main())
    finally:
        maria.close()
    assert f"127.0.0.1:{maria.port}" in error and "\n" not in error
    assert uniques == [b"%d" % i for i in range(1, 100)] + [b"after"]
