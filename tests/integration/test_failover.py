"""Several servers, one of them dying: nothing hangs, nothing is silently lost."""

from __future__ import annotations

import asyncio
import signal

import pytest

import gearmill as gm
from conftest import Running, start_gearmand, start_gearmill

JOBS = 120


async def _work(job: gm.WorkerJob) -> bytes:
    await asyncio.sleep(0.01)
    return job.data[::-1]


async def _failover(first: Running, second: Running) -> None:
    addresses = [first.address, second.address]
    worker = gm.AsyncWorker(addresses, concurrency=4)
    worker.register("slow", _work)
    working = asyncio.ensure_future(worker.work())
    try:
        async with gm.AsyncClient(addresses, timeout=30) as client:
            items = [b"job-%03d" % i for i in range(JOBS)]
            jobs = await client.submit_many(("slow", item) for item in items)
            assert {j.server for j in jobs} == set(addresses)  # spread over both
            results = [asyncio.ensure_future(j.result()) for j in jobs]
            # let some finish, then kill one server hard while it still holds queued jobs
            while sum(r.done() for r in results) < 10:
                await asyncio.sleep(0.01)
            first.proc.send_signal(signal.SIGKILL)
            outcomes = await asyncio.wait_for(asyncio.gather(*results, return_exceptions=True), 60)
            completed = failed = 0
            for job, item, outcome in zip(jobs, items, outcomes, strict=True):
                if isinstance(outcome, gm.ConnectionLost):
                    assert job.server == first.address  # only the dead server's jobs fail
                    failed += 1
                else:
                    assert outcome == item[::-1]
                    completed += 1
            assert completed + failed == JOBS
            assert failed > 0 and completed > 0
            # every job on the surviving server completed
            assert completed >= sum(j.server == second.address for j in jobs)

            # the client keeps working: new jobs go to the survivor
            more = [b"again-%d" % i for i in range(20)]
            assert await client.map("slow", more) == [m[::-1] for m in more]
            assert await client.run("slow", b"abc") == b"cba"
    finally:
        worker.stop()
        await asyncio.wait_for(working, 30)


@pytest.mark.parametrize("first", ["gearmill", "gearmand"])
def test_two_servers_one_killed(first: str) -> None:
    # gearmill beside gearmill, and beside gearmand: the libraries treat both alike
    killed = start_gearmill() if first == "gearmill" else start_gearmand()
    survivor = start_gearmill()
    try:
        asyncio.run(_failover(killed, survivor))
    finally:
        killed.stop()
        survivor.stop()


async def _survives_restart(server: Running) -> None:
    worker = gm.AsyncWorker(server.address)
    worker.register("slow", _work)
    working = asyncio.ensure_future(worker.work())
    try:
        async with gm.AsyncClient(server.address, timeout=30) as client:
            assert await client.run("slow", b"before") == b"erofeb"
        await asyncio.get_running_loop().run_in_executor(None, server.restart)
        async with gm.AsyncClient(server.address, timeout=30) as client:
            # the new server knows nothing; the worker must reconnect and register again
            assert await client.run("slow", b"after") == b"retfa"
    finally:
        worker.stop()
        await asyncio.wait_for(working, 30)


def test_worker_survives_server_restart(server: Running) -> None:
    asyncio.run(_survives_restart(server))


async def _restart_during_a_job(server: Running) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def hold(job: gm.WorkerJob) -> bytes:
        started.set()
        await release.wait()
        return b"held"

    worker = gm.AsyncWorker(server.address)  # one slot: the running job holds it
    worker.register("hold", hold)
    worker.register("slow", _work)
    working = asyncio.ensure_future(worker.work())
    try:
        client = gm.AsyncClient(server.address, timeout=30)
        job = await client.submit("hold")
        await asyncio.wait_for(started.wait(), 30)
        server.proc.send_signal(signal.SIGKILL)
        with pytest.raises(gm.ConnectionLost):
            await job.result()
        await client.close()
        await asyncio.get_running_loop().run_in_executor(None, server.restart)
        release.set()  # the job ends with its server gone: its slot must come back
        async with gm.AsyncClient(server.address, timeout=30) as client:
            assert await client.run("slow", b"after") == b"retfa"
    finally:
        worker.stop()
        await asyncio.wait_for(working, 30)


def test_worker_survives_server_restart_during_a_job(
    server: Running, caplog: pytest.LogCaptureFixture
) -> None:
    asyncio.run(_restart_during_a_job(server))
    said = [r.getMessage() for r in caplog.records if r.name == "gearmill.worker"]
    assert f"connection to {server.address} lost: closed by server; reconnecting" in said
    assert f"connected to {server.address} again; functions registered" in said


async def _registered(server: Running, function: str) -> bool:
    """Whether a worker on ``server`` says (admin ``workers``) it can do ``function``."""

    def ask() -> bool:
        with server.conn() as c:
            lines = c.admin(b"workers\n").decode().splitlines()
        return any(function in line.split(" : ", 1)[-1].split() for line in lines if " : " in line)

    return await asyncio.get_running_loop().run_in_executor(None, ask)


async def _reconnect_while_a_job_runs(server: Running, caplog: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def hold(job: gm.WorkerJob) -> bytes:
        started.set()
        await release.wait()
        return b"held"

    worker = gm.AsyncWorker(server.address)  # one slot: the running job holds it
    worker.register("hold", hold)
    worker.register("slow", _work)
    working = asyncio.ensure_future(worker.work())
    try:
        async with gm.AsyncClient(server.address, timeout=30) as client:
            await client.submit("hold", background=True)
            await asyncio.wait_for(started.wait(), 30)
        server.proc.send_signal(signal.SIGKILL)
        await asyncio.get_running_loop().run_in_executor(None, server.restart)
        # the job still runs: the worker must come back to the new server anyway,
        # not only once the job ends
        for _ in range(300):
            if await _registered(server, "slow"):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the worker did not register again while its job ran")
        said = [r.getMessage() for r in caplog.records if r.name == "gearmill.worker"]
        assert f"connection to {server.address} lost: closed by server; reconnecting" in said
        assert f"connected to {server.address} again; functions registered" in said
        assert not working.done()
        release.set()
        async with gm.AsyncClient(server.address, timeout=30) as client:
            assert await client.run("slow", b"after") == b"retfa"
    finally:
        release.set()
        worker.stop()
        await asyncio.wait_for(working, 30)


def test_worker_busy_on_a_long_job_reconnects_at_once(
    server: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """concurrency=1, its one job running: the worker notices the lost server, says so
    and registers with the restarted one while the job still runs, not once it ends."""
    asyncio.run(_reconnect_while_a_job_runs(server, caplog))


def test_blocking_worker_survives_server_restart(gearmill: Running) -> None:
    import threading

    worker = gm.Worker(gearmill.address)
    worker.register("up", lambda job: job.data.upper())
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    try:
        with gm.Client(gearmill.address, timeout=30) as client:
            assert client.run("up", b"one") == b"ONE"
        gearmill.restart()
        with gm.Client(gearmill.address, timeout=30) as client:
            assert client.run("up", b"two") == b"TWO"
    finally:
        worker.stop()
        thread.join(30)
    assert not thread.is_alive()


@pytest.mark.parametrize("dead_first", [True, False])
def test_submit_skips_a_dead_server(gearmill: Running, dead_first: bool) -> None:
    dead = start_gearmill()
    dead.stop()
    servers = [dead.address, gearmill.address] if dead_first else [gearmill.address, dead.address]
    with gm.Client(servers, timeout=30) as client:
        handles = [client.submit("nobody", b"%d" % i, background=True).handle for i in range(6)]
    assert all(handles)
    with gm.AdminClient(gearmill.address) as admin:
        assert {f.name: f.queued for f in admin.status()}["nobody"] == 6
