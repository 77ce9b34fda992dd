"""PostgreSQL through asyncpg, with synchronous_commit on for every connection.

A group is one transaction of two statements (a DELETE joined to unnest'ed key arrays,
an INSERT from unnest'ed column arrays), so its cost hardly grows with its size.
Deleted rows are reclaimed by PostgreSQL's autovacuum.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from ._base import (
    SCHEMA_VERSION,
    DeadLetter,
    Key,
    Lane,
    LaneKeeper,
    StoredJob,
    StoredSchedule,
    StoreError,
    check_job,
    check_schedule,
    log,
    unreachable,
)
from ._postgresql_lane import connect_lane
from ._sql import (
    DEAD_COLUMNS,
    JOB_COLUMNS,
    POSTGRESQL,
    SCHEDULE_COLUMNS,
    check_table,
    dead_of,
    dead_row,
    job_row,
    schedule_of,
    schedule_row,
)

# what a lost or refused connection raises; asyncpg's InternalClientError comes from
# resetting a connection whose server was killed mid-statement (seen in the kill test)
_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
_TABLES = ["gearmill_jobs", "gearmill_dead_letters", "gearmill_schedules"]

_INSERT = (
    "INSERT INTO gearmill_jobs (function, unique_key, data, priority, when_to_run, reducer,"
    " attempts, created, lease_owner)"
    " SELECT f, u, d, p, w, r, a, $8, $9::text FROM unnest($1::bytea[], $2::bytea[], $3::bytea[],"
    " $4::smallint[], $5::bigint[], $6::bytea[], $7::int[])"
    " WITH ORDINALITY AS t(f, u, d, p, w, r, a, o)"
    " ORDER BY o ON CONFLICT (function, unique_key) DO NOTHING"
)
# a lone job (one-at-a-time clients): a plain statement plans faster than unnest
_INSERT_ONE = (
    "INSERT INTO gearmill_jobs (function, unique_key, data, priority, when_to_run, reducer,"
    " attempts, created, lease_owner) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::text)"
    " ON CONFLICT (function, unique_key) DO NOTHING"
)
# the lane's (_postgresql_lane.py): a duplicate key fails on _UNIQUE, taken as done
_INSERT_LANE = _INSERT_ONE.removesuffix(" ON CONFLICT (function, unique_key) DO NOTHING")
_UNIQUE = "gearmill_jobs_function_unique_key_key"  # UNIQUE (function, unique_key)'s name
_DELETE_ONE = "DELETE FROM gearmill_jobs WHERE function = $1 AND unique_key = $2"
_DELETE = (
    "DELETE FROM gearmill_jobs j USING unnest($1::bytea[], $2::bytea[]) AS k(f, u)"
    " WHERE j.function = k.f AND j.unique_key = k.u"
)
# a shared store's remove: only while the owner still holds the job with that fence
_DELETE_FENCED = (
    "DELETE FROM gearmill_jobs j USING unnest($1::bytea[], $2::bytea[], $3::bigint[])"
    " AS k(f, u, e) WHERE j.function = k.f AND j.unique_key = k.u"
    " AND j.lease_owner = $4 AND j.fence = k.e"
)
_NOW = "(extract(epoch from clock_timestamp()) * 1000)::bigint"  # the database's clock, ms
_JOIN = (
    "INSERT INTO gearmill_nodes (node, owner, expires)"
    f" VALUES ($1, $2, {_NOW} + $3) ON CONFLICT (node) DO UPDATE"
    " SET owner = EXCLUDED.owner, expires = EXCLUDED.expires"
    f" WHERE gearmill_nodes.expires < {_NOW}"
    " OR (gearmill_nodes.owner = $4 AND gearmill_nodes.expires = $5) RETURNING node"
)
# each job to one claimer (row locks, SKIP LOCKED), oldest first; NULL: no owner yet
# (rows stored before leases, or imported)
_CLAIM = (
    "UPDATE gearmill_jobs j SET lease_owner = $1, fence = j.fence + 1"
    " FROM (SELECT g.seq FROM gearmill_jobs g WHERE g.lease_owner IS DISTINCT FROM $1"
    " AND NOT EXISTS (SELECT 1 FROM gearmill_nodes n WHERE n.owner = g.lease_owner)"
    " ORDER BY g.seq LIMIT $2 FOR UPDATE SKIP LOCKED) s WHERE j.seq = s.seq"
    " RETURNING j.seq, j.function, j.unique_key, j.data, j.priority, j.when_to_run,"
    " j.reducer, j.attempts, j.fence"
)
_SETTINGS = {"synchronous_commit": "on", "application_name": "gearmill"}
_MIGRATION_LOCK = 0x6765_6172  # pg_advisory_xact_lock key: one migrating server at a time


async def _reset(con: Any) -> None:
    """A connection going back to the pool: asyncpg's default reset is a round trip per
    commit (RESET ALL, UNLISTEN, ...; +0.15 ms to a lone job); this store leaves no
    session state behind, only, after an error, an open transaction."""
    if con.is_in_transaction():
        await con.execute("ROLLBACK")


class PostgreSQLStore:
    durable = True
    shared = True

    def __init__(self, url: str, dsn: str, *, connect_timeout: float = 5.0) -> None:
        self.url = url
        self._dsn = dsn
        self._timeout = connect_timeout
        self._pool: asyncpg.Pool | None = None
        # the writer's own connection (one writer at a time calls commit): a pool's
        # acquire and release cost a lone job more than its INSERT does (two tasks, a
        # timer, futures: 68 -> 27 us of CPU per commit, measured)
        self._writer: Any = None
        self.owner: str | None = None
        # the lone-job connection (_postgresql_lane.py); without it asyncpg commits all
        self._keeper = LaneKeeper(
            self.url,
            "asyncpg",
            lambda: connect_lane(
                self._dsn, _INSERT_LANE, _UNIQUE, lambda: self.owner, self._timeout
            ),
        )
        self.fences: dict[Key, int] = {}  # claimed jobs' fencing numbers (0: not here)

    def _error(self, e: BaseException, doing: str) -> StoreError:
        text = str(e) or type(e).__name__
        return StoreError(f"{self.url}: {doing}: {text}")

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=2,  # replay or claims, and the heartbeat (the writer has its own)
                timeout=self._timeout,
                server_settings=_SETTINGS,
                reset=_reset,
            )
        except _ERRORS as e:
            raise unreachable(self.url, e, "PostgreSQL") from None
        try:
            async with self._pool.acquire() as con:
                await self._check(con)
                await self._migrate(con)
            self._writer = await self._connect()
            await self._keeper.open()
        except BaseException:
            await self.close()
            raise

    @property
    def lane(self) -> Lane | None:
        return self._keeper.lane

    async def _connect(self) -> Any:
        try:
            return await asyncpg.connect(
                self._dsn, timeout=self._timeout, server_settings=_SETTINGS
            )
        except _ERRORS as e:
            raise self._error(e, "connecting") from None

    async def _check(self, con: Any) -> None:
        sync = await con.fetchval("SHOW synchronous_commit")
        if sync == "off":
            raise StoreError(f"{self.url}: synchronous_commit is {sync} and could not be set on")
        if await con.fetchval("SHOW fsync") != "on":
            log.warning(
                "STORE NOT DURABLE: %s runs with fsync=off; a machine crash can lose every job "
                "committed since its last checkpoint. Set fsync=on in postgresql.conf.",
                self.url,
            )

    async def _migrate(self, con: Any) -> None:
        try:
            async with con.transaction():
                await con.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                await con.execute(
                    "CREATE TABLE IF NOT EXISTS gearmill_schema (version INTEGER NOT NULL)"
                )
                version = await con.fetchval("SELECT version FROM gearmill_schema")
                if version is None:
                    await con.execute("INSERT INTO gearmill_schema (version) VALUES (0)")
                    version = 0
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.url}: schema version {version} was written by a newer gearmill "
                        f"(this one knows {SCHEMA_VERSION}); upgrade gearmill"
                    )
                for v, statements in POSTGRESQL:
                    if v > version:
                        for sql in statements:
                            await con.execute(sql)
                        await con.execute("UPDATE gearmill_schema SET version = $1", v)
                        log.info("store %s: schema migrated to version %d", self.url, v)
        except asyncpg.PostgresError as e:
            raise self._error(e, "creating the schema") from None

    async def close(self) -> None:
        self._keeper.close()
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                await writer.close(timeout=self._timeout)
            except _ERRORS:
                writer.terminate()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await pool.close()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pool.terminate()

    def _p(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError(f"{self.url}: store is not open")
        return self._pool

    async def commit(self, add: Sequence[StoredJob], remove: Sequence[Key]) -> None:
        for job in add:
            check_job(job)
        if not add and not remove:
            return
        self._p()  # open
        con = self._writer
        try:
            if con is None or con.is_closed():
                self._writer = None
                con = self._writer = await self._connect()
            # One statement is a transaction by itself: a round trip less than BEGIN/COMMIT.
            if add and remove:
                async with con.transaction():
                    await self._commit(con, add, remove)
            else:
                await self._commit(con, add, remove)
        except _ERRORS as e:
            self._drop_writer()
            raise self._error(e, "commit failed") from None
        except BaseException:  # cancelled (the writer's timeout) mid-statement
            self._drop_writer()
            raise
        if self.fences:
            for key in remove:
                self.fences.pop(key, None)
        self._keeper.committed()

    def _drop_writer(self) -> None:
        """A commit failed or was cut off: its connection may be mid-statement or gone;
        the next commit connects again (as the pool would)."""
        con, self._writer = self._writer, None
        if con is not None:
            con.terminate()

    async def _commit(self, con: Any, add: Sequence[StoredJob], remove: Sequence[Key]) -> None:
        owner = self.owner
        if remove and owner is not None:
            fences = self.fences
            await con.execute(
                _DELETE_FENCED,
                [k[0] for k in remove],
                [k[1] for k in remove],
                [fences.get(k, 0) for k in remove],
                owner,
            )
        elif len(remove) == 1:
            await con.execute(_DELETE_ONE, remove[0][0], remove[0][1])
        elif remove:
            await con.execute(_DELETE, [k[0] for k in remove], [k[1] for k in remove])
        if len(add) == 1:
            j = add[0]
            await con.execute(_INSERT_ONE, *job_row(j), int(time.time()), owner)
        elif add:
            await con.execute(
                _INSERT,
                [j.function for j in add],
                [j.unique for j in add],
                [j.data for j in add],
                [j.priority for j in add],
                [j.when for j in add],
                [j.reducer for j in add],
                [j.attempts for j in add],
                int(time.time()),
                owner,
            )

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        try:
            async with self._p().acquire() as con:
                return list(await con.fetch(sql, *args))
        except _ERRORS as e:
            raise self._error(e, "query failed") from None

    async def load(self, after: int, limit: int) -> list[tuple[int, StoredJob]]:
        rows = await self._fetch(
            f"SELECT {JOB_COLUMNS} FROM gearmill_jobs WHERE seq > $1 ORDER BY seq LIMIT $2",
            after,
            limit,
        )
        return [(r[0], StoredJob(r[1], r[2], r[3], r[4], r[5], r[6], r[7])) for r in rows]

    # With an owner (several servers share the store), paging sees only its own jobs.
    _MINE = " AND lease_owner = $3::text"

    async def last_seq(self) -> int:
        if self.owner is not None:
            rows = await self._fetch(
                "SELECT COALESCE(max(seq), 0) FROM gearmill_jobs WHERE lease_owner = $1",
                self.owner,
            )
        else:
            rows = await self._fetch("SELECT COALESCE(max(seq), 0) FROM gearmill_jobs")
        return int(rows[0][0])

    async def queued_counts(self, after: int, upto: int) -> list[tuple[bytes, int, int]]:
        rows = await self._fetch(
            "SELECT function, priority, count(*) FROM gearmill_jobs"
            " WHERE seq > $1 AND seq <= $2"
            + (self._MINE if self.owner is not None else "")
            + " GROUP BY function, priority",
            after,
            upto,
            *((self.owner,) if self.owner is not None else ()),
        )
        return [(bytes(r[0]), int(r[1]), int(r[2])) for r in rows]

    async def load_queued(
        self, function: bytes, priority: int, after: int, limit: int
    ) -> list[tuple[int, StoredJob]]:
        # Windows of the sequence order (the primary key), filtered: asked directly, the
        # planner (without statistics on a fresh table, or for a common function) sorts
        # every row of the function for each page (0.4 s a page at 1M rows, 10 ms so).
        out: list[tuple[int, StoredJob]] = []
        window = max(limit, 5000)
        while len(out) < limit:
            rows = await self._fetch(
                f"SELECT {JOB_COLUMNS} FROM (SELECT {JOB_COLUMNS}, lease_owner FROM gearmill_jobs"
                " WHERE seq > $1 ORDER BY seq LIMIT $2) w"
                " WHERE function = $3 AND priority = $4"
                + (" AND lease_owner = $5::text" if self.owner is not None else "")
                + " ORDER BY seq",
                after,
                window,
                function,
                priority,
                *((self.owner,) if self.owner is not None else ()),
            )
            out += [(r[0], StoredJob(r[1], r[2], r[3], r[4], r[5], r[6], r[7])) for r in rows]
            if len(out) >= limit:
                return out[:limit]
            span = await self._fetch(
                "SELECT count(*), max(seq) FROM (SELECT seq FROM gearmill_jobs"
                " WHERE seq > $1 ORDER BY seq LIMIT $2) w",
                after,
                window,
            )
            if span[0][0] < window:
                break  # the window reached the last row
            after = int(span[0][1])
        return out

    async def find(self, keys: Sequence[Key]) -> list[Key]:
        if not keys:
            return []
        rows = await self._fetch(
            "SELECT j.function, j.unique_key FROM gearmill_jobs j"
            " JOIN unnest($1::bytea[], $2::bytea[]) AS k(f, u)"
            " ON j.function = k.f AND j.unique_key = k.u",
            [k[0] for k in keys],
            [k[1] for k in keys],
        )
        found = {(bytes(r[0]), bytes(r[1])) for r in rows}
        return [k for k in keys if k in found]

    async def add_dead(self, dead: Sequence[DeadLetter]) -> list[int]:
        for d in dead:
            check_job(d.job)
        if not dead:
            return []
        sql = (
            f"INSERT INTO gearmill_dead_letters ({DEAD_COLUMNS})"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id"
        )
        try:
            async with self._p().acquire() as con, con.transaction():
                return [int(await con.fetchval(sql, *dead_row(d))) for d in dead]
        except _ERRORS as e:
            raise self._error(e, "keeping dead letters failed") from None

    async def list_dead(self, after: int, limit: int) -> list[tuple[int, DeadLetter]]:
        rows = await self._fetch(
            f"SELECT id, {DEAD_COLUMNS} FROM gearmill_dead_letters WHERE id > $1"
            " ORDER BY id LIMIT $2",
            after,
            limit,
        )
        return [dead_of(r) for r in rows]

    async def remove_dead(self, ids: Sequence[int]) -> None:
        if ids:
            await self._fetch(
                "DELETE FROM gearmill_dead_letters WHERE id = ANY($1::bigint[])", list(ids)
            )

    async def put_schedule(self, schedule: StoredSchedule) -> None:
        check_schedule(schedule)
        await self._fetch(
            f"INSERT INTO gearmill_schedules ({SCHEDULE_COLUMNS})"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (name) DO UPDATE SET"
            " function = EXCLUDED.function, data = EXCLUDED.data, priority = EXCLUDED.priority,"
            " cron = EXCLUDED.cron, enabled = EXCLUDED.enabled,"
            # a change (pause, edit) never moves the last tick back: it would fire again
            " next_run = GREATEST(EXCLUDED.next_run, gearmill_schedules.next_run),"
            " last_run = GREATEST(EXCLUDED.last_run, gearmill_schedules.last_run)",
            *schedule_row(schedule),
        )

    async def list_schedules(self) -> list[StoredSchedule]:
        rows = await self._fetch(f"SELECT {SCHEDULE_COLUMNS} FROM gearmill_schedules ORDER BY name")
        return [schedule_of(r) for r in rows]

    async def remove_schedule(self, name: str) -> bool:
        rows = await self._fetch(
            "DELETE FROM gearmill_schedules WHERE name = $1 RETURNING name", name
        )
        return bool(rows)

    # ------------------------------------------------------------ leases

    async def join(
        self, owner: str, lease: float, replace: tuple[str, int] | None = None
    ) -> tuple[str, int] | None:
        node = owner.partition("#")[0]
        old, expires = replace if replace is not None else ("", 0)
        if await self._fetch(_JOIN, node, owner, int(lease * 1000), old, expires):
            return None
        rows = await self._fetch("SELECT owner, expires FROM gearmill_nodes WHERE node = $1", node)
        if not rows:  # it left meanwhile
            return await self.join(owner, lease)
        return str(rows[0][0]), int(rows[0][1])

    async def renew(self, owner: str, lease: float) -> bool:
        rows = await self._fetch(
            f"UPDATE gearmill_nodes SET expires = {_NOW} + $3 WHERE node = $1 AND owner = $2"
            " RETURNING node",
            owner.partition("#")[0],
            owner,
            int(lease * 1000),
        )
        return bool(rows)

    async def leave(self, owner: str) -> None:
        # expired at once: the next survivor's reap declares it gone and claims its jobs
        await self._fetch("UPDATE gearmill_nodes SET expires = 0 WHERE owner = $1", owner)

    async def reap(self) -> list[tuple[str, bool]]:
        rows = await self._fetch(
            f"DELETE FROM gearmill_nodes WHERE expires < {_NOW} RETURNING owner, expires = 0"
        )
        return [(str(r[0]), bool(r[1])) for r in rows]

    async def claim_tick(self, name: str, minute: int, next_run: int) -> bool:
        # a concurrent claimer waits on the row lock, then sees last_run = minute: no row
        rows = await self._fetch(
            "WITH won AS (UPDATE gearmill_schedules SET last_run = $2, next_run = $3"
            " WHERE name = $1 AND COALESCE(last_run, 0) < $2 RETURNING 1)"
            " SELECT (SELECT count(*) FROM won),"
            " EXISTS (SELECT 1 FROM gearmill_schedules WHERE name = $1)",
            name,
            minute,
            next_run,
        )
        return bool(rows[0][0]) or not rows[0][1]

    async def dead_ids(self) -> list[int]:
        return [int(r[0]) for r in await self._fetch("SELECT id FROM gearmill_dead_letters")]

    async def take_dead(self, ids: Sequence[int]) -> list[int]:
        if not ids:
            return []
        rows = await self._fetch(
            "DELETE FROM gearmill_dead_letters WHERE id = ANY($1::bigint[]) RETURNING id",
            list(ids),
        )
        return [int(r[0]) for r in rows]

    async def nodes(self, count: bool = True) -> list[tuple[str, int, int]]:
        held = "(SELECT count(*) FROM gearmill_jobs j WHERE j.lease_owner = n.owner)"
        rows = await self._fetch(
            f"SELECT n.owner, n.expires - {_NOW}, {held if count else -1}"
            " FROM gearmill_nodes n ORDER BY n.node"
        )
        return [(str(r[0]), int(r[1]), int(r[2])) for r in rows]

    async def claim(self, owner: str, limit: int) -> list[tuple[int, StoredJob]]:
        rows = sorted(await self._fetch(_CLAIM, owner, limit), key=lambda r: int(r[0]))
        out = []
        for r in rows:
            job = StoredJob(bytes(r[1]), bytes(r[2]), bytes(r[3]), r[4], r[5], bytes(r[6]), r[7])
            self.fences[(job.function, job.unique)] = int(r[8])
            out.append((int(r[0]), job))
        return out

    async def count(self) -> int:
        rows = await self._fetch("SELECT count(*) FROM gearmill_jobs")
        return int(rows[0][0])

    async def ping(self) -> None:
        await self._fetch("SELECT 1")

    async def size_bytes(self) -> int:
        rows = await self._fetch(
            "SELECT COALESCE(sum(pg_total_relation_size(to_regclass(t))), 0)"
            " FROM unnest($1::text[]) AS t",
            _TABLES,
        )
        return int(rows[0][0])

    async def import_gearmand(self, source: str | None = None) -> int:
        """Import gearmand's `-q Postgres` table (default `queue`) from this database."""
        table = check_table(source or "queue")
        try:
            async with self._p().acquire() as con, con.transaction():
                if await con.fetchval("SELECT to_regclass($1)", table) is None:
                    return 0
                # A gearmand still running on the table must not add rows between read and delete.
                await con.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
                # gearmand keeps no submission order; it replays in the table's physical
                # order, so ctid keeps the order within a priority as gearmand would.
                rows = await con.fetch(
                    "SELECT convert_to(function_name, 'UTF8'), convert_to(unique_key, 'UTF8'),"
                    f" COALESCE(data, ''::bytea), COALESCE(priority, 1), COALESCE(when_to_run, 0)"
                    f" FROM {table} ORDER BY priority, ctid"
                )
                if rows:
                    await con.execute(
                        _INSERT,
                        [r[0] for r in rows],
                        [r[1] for r in rows],
                        [r[2] for r in rows],
                        [r[3] for r in rows],
                        [r[4] for r in rows],
                        [b"" for _ in rows],
                        [0 for _ in rows],
                        int(time.time()),
                        None,  # no owner yet: the first server to claim takes them
                    )
                    # Same database, same transaction: imported exactly once.
                    await con.execute(f"DELETE FROM {table}")
        except _ERRORS as e:
            raise self._error(e, f"importing gearmand's table {table}") from None
        if rows:
            log.info("store %s: imported %d jobs from gearmand's %s", self.url, len(rows), table)
        return len(rows)
