"""Real stores for the tests: a fresh database (or key prefix) per test, removed after,
and servers of a test's own (:class:`PrivatePostgres`, :class:`PrivateRedis`,
:class:`PrivateMariaDB`) on a free port, for tests that kill and restart their store.

The shared servers are this machine's PostgreSQL, MariaDB and Redis (scripts/services
starts them); their admin URLs can be moved with GEARMILL_TEST_POSTGRESQL,
GEARMILL_TEST_MYSQL and GEARMILL_TEST_REDIS. A server that is not there fails the test
with that advice.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from conftest import free_port
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

    def stored_data(self) -> list[bytes]:
        """The data of every background job the store holds now, read from its tables or
        keys directly (as an operator would), not through a store object."""
        if self.kind == "redis":
            from gearmill.server.store._base import unpack_job

            r = redis_client()
            try:
                return [unpack_job(v)[1].data for v in r.hvals(self.prefix.encode() + b"jobs")]
            finally:
                r.close()
        return [bytes(row[0]) for row in self.sql("SELECT data FROM gearmill_jobs")]


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


def restart_flags(b: Backend) -> tuple[str, ...]:
    """serve flags for a test that SIGKILLs a server and starts it again: the MariaDB
    store's restart waits out the killed owner's lease (1 s here, not 15)."""
    return ("--lease", "1") if b.kind == "mysql" else ()


@pytest.fixture(params=KINDS, name="backend")
def backend_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from make_backend(request.param, tmp_path)


@pytest.fixture(params=DURABLE, name="durable")
def durable_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from make_backend(request.param, tmp_path)


@pytest.fixture(params=NETWORK, name="network")
def network_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from make_backend(request.param, tmp_path)


def gearmand_queue_flags(b: Backend) -> tuple[tuple[str, ...], str | None]:
    """gearmand's -q flags for a persistent queue in b's database (or under a prefix of
    b's), which gearmill accepts as they are; and the import source they name (Redis:
    the key prefix; None: gearmand's default table)."""
    from urllib.parse import urlsplit

    u = urlsplit(b.url)
    if b.kind == "sqlite":
        return ("-q", "libsqlite3", f"--libsqlite3-db={b.tmp}/gearmand.db"), None
    if b.kind == "postgresql":
        conninfo = f"host={u.hostname} port={u.port or 5432} dbname={b.db} user={u.username}"
        return ("-q", "Postgres", f"--libpq-conninfo={conninfo}"), None
    if b.kind == "mysql":
        return (
            "-q",
            "MySQL",
            f"--mysql-host={u.hostname}",
            f"--mysql-port={u.port or 3306}",
            f"--mysql-user={u.username}",
            f"--mysql-db={b.db}",
        ), None
    prefix = "_" + b.prefix.rstrip(":")  # removed with b's keys
    return (
        "-q",
        "redis",
        f"--redis-server={u.hostname}",
        f"--redis-port={u.port or 6379}",
        f"--redis-prefix={prefix}",
    ), prefix


# ------------------------------------------------------- servers of a test's own


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a server and all its processes, and wait until every one is gone (a
    backend still dying holds the shared memory a restart needs)."""
    deadline = time.monotonic() + 10
    try:
        os.killpg(proc.pid, 9)
        proc.wait(10)
        while time.monotonic() < deadline:
            os.killpg(proc.pid, 0)  # raises once the group is empty
            time.sleep(0.05)
    except ProcessLookupError:
        pass


def _folder(prefix: str, owner: str) -> Path:
    """A folder of its own: pytest's is private to root, and these servers must not run
    as root."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    if os.getuid() == 0:
        shutil.chown(folder, owner)
    return folder


class PrivatePostgres:
    """A PostgreSQL server of the test's own on a free loopback port (initdb'd in a
    folder of its own), that the test can SIGKILL (``kill``: every process at once, as a
    crash would) and ``start`` again on the same port and data. ``close`` removes it.
    ``tls``: it offers TLS, with a self-signed certificate made for it."""

    def __init__(self, tls: bool = False) -> None:
        self.folder = _folder("gearmill-pg-", "postgres")
        self.data = self.folder / "data"
        subprocess.run(
            [self.bin("initdb"), "-D", str(self.data), "-U", "root", "--auth=trust", "-N"],
            check=True,
            capture_output=True,
            **self._as_postgres(),  # type: ignore[call-overload]
        )
        if tls:
            req = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
            subprocess.run(
                [*req, "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.crt"],
                cwd=self.data,
                check=True,
                capture_output=True,
                **self._as_postgres(),  # type: ignore[call-overload]
            )
            with open(self.data / "postgresql.conf", "a") as conf:
                conf.write("ssl = on\n")
        self.port = free_port()
        self.url = f"postgresql://root@127.0.0.1:{self.port}/postgres"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @staticmethod
    def bin(name: str) -> str:
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/" + name), key=lambda p: p.parts)
        assert versions, f"PostgreSQL's {name} is not installed: run scripts/services"
        return str(versions[-1])

    @staticmethod
    def _as_postgres() -> dict[str, str]:
        """Popen arguments that run a PostgreSQL program as `postgres` (it refuses root);
        the test waits for the server itself, so its exit is reaped and its pid file freed."""
        return {"user": "postgres", "group": "postgres"} if os.getuid() == 0 else {}

    def start(self) -> None:
        cmd = [self.bin("postgres"), "-D", str(self.data), "-p", str(self.port)]
        cmd += ["-k", str(self.folder), "-c", "listen_addresses=127.0.0.1"]
        log_path = self.folder / "postgres.log"
        with open(log_path, "ab") as log:  # the server keeps its own copy
            proc = self.proc = subprocess.Popen(
                cmd,
                **self._as_postgres(),  # type: ignore[call-overload]
                stdout=log,
                stderr=log,
                start_new_session=True,  # SIGKILL reaches the whole server at once
            )
        ready = [self.bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        deadline = time.monotonic() + 30
        while subprocess.run(ready).returncode != 0:
            if time.monotonic() > deadline or proc.poll() is not None:
                _kill_group(proc)
                tail = log_path.read_text(errors="replace")[-500:]
                raise RuntimeError(f"postgres did not start: {tail}")
            time.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc)
            self.proc = None

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


class PrivateRedis:
    """A redis-server of the test's own on a free loopback port (or ``port``), with its
    files in ``folder`` and ``args`` added (e.g. appendonly); ``kill`` SIGKILLs it and
    ``start`` brings it back on the same port."""

    def __init__(self, folder: Path, *args: str, port: int | None = None) -> None:
        self.folder = folder
        self.args = args
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        cmd = [binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        cmd += ["--dir", str(self.folder), "--save", "", *self.args]
        proc = self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        import redis

        r = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    r.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        self.kill()
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.05)
        finally:
            r.close()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    close = kill


class PrivateMariaDB:
    """A MariaDB server of the test's own on a free loopback port (installed in a folder
    of its own); ``kill`` SIGKILLs it and ``start`` brings it back on the same data."""

    def __init__(self) -> None:
        self.folder = _folder("gearmill-maria-", "mysql")
        install = ["mariadb-install-db", f"--datadir={self.folder}/data", "--skip-test-db"]
        install += ["--auth-root-authentication-method=normal"]
        if os.getuid() == 0:
            install.append("--user=mysql")
        subprocess.run(install, check=True, capture_output=True)
        self.port = free_port()
        self.url = f"mysql://root@127.0.0.1:{self.port}/mysql"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        f = self.folder
        cmd = ["/usr/sbin/mariadbd", "--no-defaults", f"--datadir={f}/data"]
        cmd += [f"--port={self.port}", "--bind-address=127.0.0.1", f"--socket={f}/sock"]
        cmd += [f"--pid-file={f}/pid", f"--log-error={f}/err.log"]
        cmd += ["--skip-grant-tables", "--innodb-buffer-pool-size=32M"]
        if os.getuid() == 0:
            cmd.append("--user=mysql")
        proc = self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    self.kill()
                    tail = (f / "err.log").read_text(errors="replace")[-500:]
                    raise RuntimeError(f"mariadbd did not start: {tail}") from None
                time.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.folder, ignore_errors=True)
