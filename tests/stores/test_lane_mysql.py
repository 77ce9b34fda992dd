"""MariaDB's lane (store/_mysql_lane.py), against the real server: what it writes is
what `commit` writes, a store that loses it gets it back, and a connection it cannot
make as asyncmy would leaves it off."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncmy
import pytest
from storekit import MY_ADMIN, Backend, _my, make_backend, run

from gearmill.server.store import Store, StoredJob, open_store
from gearmill.server.store._mysql_lane import scramble

ODD = StoredJob(
    b"f\x00\xff'\"\\", b"u\x00\xfe %s ?", b"\x00\xff" * 300 + b"\xc3(", 2, 1 << 40, b"r\xff", 3
)


@pytest.fixture(name="my")
def my_fixture(tmp_path: Path) -> Iterator[Backend]:
    yield from make_backend("mysql", tmp_path)


async def _through_lane(store: Store, job: StoredJob) -> str | None:
    lane = store.lane
    assert lane is not None and lane.ready()
    done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
    lane.send(job, done.set_result)
    return await asyncio.wait_for(done, 30)


def _row(my: Backend, unique: bytes) -> tuple[Any, ...]:
    rows = my.sql(
        "SELECT lease_owner, lease_expires, fence, created FROM gearmill_jobs"
        f" WHERE unique_key = x'{unique.hex()}'"
    )
    assert len(rows) == 1
    return tuple(rows[0])


def test_a_lone_job_through_the_lane_is_the_row_commit_writes(my: Backend) -> None:
    other = StoredJob(ODD.function, b"other", ODD.data, ODD.priority, ODD.when, ODD.reducer, 3)
    # the lane's second execute leaves the parameters' types to the server's memory
    second = StoredJob(b"g", b"", b"", 0, -5, b"", 1 << 30)

    async def go() -> list[tuple[int, StoredJob]]:
        store = my.store()
        await store.open()
        try:
            assert await _through_lane(store, ODD) is None
            assert await _through_lane(store, second) is None
            await store.commit([other], [])
            return await store.load(0, 10)
        finally:
            await store.close()

    before = int(time.time())
    loaded = run(go())
    assert [job for _, job in loaded] == [ODD, second, other]
    lane_row, commit_row = _row(my, ODD.unique), _row(my, other.unique)
    assert lane_row[:3] == commit_row[:3] == (None, None, 0)
    assert before <= lane_row[3] <= commit_row[3] <= int(time.time())


def test_the_lane_killed_by_the_server_fails_its_commit_and_the_next_commit_brings_it_back(
    my: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gearmill.store")

    async def go() -> None:
        store = my.store()
        await store.open()
        blocker = await asyncmy.connect(
            host="127.0.0.1", port=3306, user="root", database=my.db, autocommit=False
        )
        try:
            lane = store.lane
            assert lane is not None and lane.ready()
            # an uncommitted row of the same key holds the lane's INSERT mid-statement
            async with blocker.cursor() as cur:
                await cur.execute(
                    "INSERT INTO gearmill_jobs (function, unique_key, data, priority, created)"
                    " VALUES (%s, %s, '', 1, 0)",
                    (ODD.function, ODD.unique),
                )
            done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
            lane.send(ODD, done.set_result)
            # until the server is writing its row, where the lock holds it until the
            # blocker's rollback. The processlist is live; innodb_trx is a cache that is
            # not refreshed while anyone reads it more often than every 0.1 s
            for _ in range(200):
                rows = await _my(
                    "SELECT 1 FROM information_schema.processlist"
                    f" WHERE id = {lane.thread_id} AND command = 'Execute' AND state = 'Update'"
                )
                if rows:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the lane's INSERT never reached the row's lock")
            assert not done.done()
            await _my(f"KILL {lane.thread_id}")
            why = await asyncio.wait_for(done, 30)
            assert why is not None and "\n" not in why
            assert not lane.ready()
            await blocker.rollback()

            await store.commit([StoredJob(b"f", b"after", b"", 1, 0, b"", 0)], [])
            for _ in range(200):  # the new lane connects in the background
                if store.lane is not None and store.lane is not lane and store.lane.ready():
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail(f"no new lane: {[r.getMessage() for r in caplog.records]}")
            assert await _through_lane(store, ODD) is None
            assert [j for _, j in await store.load(0, 10)][-1] == ODD
        finally:
            blocker.close()
            await store.close()

    run(go())


def test_the_urls_password_opens_the_lane_and_is_never_logged(
    my: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    user = "gm_" + uuid.uuid4().hex[:10]
    password = "p@ss:w/rd %" + uuid.uuid4().hex[:6]
    run(_my(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'"))
    try:
        run(_my(f"GRANT ALL ON {my.db}.* TO '{user}'@'127.0.0.1'"))
        base = MY_ADMIN.rpartition("@")[2].rpartition("/")[0]
        url = f"mysql://{user}:{quote(password, safe='')}@{base}/{my.db}"

        async def go() -> list[tuple[int, StoredJob]]:
            store = open_store(url)
            await store.open()
            try:
                assert await _through_lane(store, ODD) is None
                return await store.load(0, 10)
            finally:
                await store.close()

        with caplog.at_level(logging.DEBUG):
            loaded = run(go())
        assert [job for _, job in loaded] == [ODD]
        assert caplog.records
        for r in caplog.records:
            text = r.getMessage()
            assert password not in text and quote(password, safe="") not in text
    finally:
        run(_my(f"DROP USER '{user}'@'127.0.0.1'"))


def test_a_password_changed_under_the_lane_turns_it_off_for_good_without_logging_it(
    my: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """The password changed after asyncmy's connection was made: the lane's new
    connection is refused once, says so in one line without the password, and is not
    tried again (every second, after each commit, it would only fill the log)."""
    user = "gm_" + uuid.uuid4().hex[:10]
    password = "first" + uuid.uuid4().hex[:6]
    run(_my(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'"))
    try:
        run(_my(f"GRANT ALL ON {my.db}.* TO '{user}'@'127.0.0.1'"))
        base = MY_ADMIN.rpartition("@")[2].rpartition("/")[0]
        store = open_store(f"mysql://{user}:{password}@{base}/{my.db}")

        def said() -> list[str]:
            return [r.getMessage() for r in caplog.records if "asyncmy" in r.getMessage()]

        async def go() -> list[tuple[int, StoredJob]]:
            await store.open()
            try:
                lane = store.lane
                assert lane is not None
                await _my(f"ALTER USER '{user}'@'127.0.0.1' IDENTIFIED BY 'second'")
                lane.abort("test")
                await store.commit([ODD], [])  # asyncmy's connection is still open
                for _ in range(200):  # the new lane is tried in the background
                    if said():
                        break
                    await asyncio.sleep(0.05)
                await asyncio.sleep(1.1)  # past the second between two tries
                await store.commit([StoredJob(b"f", b"later", b"", 1, 0, b"", 0)], [])
                await asyncio.sleep(0.2)
                assert store.lane is lane and not lane.ready()
                return await store.load(0, 10)
            finally:
                await store.close()

        with caplog.at_level(logging.INFO, logger="gearmill.store"):
            loaded = run(go())
        assert [j.unique for _, j in loaded] == [ODD.unique, b"later"]
        lines = said()
        assert len(lines) == 1 and "Access denied" in lines[0] and password not in lines[0]
    finally:
        run(_my(f"DROP USER '{user}'@'127.0.0.1'"))


@pytest.mark.parametrize("plugin", ["mysql_native_password", "caching_sha2_password"])
def test_the_lanes_password_scramble_is_asyncmys(plugin: str) -> None:
    """MariaDB here has no caching_sha2_password (MySQL 8's default): its fast path's
    answer is checked against the driver the store connects with."""
    from asyncmy import auth

    theirs = {
        "mysql_native_password": auth.scramble_native_password,
        "caching_sha2_password": auth.scramble_caching_sha2,
    }[plugin]
    for password in ("", "p", "pässword with spaces", "x" * 100):
        salt = os.urandom(20)
        assert scramble(plugin, password, salt) == theirs(password.encode(), salt)
