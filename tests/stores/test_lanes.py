"""The lane (a store's own connection for a job committed alone, store/_base.py `Lane`),
against each real store that has one: what it writes is what `commit` writes, a broken
connection is reported once and comes back, and a URL it does not handle leaves the
store committing everything through its driver."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from storekit import Backend, PrivatePostgres, make_backend, redis_client, run
from test_contract import load_all

from gearmill.server.store import Lane, Store, StoredJob
from gearmill.server.store._mysql_lane import MySQLLane

LANES = ["postgresql", "mysql", "redis"]


@pytest.fixture(params=LANES, name="lanes")
def lanes_fixture(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    yield from make_backend(request.param, tmp_path)


async def send(lane: Lane, job: StoredJob) -> str | None:
    """Send one job through the lane; what `done` was called with (once)."""
    loop = asyncio.get_running_loop()
    calls: list[str | None] = []
    fut: asyncio.Future[None] = loop.create_future()

    def done(why: str | None) -> None:
        calls.append(why)
        if not fut.done():
            fut.set_result(None)

    lane.send(job, done)
    await asyncio.wait_for(fut, 10)
    await asyncio.sleep(0.05)  # a second call would come in this time
    assert len(calls) == 1, calls
    return calls[0]


async def ready_lane(store: Store) -> Lane:
    """The store's lane once it is ready (it connects in open, again after a failure)."""
    for _ in range(500):
        lane = store.lane
        if lane is not None and lane.ready():
            return lane
        await asyncio.sleep(0.01)
    raise AssertionError(f"{store.url}: the lane never became ready")


async def kill_lane(b: Backend, store: Store) -> None:
    """Close the lane's connection from the server's side."""
    if b.kind == "postgresql":
        await asyncio.to_thread(
            b.sql,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'gearmill-lone' AND datname = current_database()",
        )
    elif b.kind == "mysql":
        lane = store.lane
        assert isinstance(lane, MySQLLane)  # the server's id of its connection
        await asyncio.to_thread(b.sql, f"KILL {lane.thread_id}")
    elif b.kind == "redis":
        # by its address: the shared Redis holds other tests' lanes, all named alike
        lane = store.lane
        assert lane is not None
        host, port = lane._transport.get_extra_info("sockname")[:2]  # type: ignore[attr-defined]
        r = redis_client()
        try:
            assert (
                await asyncio.to_thread(r.client_kill_filter, _type=None, addr=f"{host}:{port}")
                == 1
            )
        finally:
            r.close()
    else:
        raise AssertionError(b.kind)
    for _ in range(500):
        lane = store.lane
        if lane is None or not lane.ready():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the lane did not notice its connection closed")


def test_a_lone_job_is_stored_as_commit_stores_it(lanes: Backend) -> None:
    async def main() -> None:
        store = lanes.store()
        await store.open()
        try:
            lane = await ready_lane(store)
            odd = StoredJob(
                b"f\0n", b"u\0\xff1", bytes(range(256)) * 40, 0, 1_900_000_000, b"red", 3
            )
            assert await send(lane, odd) is None
            plain = StoredJob(b"fn", b"u2", b"two")
            await store.commit([plain], [])
            assert await send(lane, StoredJob(b"fn", b"u3", b"")) is None
            # an add of a key that is stored changes nothing (gearmand's coalescing)
            assert await send(lane, StoredJob(b"f\0n", b"u\0\xff1", b"other data")) is None
            rows = await load_all(store)
            assert [j for _, j in rows] == [odd, plain, StoredJob(b"fn", b"u3", b"")]
            assert await store.count() == 3
            await store.commit([], [(b"f\0n", b"u\0\xff1")])
            assert [j.unique for _, j in await load_all(store)] == [b"u2", b"u3"]
        finally:
            await store.close()

    run(main())


def test_a_broken_lane_is_reported_once_and_reconnected(lanes: Backend) -> None:
    async def main() -> None:
        store = lanes.store()
        await store.open()
        try:
            await ready_lane(store)
            await kill_lane(lanes, store)
            # the driver's commit still works, and brings the lane back
            await store.commit([StoredJob(b"fn", b"a", b"1")], [])
            lane = await ready_lane(store)
            assert await send(lane, StoredJob(b"fn", b"b", b"2")) is None
            # cut off in flight (the writer's watchdog): one call, with the reason
            calls: list[str | None] = []
            lane.send(StoredJob(b"fn", b"c", b"3"), calls.append)
            lane.abort("no answer in 10 s")
            await asyncio.sleep(0.1)
            assert calls == ["no answer in 10 s"] and not lane.ready()
            await store.commit([StoredJob(b"fn", b"d", b"4")], [])
            uniques = {j.unique for _, j in await load_all(store)}
            assert {b"a", b"b", b"d"} <= uniques <= {b"a", b"b", b"c", b"d"}
        finally:
            await store.close()

    run(main())


UNHANDLED = {
    "postgresql": "target_session_attrs=any",
    "mysql": "connect_timeout=5",
    "redis": "socket_keepalive=true",
}


def test_a_url_the_lane_does_not_take_leaves_commits_to_the_driver(
    lanes: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    sep = "&" if "?" in lanes.url else "?"
    url = f"{lanes.url}{sep}{UNHANDLED[lanes.kind]}"

    async def main() -> None:
        store = Backend(lanes.kind, url, lanes.tmp).store()
        with caplog.at_level(logging.INFO, logger="gearmill.store"):
            await store.open()
        try:
            assert store.lane is None
            await store.commit([StoredJob(b"fn", b"a", b"1")], [])
            assert [j.unique for _, j in await load_all(store)] == [b"a"]
        finally:
            await store.close()

    run(main())
    assert any("lone jobs commit through" in r.getMessage() for r in caplog.records)


def test_the_postgresql_lane_takes_tls_when_the_server_offers_it() -> None:
    """sslmode prefer (the default): asyncpg encrypts when the server has TLS, and so
    must the lane, never a plain connection beside an encrypted one."""
    pg = PrivatePostgres(tls=True)
    try:
        b = Backend("postgresql", pg.url, Path(pg.folder))

        async def main() -> None:
            store = b.store()
            await store.open()
            try:
                lane = await ready_lane(store)
                assert await send(lane, StoredJob(b"fn", b"t", b"over tls")) is None
                assert [j.data for _, j in await load_all(store)] == [b"over tls"]
                rows = await asyncio.to_thread(
                    b.sql,
                    "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
                    " WHERE a.application_name = 'gearmill-lone'",
                )
                assert [r[0] for r in rows] == [True]
            finally:
                await store.close()

        run(main())
    finally:
        pg.close()
