"""SQLite: the embedded default. WAL with synchronous=FULL, every sqlite3 call in one thread.

A lock file beside the database (fcntl.flock, released by the kernel when the process
dies) keeps a second server off the same file; it holds the first one's pid.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ._base import (
    SCHEMA_VERSION,
    DeadLetter,
    Key,
    SingleServer,
    StoredJob,
    StoredSchedule,
    StoreError,
    check_job,
    check_schedule,
    log,
)
from ._sql import (
    DEAD_COLUMNS,
    JOB_COLUMNS,
    SCHEDULE_COLUMNS,
    SQLITE,
    check_table,
    dead_of,
    dead_row,
    job_row,
    schedule_of,
    schedule_row,
)

T = TypeVar("T")
# lines an operator sees at every --verbose level (the server's start and stop)
lifecycle = logging.getLogger("gearmill.lifecycle")

# Disk use stays bounded: the WAL is cut back to this after each checkpoint, and free
# pages left by deleted jobs are given back once they are this many and a quarter of the file.
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
VACUUM_MIN_FREE_PAGES = 1024
HOUSEKEEPING_EVERY = 64  # commits

_INSERT = (
    "INSERT INTO gearmill_jobs (function, unique_key, data, priority, when_to_run, reducer,"
    " attempts, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (function, unique_key) DO NOTHING"
)
_DELETE = "DELETE FROM gearmill_jobs WHERE function = ? AND unique_key = ?"


def path_of(url: str) -> str:
    """sqlite:///abs/path.db -> /abs/path.db; sqlite://rel.db or sqlite:rel.db -> rel.db."""
    rest = url[len("sqlite:") :]
    if rest.startswith("//"):
        rest = rest[2:]
    rest = rest.split("?", 1)[0]
    if not rest:
        raise StoreError(
            f"{url}: no file named; give one, e.g. sqlite:///var/lib/gearmill/queue.db"
        )
    return rest


def _make_folder(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents, each mode 0700 (job data goes in
    them); returns those created, outermost first."""
    missing: list[Path] = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    if not folder.is_dir():  # a file where the folder should be
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
    missing.reverse()
    for f in missing:
        f.mkdir(mode=0o700, exist_ok=True)
    return missing


class SQLiteStore(SingleServer):
    durable = True

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = path_of(url)
        self._thread: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None  # used in the writer thread only
        self._lock_fd: int | None = None
        self._commits = 0

    # -- the writer thread ------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._thread is None:
            raise StoreError(f"{self.url}: store is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, fn, *args)
        except sqlite3.Error as e:
            raise StoreError(f"{self.url}: {e}") from None
        except OSError as e:
            raise StoreError(f"{self.url}: {e.strerror or e}") from None

    def _conn(self) -> sqlite3.Connection:
        assert self._db is not None
        return self._db

    # -- open / close -----------------------------------------------------------------

    def _take_lock(self) -> None:
        lock_path = self.path + ".lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError(
                f"{self.url}: cannot create {lock_path}: {e.strerror}; "
                "give a --store file in a folder this user can write"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(
                f"{self.url} is in use by another gearmill server (pid {pid}); "
                "stop it, or give this server its own --store file"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    async def open(self) -> None:
        if self._thread is not None:
            return
        folder = Path(self.path).parent
        try:
            created = _make_folder(folder)
        except OSError as e:
            raise StoreError(
                f"{self.url}: cannot create folder {e.filename or folder}: {e.strerror}; "
                "give a --store file in a folder this user can write"
            ) from None
        if created:
            # a new folder means a new, empty queue: on a first start, as expected; after a
            # typo in the path, the operator sees here why the jobs are not there
            names = [str(f) for f in created]
            lifecycle.info(
                "Created %s %s (mode 0700) for the store %s",
                "folder" if len(names) == 1 else "folders",
                ", ".join(names),
                self.url,
                extra={"gearman_level": "NOTICE", "folders": names},
            )
        self._take_lock()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="gearmill-sqlite")
        try:
            await self._run(self._open_sync)
        except BaseException:
            await self.close()
            raise

    def _open_sync(self) -> None:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        except sqlite3.Error as e:
            raise StoreError(
                f"{self.url}: cannot open {self.path}: {e}; check the path and its permissions"
            ) from None
        self._db = db
        try:
            self._setup(db)
        except sqlite3.Error as e:  # not a database, corrupt, read-only, locked ...
            raise StoreError(
                f"{self.url}: cannot use {self.path}: {e}; give --store a gearmill "
                "SQLite file or a new path"
            ) from None

    def _setup(self, db: sqlite3.Connection) -> None:
        # auto_vacuum only takes effect before the first table exists (a new file).
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(
                f"{self.url}: SQLite refused WAL mode (got {mode}); "
                "put the file on a local disk (not a network file system)"
            )
        db.execute("PRAGMA synchronous = FULL")
        if db.execute("PRAGMA synchronous").fetchone()[0] != 2:
            raise StoreError(f"{self.url}: SQLite did not accept synchronous=FULL")
        db.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
        db.execute("PRAGMA busy_timeout = 5000")
        self._migrate(db)

    def _migrate(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS gearmill_schema (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM gearmill_schema").fetchone()
            version = 0 if row is None else int(row[0])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.url}: schema version {version} was written by a newer gearmill "
                    f"(this one knows {SCHEMA_VERSION}); upgrade gearmill"
                )
            if row is None:
                db.execute("INSERT INTO gearmill_schema (version) VALUES (0)")
            for v, statements in SQLITE:
                if v > version:
                    for sql in statements:
                        db.execute(sql)
                    db.execute("UPDATE gearmill_schema SET version = ?", (v,))
                    if version:  # a new store is created, not migrated
                        log.info("store %s: schema migrated to version %d", self.url, v)
            db.execute("COMMIT")
            if not version:
                log.info(
                    "store %s: created a new queue, schema version %d", self.url, SCHEMA_VERSION
                )
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(thread, self._close_sync)
            finally:
                thread.shutdown(wait=True)
        self._release_lock()

    def _close_sync(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            try:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as e:  # the WAL stays; the next open replays it
                log.warning("store %s: checkpoint at close failed: %s", self.url, e)
            finally:
                db.close()

    # -- the contract -----------------------------------------------------------------

    async def commit(self, add: Sequence[StoredJob], remove: Sequence[Key]) -> None:
        for job in add:
            check_job(job)
        if add or remove:
            await self._run(self._commit_sync, add, remove)

    def _commit_sync(self, add: Sequence[StoredJob], remove: Sequence[Key]) -> None:
        db = self._conn()
        now = int(time.time())
        db.execute("BEGIN IMMEDIATE")
        try:
            if remove:
                db.executemany(_DELETE, remove)
            if add:
                db.executemany(
                    _INSERT,
                    ((*job_row(j), now) for j in add),
                )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._commits += 1
        if self._commits % HOUSEKEEPING_EVERY == 0:
            self._housekeeping(db)

    def _housekeeping(self, db: sqlite3.Connection) -> None:
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        if free >= VACUUM_MIN_FREE_PAGES and free * 4 >= pages:
            # The pragma frees one page per step and execute() steps a column-less
            # statement only once; executescript steps it to the end.
            db.executescript("PRAGMA incremental_vacuum;")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    async def load(self, after: int, limit: int) -> list[tuple[int, StoredJob]]:
        return await self._run(self._load_sync, after, limit)

    def _load_sync(self, after: int, limit: int) -> list[tuple[int, StoredJob]]:
        rows = self._conn().execute(
            f"SELECT {JOB_COLUMNS} FROM gearmill_jobs WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        )
        return [(r[0], StoredJob(r[1], r[2], r[3], r[4], r[5], r[6], r[7])) for r in rows]

    async def last_seq(self) -> int:
        return await self._run(
            lambda: int(
                self._conn()
                .execute("SELECT COALESCE(max(seq), 0) FROM gearmill_jobs")
                .fetchone()[0]
            )
        )

    async def queued_counts(self, after: int, upto: int) -> list[tuple[bytes, int, int]]:
        def fetch() -> list[tuple[bytes, int, int]]:
            rows = self._conn().execute(
                "SELECT function, priority, count(*) FROM gearmill_jobs"
                " WHERE seq > ? AND seq <= ? GROUP BY function, priority",
                (after, upto),
            )
            return [(bytes(r[0]), int(r[1]), int(r[2])) for r in rows]

        return await self._run(fetch)

    async def load_queued(
        self, function: bytes, priority: int, after: int, limit: int
    ) -> list[tuple[int, StoredJob]]:
        def fetch() -> list[tuple[int, StoredJob]]:
            # "+" keeps SQLite on the sequence order (the primary key) instead of
            # the (function, unique) index and a sort of the whole function
            rows = self._conn().execute(
                f"SELECT {JOB_COLUMNS} FROM gearmill_jobs WHERE seq > ?"
                " AND +function = ? AND +priority = ? ORDER BY seq LIMIT ?",
                (after, function, priority, limit),
            )
            return [(r[0], StoredJob(r[1], r[2], r[3], r[4], r[5], r[6], r[7])) for r in rows]

        return await self._run(fetch)

    async def find(self, keys: Sequence[Key]) -> list[Key]:
        def fetch() -> list[Key]:
            db = self._conn()
            sql = "SELECT 1 FROM gearmill_jobs WHERE function = ? AND unique_key = ?"
            return [k for k in keys if db.execute(sql, k).fetchone() is not None]

        return await self._run(fetch) if keys else []

    async def add_dead(self, dead: Sequence[DeadLetter]) -> list[int]:
        for d in dead:
            check_job(d.job)
        return await self._run(self._add_dead_sync, dead) if dead else []

    def _add_dead_sync(self, dead: Sequence[DeadLetter]) -> list[int]:
        db = self._conn()
        sql = (
            f"INSERT INTO gearmill_dead_letters ({DEAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        db.execute("BEGIN IMMEDIATE")
        try:
            ids = [int(db.execute(sql, dead_row(d)).lastrowid or 0) for d in dead]
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return ids

    async def list_dead(self, after: int, limit: int) -> list[tuple[int, DeadLetter]]:
        def fetch() -> list[tuple[int, DeadLetter]]:
            rows = self._conn().execute(
                f"SELECT id, {DEAD_COLUMNS} FROM gearmill_dead_letters WHERE id > ?"
                " ORDER BY id LIMIT ?",
                (after, limit),
            )
            return [dead_of(r) for r in rows]

        return await self._run(fetch)

    async def remove_dead(self, ids: Sequence[int]) -> None:
        def delete() -> None:
            db = self._conn()
            with db:
                db.executemany(
                    "DELETE FROM gearmill_dead_letters WHERE id = ?", [(i,) for i in ids]
                )

        if ids:
            await self._run(delete)

    async def put_schedule(self, schedule: StoredSchedule) -> None:
        check_schedule(schedule)

        def put() -> None:
            db = self._conn()
            with db:
                db.execute(
                    f"INSERT OR REPLACE INTO gearmill_schedules ({SCHEDULE_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    schedule_row(schedule),
                )

        await self._run(put)

    async def list_schedules(self) -> list[StoredSchedule]:
        def fetch() -> list[StoredSchedule]:
            rows = self._conn().execute(
                f"SELECT {SCHEDULE_COLUMNS} FROM gearmill_schedules ORDER BY name"
            )
            return [schedule_of(r) for r in rows]

        return await self._run(fetch)

    async def remove_schedule(self, name: str) -> bool:
        def delete() -> bool:
            db = self._conn()
            with db:
                cur = db.execute("DELETE FROM gearmill_schedules WHERE name = ?", (name,))
            return cur.rowcount > 0

        return await self._run(delete)

    async def count(self) -> int:
        return await self._run(
            lambda: int(self._conn().execute("SELECT count(*) FROM gearmill_jobs").fetchone()[0])
        )

    async def ping(self) -> None:
        await self._run(lambda: self._conn().execute("SELECT 1").fetchone())

    async def size_bytes(self) -> int:
        def size() -> int:
            total = 0
            for suffix in ("", "-wal"):
                try:
                    total += os.stat(self.path + suffix).st_size
                except FileNotFoundError:
                    pass
            return total

        return await self._run(size)

    async def import_gearmand(self, source: str | None = None, *, path: str | None = None) -> int:
        """Import gearmand's `-q libsqlite3` table: from this file, or from gearmand's `path`."""
        table = check_table(source or "gearman_queue")
        return await self._run(self._import_sync, table, path)

    def _import_sync(self, table: str, path: str | None) -> int:
        db = self._conn()
        schema = "main"
        if path is not None:
            if not os.path.exists(path):
                raise StoreError(f"{self.url}: gearmand database {path} does not exist")
            db.execute("ATTACH DATABASE ? AS gearmand", (path,))
            schema = "gearmand"
        try:
            found = db.execute(
                f"SELECT 1 FROM {schema}.sqlite_master WHERE type = 'table' AND name = ?",
                (table,),
            ).fetchone()
            if found is None:
                return 0
            columns = {r[1] for r in db.execute(f"PRAGMA {schema}.table_info({table})")}
            when = "when_to_run" if "when_to_run" in columns else "0"
            now = int(time.time())
            db.execute("BEGIN IMMEDIATE")
            try:
                # gearmand keeps no submission order; its rowid is the closest thing.
                rows = db.execute(
                    f"SELECT CAST(function_name AS BLOB), CAST(unique_key AS BLOB),"
                    f" CAST(data AS BLOB), COALESCE(priority, 1), COALESCE({when}, 0)"
                    f" FROM {schema}.{table} ORDER BY rowid"
                ).fetchall()
                db.executemany(
                    _INSERT,
                    ((f, u, d or b"", p, w, b"", 0, now) for f, u, d, p, w in rows),
                )
                if schema == "main":
                    db.execute(f"DELETE FROM {schema}.{table}")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            if schema != "main":
                # Another file cannot share our WAL transaction; a crash between the two
                # commits only means the next import re-adds keys that are already here.
                db.execute(f"DELETE FROM {schema}.{table}")
            if rows:
                log.info(
                    "store %s: imported %d jobs from gearmand's %s", self.url, len(rows), table
                )
            return len(rows)
        finally:
            if path is not None:
                db.execute("DETACH DATABASE gearmand")
