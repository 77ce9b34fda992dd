"""What is Redis's own in its lane (store/_redis_lane.py), against real Redis servers: the
keys a lone job leaves are byte for byte those `commit` leaves, a flushed script cache
loses no job, a connection closed mid-commit is reported, and the lane connects as
redis-py does (password, ACL user, database number) or not at all."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from storekit import Backend, PrivateRedis, redis_client, run
from test_contract import load_all
from test_lanes import ready_lane, send

from gearmill.server.store import Store, StoredJob, open_store
from gearmill.server.store._redis_lane import Unsupported, lane_target

JOBS = [
    StoredJob(b"f\0n", b"u\0\xff1", bytes(range(256)) * 40, 0, 1_900_000_000, b"red", 3),
    StoredJob(b"fn", b"u2", b"two", 2),
    StoredJob(b"fn", b"", b""),
]
# each differs from the one before in one value of the packed header (the lane packs a
# header again only when one changes), or in how many digits its function's length has
SHAPES = [
    StoredJob(b"fn", b"u1", b"d"),
    StoredJob(b"fn", b"u2", b"d", 0),
    StoredJob(b"fn", b"u3", b"d", 0, 1_900_000_000),
    StoredJob(b"fn", b"u4", b"d", 0, 1_900_000_000, b"", 2),
    StoredJob(b"fn", b"u5", b"d", 0, 1_900_000_000, b"r", 2),
    StoredJob(b"fn", b"u66", b"d", 0, 1_900_000_000, b"r", 2),
    StoredJob(b"fn2", b"u7", b"d", 0, 1_900_000_000, b"r", 2),
    StoredJob(b"f" * 9, b"u8", b"d"),
    StoredJob(b"f" * 10, b"u8", b"d"),
    StoredJob(b"f" * 100, b"u8", b"d"),
    StoredJob(b"fn", b"u9", b"d"),
]


def dump(r: Any, prefix: str) -> dict[bytes, Any]:
    """Every key under ``prefix`` with its value, whatever its type."""
    out: dict[bytes, Any] = {}
    for key in r.scan_iter(match=prefix + "*", count=1000):
        kind = r.type(key)
        if kind == b"hash":
            out[key[len(prefix) :]] = r.hgetall(key)
        elif kind == b"zset":
            out[key[len(prefix) :]] = r.zrange(key, 0, -1, withscores=True)
        elif kind == b"set":
            out[key[len(prefix) :]] = r.smembers(key)
        else:
            out[key[len(prefix) :]] = r.get(key)
    return out


@pytest.mark.parametrize(
    ("jobs", "stored"),
    [([*JOBS, JOBS[0]], 3), (SHAPES, len(SHAPES))],  # JOBS[0] again: an add of a stored key
    ids=["jobs", "shapes"],
)
def test_lone_jobs_leave_the_keys_commit_leaves_for_an_owner(
    tmp_path: Path, jobs: list[StoredJob], stored: int
) -> None:
    """Two prefixes, one filled by `commit` and one by the lane, with the same owner
    (servers sharing the store): the same keys, values and order."""
    r = redis_client()
    a = Backend("redis", "redis://127.0.0.1:6379/0?prefix=lanetest-a:", tmp_path)
    b = Backend("redis", "redis://127.0.0.1:6379/0?prefix=lanetest-b:", tmp_path)

    async def main() -> None:
        by_commit, by_lane = a.store(), b.store()
        await by_commit.open()
        await by_lane.open()
        try:
            by_commit.owner = by_lane.owner = "node#1"
            for job in jobs:
                await by_commit.commit([job], [])
                assert await send(await ready_lane(by_lane), job) is None
            assert await load_all(by_lane) == await load_all(by_commit)
        finally:
            await by_commit.close()
            await by_lane.close()

    try:
        run(main())
        assert dump(r, "lanetest-b:") == dump(r, "lanetest-a:")
        assert len(dump(r, "lanetest-a:")[b"jobs"]) == stored
    finally:
        for p in ("lanetest-a:*", "lanetest-b:*"):
            keys = list(r.scan_iter(match=p))
            if keys:
                r.delete(*keys)
        r.close()


async def _open(url: str) -> Store:
    store = open_store(url, connect_timeout=5)
    await store.open()
    return store


def test_a_flushed_script_cache_loses_no_lone_job(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path)
    r = redis_client(server.url)

    async def main() -> None:
        store = await _open(server.url)
        try:
            lane = await ready_lane(store)
            r.script_flush()
            assert await send(lane, JOBS[0]) is None
            r.script_flush()
            assert await send(await ready_lane(store), JOBS[1]) is None
            assert await send(await ready_lane(store), JOBS[2]) is None
            assert [j for _, j in await load_all(store)] == JOBS
            # each flush answered NOSCRIPT once, and the job went again with the script
            assert r.info("commandstats")["cmdstat_eval"]["calls"] == 2
        finally:
            await store.close()

    try:
        run(main())
    finally:
        r.close()
        server.close()


def test_a_lane_closed_mid_commit_reports_it_and_commit_brings_it_back(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path)
    r = redis_client(server.url)

    async def main() -> None:
        store = await _open(server.url)
        try:
            lane = await ready_lane(store)
            host, port = lane._transport.get_extra_info("sockname")[:2]  # type: ignore[attr-defined]
            # writes held, so the commit is still in flight when its connection goes
            await asyncio.to_thread(r.client_pause, 10_000, False)
            calls: list[str | None] = []
            lane.send(JOBS[0], calls.append)
            await asyncio.sleep(0.2)
            assert calls == []
            assert await asyncio.to_thread(r.client_kill_filter, addr=f"{host}:{port}") == 1
            await asyncio.to_thread(r.client_unpause)
            for _ in range(500):
                if calls:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            assert len(calls) == 1 and calls[0] and "connection lost" in calls[0]
            assert not lane.ready()
            await store.commit([JOBS[1]], [])
            assert await send(await ready_lane(store), JOBS[2]) is None
            assert [j for _, j in await load_all(store)] == JOBS[1:]
        finally:
            await store.close()

    try:
        run(main())
    finally:
        r.close()
        server.close()


def test_the_lane_authenticates_and_selects_the_database_as_redis_py_does(
    tmp_path: Path,
) -> None:
    server = PrivateRedis(tmp_path)
    r = redis_client(server.url)
    r.acl_setuser("lane", enabled=True, passwords=["+p@ss w"], keys=["*"], commands=["+@all"])
    r.config_set("requirepass", "s3cret")
    port = server.port

    async def main() -> None:
        for url, db in (
            (f"redis://:s3cret@127.0.0.1:{port}/3", 3),
            (f"redis://lane:p%40ss%20w@127.0.0.1:{port}/5", 5),
        ):
            store = await _open(url)
            try:
                assert await send(await ready_lane(store), JOBS[1]) is None
                assert [j for _, j in await load_all(store)] == [JOBS[1]]
            finally:
                await store.close()
            other = redis_client(f"redis://:s3cret@127.0.0.1:{port}/{db}")
            assert other.hlen("gearmill:jobs") == 1
            other.close()

    try:
        run(main())
    finally:
        r.close()
        server.close()


@pytest.mark.parametrize(
    "url",
    [
        "rediss://127.0.0.1:6379/0",
        "unix:///run/redis.sock",
        "redis://127.0.0.1:6379/0?ssl_cert_reqs=none",
        "redis://user@127.0.0.1:6379/0",
    ],
)
def test_urls_the_lane_does_not_take(url: str) -> None:
    with pytest.raises(Unsupported):
        lane_target(url)


def test_urls_the_lane_takes() -> None:
    assert lane_target("redis://127.0.0.1") == ("127.0.0.1", 6379, None, None, 0)
    assert lane_target("redis://u:p%2F@[::1]:7000/2") == ("::1", 7000, "u", "p/", 2)
