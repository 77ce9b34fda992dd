"""Several servers on one store: three gearmill servers share one PostgreSQL database
(or one Redis prefix); real C ``gearman -w`` workers run the jobs. One server is
SIGKILLed mid-run and the others take its jobs over; all three are killed and started
again and no job runs twice. Jobs are counted by their data (unique per job) in the
workers' output."""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Running, start_gearmill

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "stores"))
from storekit import Backend, PrivatePostgres, PrivateRedis, make_backend
from test_durable import GEARMAN, kill, submit

LEASE = "2"  # seconds: short, so the test is quick
PER_SERVER = 150


@pytest.fixture(params=["postgresql", "redis"], name="common_store")
def common_store_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from make_backend(request.param, tmp_path)


def start_three(url: str) -> list[Running]:
    return [
        start_gearmill("--store", url, "--node-id", f"n{i}", "--lease", LEASE, "-v", "-v")
        for i in range(3)
    ]


def worker(port: int, out: Path, pause: float = 0.0) -> subprocess.Popen[bytes]:
    """A C gearman -w appending each job's data as one line to ``out``."""
    sleep = f"sleep {pause}; " if pause else ""
    # one write per job (O_APPEND): lines of concurrent workers do not interleave
    job = f"{sleep}printf '%s\\n' \"$(cat)\" >> {out}"
    return subprocess.Popen(
        [GEARMAN, "-p", str(port), "-w", "-f", "takeover", "--", "sh", "-c", job],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def runs(out: Path) -> collections.Counter[str]:
    return collections.Counter(out.read_text().split())


def wait_all(out: Path, expected: set[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if set(runs(out)) >= expected:
            return
        time.sleep(0.1)
    missing = sorted(expected - set(runs(out)))
    raise AssertionError(f"{len(missing)} jobs never ran, e.g. {missing[:5]}")


def wait_store_empty(store: Backend, timeout: float = 60) -> None:
    """Until no job is left in the store: every completion is committed, and a job
    that could still run a second time would be a row there (and would run before
    the store empties), so the runs counted after this are final."""

    async def count() -> int:
        s = store.store()
        await s.open()
        try:
            return await s.count()
        finally:
            await s.close()

    deadline = time.monotonic() + timeout
    while (left := asyncio.run(count())) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == 0, f"{left} jobs still stored"


def submit_many(srv: Running, tag: str, n: int) -> list[str]:
    names = [f"{tag}-{i}" for i in range(n)]
    assert submit(srv.port, "takeover", "-N", stdin="".join(x + "\n" for x in names)) == ""
    return names


def stop_all(workers: list[subprocess.Popen[bytes]], servers: list[Running]) -> None:
    for w in workers:
        w.kill()
        w.wait(10)
    for srv in servers:
        srv.stop()


def log_of(srv: Running) -> str:
    return (srv.tmp / "server.log").read_text()


def test_survivors_take_over_a_killed_servers_jobs_and_a_restart_runs_nothing_twice(
    common_store: Backend, tmp_path: Path
) -> None:
    out = tmp_path / "done"
    out.touch()
    servers = start_three(common_store.url)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        submitted: list[str] = []
        for i, srv in enumerate(servers):
            submitted += submit_many(srv, f"s{i}", PER_SERVER)
        # one slow worker on the server that will die (a job is running there when it
        # does), two on each survivor
        workers.append(worker(servers[0].port, out, pause=0.2))
        for srv in servers[1:]:
            workers += [worker(srv.port, out), worker(srv.port, out)]
        deadline = time.monotonic() + 30
        while sum(1 for x in runs(out) if x.startswith("s0-")) < 3:
            assert time.monotonic() < deadline, "the first server's worker never ran a job"
            time.sleep(0.05)
        kill(servers[0])
        workers[0].kill()  # its worker would wait for it to come back
        workers[0].wait(10)
        died = time.monotonic()
        wait_all(out, set(submitted))
        print(
            f"{common_store.kind}: the killed server's jobs all ran "
            f"{time.monotonic() - died:.1f} s later"
        )
        counted = runs(out)
        twice = {x: n for x, n in counted.items() if n > 1}
        # at-least-once: only what was running on the killed server may run again (its
        # one worker's job, and one it finished whose delete was not yet committed)
        assert len(twice) <= 2 and all(x.startswith("s0-") for x in twice), twice
        # a crash is a warning (a clean stop is not: the next test), and the jobs taken
        # are said to be the dead server's
        assert any("stopped renewing its lease" in log_of(s) for s in servers[1:])
        assert any("stored jobs of n0#" in log_of(s) for s in servers[1:])

        # every server killed at once with jobs queued; all three start again
        for w in workers[1:]:
            w.kill()
            w.wait(10)
        workers.clear()
        servers[0].restart()
        second: list[str] = []
        for i, srv in enumerate(servers):
            second += submit_many(srv, f"r{i}", PER_SERVER)
        for srv in servers:
            kill(srv)
        for srv in servers:
            srv.restart()
        for srv in servers:
            workers.append(worker(srv.port, out))
        wait_all(out, set(second))
        wait_store_empty(common_store)
        counted = runs(out)
        assert [x for x in second if counted[x] != 1] == []
    finally:
        stop_all(workers, servers)


def test_a_cleanly_stopped_servers_jobs_move_without_a_warning(
    common_store: Backend, tmp_path: Path
) -> None:
    """SIGTERM is a clean stop: the survivors take its jobs over, and say so at INFO,
    not with the warning a crash gets."""
    out = tmp_path / "done"
    out.touch()
    servers = start_three(common_store.url)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        submitted = submit_many(servers[0], "s0", 20)
        servers[0].stop()  # SIGTERM: its queued jobs stay in the store
        workers = [worker(srv.port, out) for srv in servers[1:]]
        wait_all(out, set(submitted))
        logs = [log_of(s) for s in servers[1:]]
        assert any("server n0#" in log and "cleanly; taking over its jobs" in log for log in logs)
        assert not any("stopped renewing" in log for log in logs), logs
    finally:
        stop_all(workers, servers)


def test_a_second_live_server_with_the_same_node_id_is_refused(common_store: Backend) -> None:
    first = start_gearmill("--store", common_store.url, "--node-id", "same", "--lease", LEASE)
    try:
        with pytest.raises(RuntimeError, match="exited with 1"):
            start_gearmill("--store", common_store.url, "--node-id", "same", "--lease", LEASE)
    finally:
        first.stop()


def test_a_paused_server_past_its_lease_loses_its_jobs_to_the_others_and_stops(
    common_store: Backend, tmp_path: Path
) -> None:
    """SIGSTOP past the lease: the other server takes the jobs over (an epoch job too,
    which then runs at its time there); the paused one, continued, finds its heartbeat
    gone, says so and exits 1 without running them."""
    import gearmill as gm

    out = tmp_path / "done"
    out.touch()
    a, b = (
        start_gearmill("--store", common_store.url, "--node-id", n, "--lease", LEASE, "-v", "-v")
        for n in ("a", "b")
    )
    w = None
    try:
        names = submit_many(a, "p", 50)
        with gm.Client(f"127.0.0.1:{a.port}", codec=None) as client:
            client.submit("takeover", b"epoch", background=True, when=time.time() + 4)
        a.proc.send_signal(signal.SIGSTOP)
        w = worker(b.port, out)
        wait_all(out, {*names, "epoch"})
        a.proc.send_signal(signal.SIGCONT)
        assert a.proc.wait(20) == 1
        assert "LEASE LOST" in log_of(a)
        wait_store_empty(common_store)
        assert [x for x, n in runs(out).items() if n != 1] == []
    finally:
        if w is not None:
            w.kill()
            w.wait(10)
        a.proc.send_signal(signal.SIGCONT)
        a.stop()
        b.stop()


def test_a_redis_restarted_without_its_data_is_a_lease_lost_that_says_so(tmp_path: Path) -> None:
    """No other server took anything: the store forgot the heartbeat. The server stops
    with status 1 (its supervisor restarts it) and its log line does not blame others."""
    redis = PrivateRedis(tmp_path)
    try:
        srv = start_gearmill("--store", redis.url, "--lease", LEASE, "-v", "-v")
        try:
            redis.kill()
            redis.start()  # --save '': empty again
            assert srv.proc.wait(20) == 1
            line = next(x for x in log_of(srv).splitlines() if "LEASE LOST" in x)
            assert "or the store lost it (restarted without its data)" in line
        finally:
            srv.stop()
    finally:
        redis.kill()


@pytest.fixture(params=["postgresql", "redis"])
def own_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[PrivatePostgres | PrivateRedis]:
    """A store of the test's own, to stop and start again with its data."""
    aof = ("--appendonly", "yes", "--appendfsync", "always")
    store = PrivatePostgres() if request.param == "postgresql" else PrivateRedis(tmp_path, *aof)
    try:
        yield store
    finally:
        store.close()


def test_an_outage_of_the_store_longer_than_the_lease_takes_no_server_down(
    own_store: PrivatePostgres | PrivateRedis, tmp_path: Path
) -> None:
    """While the store is down nobody can renew a lease; once it is back, the first
    server to renew must not declare the others dead for leases that ran out during the
    outage (which stopped all of them but one with LEASE LOST). Every server goes on,
    and each job runs once, on the server that accepted it."""
    out = tmp_path / "done"
    out.touch()
    servers = [
        start_gearmill("--store", own_store.url, "--node-id", n, "--lease", LEASE, "-v", "-v")
        for n in ("a", "b")
    ]
    workers: list[subprocess.Popen[bytes]] = []
    try:
        names = [*submit_many(servers[0], "a", 20), *submit_many(servers[1], "b", 20)]
        own_store.kill()
        time.sleep(3 * float(LEASE))  # every heartbeat in the store runs out meanwhile
        own_store.start()
        deadline = time.monotonic() + 60
        while not all("is back" in log_of(s) for s in servers):
            assert time.monotonic() < deadline, [log_of(s) for s in servers]
            time.sleep(0.1)
        # the survivors' wait (the store's call timeout and a heartbeat), and two beats
        time.sleep(10 + 3 * float(LEASE))
        assert [s.proc.poll() for s in servers] == [None, None]
        assert not any("LEASE LOST" in log_of(s) for s in servers)
        assert not any("stopped renewing" in log_of(s) for s in servers)
        workers = [worker(s.port, out) for s in servers]
        wait_all(out, set(names))
        assert [x for x, n in runs(out).items() if n != 1] == []
    finally:
        stop_all(workers, servers)


def test_paging_on_a_shared_store_loads_only_its_own_jobs_and_pages_in_claimed_ones(
    common_store: Backend, tmp_path: Path
) -> None:
    """Server a (budget 40, no worker) keeps most of its 300 jobs in the store only;
    server b (budget 60) pages in its own 200 jobs of the same function for its
    worker, never a's while a lives, and after a dies claims a's jobs, keeping a
    budget's worth in memory and paging in the rest: every job runs once."""
    out = tmp_path / "done"
    out.touch()
    a, b = (
        start_gearmill(
            "--store", common_store.url, "--node-id", n, "--lease", LEASE, "--memory-jobs", m, "-v"
        )
        for n, m in (("a", "40"), ("b", "60"))
    )
    w = None
    try:
        names = submit_many(a, "m", 300)
        own = submit_many(b, "b", 200)
        w = worker(b.port, out)
        wait_all(out, set(own))
        time.sleep(2 * float(LEASE))  # b heartbeats and sweeps; a's jobs stay a's
        assert [x for x in runs(out) if not x.startswith("b-")] == []
        # a counts its stored-only jobs in status, as gearmand counts queued ones
        with a.conn() as c:
            row = [
                x for x in c.admin(b"status\n").decode().splitlines() if x.startswith("takeover")
            ]
        assert row and row[0].split("\t")[1] == "300"
        kill(a)
        wait_all(out, set(names))
        wait_store_empty(common_store)
        assert [x for x, n in runs(out).items() if n != 1] == []
    finally:
        if w is not None:
            w.kill()
            w.wait(10)
        a.stop()
        b.stop()
