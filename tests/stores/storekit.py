"""Real stores for the contract suite: a fresh database (or key prefix) per test, removed after.

The servers are this machine's PostgreSQL, MariaDB and Redis (scripts/services starts
them); their admin URLs can be moved with GEARMILL_TEST_POSTGRESQL, GEARMILL_TEST_MYSQL
and GEARMILL_TEST_REDIS. A server that is not there fails the test with that advice.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gearmill.server.store import Store, open_store

T = TypeVar("T")

PG_ADMIN = os.environ.get("GEARMILL_TEST_POSTGRESQL", "postgresql://root@127.0.0.1:5432/postgres")
MY_ADMIN = os.environ.get("GEARMILL_TEST_MYSQL", "mysql://root@127.0.0.1:3306/test")
REDIS_ADMIN = os.environ.get("GEARMILL_TEST_REDIS", "redis://127.0.0.1:6379/0")

KINDS = ["memory", "sqlite", "postgresql", "mysql", "redis"]
DURABLE = KINDS[1:]
NETWORK = KINDS[2:]


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def _unreachable(kind: str, url: str, e: BaseException) -> None:
    pytest.fail(
        f"{kind} is not reachable at {url} ({e}): the store tests need a real server; "
        "start it with scripts/services (or point GEARMILL_TEST_"
        f"{'POSTGRESQL' if kind == 'postgresql' else kind.upper()} at one)",
        pytrace=False,
    )


def _with_db(admin: str, name: str) -> str:
    base, _, _ = admin.rpartition("/")
    return f"{base}/{name}"


async def _pg(sql: str, url: str = PG_ADMIN) -> list[Any]:
    import asyncpg  # type: ignore[import-untyped]

    con = await asyncpg.connect(url, timeout=5)
    try:
        return list(await con.fetch(sql))
    finally:
        await con.close()


async def _my(sql: str, url: str = MY_ADMIN, args: Any = None) -> list[Any]:
    from urllib.parse import urlsplit

    import asyncmy

    p = urlsplit(url)
    con = await asyncmy.connect(
        host=p.hostname,
        port=p.port or 3306,
        user=p.username or "root",
        password=p.password or "",
        database=p.path.lstrip("/"),
        connect_timeout=5,
        autocommit=True,
    )
    try:
        async with con.cursor() as cur:
            await cur.execute(sql, args)
            return list(await cur.fetchall() or [])
    finally:
        con.close()


def redis_client(url: str = REDIS_ADMIN) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=5)


class Backend:
    """One store kind with its own fresh database or prefix; `sql` runs in that database."""

    def __init__(self, kind: str, url: str, tmp: Path) -> None:
        self.kind = kind
        self.url = url
        self.tmp = tmp
        self.db = ""
        self.prefix = ""

    def store(self, **options: Any) -> Store:
        return open_store(self.url, **options)

    def sql(self, statement: str) -> list[Any]:
        if self.kind == "postgresql":
            return run(_pg(statement, self.url))
        if self.kind == "mysql":
            return run(_my(statement, self.url))
        if self.kind == "sqlite":
            import sqlite3

            con = sqlite3.connect(self.url[len("sqlite://") :], isolation_level=None)
            try:
                return con.execute(statement).fetchall()
            finally:
                con.close()
        raise AssertionError(f"no SQL for {self.kind}")


def make_backend(kind: str, tmp: Path) -> Iterator[Backend]:
    name = "gmtest_" + uuid.uuid4().hex[:12]
    if kind == "memory":
        yield Backend(kind, "memory", tmp)
    elif kind == "sqlite":
        yield Backend(kind, f"sqlite://{tmp}/queue.db", tmp)
    elif kind == "postgresql":
        try:
            run(_pg(f"CREATE DATABASE {name}"))
        except Exception as e:
            _unreachable(kind, PG_ADMIN, e)
        b = Backend(kind, _with_db(PG_ADMIN, name), tmp)
        b.db = name
        try:
            yield b
        finally:
            run(_pg(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    elif kind == "mysql":
        try:
            run(_my(f"CREATE DATABASE {name}"))
        except Exception as e:
            _unreachable(kind, MY_ADMIN, e)
        b = Backend(kind, _with_db(MY_ADMIN, name), tmp)
        b.db = name
        try:
            yield b
        finally:
            run(_my(f"DROP DATABASE IF EXISTS {name}"))
    elif kind == "redis":
        r = redis_client()
        try:
            r.ping()
        except Exception as e:
            _unreachable(kind, REDIS_ADMIN, e)
        prefix = name + ":"
        sep = "&" if "?" in REDIS_ADMIN else "?"
        b = Backend(kind, f"{REDIS_ADMIN}{sep}prefix={prefix}", tmp)
        b.prefix = prefix
        try:
            yield b
        finally:
            for pattern in (prefix + "*", "_" + name + "*"):
                keys = list(r.scan_iter(match=pattern, count=1000))
                if keys:
                    r.delete(*keys)
            r.close()
    else:
        raise AssertionError(kind)


@pytest.fixture(params=KINDS, name="backend")
def backend_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from make_backend(request.param, tmp_path)


@pytest.fixture(params=DURABLE, name="durable")
def durable_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from make_backend(request.param, tmp_path)


@pytest.fixture(params=NETWORK, name="network")
def network_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from make_backend(request.param, tmp_path)
