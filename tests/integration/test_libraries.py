"""The Python client and worker against gearmill and against C gearmand alike."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

import gearmill
import gearmill as gm
from conftest import Running


async def _scenario(address: str) -> None:
    worker = gearmill.AsyncWorker(address, concurrency=4)

    @worker.function("reverse")
    async def reverse(job: gearmill.WorkerJob) -> bytes:
        job.send_status(1, 2)
        job.send_data(b"chunk")
        return job.data[::-1]

    @worker.function("fail")
    def fail(job: gearmill.WorkerJob) -> bytes:
        raise RuntimeError("nope")

    running = asyncio.ensure_future(worker.work())
    try:
        async with gearmill.AsyncClient(address, timeout=10) as client:
            assert await client.run("reverse", b"hello") == b"olleh"
            # large packets both ways (read in place by server, worker and client)
            big = bytes(range(256)) * 12289  # 3 MiB with NULs inside
            assert await client.run("reverse", big) == big[::-1]
            seen: list[tuple[int, int]] = []
            job = await client.submit("reverse", b"abc", on_status=lambda n, d: seen.append((n, d)))
            assert [c async for c in job] == [b"chunk"]
            assert await job.result() == b"cba"
            assert seen == [(1, 2)]
            with pytest.raises(gearmill.JobFailed):
                await client.run("fail", b"x")
            items = [b"%d" % i for i in range(300)]
            assert await client.map("reverse", items) == [i[::-1] for i in items]
            bg = await client.submit("nobody", b"x", background=True)
            status = await client.get_status(bg)
            assert (status.known, status.running) == (True, False)
            assert await client.echo(b"e") == b"e"
    finally:
        worker.stop()
        await running


def test_async_client_and_worker(server: Running) -> None:
    asyncio.run(_scenario(server.address))


def test_blocking_client_against_c_worker(server: Running) -> None:
    proc = subprocess.Popen(
        ["gearman", "-h", "127.0.0.1", "-p", str(server.port), "-w", "-f", "rev", "--", "rev"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with gearmill.Client(server.address, timeout=10) as client:
            assert client.run("rev", "abc") == b"cba"
    finally:
        proc.terminate()
        proc.wait(10)


def test_gearmill_work_serves_c_client(server: Running) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gearmill.cli.main",
            "work",
            "-p",
            str(server.port),
            "-f",
            "up",
            "--",
            "tr",
            "a-z",
            "A-Z",
        ],
    )
    try:
        out = subprocess.run(
            ["gearman", "-h", "127.0.0.1", "-p", str(server.port), "-f", "up", "hello"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.stdout == "HELLO"
    finally:
        proc.terminate()
        proc.wait(10)


def test_lost_server_fails_foreground_job(gearmill: Running) -> None:
    server = gearmill

    async def scenario() -> None:
        async with gm.AsyncClient(server.address) as client:
            job = await client.submit("never", b"x")
            server.proc.terminate()
            with pytest.raises(gm.ConnectionLost):
                await job.result(10)

    asyncio.run(scenario())
