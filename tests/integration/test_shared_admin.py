"""Admin commands on servers sharing one store (PostgreSQL, Redis): one dead set seen
from every server (a job that died on one is listed and requeued through another, and
runs once), and ``nodes``, the servers sharing the store, through the admin protocol,
AdminClient, ``gearmill admin --nodes`` and the HTTP API's /api/nodes."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Running, start_gearmill, wait_until
from gearmill.client.admin import AdminClient
from gearmill.errors import ServerError

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "stores"))
from storekit import Backend, make_backend
from test_durable import kill, submit
from test_http import Web
from test_takeover import LEASE, log_of, runs, worker

CAN_DO, GRAB_JOB, JOB_CREATED, WORK_FAIL = 1, 9, 8, 14
JOB_ASSIGN, SUBMIT_JOB_BG = 11, 18


@pytest.fixture(params=["postgresql", "redis"], name="common_store")
def common_store_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from make_backend(request.param, tmp_path)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gearmill.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=20,
    )


def start(url: str, node: str, *args: str) -> Running:
    return start_gearmill(
        "--store", url, "--node-id", node, "--lease", LEASE, "--verbose", "INFO", *args
    )


def dead_handles(srv: Running) -> list[str]:
    with AdminClient(srv.address) as admin:
        return [d.handle for d in admin.dead_jobs()]


def test_a_job_dead_on_one_server_is_requeued_through_another_and_runs_once(
    common_store: Backend, tmp_path: Path
) -> None:
    # one failure and the job is dead: WORK_FAIL retries (opt-in), at most one attempt
    dying = ("--retry-on", "fail", "--retry-max-attempts", "1")
    a = start(common_store.url, "a", *dying)
    b = start(common_store.url, "b", *dying)
    out = tmp_path / "done"
    out.touch()
    workers: list[subprocess.Popen[bytes]] = []
    try:
        with a.conn() as c, a.conn() as w:
            c.send(SUBMIT_JOB_BG, b"takeover", b"img-1", b"payload-1")
            handle = c.expect(JOB_CREATED)
            w.send(CAN_DO, b"takeover")
            w.send(GRAB_JOB)
            assert w.expect(JOB_ASSIGN) == handle + b"\x00takeover\x00payload-1"
            w.send(WORK_FAIL, handle)
            wait_until(lambda: len(dead_handles(a)) == 1, "the job in a's dead set", timeout=30)
        # b did not see it die: it reads the store's dead set on its heartbeat
        wait_until(lambda: len(dead_handles(b)) == 1, "a's dead job listed by b", timeout=30)
        with AdminClient(b.address) as admin:
            (dead,) = admin.dead_jobs()
            assert (dead.function, dead.unique, dead.reason) == ("takeover", "img-1", "fail")
            assert admin.dead_job(dead.handle).data == b"payload-1"
        # real C workers on both servers: a job queued twice would run twice
        workers = [worker(a.port, out), worker(b.port, out)]
        done = cli("admin", "-p", str(b.port), "--dead-requeue", "all")
        assert (done.returncode, done.stdout) == (0, "1\n"), done.stderr
        # a still lists the letter until its next heartbeat: its requeue must not run it again
        with a.conn() as c:
            again = c.admin(b"dead requeue all\n")
        assert again in (b"OK 0\n", b"OK 1\n")
        if again == b"OK 1\n":
            wait_until(
                lambda: "requeued or purged on another server" in log_of(a),
                "a's requeue refused by the store",
                timeout=30,
            )
        wait_until(lambda: runs(out) == {"payload-1": 1}, "the requeued job ran", timeout=30)
        for srv in (a, b):
            wait_until(
                lambda s=srv: dead_handles(s) == [], f"{srv.address}'s dead set empty", timeout=30
            )  # type: ignore[misc]
            with srv.conn() as c:
                assert c.admin(b"show jobs\n") == b".\n"
        assert runs(out) == {"payload-1": 1}
    finally:
        for p in workers:
            p.kill()
            p.wait()
        a.stop()
        b.stop()


def test_a_purge_on_one_server_empties_the_others_dead_set(common_store: Backend) -> None:
    dying = ("--retry-on", "fail", "--retry-max-attempts", "1")
    a = start(common_store.url, "a", *dying)
    b = start(common_store.url, "b", *dying)
    try:
        with b.conn() as c, b.conn() as w:
            for i in range(3):
                c.send(SUBMIT_JOB_BG, b"thumbs", b"u%d" % i, b"x")
                c.expect(JOB_CREATED)
            w.send(CAN_DO, b"thumbs")
            for _ in range(3):
                w.send(GRAB_JOB)
                handle = w.expect(JOB_ASSIGN).split(b"\x00")[0]
                w.send(WORK_FAIL, handle)
        wait_until(lambda: len(dead_handles(a)) == 3, "b's dead jobs listed by a", timeout=30)
        with AdminClient(a.address) as admin:
            assert admin.dead_status() == {"thumbs": 3}
        purged = cli("admin", "-p", str(a.port), "--dead-purge", "function", "thumbs")
        assert purged.stdout == "3\n", purged.stderr
        wait_until(lambda: dead_handles(b) == [], "b's dead set empty after a's purge", timeout=30)
        # and b does not write them back: a restart of a loads nothing
        a.stop()
        a = start(common_store.url, "a", *dying)
        assert dead_handles(a) == []
    finally:
        a.stop()
        b.stop()


def test_every_servers_metrics_count_the_shared_dead_set(common_store: Backend) -> None:
    """/metrics of a server that never saw the function counts the jobs that died on
    another (what an operator alerts on), and drops them once purged elsewhere."""
    dying = ("--retry-on", "fail", "--retry-max-attempts", "1", "--http", "127.0.0.1:0")
    a = start(common_store.url, "a", *dying)
    b = start(common_store.url, "b", *dying)
    try:
        web_a = Web(a, a.tmp / "server.log")
        web_b = Web(b, b.tmp / "server.log")

        def dead_gauge(web: Web) -> float | None:
            return web.metrics().get(("gearmill_dead_jobs", (("function", "thumbs"),)))

        with b.conn() as c, b.conn() as w:
            for i in range(2):
                c.send(SUBMIT_JOB_BG, b"thumbs", b"m%d" % i, b"x")
                c.expect(JOB_CREATED)
            w.send(CAN_DO, b"thumbs")
            for _ in range(2):
                w.send(GRAB_JOB)
                w.send(WORK_FAIL, w.expect(JOB_ASSIGN).split(b"\x00")[0])
        wait_until(lambda: dead_gauge(web_b) == 2, "b's metrics count its dead jobs", timeout=30)
        wait_until(lambda: dead_gauge(web_a) == 2, "a's metrics count b's dead jobs", timeout=30)
        purged = cli("admin", "-p", str(a.port), "--dead-purge", "all")
        assert purged.stdout == "2\n", purged.stderr
        wait_until(
            lambda: dead_gauge(web_b) in (0, None), "b's metrics after a's purge", timeout=30
        )
        assert dead_gauge(web_a) in (0, None)
    finally:
        a.stop()
        b.stop()


def nodes(srv: Running) -> dict[str, tuple[int, bool]]:
    with AdminClient(srv.address) as admin:
        return {n.node: (n.jobs, n.me) for n in admin.nodes()}


def test_nodes_lists_the_servers_sharing_the_store_until_one_dies(common_store: Backend) -> None:
    a = start(common_store.url, "a")
    b = start(common_store.url, "b")
    try:
        names = "".join(f"job-{i}\n" for i in range(3))
        assert submit(b.port, "nobody", "-N", stdin=names) == ""  # no worker: b holds them
        # each server's list is as of its last heartbeat
        wait_until(
            lambda: nodes(a) == {"a": (0, True), "b": (3, False)}, "a's view of both", timeout=30
        )
        wait_until(
            lambda: nodes(b) == {"a": (0, False), "b": (3, True)}, "b's view of both", timeout=30
        )
        with a.conn() as c:
            rows = [r.split(b"\t") for r in c.admin(b"nodes\n").splitlines()[:-1]]
        assert [r[0] for r in rows] == [b"a", b"b"]
        assert all(float(r[2]) > 0 for r in rows)  # seconds until each heartbeat expires
        out = cli("admin", "-p", str(b.port), "--nodes")
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert [x.split("\t")[0] for x in lines] == ["a", "b", "."]
        assert lines[1].split("\t")[3:] == ["3", "self"]
        kill(b)
        # after b's lease a declares it dead, takes its jobs and lists only itself
        wait_until(lambda: nodes(a) == {"a": (3, True)}, "b gone from a's list", timeout=30)
    finally:
        a.stop()
        b.stop()


def test_the_first_nodes_after_a_quiet_while_shows_the_live_servers_as_live(
    common_store: Backend,
) -> None:
    """Nobody asked a for the list since it joined (before b did), and its next full read
    is ten heartbeats away: its first answer still lists b, and neither heartbeat as
    expired (a list read at the join said a had expired and b was not there)."""
    lease = "6"  # heartbeats every 2 s, a full read every 20 s
    a = start_gearmill("--store", common_store.url, "--node-id", "a", "--lease", lease)
    b = start_gearmill("--store", common_store.url, "--node-id", "b", "--lease", lease)
    try:
        time.sleep(2 * float(lease) - 2)  # past a's lease, well before its tenth beat
        with AdminClient(a.address) as admin:
            listed = admin.nodes()
        assert [(n.node, n.me) for n in listed] == [("a", True), ("b", False)]
        assert [n.node for n in listed if n.expires_in is None] == []
    finally:
        a.stop()
        b.stop()


def test_nodes_on_a_store_that_is_not_shared_says_so_in_one_line(tmp_path: Path) -> None:
    srv = start_gearmill("--store", f"sqlite://{tmp_path / 'jobs.db'}")
    try:
        with AdminClient(srv.address) as admin, pytest.raises(ServerError) as e:
            admin.nodes()
        assert e.value.code == "NOT_SHARED"
        out = cli("admin", "-p", str(srv.port), "--nodes")
        assert out.returncode == 1
        assert out.stderr.count("\n") == 1 and "not shared" in out.stderr.replace("+", " ")
    finally:
        srv.stop()


@pytest.fixture(name="postgresql")
def postgresql_fixture(tmp_path: Path) -> Iterator[Backend]:
    yield from make_backend("postgresql", tmp_path)


def test_the_http_api_lists_the_servers_sharing_the_store_as_nodes_does(
    postgresql: Backend,
) -> None:
    a = start(postgresql.url, "a", "--http", "127.0.0.1:0")
    b = start(postgresql.url, "b")
    web = Web(a, a.tmp / "server.log")

    def api() -> dict[str, tuple[int, bool]]:
        got = web.json("/api/nodes")
        assert isinstance(got, dict) and got["shared"] is True
        return {n["node"]: (n["jobs"], n["self"]) for n in got["nodes"]}

    try:
        names = "".join(f"job-{i}\n" for i in range(3))
        assert submit(b.port, "nobody", "-N", stdin=names) == ""  # no worker: b holds them
        wait_until(
            lambda: api() == {"a": (0, True), "b": (3, False)}, "both on a's /api/nodes", timeout=30
        )
        assert api() == nodes(a)  # what the admin command says
        got = web.json("/api/nodes")
        assert isinstance(got, dict)
        for n in got["nodes"]:
            assert n["owner"].startswith(n["node"] + "#")
            assert 0 < n["heartbeat_left"] <= float(LEASE) and n["expired"] is False
        kill(b)
        wait_until(lambda: api() == {"a": (3, True)}, "b gone from a's /api/nodes", timeout=30)
    finally:
        a.stop()
        b.stop()


def test_the_http_api_says_a_store_of_one_server_is_not_shared(tmp_path: Path) -> None:
    srv = start_gearmill("--store", f"sqlite://{tmp_path / 'jobs.db'}", "--http", "127.0.0.1:0")
    try:
        assert Web(srv, srv.tmp / "server.log").json("/api/nodes") == {
            "shared": False,
            "nodes": [],
        }
    finally:
        srv.stop()
