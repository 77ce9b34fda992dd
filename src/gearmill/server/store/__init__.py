"""Durable job stores behind one small interface.

    store = open_store("sqlite:///var/lib/gearmill/queue.db")   # or memory, postgresql://...,
    await store.open()                                          # mysql://..., redis://...
    await store.commit(add=[StoredJob(b"resize", b"u1", b"data")], remove=[])
    for seq, job in await store.load(after=0, limit=1000): ...

The edge (a writer task) groups what the broker's journal says into one `commit` per
group and releases the held JOB_CREATED replies once it returns. Nothing here imports
the broker or the edge.
"""

from __future__ import annotations

from typing import Any

from ._base import (
    PRIORITY_HIGH,
    PRIORITY_LOW,
    PRIORITY_NORMAL,
    SCHEMA_VERSION,
    DeadLetter,
    Key,
    Lane,
    SingleServer,
    Store,
    StoredJob,
    StoredSchedule,
    StoreError,
    about,
    hide_password,
)
from ._memory import MemoryStore

__all__ = [
    "PRIORITY_HIGH",
    "PRIORITY_LOW",
    "PRIORITY_NORMAL",
    "SCHEMA_VERSION",
    "DeadLetter",
    "Key",
    "Lane",
    "MemoryStore",
    "SingleServer",
    "Store",
    "StoreError",
    "StoredJob",
    "StoredSchedule",
    "about",
    "hide_password",
    "open_store",
]

_EXTRA = {"postgresql": "asyncpg", "mysql": "asyncmy", "redis": "redis"}


def _missing(kind: str, e: ImportError) -> StoreError:
    return StoreError(
        f"the {kind} store needs {_EXTRA[kind]} ({e.name} is not installed); "
        f"install it with: pip install 'gearmill[{kind}]'"
    )


def open_store(url: str, *, lease: float | None = None, **options: Any) -> Store:
    """The store a URL names (not yet opened; call `await store.open()`).

    memory | sqlite:///abs/path.db | postgresql://user:pw@host:5432/db |
    mysql://user:pw@host:3306/db (MariaDB) | redis://:pw@host:6379/0?prefix=gearmill:
    Options: connect_timeout (seconds) for the network stores. ``lease``: seconds the
    MariaDB/MySQL store's owner lease lasts (--lease; shared stores get theirs from
    server/cluster.py).
    """
    shown = hide_password(url)
    scheme = url.split(":", 1)[0].lower() if ":" in url else url.lower()
    if scheme == "memory":
        return MemoryStore(shown)
    if scheme == "sqlite":
        from ._sqlite import SQLiteStore

        return SQLiteStore(url)
    if scheme in ("postgresql", "postgres"):
        try:
            from ._postgresql import PostgreSQLStore
        except ImportError as e:
            raise _missing("postgresql", e) from None
        return PostgreSQLStore(shown, url, **options)
    if scheme in ("mysql", "mariadb"):
        try:
            from ._mysql import MySQLStore
        except ImportError as e:
            raise _missing("mysql", e) from None
        if lease is not None:
            options["lease"] = lease
        return MySQLStore(shown, url, **options)
    if scheme in ("redis", "rediss", "unix"):
        try:
            from ._redis import RedisStore
        except ImportError as e:
            raise _missing("redis", e) from None
        return RedisStore(shown, url, **options)
    raise StoreError(
        f"unknown store {shown!r}; use memory, sqlite:///path/queue.db, postgresql://..., "
        "mysql://... or redis://..."
    )
