"""Switching from gearmand loses nothing: the jobs a real C gearmand 1.1.20 left in its
persistent queue (-q libsqlite3, -q Postgres, -q MySQL, -q redis) are imported once."""

from __future__ import annotations

import subprocess
from pathlib import Path

from storekit import Backend, durable_fixture, gearmand_queue_flags, run  # noqa: F401

from conftest import Running, start_gearmand
from gearmill.server.store import Store, StoredJob, open_store

# (function, unique, priority flag, data); the last one comes on stdin with NULs in it.
SUBMITTED = [
    (b"resize", b"job-1", "", b"hello world"),
    (b"resize", b"job-2", "-I", b"urgent"),
    (b"report", b"7f0c-uuid-like", "-L", b"later"),
    (b"resize", b"bin", "", b"\x00\x01binary\xff\x00"),
]
PRIORITY = {"-I": 0, "": 1, "-L": 2}


def gearmand_for(b: Backend) -> tuple[Running, str | None]:
    """A gearmand whose persistent queue lives in b's database; the import source to use."""
    flags, source = gearmand_queue_flags(b)
    return start_gearmand(*flags), source


def submit(srv: Running) -> None:
    for function, unique, flag, data in SUBMITTED:
        cmd = ["gearman", "-h", "127.0.0.1", "-p", str(srv.port), "-b", "-f", function.decode()]
        cmd += ["-u", unique.decode()] + ([flag] if flag else [])
        binary = b"\x00" in data
        if not binary:
            cmd.append(data.decode())
        subprocess.run(cmd, input=data if binary else None, check=True, timeout=20)


async def load_all(s: Store) -> list[StoredJob]:
    return [j for _, j in await s.load(0, 1000)]


def test_jobs_a_real_gearmand_left_are_imported_once(durable: Backend) -> None:
    srv, source = gearmand_for(durable)
    try:
        submit(srv)
    finally:
        srv.stop()  # gearmand keeps background jobs in its queue table across a stop

    async def main() -> tuple[int, int, list[StoredJob], int]:
        s: Store = open_store(durable.url)
        await s.open()
        try:
            await s.commit([StoredJob(b"resize", b"job-1", b"already here")], [])
            if durable.kind == "sqlite":
                n = await s.import_gearmand(path=f"{durable.tmp}/gearmand.db")  # type: ignore[call-arg]
            else:
                n = await s.import_gearmand(source)
            again = await s.import_gearmand(source) if durable.kind != "sqlite" else 0
            return n, again, await load_all(s), await s.count()
        finally:
            await s.close()

    n, again, jobs, count = run(main())
    assert n == len(SUBMITTED) and again == 0
    by_key = {(j.function, j.unique): j for j in jobs}
    assert by_key[(b"resize", b"job-1")].data == b"already here"  # a stored key is kept
    for function, unique, flag, data in SUBMITTED[1:]:
        got = by_key[(function, unique)]
        assert (got.data, got.priority, got.when) == (data, PRIORITY[flag], 0)
    assert count == len(SUBMITTED)
    # gearmand's side is empty now: a restarted gearmand would not run them a second time.
    if durable.kind == "redis":
        from storekit import redis_client

        r = redis_client()
        assert list(r.scan_iter(match=f"{source}-*")) == []
        r.close()
    elif durable.kind == "sqlite":
        import sqlite3

        con = sqlite3.connect(f"{durable.tmp}/gearmand.db")
        assert con.execute("SELECT count(*) FROM gearman_queue").fetchone()[0] == 0
        con.close()
    else:
        table = "queue" if durable.kind == "postgresql" else "gearman_queue"
        assert durable.sql(f"SELECT count(*) FROM {table}")[0][0] == 0


def test_gearmands_sqlite_file_becomes_the_store(tmp_path: Path) -> None:
    """`-q libsqlite3 --libsqlite3-db=X` as an alias: the store opens X itself and takes
    over gearmand's table from the same file, in one transaction; epoch jobs keep their time."""
    db = tmp_path / "gearmand.db"
    srv = start_gearmand("-q", "libsqlite3", f"--libsqlite3-db={db}")
    try:
        submit(srv)
    finally:
        srv.stop()
    import sqlite3

    con = sqlite3.connect(db)
    # An epoch job as gearmand writes it (the gearman tool cannot submit one).
    con.execute(
        "INSERT INTO gearman_queue (priority, unique_key, function_name, data, when_to_run)"
        " VALUES (1, 'later', 'resize', X'00ff', 1900000000)"
    )
    con.commit()
    con.close()

    async def main() -> tuple[int, int, list[StoredJob]]:
        s = open_store(f"sqlite://{db}")
        await s.open()
        try:
            return await s.import_gearmand(), await s.import_gearmand(), await load_all(s)
        finally:
            await s.close()

    n, again, jobs = run(main())
    assert (n, again) == (len(SUBMITTED) + 1, 0)
    assert [(j.unique, j.data, j.priority, j.when) for j in jobs] == [
        (u, d, PRIORITY[f], 0) for _, u, f, d in SUBMITTED
    ] + [(b"later", b"\x00\xff", 1, 1_900_000_000)]
