"""Client features a user relies on, against gearmill and gearmand alike."""

from __future__ import annotations

import asyncio

import pytest

import gearmill as gm
from conftest import Running


async def _timeouts_leave_connection_usable(address: str) -> None:
    worker = gm.AsyncWorker(address)
    worker.register("echo", lambda job: job.data)
    working = asyncio.ensure_future(worker.work())
    try:
        async with gm.AsyncClient(address) as client:
            with pytest.raises(gm.Timeout):
                await client.run("nobody-works-this", b"x", timeout=0.3)
            task = asyncio.ensure_future(client.run("nobody-works-this", b"y"))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # the same connection still pairs replies correctly
            assert await client.echo(b"still here") == b"still here"
            assert await client.run("echo", b"and works", timeout=10) == b"and works"
    finally:
        worker.stop()
        await asyncio.wait_for(working, 30)


def test_timeout_and_cancel_leave_connection_usable(server: Running) -> None:
    asyncio.run(_timeouts_leave_connection_usable(server.address))


async def _priorities_warnings_status(address: str) -> None:
    async with gm.AsyncClient(address, timeout=30) as client:
        # queued before any worker exists: a worker then takes high, normal, low
        for prio in ("low", "normal", "high"):
            await client.submit("order", prio, background=True, priority=prio)
        bg = await client.submit("order", b"tracked", background=True, unique="track-1")
        status = await client.get_status_unique("track-1", server=bg.server)
        assert (status.known, status.running) == (True, False)

        seen: list[bytes] = []
        worker = gm.AsyncWorker(address, concurrency=1)

        @worker.function("order")
        def order(job: gm.WorkerJob) -> None:
            seen.append(job.data)

        @worker.function("warn")
        async def warn(job: gm.WorkerJob) -> bytes:
            job.send_warning(b"careful")
            job.send_status(3, 4)
            return b"done"

        working = asyncio.ensure_future(worker.work())
        try:
            job = await client.submit("warn", b"")
            assert await job.result() == b"done"
            assert job.warnings == [b"careful"]
            assert job.status == (3, 4)

            # the background jobs ran in priority order
            async def four_done() -> None:
                while len(seen) < 4:
                    await asyncio.sleep(0.01)

            await asyncio.wait_for(four_done(), 30)
            assert seen == [b"high", b"normal", b"tracked", b"low"]
            status = await client.get_status_unique("track-1", server=bg.server)
            assert status.known is False  # done and forgotten
        finally:
            worker.stop()
            await asyncio.wait_for(working, 30)


def test_priorities_warnings_and_status(server: Running) -> None:
    asyncio.run(_priorities_warnings_status(server.address))


def test_blocking_client_timeout(server: Running) -> None:
    with gm.Client(server.address) as client:
        with pytest.raises(gm.Timeout):
            client.run("nobody-works-this", b"x", timeout=0.3)
        assert client.echo(b"ok") == b"ok"
