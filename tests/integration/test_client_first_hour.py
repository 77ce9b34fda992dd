"""What a new user meets in their first hour with the client: the README's examples,
waits that end, clear data rules, clear messages, callbacks that cannot break a
connection, and a worker's failure reported as what it was."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import pty
import re
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import gearmill as gm
from conftest import Conn, Running, free_port, running_worker
from gearmill.protocol.packets import PacketType

README = Path(__file__).resolve().parents[2] / "README.md"
CLI = [sys.executable, "-m", "gearmill.cli.main"]


def readme_examples() -> list[str]:
    """The ```python blocks of the README's "Python libraries" section."""
    text = README.read_text()
    section = text[text.index("## Python libraries") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.mark.parametrize("which", [0, 1], ids=["asyncio", "blocking"])
def test_readme_examples_run_as_written(gearmill: Running, which: int) -> None:
    examples = readme_examples()
    assert len(examples) == 2
    code = examples[which].replace("127.0.0.1:4730", gearmill.address)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "b'olleh'"
    if which == 0:
        assert lines[1:] == ["1 2", "b'first half'", "b'report for 2026'", "6"]
        with gm.AdminClient(gearmill.address) as admin:
            queued = {f.name: f.total for f in admin.status()}
        assert queued.get("cleanup") == 1  # the background job waits for its worker


# ------------------------------------------------------------------ timeouts


def test_default_timeout_is_finite_and_documented() -> None:
    assert gm.DEFAULT_TIMEOUT == 60.0
    assert gm.AsyncClient("127.0.0.1:1").timeout == gm.DEFAULT_TIMEOUT
    with gm.Client("127.0.0.1:1") as client:
        assert client._async.timeout == gm.DEFAULT_TIMEOUT
    assert "60 s" in README.read_text()


async def _no_worker(address: str) -> None:
    async with gm.AsyncClient(address, timeout=0.3) as client:
        # the client's timeout bounds run() ...
        with pytest.raises(gm.Timeout) as caught:
            await asyncio.wait_for(client.run("nobody", b"x"), 10)
        message = str(caught.value)
        assert "did not finish within 0.3 s" in message  # not 0.29998
        assert "'nobody'" in message and "timeout=None" in message
        # ... and every way of waiting on a submitted job: chunks, status, result
        job = await client.submit("nobody", b"y")
        with pytest.raises(gm.Timeout):
            await asyncio.wait_for(_drain(job), 10)
        with pytest.raises(gm.Timeout):
            await asyncio.wait_for(job.next_status(), 10)
        with pytest.raises(gm.Timeout):
            await asyncio.wait_for(job.result(), 10)
        # timeout=None asks to wait without limit: still waiting when we stop looking
        waiting = asyncio.ensure_future(client.run("nobody", b"z", timeout=None))
        done, _ = await asyncio.wait([waiting], timeout=0.6)
        assert not done
        waiting.cancel()
        assert await client.echo(b"usable") == b"usable"


async def _drain(job: gm.Job) -> None:
    async for _ in job:
        pass


def test_foreground_job_without_worker_gives_up(server: Running) -> None:
    asyncio.run(_no_worker(server.address))


async def _given_up_runs(address: str) -> int:
    async with gm.AsyncClient(address, timeout=0.01) as client:
        timed_out = 0
        for i in range(50):
            try:
                await client.run("nobody", b"%d" % i)
            except gm.Timeout:  # (pytest.raises would keep the last one's frames)
                timed_out += 1
        assert timed_out == 50
        gc.collect()
        # still connected: a long-lived client must not keep what no one can wait on
        return sum(isinstance(o, gm.Job) for o in gc.get_objects())


def test_given_up_runs_are_not_kept(gearmill: Running) -> None:
    assert asyncio.run(_given_up_runs(gearmill.address)) == 0


def test_blocking_job_iteration_gives_up(gearmill: Running) -> None:
    with gm.Client(gearmill.address, timeout=0.3) as client:
        job = client.submit("nobody", b"x")
        with pytest.raises(gm.Timeout, match=r"did not finish within 0\.3 s"):
            list(job)


def test_submit_timeout_gives_up_with_a_message(gearmill: Running) -> None:
    out = subprocess.run(
        [*CLI, "submit", "-p", str(gearmill.port), "-t", "500", "-f", "nobody", "x"],
        capture_output=True,
        timeout=30,
    )
    assert out.returncode == 1
    assert out.stdout == b""
    err = out.stderr.decode()
    assert err.count("\n") == 1, err
    assert "gave up" in err and "500 ms" in err and "'nobody'" in err


def test_submit_on_a_terminal_says_it_is_still_waiting(gearmill: Running) -> None:
    """Without -t it waits as gearman does, but a person at a terminal is told why."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*CLI, "submit", "-p", str(gearmill.port), "-f", "nobody", "x"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    shown = b""
    try:
        deadline = time.monotonic() + 30
        while b"no word from a worker" not in shown and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                shown += os.read(master, 4096)
        assert proc.poll() is None  # still waiting: no -t, like gearman
    finally:
        proc.terminate()
        proc.wait(10)
        os.close(master)
    text = shown.decode()
    assert "still waiting for job H:test:1 (nobody): no word from a worker yet" in text
    assert "-t MS" in text


def test_submit_negative_timeout_is_refused(gearmill: Running) -> None:
    out = subprocess.run(
        [*CLI, "submit", "-p", str(gearmill.port), "-t", "-5", "-f", "nobody", "x"],
        capture_output=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert b"-t -5" in out.stderr


# ---------------------------------------------------------------------- data


async def _data_rules(address: str) -> None:
    worker = gm.AsyncWorker(address)
    worker.register("echo", lambda job: job.data)
    working = asyncio.ensure_future(worker.work())
    try:
        async with gm.AsyncClient(address, timeout=30) as client:
            for bad, name in ((5, "int"), ([1, 2], "list"), ({"a": 1}, "dict")):
                with pytest.raises(TypeError, match=f"not {name}.*codec=gearmill.JSON"):
                    await client.run("echo", bad)
                with pytest.raises(TypeError, match=f"not {name}"):
                    await client.submit_many([("echo", bad)])
            with pytest.raises(TypeError, match="function name must be bytes or str"):
                await client.run(5, b"x")  # type: ignore[arg-type]
            assert await client.run("echo", "héllo") == "héllo".encode()
            assert await client.run("echo", bytearray(b"ab")) == b"ab"
            # per call: arguments encoded, the result decoded
            doc = {"user": "ann", "tags": ["a", "b"], "n": 3, "ok": True, "none": None}
            assert await client.run("echo", doc, codec=gm.JSON) == doc
            assert await client.map("echo", [[1], {"x": 2}], codec=gm.JSON) == [[1], {"x": 2}]
        async with gm.AsyncClient(address, timeout=30, codec=gm.JSON) as client:
            assert await client.run("echo", [1, "two", 3.5]) == [1, "two", 3.5]
            job = await client.submit("echo", {"k": "v"})
            assert await job.result() == {"k": "v"}
            assert await client.run("echo", b'"raw"', codec=None) == b'"raw"'
            with pytest.raises(TypeError, match="cannot be encoded as JSON"):
                await client.run("echo", {1, 2})
    finally:
        worker.stop()
        await asyncio.wait_for(working, 30)


def test_job_data_is_bytes_or_str_or_a_codec(gearmill: Running) -> None:
    asyncio.run(_data_rules(gearmill.address))


def test_blocking_client_codec(gearmill: Running) -> None:
    worker = gm.Worker(gearmill.address)
    worker.register("echo", lambda job: job.data)
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    try:
        with gm.Client(gearmill.address, timeout=30, codec=gm.JSON) as client:
            assert client.run("echo", {"a": [1, 2]}) == {"a": [1, 2]}
            assert client.submit("echo", [True]).result() == [True]
            with pytest.raises(TypeError, match="not int"):
                client.run("echo", 5, codec=None)
    finally:
        worker.stop()
        thread.join(30)


# ------------------------------------------------------------------ messages


def test_unreachable_server_says_why_and_where() -> None:
    port = free_port()  # nothing listens there

    async def scenario() -> None:
        async with gm.AsyncClient(f"127.0.0.1:{port}") as client:
            await client.echo(b"x")

    with pytest.raises(gm.NoServersAvailable) as caught:
        asyncio.run(scenario())
    message = str(caught.value)
    assert f"could not connect to 127.0.0.1:{port}: connection refused" in message
    assert "GEARMAN_SERVERS" in message
    assert "Connect call failed" not in message and "lost" not in message
    with (
        gm.AdminClient(f"127.0.0.1:{port}") as admin,
        pytest.raises(gm.CannotConnect, match=f"to 127.0.0.1:{port}: connection refused$"),
    ):
        admin.status()


def test_submit_unreachable_server_hints_at_the_flags() -> None:
    port = free_port()
    out = subprocess.run(
        [*CLI, "submit", "-p", str(port), "-f", "rev", "x"], capture_output=True, timeout=30
    )
    assert out.returncode == 1
    err = out.stderr.decode()
    assert err.count("\n") == 1
    assert f"could not connect to 127.0.0.1:{port}: connection refused" in err
    assert "-s HOST:PORT" in err


def test_server_round_trip_timeout_says_what_it_waited_for() -> None:
    # a listener that accepts and never answers: the submit waits for JOB_CREATED
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"

        async def scenario() -> None:
            async with gm.AsyncClient(address, exceptions=False, timeout=0.4) as client:
                await client.submit("slow", b"x")

        with pytest.raises(gm.Timeout) as caught:
            asyncio.run(scenario())
    message = str(caught.value)
    assert message == f"{address} did not accept the 'slow' job (no JOB_CREATED) within 0.4 s"


def test_server_that_never_answers_the_option_is_named() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"

        async def scenario() -> None:
            async with gm.AsyncClient(address, connect_timeout=0.3) as client:
                await client.echo(b"x")

        with pytest.raises(gm.NoServersAvailable) as caught:
            asyncio.run(scenario())
    assert str(caught.value).startswith(
        f"could not connect to {address}: connected, but no answer to OPTION_REQ exceptions"
        " within 0.3 s; "
    )


def test_another_service_on_the_port_is_skipped_and_named(gearmill: Running) -> None:
    # an SSH-like service greets every connection with a text line
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        other = f"127.0.0.1:{listener.getsockname()[1]}"
        stop = threading.Event()

        def greet() -> None:
            listener.settimeout(0.1)
            while not stop.is_set():
                try:
                    peer, _ = listener.accept()
                except TimeoutError:
                    continue
                peer.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
                peer.close()

        greeter = threading.Thread(target=greet, daemon=True)
        greeter.start()
        worker = gm.Worker(gearmill.address)
        worker.register("up", lambda job: job.data.upper())
        try:
            with running_worker(worker), gm.Client([other, gearmill.address], timeout=30) as c:
                # every job goes to the job server: none fails on the other service
                assert [c.run("up", b"%d" % i) for i in range(4)] == [b"0", b"1", b"2", b"3"]
                with pytest.raises(gm.NotAJobServer) as caught:
                    c.echo(b"x", server=other)
        finally:
            stop.set()
            greeter.join(5)
    assert str(caught.value) == (
        f"{other} is not a Gearman job server (it sent unexpected text in binary stream)"
    )


# ----------------------------------------------------------------- callbacks


async def _raising_callback(address: str, caplog: pytest.LogCaptureFixture) -> None:
    worker = gm.AsyncWorker(address, concurrency=2)

    @worker.function("progress")
    async def progress(job: gm.WorkerJob) -> bytes:
        job.send_status(1, 2)
        job.send_status(2, 2)
        return b"done " + job.data

    working = asyncio.ensure_future(worker.work())
    seen: list[tuple[int, int]] = []

    def broken(num: int, den: int) -> None:
        seen.append((num, den))
        raise RuntimeError("bug in my callback")

    async def broken_async(num: int, den: int) -> None:
        raise KeyError("async bug")

    try:
        async with gm.AsyncClient(address, timeout=30) as client:
            other = await client.submit("progress", b"other")
            job = await client.submit("progress", b"mine", on_status=broken)
            job2 = await client.submit("progress", b"async", on_status=broken_async)
            assert await job.result() == b"done mine"
            assert await other.result() == b"done other"
            assert await job2.result() == b"done async"
            assert seen == [(1, 2), (2, 2)]  # called for every status, raising each time
            assert await client.echo(b"same connection") == b"same connection"

            async def logged() -> None:
                while not any(_exc(r, KeyError) for r in caplog.records):
                    await asyncio.sleep(0.01)

            await asyncio.wait_for(logged(), 10)
    finally:
        worker.stop()
        await asyncio.wait_for(working, 30)
    errors = [r for r in caplog.records if r.name == "gearmill.client"]
    assert any(_exc(r, RuntimeError) and "on_status" in r.getMessage() for r in errors)
    assert any(_exc(r, KeyError) for r in errors)


def _exc(record: logging.LogRecord, kind: type[BaseException]) -> bool:
    return record.exc_info is not None and isinstance(record.exc_info[1], kind)


def test_raising_callback_is_logged_and_harmless(
    gearmill: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="gearmill.client")
    asyncio.run(_raising_callback(gearmill.address, caplog))


def test_handles_repeat_after_server_restart(gearmill: Running) -> None:
    """A restarted server hands out H:…:1 again; the new connection's job is its own."""

    async def scenario() -> None:
        async with gm.AsyncClient(gearmill.address, timeout=30) as client:
            lost = await client.submit("never", b"x")
            gearmill.restart()
            with pytest.raises(gm.ConnectionLost):
                await lost.result()
            worker = gm.AsyncWorker(gearmill.address)
            worker.register("echo", lambda job: job.data)
            working = asyncio.ensure_future(worker.work())
            try:
                job = await client.submit("echo", b"fresh")
                assert job.handle == lost.handle
                assert await job.result() == b"fresh"
                assert client._conn_jobs == {c: set() for c in client._conn_jobs}
            finally:
                worker.stop()
                await asyncio.wait_for(working, 30)

    asyncio.run(scenario())


def _res(ptype: int, *args: bytes) -> bytes:
    payload = b"\x00".join(args)
    return b"\x00RES" + struct.pack(">II", ptype, len(payload)) + payload


def _scripted_server(listener: socket.socket, requests: int) -> None:
    """Answers each SUBMIT_JOB with JOB_CREATED, WORK_STATUS 1/2 and WORK_COMPLETE in
    one write, as a real server does when the worker is quicker than the client."""
    sock, _ = listener.accept()
    with sock:
        buf = b""
        n = 0
        while n < requests:
            while len(buf) < 12 or len(buf) < 12 + struct.unpack(">I", buf[8:12])[0]:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                buf += chunk
            ptype, size = struct.unpack(">II", buf[4:12])
            payload, buf = buf[12 : 12 + size], buf[12 + size :]
            if ptype == PacketType.OPTION_REQ:
                sock.sendall(_res(PacketType.OPTION_RES, payload))
                continue
            n += 1
            handle = b"H:s:%d" % n
            sock.sendall(
                _res(PacketType.JOB_CREATED, handle)
                + _res(PacketType.WORK_STATUS, handle, b"1", b"2")
                + _res(PacketType.WORK_COMPLETE, handle, b"done " + payload[-1:])
            )
        sock.recv(1)  # until the client hangs up


@pytest.mark.parametrize("how", ["submit", "submit_many"])
def test_result_in_the_same_read_as_job_created(how: str) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        thread = threading.Thread(target=_scripted_server, args=(listener, 2), daemon=True)
        thread.start()

        seen: list[tuple[int, int]] = []

        def status(num: int, den: int) -> None:
            seen.append((num, den))

        async def scenario() -> list[bytes]:
            async with gm.AsyncClient(address, timeout=5) as client:
                if how == "submit":
                    jobs = [
                        await client.submit("f", b"a", on_status=status),
                        await client.submit("f", b"b", on_status=status),
                    ]
                else:
                    jobs = await client.submit_many(
                        [gm.JobRequest("f", b"a", on_status=status), ("f", b"b")]
                    )
                return [await job.result() for job in jobs]

        assert asyncio.run(scenario()) == [b"done a", b"done b"]
        assert seen == ([(1, 2)] * 2 if how == "submit" else [(1, 2)])
        thread.join(10)


def test_submit_prints_a_status_read_with_job_created() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        thread = threading.Thread(target=_scripted_server, args=(listener, 1), daemon=True)
        thread.start()
        out = subprocess.run(
            [*CLI, "submit", "-p", str(port), "-P", "-f", "f", "x"],
            capture_output=True,
            timeout=30,
        )
        thread.join(10)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"done x"
    assert out.stderr == b"50% Complete\n"


# ---------------------------------------------------------------- exceptions


def _raw_worker_ends_job(port: int, function: bytes, ptype: int, *args: bytes) -> None:
    """A worker speaking raw bytes: takes one job and ends it with ``ptype``."""
    with Conn(port) as w:
        w.send(PacketType.CAN_DO, function)
        w.send(PacketType.GRAB_JOB)
        handle = w.expect(PacketType.JOB_ASSIGN).split(b"\x00")[0]
        w.send(ptype, handle, *args)


@pytest.mark.parametrize("exceptions", [True, False], ids=["exceptions", "no-exceptions"])
def test_worker_exception_reaches_the_client(server: Running, exceptions: bool) -> None:
    with gm.Client(server.address, timeout=10, exceptions=exceptions) as client:
        job = client.submit("parse", b"x")
        _raw_worker_ends_job(
            server.port, b"parse", PacketType.WORK_EXCEPTION, b"ValueError: bad input"
        )
        with pytest.raises(gm.JobFailed) as caught:
            job.result()
    message = str(caught.value)
    assert f"job {job.handle} (parse) failed" in message
    if exceptions:
        assert isinstance(caught.value, gm.JobException)
        assert caught.value.text == "ValueError: bad input"
        assert message.endswith("the worker raised ValueError: bad input")
    else:
        # the server stands in a WORK_FAIL (gearmand's carries a trailing NUL)
        assert not isinstance(caught.value, gm.JobException)
        assert "the worker reported failure" in message


def test_exceptions_are_on_by_default(server: Running) -> None:
    with gm.Client(server.address, timeout=10) as client:
        job = client.submit("parse", b"x")
        _raw_worker_ends_job(server.port, b"parse", PacketType.WORK_EXCEPTION, b"KeyError: 'k'")
        with pytest.raises(gm.JobException, match="the worker raised KeyError: 'k'"):
            job.result()


def test_work_fail_names_the_function(server: Running) -> None:
    with gm.Client(server.address, timeout=10) as client:
        job = client.submit("resize", b"x")
        _raw_worker_ends_job(server.port, b"resize", PacketType.WORK_FAIL)
        with pytest.raises(gm.JobFailed) as caught:
            job.result()
    assert str(caught.value) == (
        f"job {job.handle} (resize) failed: the worker reported failure (WORK_FAIL)"
    )
