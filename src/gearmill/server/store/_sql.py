"""The schema the SQL stores share, as one list of migrations per dialect.

Version 1 already holds what retries and several servers need: attempts, a lease
(owner, expiry, and a fencing number that grows with every lease so a stale owner's
late update can be refused), a dead-letter table and recurring schedules.
"""

from __future__ import annotations

import re
from typing import Any

from ._base import DeadLetter, StoredJob, StoredSchedule, StoreError

TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def check_table(name: str) -> str:
    if not TABLE_NAME.match(name):
        raise StoreError(f"table name {name!r} must be letters, digits and _ only")
    return name


# (version, statements) per dialect; each version runs in order, once.
SQLITE: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE gearmill_jobs (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                function BLOB NOT NULL,
                unique_key BLOB NOT NULL,
                data BLOB NOT NULL,
                priority INTEGER NOT NULL,
                when_to_run INTEGER NOT NULL DEFAULT 0,
                reducer BLOB NOT NULL DEFAULT x'',
                attempts INTEGER NOT NULL DEFAULT 0,
                lease_owner TEXT,
                lease_expires INTEGER,
                fence INTEGER NOT NULL DEFAULT 0,
                created INTEGER NOT NULL,
                UNIQUE (function, unique_key))""",
            "CREATE INDEX gearmill_jobs_lease ON gearmill_jobs (lease_expires)"
            " WHERE lease_expires IS NOT NULL",
            """CREATE TABLE gearmill_dead_letters (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                function BLOB NOT NULL,
                unique_key BLOB NOT NULL,
                data BLOB NOT NULL,
                priority INTEGER NOT NULL,
                when_to_run INTEGER NOT NULL DEFAULT 0,
                reducer BLOB NOT NULL DEFAULT x'',
                attempts INTEGER NOT NULL,
                error TEXT NOT NULL,
                failed_at INTEGER NOT NULL)""",
            """CREATE TABLE gearmill_schedules (
                name TEXT PRIMARY KEY,
                function BLOB NOT NULL,
                unique_key BLOB NOT NULL,
                data BLOB NOT NULL,
                priority INTEGER NOT NULL DEFAULT 1,
                reducer BLOB NOT NULL DEFAULT x'',
                every_seconds INTEGER,
                cron TEXT,
                next_run INTEGER NOT NULL,
                last_run INTEGER,
                fence INTEGER NOT NULL DEFAULT 0,
                enabled INTEGER NOT NULL DEFAULT 1)""",
        ],
    ),
    (2, []),  # version 2 is the nodes table of shared stores: PostgreSQL only
    (3, []),  # version 3 is the owner's lease of a one-server store: MariaDB/MySQL only
]

POSTGRESQL: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE gearmill_jobs (
                seq BIGSERIAL PRIMARY KEY,
                function BYTEA NOT NULL,
                unique_key BYTEA NOT NULL,
                data BYTEA NOT NULL,
                priority SMALLINT NOT NULL,
                when_to_run BIGINT NOT NULL DEFAULT 0,
                reducer BYTEA NOT NULL DEFAULT ''::bytea,
                attempts INTEGER NOT NULL DEFAULT 0,
                lease_owner TEXT,
                lease_expires BIGINT,
                fence BIGINT NOT NULL DEFAULT 0,
                created BIGINT NOT NULL,
                UNIQUE (function, unique_key))""",
            "CREATE INDEX gearmill_jobs_lease ON gearmill_jobs (lease_expires)"
            " WHERE lease_expires IS NOT NULL",
            """CREATE TABLE gearmill_dead_letters (
                id BIGSERIAL PRIMARY KEY,
                function BYTEA NOT NULL,
                unique_key BYTEA NOT NULL,
                data BYTEA NOT NULL,
                priority SMALLINT NOT NULL,
                when_to_run BIGINT NOT NULL DEFAULT 0,
                reducer BYTEA NOT NULL DEFAULT ''::bytea,
                attempts INTEGER NOT NULL,
                error TEXT NOT NULL,
                failed_at BIGINT NOT NULL)""",
            """CREATE TABLE gearmill_schedules (
                name TEXT PRIMARY KEY,
                function BYTEA NOT NULL,
                unique_key BYTEA NOT NULL,
                data BYTEA NOT NULL,
                priority SMALLINT NOT NULL DEFAULT 1,
                reducer BYTEA NOT NULL DEFAULT ''::bytea,
                every_seconds INTEGER,
                cron TEXT,
                next_run BIGINT NOT NULL,
                last_run BIGINT,
                fence BIGINT NOT NULL DEFAULT 0,
                enabled BOOLEAN NOT NULL DEFAULT TRUE)""",
        ],
    ),
    (
        2,
        [
            # one heartbeat per server sharing the store (server/cluster.py); owner is
            # "<node id>#<token>", expires in the database's own milliseconds
            """CREATE TABLE gearmill_nodes (
                node TEXT PRIMARY KEY,
                owner TEXT NOT NULL,
                expires BIGINT NOT NULL)""",
            "CREATE INDEX gearmill_jobs_owner ON gearmill_jobs (lease_owner)",
        ],
    ),
    (3, []),  # version 3 is the owner's lease of a one-server store: MariaDB/MySQL only
]

# InnoDB, binary keys (gearmand's function names and uniques are bytes).
MYSQL: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE IF NOT EXISTS gearmill_jobs (
                seq BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
                function VARBINARY(512) NOT NULL,
                unique_key VARBINARY(255) NOT NULL,
                data LONGBLOB NOT NULL,
                priority TINYINT NOT NULL,
                when_to_run BIGINT NOT NULL DEFAULT 0,
                reducer VARBINARY(512) NOT NULL DEFAULT '',
                attempts INT NOT NULL DEFAULT 0,
                lease_owner VARCHAR(255) NULL,
                lease_expires BIGINT NULL,
                fence BIGINT NOT NULL DEFAULT 0,
                created BIGINT NOT NULL,
                UNIQUE KEY gearmill_jobs_key (function, unique_key),
                KEY gearmill_jobs_lease (lease_expires)
            ) ENGINE=InnoDB""",
            """CREATE TABLE IF NOT EXISTS gearmill_dead_letters (
                id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
                function VARBINARY(512) NOT NULL,
                unique_key VARBINARY(255) NOT NULL,
                data LONGBLOB NOT NULL,
                priority TINYINT NOT NULL,
                when_to_run BIGINT NOT NULL DEFAULT 0,
                reducer VARBINARY(512) NOT NULL DEFAULT '',
                attempts INT NOT NULL,
                error TEXT NOT NULL,
                failed_at BIGINT NOT NULL
            ) ENGINE=InnoDB""",
            """CREATE TABLE IF NOT EXISTS gearmill_schedules (
                name VARCHAR(255) NOT NULL PRIMARY KEY,
                function VARBINARY(512) NOT NULL,
                unique_key VARBINARY(255) NOT NULL,
                data LONGBLOB NOT NULL,
                priority TINYINT NOT NULL DEFAULT 1,
                reducer VARBINARY(512) NOT NULL DEFAULT '',
                every_seconds INT NULL,
                cron VARCHAR(255) NULL,
                next_run BIGINT NOT NULL,
                last_run BIGINT NULL,
                fence BIGINT NOT NULL DEFAULT 0,
                enabled BOOLEAN NOT NULL DEFAULT TRUE
            ) ENGINE=InnoDB""",
        ],
    ),
    (2, []),  # version 2 is the nodes table of shared stores: PostgreSQL only
    (
        3,
        [
            # one row: the server that owns this database and until when (the database's
            # own clock, UTC); a second server starts only once the lease has expired
            """CREATE TABLE IF NOT EXISTS gearmill_owner (
                id TINYINT NOT NULL PRIMARY KEY,
                owner VARCHAR(255) NOT NULL,
                host VARCHAR(255) NOT NULL,
                pid INT NOT NULL,
                since DATETIME(6) NOT NULL,
                expires DATETIME(6) NOT NULL
            ) ENGINE=InnoDB""",
            "INSERT IGNORE INTO gearmill_owner VALUES"
            " (1, '', '', 0, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) - INTERVAL 1 SECOND)",
        ],
    ),
]

JOB_COLUMNS = "seq, function, unique_key, data, priority, when_to_run, reducer, attempts"

DEAD_COLUMNS = (
    "function, unique_key, data, priority, when_to_run, reducer, attempts, error, failed_at"
)


JobRow = tuple[bytes, bytes, bytes, int, int, bytes, int]


def job_row(j: StoredJob) -> JobRow:
    """A job's columns, in the order every table lists them (function ... attempts)."""
    return (j.function, j.unique, j.data, j.priority, j.when, j.reducer, j.attempts)


def dead_row(dead: DeadLetter) -> tuple[bytes, bytes, bytes, int, int, bytes, int, str, int]:
    return (*job_row(dead.job), dead.error, dead.failed_at)


def dead_of(r: Any) -> tuple[int, DeadLetter]:
    """(id, dead letter) from a row of `id, DEAD_COLUMNS`."""
    job = StoredJob(
        bytes(r[1]), bytes(r[2]), bytes(r[3]), int(r[4]), int(r[5]), bytes(r[6]), int(r[7])
    )
    return int(r[0]), DeadLetter(job, str(r[8]), int(r[9]))


# unique_key is not used (a tick's unique id is made from the name and the minute)
SCHEDULE_COLUMNS = "name, function, unique_key, data, priority, cron, next_run, last_run, enabled"


def schedule_row(s: StoredSchedule) -> tuple[str, bytes, bytes, bytes, int, str, int, int, bool]:
    return (s.name, s.function, b"", s.data, s.priority, s.cron, s.next_run, s.last_run, s.enabled)


def schedule_of(r: Any) -> StoredSchedule:
    """From a row of SCHEDULE_COLUMNS."""
    return StoredSchedule(
        str(r[0]),
        bytes(r[1]),
        str(r[5]),
        bytes(r[3]),
        int(r[4]),
        bool(r[8]),
        int(r[6]),
        int(r[7] or 0),
    )
