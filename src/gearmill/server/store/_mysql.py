"""MariaDB (and MySQL) through asyncmy: InnoDB tables, one transaction per group.

Durability at commit is a server setting (innodb_flush_log_at_trx_commit=1, the
default); open checks it and warns loudly, naming the loss window, when it is not 1.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import asyncmy
from asyncmy import errors as myerrors

from ._base import (
    SCHEMA_VERSION,
    DeadLetter,
    Key,
    Lane,
    LaneKeeper,
    SingleServer,
    StoredJob,
    StoredSchedule,
    StoreError,
    check_job,
    check_schedule,
    log,
    unreachable,
)
from ._mysql_lane import connect_lane
from ._sql import (
    DEAD_COLUMNS,
    JOB_COLUMNS,
    MYSQL,
    SCHEDULE_COLUMNS,
    check_table,
    dead_of,
    dead_row,
    job_row,
    schedule_of,
    schedule_row,
)

_TABLES = ("gearmill_jobs", "gearmill_dead_letters", "gearmill_schedules")
_INSERT = (
    "INSERT INTO gearmill_jobs (function, unique_key, data, priority, when_to_run, reducer,"
    " attempts, created) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
    " ON DUPLICATE KEY UPDATE seq = seq"
)
_DELETE_CHUNK = 256  # keys per DELETE statement: (function = %s AND unique_key = %s) OR ...
_ERRORS = (OSError, TimeoutError, myerrors.Error)
# the driver splits an executemany INSERT into statements of at most this many bytes
_STATEMENT = 1024000
LEASE = 15.0  # seconds the owner's lease lasts unless renewed (--lease, as for shared stores)
_CALL_TIMEOUT = 10.0  # a renewal with no answer by then is retried at the next one
_OWNER = (
    "SELECT owner, host, pid, since, expires, expires > UTC_TIMESTAMP(6),"
    " TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires)"
    " FROM gearmill_owner WHERE id = 1 FOR UPDATE"
)
_TAKE = (
    "UPDATE gearmill_owner SET owner = %s, host = %s, pid = %s, since = UTC_TIMESTAMP(6),"
    " expires = UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND WHERE id = 1"
)
_RENEW = (
    "UPDATE gearmill_owner SET expires = UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND"
    " WHERE id = 1 AND owner = %s"
)
_GIVE_UP = (
    "UPDATE gearmill_owner SET expires = UTC_TIMESTAMP(6) - INTERVAL 1 SECOND"
    " WHERE id = 1 AND owner = %s"
)


def _fits(add: Sequence[StoredJob]) -> bool:
    """The adds go in one INSERT statement (escaping at most doubles a value's bytes)."""
    size = 300
    for j in add:
        size += 2 * (len(j.function) + len(j.unique) + len(j.data) + len(j.reducer)) + 120
    return bool(add) and size < _STATEMENT


class MySQLStore(SingleServer):
    """One server at a time: it owns the database through a lease in gearmill_owner,
    taken at open, renewed every third of the lease by the database's clock, and given
    up at close. A server that crashed holds it until it expires, never longer (a
    GET_LOCK would stay held until MariaDB drops the dead connection, hours later)."""

    durable = True

    def __init__(
        self, url: str, raw_url: str, *, connect_timeout: float = 5.0, lease: float = LEASE
    ) -> None:
        self.url = url
        self.lease = lease
        self._host = socket.gethostname() or "localhost"
        self._me = f"{self._host}:{os.getpid()}#{os.urandom(6).hex()}"
        self._renewer: asyncio.Task[None] | None = None
        self.lost = False  # another server took the lease: commits are refused
        parts = urlsplit(raw_url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self._params: dict[str, Any] = {
            "host": parts.hostname or "localhost",
            "port": parts.port or 3306,
            "user": unquote(parts.username or "root"),
            "password": unquote(parts.password or ""),
            "database": unquote(parts.path.lstrip("/")) or None,
            "connect_timeout": connect_timeout,
            "charset": "utf8mb4",
            "binary_prefix": True,
            "autocommit": False,
            "max_allowed_packet": 1 << 30,
        }
        if "unix_socket" in query:
            self._params["unix_socket"] = query["unix_socket"]
        self._query = query
        if self._params["database"] is None:
            raise StoreError(f"{url}: no database named; give one, e.g. mysql://user@host/gearmill")
        self._pool: Any = None
        # the writer's own connection, in autocommit: a group that is one statement (a
        # lone job, a group of adds, a drain's removes) is one round trip instead of two
        # (the statement, then COMMIT); a larger one is wrapped in BEGIN ... COMMIT
        self._writer: Any = None
        # the lone-job connection (_mysql_lane.py); without it asyncmy commits all
        self._keeper = LaneKeeper(
            self.url,
            "asyncmy",
            lambda: connect_lane(
                self._params,
                self._query,
                _INSERT,
                lambda text: str(self._error(Exception(text), "commit failed")),
                self._params["connect_timeout"],
            ),
        )

    @property
    def lane(self) -> Lane | None:  # type: ignore[override]
        return self._keeper.lane

    def _error(self, e: BaseException, doing: str) -> StoreError:
        text = str(e) or type(e).__name__
        if "max_allowed_packet" in text:
            text += "; a job this big needs a larger max_allowed_packet in MariaDB's config"
        return StoreError(f"{self.url}: {doing}: {text}")

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await asyncmy.create_pool(minsize=1, maxsize=2, **self._params)
        except _ERRORS as e:
            raise unreachable(self.url, e, "MariaDB") from None
        try:
            async with self._pool.acquire() as con:
                await self._check(con)
                await self._migrate(con)
                await self._take(con)
            self.lost = False
            self._renewer = asyncio.get_running_loop().create_task(self._renew_every())
            self._writer = await self._connect()
            await self._keeper.open()
        except BaseException:
            await self.close()
            raise

    async def _connect(self) -> Any:
        try:
            return await asyncmy.connect(**{**self._params, "autocommit": True})
        except _ERRORS as e:
            raise self._error(e, "connecting") from None

    async def _check(self, con: Any) -> None:
        async with con.cursor() as cur:
            await cur.execute("SELECT @@innodb_flush_log_at_trx_commit, @@log_bin, @@sync_binlog")
            flush, log_bin, sync_binlog = await cur.fetchone()
        if int(flush) != 1:
            log.warning(
                "STORE NOT FULLY DURABLE: %s has innodb_flush_log_at_trx_commit=%s; a machine "
                "crash can lose about the last second of committed jobs. Set it to 1.",
                self.url,
                flush,
            )
        if int(log_bin) and int(sync_binlog) != 1:
            log.warning(
                "STORE NOT FULLY DURABLE: %s writes a binary log with sync_binlog=%s; after a "
                "machine crash replicas can miss the last committed jobs. Set sync_binlog=1.",
                self.url,
                sync_binlog,
            )

    async def _migrate(self, con: Any) -> None:
        try:
            async with con.cursor() as cur:
                # DDL commits by itself in MariaDB; a named lock keeps two servers apart.
                await cur.execute("SELECT GET_LOCK('gearmill_migrate', 30)")
                try:
                    # Asked first: CREATE ... IF NOT EXISTS would log a warning at every start.
                    await cur.execute("SHOW TABLES LIKE 'gearmill_schema'")
                    if not await cur.fetchall():
                        await cur.execute(
                            "CREATE TABLE gearmill_schema (version INT NOT NULL) ENGINE=InnoDB"
                        )
                    await cur.execute("SELECT version FROM gearmill_schema")
                    row = await cur.fetchone()
                    version = 0 if row is None else int(row[0])
                    if row is None:
                        await cur.execute("INSERT INTO gearmill_schema (version) VALUES (0)")
                    if version > SCHEMA_VERSION:
                        raise StoreError(
                            f"{self.url}: schema version {version} was written by a newer "
                            f"gearmill (this one knows {SCHEMA_VERSION}); upgrade gearmill"
                        )
                    for v, statements in MYSQL:
                        if v > version:
                            for sql in statements:
                                await cur.execute(sql)
                            await cur.execute("UPDATE gearmill_schema SET version = %s", (v,))
                            if version:  # a new store is created, not migrated
                                log.info("store %s: schema migrated to version %d", self.url, v)
                    await con.commit()
                    if not version:
                        log.info(
                            "store %s: created a new queue, schema version %d",
                            self.url,
                            SCHEMA_VERSION,
                        )
                    await cur.execute(
                        "SELECT table_name, engine FROM information_schema.tables"
                        " WHERE table_schema = DATABASE() AND table_name LIKE 'gearmill%%'"
                    )
                    for name, engine in await cur.fetchall():
                        if str(engine).lower() != "innodb":
                            raise StoreError(
                                f"{self.url}: table {name} uses {engine}, not InnoDB; "
                                "enable InnoDB (it gives the crash-safe commits a store needs)"
                            )
                finally:
                    await cur.execute("SELECT RELEASE_LOCK('gearmill_migrate')")
        except _ERRORS as e:
            raise self._error(e, "creating the schema") from None

    # ------------------------------------------------------------ the owner's lease

    async def _take(self, con: Any) -> None:
        """Own the database, or raise StoreError naming the server that does. A lease
        still running is waited out once (as a shared store's held node id is): a live
        owner renews it meanwhile, one that was killed does not and is replaced."""
        waited: Any = None  # the expiry waited for
        while True:
            row = await self._try_take(con)
            if row is None:
                return
            _, host, pid, since, expires, _, left = row
            if waited is not None and expires != waited:
                raise StoreError(
                    f"{self.url} is in use by another gearmill server (pid {pid} on {host}, "
                    f"since {since:%Y-%m-%d %H:%M:%S} UTC; it renewed its lease while this "
                    f"one waited, now to {expires:%H:%M:%S} UTC); stop it, or give this server "
                    f"its own database (if it was killed, retry after {expires:%H:%M:%S} UTC)"
                )
            if waited is None:
                log.warning(
                    "store %s is in use by another gearmill server (pid %s on %s, since %s "
                    "UTC); waiting %.1f s for its lease to expire, in case it is gone",
                    self.url,
                    pid,
                    host,
                    f"{since:%Y-%m-%d %H:%M:%S}",
                    int(left) / 1e6,
                )
            waited = expires
            # not renewed by then: gone (an expiry still ahead, as read, is waited out again)
            await asyncio.sleep(max(int(left), 0) / 1e6 + 0.25)

    async def _try_take(self, con: Any) -> Any:
        """Take the lease unless another server's is live: then its row, lease untouched."""
        try:
            async with con.cursor() as cur:
                await cur.execute("BEGIN")
                await cur.execute(_OWNER)
                row = await cur.fetchone()
                if row is not None and row[5] and row[0] != self._me:
                    await con.rollback()
                    return row
                await cur.execute(_TAKE, (self._me, self._host, os.getpid(), int(self.lease * 1e6)))
            await con.commit()
            return None
        except _ERRORS as e:
            await _rollback(con)
            raise self._error(e, "taking the owner's lease") from None

    async def _renew(self) -> bool:
        """Push the lease's expiry on; False when another server holds it now."""
        try:
            async with self._p().acquire() as con:
                async with con.cursor() as cur:
                    await cur.execute(_RENEW, (int(self.lease * 1e6), self._me))
                    kept = int(cur.rowcount) == 1
                await con.commit()
                return kept
        except _ERRORS as e:
            raise self._error(e, "renewing the owner's lease") from None

    async def _renew_every(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                kept = await asyncio.wait_for(self._renew(), _CALL_TIMEOUT)
            except (StoreError, TimeoutError) as e:
                # the lease is ours until another server takes it: renewing again later
                # keeps it if none did (the commits say whether the store works)
                if not failing:
                    log.warning("store %s: renewing the owner's lease failed: %s", self.url, e)
                failing = True
                continue
            failing = False
            if not kept:
                self.lost = True
                log.error(
                    "LEASE LOST: store %s is owned by another gearmill server now (this "
                    "one did not renew its lease within %.3g s); background jobs get "
                    "QUEUE_ERROR and this server stops",
                    self.url,
                    self.lease,
                    extra={"gearman_level": "ERROR"},
                )
                if self.on_lost is not None:
                    self.on_lost("lease lost")
                return

    async def _give_up(self) -> None:
        """At a clean stop: the lease ends now, so the next server starts at once."""
        renewer, self._renewer = self._renewer, None
        if renewer is None:
            return
        renewer.cancel()
        try:
            await renewer
        except (asyncio.CancelledError, Exception):
            pass
        if self.lost:
            return
        try:
            await asyncio.wait_for(self._fetch(_GIVE_UP, (self._me,)), _CALL_TIMEOUT)
        except (StoreError, TimeoutError) as e:
            log.warning(
                "store %s: giving up the owner's lease failed: %s; the next server "
                "starts once it expires (%.3g s)",
                self.url,
                e,
                self.lease,
            )

    async def close(self) -> None:
        self._keeper.close()
        self._drop_writer()
        if self._pool is not None:
            await self._give_up()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
            await pool.wait_closed()

    def _p(self) -> Any:
        if self._pool is None:
            raise StoreError(f"{self.url}: store is not open")
        return self._pool

    @staticmethod
    async def _delete(cur: Any, table: str, keys: Sequence[Key]) -> None:
        for i in range(0, len(keys), _DELETE_CHUNK):
            chunk = keys[i : i + _DELETE_CHUNK]
            where = " OR ".join(["(function = %s AND unique_key = %s)"] * len(chunk))
            await cur.execute(f"DELETE FROM {table} WHERE {where}", [x for k in chunk for x in k])

    async def commit(self, add: Sequence[StoredJob], remove: Sequence[Key]) -> None:
        for job in add:
            check_job(job)
        if not add and not remove:
            return
        self._p()  # open
        if self.lost:
            raise StoreError(f"{self.url}: another gearmill server owns it now (lease lost)")
        now = int(time.time())
        # one statement commits by itself (autocommit); more are one transaction
        one = not remove if _fits(add) else (not add and len(remove) <= _DELETE_CHUNK)
        con = self._writer
        try:
            if con is None or not con.connected:
                self._writer = None
                con = self._writer = await self._connect()
            if not one:
                await con.begin()
            async with con.cursor() as cur:
                if remove:
                    await self._delete(cur, "gearmill_jobs", remove)
                rows = [(*job_row(j), now) for j in add]
                if len(rows) == 1:  # a lone job: executemany's rewriting costs it ~9 us
                    await cur.execute(_INSERT, rows[0])
                elif rows:
                    await cur.executemany(_INSERT, rows)
            if not one:
                await con.commit()
        except _ERRORS as e:
            self._drop_writer()
            raise self._error(e, "commit failed") from None
        except BaseException:  # cancelled (the writer's timeout) mid-statement
            self._drop_writer()
            raise
        self._keeper.committed()

    def _drop_writer(self) -> None:
        """A commit failed or was cut off (its transaction, if any, is rolled back when
        the connection goes); the next commit connects again."""
        con, self._writer = self._writer, None
        if con is not None:
            con.close()

    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        try:
            async with self._p().acquire() as con:
                async with con.cursor() as cur:
                    await cur.execute(sql, args)
                    rows = list(await cur.fetchall())
                await con.commit()  # ends the read snapshot, so the next read sees new commits
                return rows
        except _ERRORS as e:
            raise self._error(e, "query failed") from None

    async def load(self, after: int, limit: int) -> list[tuple[int, StoredJob]]:
        rows = await self._fetch(
            f"SELECT {JOB_COLUMNS} FROM gearmill_jobs WHERE seq > %s ORDER BY seq LIMIT %s",
            (after, limit),
        )
        return [
            (int(r[0]), StoredJob(r[1], r[2], r[3], int(r[4]), int(r[5]), r[6], int(r[7])))
            for r in rows
        ]

    async def last_seq(self) -> int:
        rows = await self._fetch("SELECT COALESCE(max(seq), 0) FROM gearmill_jobs")
        return int(rows[0][0])

    async def queued_counts(self, after: int, upto: int) -> list[tuple[bytes, int, int]]:
        rows = await self._fetch(
            "SELECT function, priority, count(*) FROM gearmill_jobs"
            " WHERE seq > %s AND seq <= %s GROUP BY function, priority",
            (after, upto),
        )
        return [(bytes(r[0]), int(r[1]), int(r[2])) for r in rows]

    async def load_queued(
        self, function: bytes, priority: int, after: int, limit: int
    ) -> list[tuple[int, StoredJob]]:
        rows = await self._fetch(
            f"SELECT {JOB_COLUMNS} FROM gearmill_jobs FORCE INDEX (PRIMARY) WHERE seq > %s"
            " AND function = %s AND priority = %s ORDER BY seq LIMIT %s",
            (after, function, priority, limit),
        )
        return [
            (int(r[0]), StoredJob(r[1], r[2], r[3], int(r[4]), int(r[5]), r[6], int(r[7])))
            for r in rows
        ]

    async def find(self, keys: Sequence[Key]) -> list[Key]:
        found: set[Key] = set()
        for i in range(0, len(keys), _DELETE_CHUNK):
            chunk = keys[i : i + _DELETE_CHUNK]
            where = " OR ".join(["(function = %s AND unique_key = %s)"] * len(chunk))
            rows = await self._fetch(
                f"SELECT function, unique_key FROM gearmill_jobs WHERE {where}",
                [x for k in chunk for x in k],
            )
            found.update((bytes(r[0]), bytes(r[1])) for r in rows)
        return [k for k in keys if k in found]

    async def add_dead(self, dead: Sequence[DeadLetter]) -> list[int]:
        for d in dead:
            check_job(d.job)
        if not dead:
            return []
        sql = (
            f"INSERT INTO gearmill_dead_letters ({DEAD_COLUMNS})"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        )
        try:
            async with self._p().acquire() as con:
                try:
                    ids = []
                    async with con.cursor() as cur:
                        for d in dead:
                            await cur.execute(sql, dead_row(d))
                            ids.append(int(cur.lastrowid))
                    await con.commit()
                except BaseException:
                    await _rollback(con)
                    raise
        except _ERRORS as e:
            raise self._error(e, "keeping dead letters failed") from None
        return ids

    async def list_dead(self, after: int, limit: int) -> list[tuple[int, DeadLetter]]:
        rows = await self._fetch(
            f"SELECT id, {DEAD_COLUMNS} FROM gearmill_dead_letters WHERE id > %s"
            " ORDER BY id LIMIT %s",
            (after, limit),
        )
        return [dead_of(r) for r in rows]

    async def remove_dead(self, ids: Sequence[int]) -> None:
        for i in range(0, len(ids), _DELETE_CHUNK):
            chunk = list(ids[i : i + _DELETE_CHUNK])
            marks = ", ".join(["%s"] * len(chunk))
            await self._fetch(f"DELETE FROM gearmill_dead_letters WHERE id IN ({marks})", chunk)

    async def put_schedule(self, schedule: StoredSchedule) -> None:
        check_schedule(schedule)
        await self._fetch(
            f"REPLACE INTO gearmill_schedules ({SCHEDULE_COLUMNS})"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            schedule_row(schedule),
        )

    async def list_schedules(self) -> list[StoredSchedule]:
        rows = await self._fetch(f"SELECT {SCHEDULE_COLUMNS} FROM gearmill_schedules ORDER BY name")
        return [schedule_of(r) for r in rows]

    async def remove_schedule(self, name: str) -> bool:
        before = await self._fetch("SELECT 1 FROM gearmill_schedules WHERE name = %s", (name,))
        await self._fetch("DELETE FROM gearmill_schedules WHERE name = %s", (name,))
        return bool(before)

    async def count(self) -> int:
        return int((await self._fetch("SELECT count(*) FROM gearmill_jobs"))[0][0])

    async def ping(self) -> None:
        await self._fetch("SELECT 1")

    async def size_bytes(self) -> int:
        marks = ", ".join(["%s"] * len(_TABLES))
        rows = await self._fetch(
            "SELECT COALESCE(SUM(data_length + index_length), 0) FROM information_schema.tables"
            f" WHERE table_schema = DATABASE() AND table_name IN ({marks})",
            _TABLES,
        )
        return int(rows[0][0])

    async def import_gearmand(self, source: str | None = None) -> int:
        """Import gearmand's `-q MySQL` table (default `gearman_queue`) from this database."""
        table = check_table(source or "gearman_queue")
        now = int(time.time())
        try:
            async with self._p().acquire() as con:
                try:
                    async with con.cursor() as cur:
                        await cur.execute(
                            "SELECT count(*) FROM information_schema.tables"
                            " WHERE table_schema = DATABASE() AND table_name = %s",
                            (table,),
                        )
                        if (await cur.fetchone())[0] == 0:
                            await con.commit()
                            return 0
                        await cur.execute("BEGIN")
                        # FOR UPDATE: a gearmand still running must not slip rows in between.
                        await cur.execute(
                            "SELECT CAST(function_name AS BINARY), CAST(unique_key AS BINARY),"
                            " COALESCE(data, ''), COALESCE(priority, 1), COALESCE(when_to_run, 0)"
                            f" FROM {table} ORDER BY priority FOR UPDATE"
                        )
                        rows = list(await cur.fetchall())
                        if rows:
                            await cur.executemany(
                                _INSERT,
                                [(f, u, d, int(p), int(w), b"", 0, now) for f, u, d, p, w in rows],
                            )
                            await self._delete_gearmand(cur, table, rows)
                    await con.commit()
                except BaseException:
                    await _rollback(con)
                    raise
        except _ERRORS as e:
            raise self._error(e, f"importing gearmand's table {table}") from None
        if rows:
            log.info("store %s: imported %d jobs from gearmand's %s", self.url, len(rows), table)
        return len(rows)

    @staticmethod
    async def _delete_gearmand(cur: Any, table: str, rows: Sequence[Any]) -> None:
        for i in range(0, len(rows), _DELETE_CHUNK):
            chunk = rows[i : i + _DELETE_CHUNK]
            where = " OR ".join(["(function_name = %s AND unique_key = %s)"] * len(chunk))
            await cur.execute(
                f"DELETE FROM {table} WHERE {where}", [x for r in chunk for x in r[:2]]
            )


async def _rollback(con: Any) -> None:
    try:
        await con.rollback()
    except _ERRORS:
        pass  # the connection is gone; the server rolls back for us
