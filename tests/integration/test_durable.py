"""Durable background jobs on a real server, per store: the C gearman tool submits, the
server is SIGKILLed, restarted on the same store, and the jobs are drained by gearman -w."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Running, gearmill_cmd, start_gearmand, start_gearmill
from gearmill.protocol.packets import PacketType
from gearmill.server.store import open_store

sys.path.insert(0, str(Path(__file__).parents[1] / "stores"))
from storekit import DURABLE, Backend, gearmand_queue_flags, make_backend, restart_flags

GEARMAN = shutil.which("gearman") or "/usr/bin/gearman"


@pytest.fixture(params=DURABLE, name="store")
def store_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from make_backend(request.param, tmp_path)


def submit(port: int, func: str, *args: str, stdin: str | None = None) -> str:
    """gearman -b; its exit code is 0 even on failure, so the error text is returned."""
    r = subprocess.run(
        [GEARMAN, "-p", str(port), "-b", "-f", func, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return r.stderr.strip()


def drain(port: int, func: str, count: int, out: Path, timeout: float = 60) -> list[str]:
    """gearman -w runs ``count`` jobs one at a time, appending each job's data to ``out``."""
    subprocess.run(
        [
            GEARMAN,
            "-p",
            str(port),
            "-w",
            "-f",
            func,
            "-c",
            str(count),
            "--",
            "sh",
            "-c",
            f"cat >> {out}; echo >> {out}",
        ],
        stdout=subprocess.DEVNULL,
        timeout=timeout,
        check=True,
    )
    return out.read_text().split()


def kill(srv: Running) -> None:
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(10)


def status(srv: Running) -> dict[str, list[int]]:
    with srv.conn() as c:
        text = c.admin(b"status\n").decode()
    rows = [line.split("\t") for line in text.splitlines() if "\t" in line]
    return {r[0]: [int(x) for x in r[1:]] for r in rows}


def wait_queued(srv: Running, func: str, n: int) -> None:
    """Until status counts n queued jobs of func (replay loads stored ones after the start)."""
    deadline = time.monotonic() + 30
    while status(srv).get(func, [0])[0] != n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status(srv).get(func, [0])[0] == n


def test_background_jobs_survive_sigkill_in_priority_and_submission_order(
    store: Backend, tmp_path: Path
) -> None:
    srv = start_gearmill("--store", store.url, *restart_flags(store))
    try:
        lines = "".join(f"n{i}\n" for i in range(200))
        assert submit(srv.port, "durable", "-N", stdin=lines) == ""
        assert submit(srv.port, "durable", "-L", "low1", "low2") == ""
        assert submit(srv.port, "durable", "-I", "high1", "high2") == ""
        # the same unique twice is one job, before and after the restart
        assert submit(srv.port, "durable", "-u", "same", "u1") == ""
        assert submit(srv.port, "durable", "-u", "same", "u1") == ""
        assert submit(srv.port, "fg-only", "-u", "x", "bg") == ""
        assert status(srv)["durable"][0] == 205
        with srv.conn() as c:  # an epoch job for an hour from now
            later = b"%d" % (time.time() + 3600)
            c.send(PacketType.SUBMIT_JOB_EPOCH, b"epoch", b"e1", later, b"due")
            c.expect(PacketType.JOB_CREATED)
        kill(srv)
        srv.restart()
        deadline = time.monotonic() + 30
        while status(srv).get("durable", [0])[0] < 205 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status(srv)["durable"][0] == 205
        # replay goes function by function (status counts a function's stored jobs
        # before they are loaded): the epoch job may be listed a moment later
        deadline = time.monotonic() + 10
        while True:
            with srv.conn() as c:
                shown = c.admin(b"show jobs\n").decode()
            if shown.count("\t") >= 206 * 3 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert shown.count("\t") >= 206 * 3  # every stored job listed, as gearmand lists its own
        # the epoch job came back still scheduled: listed, but no worker gets it yet
        assert status(srv)["epoch"][0] == 1
        with srv.conn() as c:
            c.send(PacketType.CAN_DO, b"epoch")
            c.send(PacketType.GRAB_JOB)
            c.expect(PacketType.NO_JOB)
        assert submit(srv.port, "durable", "-u", "same", "u1") == ""  # coalesced with the stored
        assert status(srv)["durable"][0] == 205
        got = drain(srv.port, "durable", 205, tmp_path / "out")
        assert got[:2] == ["high1", "high2"]
        normal = [g for g in got if g.startswith("n") or g == "u1"]
        assert normal == [f"n{i}" for i in range(200)] + ["u1"]
        assert got[-2:] == ["low1", "low2"]
        # drained jobs are gone from the store: a second restart brings back only fg-only's
        # (a stop, not SIGKILL: the last completion's delete may not be committed yet, and
        # after a kill that job would rightly run again, at-least-once)
        srv.restart()
        deadline = time.monotonic() + 10
        while "fg-only" not in status(srv) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status(srv).get("durable", [0])[0] == 0
        assert status(srv)["fg-only"][0] == 1
    finally:
        srv.stop()


def refused_line(store: str | None, *args: str, env: dict[str, str] | None = None) -> str:
    """`gearmill serve --store STORE ARGS` fails at start: its one line of stderr.
    ``env`` is added to the environment; an empty value removes that variable."""
    r = subprocess.run(
        [sys.executable, "-m", "gearmill.cli.main", "serve", "-p", "0", *args]
        + (["--store", store] if store is not None else []),
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in {**os.environ, **env}.items() if v} if env else None,
    )
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_second_server_on_the_same_sqlite_file_is_refused_naming_the_first(
    tmp_path: Path,
) -> None:
    url = f"sqlite://{tmp_path}/queue.db"
    first = start_gearmill("--store", url)
    try:
        assert f"pid {first.proc.pid}" in refused_line(url)
    finally:
        first.stop()


@pytest.fixture(name="mariadb")
def mariadb_fixture(tmp_path: Path) -> Iterator[Backend]:
    yield from make_backend("mysql", tmp_path)


def _lease_expired(b: Backend) -> bool:
    return b.sql("SELECT expires <= UTC_TIMESTAMP(6) FROM gearmill_owner")[0][0] == 1


def test_a_second_server_on_one_mariadb_database_is_refused_naming_the_first(
    mariadb: Backend,
) -> None:
    first = start_gearmill("--store", mariadb.url, "--lease", "2")
    try:
        line = refused_line(mariadb.url)  # after waiting out the lease it saw: renewed
        assert f"pid {first.proc.pid} on " in line
        assert "stop it, or give this server its own database" in line
        assert "retry after" in line
        # the first keeps its lease (renewed) and its jobs: one server runs them
        assert submit(first.port, "owned", "x") == ""
        assert status(first)["owned"][0] == 1
    finally:
        first.stop()
    # a clean stop gives the lease up: the next server starts at once (default lease)
    second = start_gearmill("--store", mariadb.url)
    try:
        wait_queued(second, "owned", 1)
    finally:
        second.stop()


def test_after_a_sigkill_the_next_server_on_mariadb_starts_once_the_lease_expires(
    mariadb: Backend,
) -> None:
    first = start_gearmill("--store", mariadb.url, "--lease", "3")
    assert submit(first.port, "kept", "x") == ""
    kill(first)
    assert not _lease_expired(mariadb)  # the killed server's lease still runs
    # the next one waits it out (a live owner would have renewed it), then starts
    second = start_gearmill("--store", mariadb.url, "--verbose", "WARNING")
    try:
        log = (second.tmp / "server.log").read_text()
        assert f"(pid {first.proc.pid} on " in log and "waiting" in log, log
        owner = mariadb.sql("SELECT pid FROM gearmill_owner")[0][0]
        assert owner == second.proc.pid
        wait_queued(second, "kept", 1)
    finally:
        second.stop()


def test_a_mariadb_server_that_lost_its_lease_stops_and_stores_nothing_more(
    mariadb: Backend, tmp_path: Path
) -> None:
    first = start_gearmill("--store", mariadb.url, "--lease", "1")
    second = None
    try:
        first.proc.send_signal(signal.SIGSTOP)  # a stall longer than the lease
        deadline = time.monotonic() + 30
        while not _lease_expired(mariadb) and time.monotonic() < deadline:
            time.sleep(0.1)
        second = start_gearmill("--store", mariadb.url, "--lease", "1")
        first.proc.send_signal(signal.SIGCONT)
        assert first.proc.wait(30) == 1  # it stops, as a shared store's server does
        log = (first.tmp / "server.log").read_text()
        assert log.count("LEASE LOST") == 1, log
        # the second owns the store and keeps it
        assert submit(second.port, "after", "y") == ""
        assert status(second)["after"][0] == 1
    finally:
        if first.proc.poll() is None:
            first.proc.send_signal(signal.SIGCONT)
        first.stop()
        if second is not None:
            second.stop()


def test_an_unreachable_store_at_start_is_one_line_without_the_password() -> None:
    line = refused_line("postgresql://gm:s3cret@127.0.0.1:1/gm")
    assert "postgresql://gm:***@127.0.0.1:1/gm" in line and "s3cret" not in line
    assert "start PostgreSQL" in line


@pytest.mark.parametrize(
    ("url", "service"),
    [("redis://127.0.0.1:1/0", "Redis"), ("mysql://gm:pw@127.0.0.1:1/gm", "MariaDB")],
)
def test_an_unreachable_store_says_why_in_words(url: str, service: str) -> None:
    """The drivers' own sentences are not passed on as they come ("Connection refused.;"
    or "[Errno 111]"): the reason is in words, then the fix."""
    line = refused_line(url)
    assert "connection refused" in line.lower(), line
    assert ".;" not in line and "[Errno" not in line, line
    assert line.endswith(f"start {service}, or fix the URL given to --store")


GEARMAND_MYSQL = (
    *("-q", "MySQL", "--mysql-host=127.0.0.1", "--mysql-port=1"),
    *("--mysql-user=gm", "--mysql-password=s3cret", "--mysql-db=gm"),
)


@pytest.mark.parametrize("source", ["env", "toml", "gearmand-flags"])
def test_a_store_named_elsewhere_is_refused_naming_where_and_hiding_the_password(
    source: str, tmp_path: Path
) -> None:
    """An operator who put the store in GEARMILL_STORE, a --config file or gearmand's
    -q flags is told to fix that, not a --store flag never given; no password shown."""
    url = "mysql://gm:s3cret@127.0.0.1:1/gm"
    toml = tmp_path / "gearmill.toml"
    toml.write_text(f'[store]\nurl = "{url}"\n')
    args, env, fix = {
        "env": ((), {"GEARMILL_STORE": url}, "fix the URL given to GEARMILL_STORE"),
        "toml": (
            ("--config", str(toml)),
            {"GEARMILL_STORE": ""},
            f"fix the URL given to {toml}: store.url",
        ),
        "gearmand-flags": (
            GEARMAND_MYSQL,
            None,
            "fix --queue-type and its --mysql-* flags",
        ),
    }[source]
    line = refused_line(None, *args, env=env)
    assert "s3cret" not in line and "mysql://gm:***@127.0.0.1:1/gm" in line, line
    assert line.endswith(f"start MariaDB, or {fix}"), line


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("pgsql://gm:s3cret@127.0.0.1/gm", "use memory, sqlite:///path/queue.db"),
        ("mysql://gm:s3cret@127.0.0.1:99999/gm", "Port out of range"),
        ("redis://:s3cret@127.0.0.1:6379/0?prefix=x:&colour=blue", "'colour'"),
    ],
)
@pytest.mark.parametrize("source", ["flag", "env", "toml"])
def test_a_bad_store_url_is_one_line_without_the_password(
    url: str, why: str, source: str, tmp_path: Path
) -> None:
    toml = tmp_path / "gearmill.toml"
    toml.write_text(f'[store]\nurl = "{url}"\n')
    line = {
        "flag": lambda: refused_line(url),
        "env": lambda: refused_line(None, env={"GEARMILL_STORE": url}),
        "toml": lambda: refused_line(None, "--config", str(toml), env={"GEARMILL_STORE": ""}),
    }[source]()
    assert "s3cret" not in line and why in line, line


def test_a_file_that_is_not_a_database_is_one_line_and_left_as_it_was(tmp_path: Path) -> None:
    """A --store path that holds something else (a typo, the wrong file) is refused in
    one line naming the store, and the file is not touched."""
    other = tmp_path / "notes.txt"
    other.write_bytes(b"not a database, and more than a header's worth of it\n" * 20)
    before = other.read_bytes()
    line = refused_line(f"sqlite://{other}")
    assert str(other) in line and "not a database" in line
    assert other.read_bytes() == before


def test_the_default_store_is_sqlite_in_the_state_folder(tmp_path: Path) -> None:
    env = {**os.environ, "GEARMILL_STATE_DIR": str(tmp_path / "state")}
    del env["GEARMILL_STORE"]
    srv = start_gearmill(env=env)
    try:
        assert submit(srv.port, "kept", "a") == ""
        kill(srv)
        assert (tmp_path / "state" / "queue.db").exists()
        srv.restart()
        deadline = time.monotonic() + 10
        while "kept" not in status(srv) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status(srv)["kept"][0] == 1
    finally:
        srv.stop()


def test_a_store_folder_created_at_start_is_named_once(tmp_path: Path) -> None:
    """A --store path whose folders do not exist: they are created (mode 0700, job data
    goes there) and one line at the default level names them, since a new folder means
    a new, empty queue (after a typo in the path, that is where the jobs went); a
    restart on the same path says nothing more."""
    made = [tmp_path / "new", tmp_path / "new" / "deeper"]
    url = f"sqlite://{made[1]}/queue.db"
    srv = start_gearmill("--store", url)
    try:
        first = (srv.tmp / "server.log").read_text().splitlines()
        assert first[0].endswith(
            f"Created folders {made[0]}, {made[1]} (mode 0700) for the store {url}"
        ), first
        assert first[0].startswith(" NOTICE ") and "Listening on" in first[1]
        assert [oct(f.stat().st_mode & 0o777) for f in made] == ["0o700", "0o700"]
        srv.restart()
        text = (srv.tmp / "server.log").read_text()
        assert text.count("Created folder") == 1 and text.count("Listening on") == 2
    finally:
        srv.stop()


def test_sqlite_commits_reach_the_disk_once_per_group(tmp_path: Path) -> None:
    """One submission at a time is a group of one: each is synced before its JOB_CREATED
    (strace counts the server's fdatasync/fsync calls)."""
    srv = start_gearmill("--store", f"sqlite://{tmp_path}/queue.db")
    counts = tmp_path / "strace.out"
    tracer = subprocess.Popen(
        [
            "strace",
            "-f",
            "-c",
            "-e",
            "trace=fdatasync,fsync",
            "-o",
            str(counts),
            "-p",
            str(srv.proc.pid),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert tracer.stderr is not None
        assert "attached" in tracer.stderr.readline()  # it traces from here on
        n = 40
        for i in range(n):
            assert submit(srv.port, "synced", f"j{i}") == ""
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(10)
        srv.stop()
    syncs = 0
    for line in counts.read_text().splitlines():
        words = line.split()
        if words and words[-1] in ("fdatasync", "fsync"):
            syncs += int(words[3])
    assert syncs >= n, counts.read_text()


def test_jobs_a_c_gearmand_left_in_its_sqlite_queue_are_imported_at_start(
    tmp_path: Path,
) -> None:
    """Switching from gearmand: the same -q libsqlite3 flags, and its queued jobs run."""
    db = tmp_path / "gearmand.db"
    flags = ("-q", "libsqlite3", f"--libsqlite3-db={db}")
    old = start_gearmand(*flags)
    try:
        assert submit(old.port, "moved", "-u", "m1", "one") == ""
        assert submit(old.port, "moved", "-I", "two") == ""
    finally:
        old.stop()
    srv = start_gearmill(*flags)
    try:
        deadline = time.monotonic() + 10  # replay runs once the server listens
        while "moved" not in status(srv) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status(srv)["moved"][0] == 2
        assert sorted(drain(srv.port, "moved", 2, tmp_path / "out")) == ["one", "two"]
    finally:
        srv.stop()


# Interleaved priorities, several of each, with and without uniques (flag, unique, data).
SWITCHED = [
    ("", "u-n1", "n1"),
    ("-L", "u-l1", "l1"),
    ("-I", "u-h1", "h1"),
    ("", "", "n2"),
    ("-I", "", "h2"),
    ("-L", "u-l2", "l2"),
    ("", "u-n3", "n3"),
    ("-I", "u-h3", "h3"),
    ("-L", "", "l3"),
]


def test_switching_from_gearmand_with_its_flags_runs_its_jobs_once_in_order(
    store: Backend, tmp_path: Path
) -> None:
    """An operator stops gearmand and starts gearmill with the same -q flags: every
    queued job runs once, high before normal before low, each priority in submission
    order (gearmand's Redis keys keep none: there only the priorities are kept), the
    import is said at the default log level, and a restart runs nothing again."""
    flags, source = gearmand_queue_flags(store)
    old = start_gearmand(*flags)
    try:
        for flag, unique, data in SWITCHED:
            args = [*([flag] if flag else []), *(["-u", unique] if unique else []), data]
            assert submit(old.port, "switched", *args) == ""
    finally:
        old.stop()
    srv = start_gearmill(*flags)
    try:
        deadline = time.monotonic() + 20  # replay (or a shared store's claim) runs after listen
        while status(srv).get("switched", [0])[0] < len(SWITCHED) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status(srv)["switched"][0] == len(SWITCHED)
        got = drain(srv.port, "switched", len(SWITCHED), tmp_path / "out")
        want = [d for p in ("-I", "", "-L") for f, _, d in SWITCHED if f == p]
        if store.kind == "redis":
            assert [sorted(got[:3]), sorted(got[3:6]), sorted(got[6:])] == [
                sorted(want[:3]),
                sorted(want[3:6]),
                sorted(want[6:]),
            ]
        else:
            assert got == want
    finally:
        srv.stop()
    log = (srv.tmp / "server.log").read_text()
    assert f"imported {len(SWITCHED)} jobs gearmand left in its queue" in log, log
    # Nothing for a restart (of either server) to run again: gearmand's rows were moved,
    # not copied, and the finished jobs left gearmill's table at the stop.
    url = re.search(r"jobs in (\S+)\)", log)
    assert url is not None, log

    async def left() -> tuple[int, int]:
        s = open_store(url[1])
        await s.open()
        try:
            return await s.count(), await s.import_gearmand(source)
        finally:
            await s.close()

    assert asyncio.run(left()) == (0, 0)


def test_two_gearmands_redis_prefixes_stay_two_queues(tmp_path: Path) -> None:
    """Two gearmands on one Redis with two --redis-prefix values had two queues; started
    with the same flags, the two gearmills do not become one shared queue (each is alone
    in `nodes`, each runs only its own jobs)."""
    import gearmill as gm

    servers: list[Running] = []
    with contextlib.ExitStack() as stack:
        for i in range(2):
            b = stack.enter_context(contextlib.contextmanager(make_backend)("redis", tmp_path))
            flags, _ = gearmand_queue_flags(b)
            srv = start_gearmill(*flags)
            stack.callback(srv.stop)
            servers.append(srv)
            assert submit(srv.port, f"only-{i}", "x") == ""
        for i, srv in enumerate(servers):
            with gm.AdminClient(srv.address) as admin:
                assert [n.me for n in admin.nodes()] == [True]
            assert [f for f, c in status(srv).items() if c[0]] == [f"only-{i}"]


def test_gearmands_database_flags_without_a_host_connect_by_unix_socket(tmp_path: Path) -> None:
    """gearmand's `--libpq-conninfo` without host= and `--mysql-host` left at localhost
    reach the database over its unix socket (libpq's and libmysqlclient's rule), where
    pg_hba.conf and MariaDB may authenticate otherwise than over TCP (peer, unix_socket):
    gearmill, given the same flags, connects the same way."""
    from urllib.parse import urlsplit

    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(contextlib.contextmanager(make_backend)("postgresql", tmp_path))
        my = stack.enter_context(contextlib.contextmanager(make_backend)("mysql", tmp_path))
        user = urlsplit(pg.url).username
        pg_flags = ("-q", "Postgres", f"--libpq-conninfo=dbname={pg.db} user={user}")
        my_flags = ("-q", "MySQL", f"--mysql-user={urlsplit(my.url).username}")
        my_flags += (f"--mysql-db={my.db}",)
        for start in (start_gearmand, start_gearmill):
            for flags in (pg_flags, my_flags):
                srv = start(*flags)
                stack.callback(srv.stop)
        # every connection but the query's own: gearmand's one and gearmill's
        over_tcp = pg.sql(
            "SELECT application_name, client_addr FROM pg_stat_activity"
            f" WHERE datname = '{pg.db}' AND pid <> pg_backend_pid()"
        )
        assert len(over_tcp) >= 2 and all(addr is None for _, addr in over_tcp), over_tcp
        hosts = my.sql(
            "SELECT host FROM information_schema.processlist"
            f" WHERE db = '{my.db}' AND id <> CONNECTION_ID()"
        )
        assert len(hosts) >= 2 and all(h == ("localhost",) for h in hosts), hosts


def test_a_gearmand_still_running_on_the_port_keeps_its_jobs(tmp_path: Path) -> None:
    """The operator starts gearmill before stopping gearmand: gearmill cannot have the
    port and stops with one line, and gearmand's queue is left alone (imported, those
    jobs would run twice: gearmand still holds them, and gearmill would at its start)."""
    import sqlite3

    db = tmp_path / "gearmand.db"
    flags = ("-q", "libsqlite3", f"--libsqlite3-db={db}")
    old = start_gearmand(*flags)
    try:
        assert submit(old.port, "kept", "-u", "k1", "one") == ""
        r = subprocess.run(
            [*gearmill_cmd(old.port, *flags)], capture_output=True, text=True, timeout=30
        )
        assert r.returncode == 1
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Address already in use" in lines[0], lines
        con = sqlite3.connect(db)
        try:
            assert con.execute("SELECT unique_key FROM gearman_queue").fetchall() == [("k1",)]
        finally:
            con.close()
        assert status(old)["kept"][0] == 1
    finally:
        old.stop()


def test_a_libpq_conninfo_with_quoted_values_works_as_for_gearmand(tmp_path: Path) -> None:
    """libpq's conninfo allows blanks around '=' and quoted values with blanks (a
    password 'two words'); the string that worked for gearmand works unchanged."""
    from urllib.parse import urlsplit

    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(contextlib.contextmanager(make_backend)("postgresql", tmp_path))
        user = urlsplit(pg.url).username
        conninfo = f"host = 127.0.0.1 dbname = '{pg.db}' user={user} password='two \\'words'"
        flags = ("-q", "Postgres", f"--libpq-conninfo={conninfo}")
        old = start_gearmand(*flags)
        old.stop()  # it connected and made its table
        assert pg.sql("SELECT count(*) FROM queue") == [(0,)]
        srv = start_gearmill(*flags)
        stack.callback(srv.stop)
        assert submit(srv.port, "quoted", "-u", "q1", "x") == ""
        assert pg.sql("SELECT unique_key FROM gearmill_jobs") == [(b"q1",)]


def test_with_store_memory_no_journal_is_attached(tmp_path: Path) -> None:
    """Jobs in memory cost nothing extra: the broker has no journal to fill."""
    import asyncio

    from gearmill.server.app import Server
    from gearmill.server.config import Config, Listener, StoreConfig

    async def journal_of(url: str) -> bool:
        server = Server(Config(listeners=(Listener("127.0.0.1", 0),), store=StoreConfig(url)))
        await server.start()
        try:
            return server.broker.journal is not None
        finally:
            await server.close("test")

    assert asyncio.run(journal_of("memory")) is False
    assert asyncio.run(journal_of(f"sqlite://{tmp_path}/q.db")) is True
