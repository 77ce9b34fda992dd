"""The worker as a new user meets it: failures that show, real parallelism, timeouts
that stop the work, return values that are checked, and `gearmill work` that lets an
interrupted job go to another worker."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import gearmill as gm
from conftest import Running, async_wait_until, running_worker, wait_until
from gearmill.data import JSON
from gearmill.worker import aio as worker_aio
from gearmill.worker import sync as worker_sync

CLI = [sys.executable, "-m", "gearmill.cli.main"]


@pytest.fixture
def worker_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="gearmill.worker")
    return caplog


def worker_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gearmill.worker"]


# ------------------------------------------------------------------ 1. failures


def bad_input(job: gm.WorkerJob) -> bytes:
    raise ValueError("bad input: " + job.data.decode())


def test_failure_shows_in_worker_log_and_reaches_client(
    server: Running, worker_log: pytest.LogCaptureFixture
) -> None:
    w = gm.Worker(server.address)  # defaults, as a new user writes it
    w.register("boom", bad_input)
    with running_worker(w), gm.Client(server.address, timeout=30) as client:
        with pytest.raises(gm.JobFailed) as failed:
            client.run("boom", b"x")
        if server.name == "gearmill":
            # gearmill passes WORK_EXCEPTION to clients that asked (ours do)...
            assert isinstance(failed.value, gm.JobException)
            assert failed.value.data == b"ValueError: bad input: x"
        else:
            # ...gearmand 1.1 would turn it into a WORK_FAIL its own clients never see
            assert not isinstance(failed.value, gm.JobException)
        # a client that did not ask for exceptions (the C tool) gets a plain failure, at once
        out = subprocess.run(
            ["gearman", "-h", "127.0.0.1", "-p", str(server.port), "-f", "boom", "y"],
            capture_output=True,
            timeout=30,
        )
        assert out.returncode != 0
    # the traceback is in the worker's log at WARNING, the default level that shows
    records = [r for r in worker_log.records if "failed" in r.getMessage()]
    assert len(records) == 2
    assert all(r.levelno == logging.WARNING for r in records)
    assert "ValueError: bad input: x" in records[0].getMessage()
    assert records[0].exc_info is not None
    assert "in bad_input" in worker_log.text  # the traceback's frame


def test_exceptions_true_sends_type_and_message(gearmand: Running) -> None:
    w = gm.Worker(gearmand.address, exceptions=True)
    w.register("boom", bad_input)
    with running_worker(w), gm.Client(gearmand.address, timeout=30) as client:
        with pytest.raises(gm.JobException) as failed:
            client.run("boom", b"z")
    assert failed.value.data == b"ValueError: bad input: z"


def docstring_example(module: Any, address: str) -> list[str]:
    """The indented example at the top of a module's docstring, pointed at ``address``."""
    lines = module.__doc__.splitlines()[1:]
    block: list[str] = []
    for line in lines:
        if line and not line.startswith("    "):
            break
        block.append(line)
    code = textwrap.dedent("\n".join(block)).strip().replace('"127.0.0.1:4730"', repr(address))
    return code.splitlines()


def test_docstring_examples_work(gearmill: Running) -> None:
    names = {"AsyncWorker": gm.AsyncWorker, "Worker": gm.Worker, "WorkerJob": gm.WorkerJob}

    # asyncio: everything up to the final `await worker.run()`, run inside a coroutine
    lines = docstring_example(worker_aio, gearmill.address)
    assert lines[-1].startswith("await worker.run()")
    body = textwrap.indent("\n".join(lines[:-1]), "    ")
    scope: dict[str, Any] = dict(names)
    exec(f"async def example():\n{body}\n    return worker", scope)

    async def scenario() -> None:
        worker = await scope["example"]()
        working = asyncio.ensure_future(worker.work())
        try:
            async with gm.AsyncClient(gearmill.address, timeout=30) as client:
                seen: list[tuple[int, int]] = []
                job = await client.submit(
                    "reverse", b"hello", on_status=lambda n, d: seen.append((n, d))
                )
                assert await job.result() == b"olleh"
                assert seen == [(1, 2)]
        finally:
            worker.stop()
            await asyncio.wait_for(working, 30)

    asyncio.run(scenario())

    # blocking: everything up to the final `worker.work()`
    lines = docstring_example(worker_sync, gearmill.address)
    assert lines[-1] == "worker.work()"
    scope = dict(names)
    exec("\n".join(lines[:-1]), scope)
    with running_worker(scope["worker"]), gm.Client(gearmill.address, timeout=30) as client:
        assert client.run("reverse", b"abc") == b"cba"


# ------------------------------------------------------------------ 2. parallelism


def test_blocking_functions_run_concurrency_at_once(gearmill: Running) -> None:
    n = min(32, (os.cpu_count() or 1) + 4) + 2  # more than asyncio's default pool has threads
    together = threading.Barrier(n, timeout=20)

    def meet(job: gm.WorkerJob) -> bytes:
        together.wait()  # opens only when all n jobs are running at the same time
        return job.data

    w = gm.Worker(gearmill.address, concurrency=n)
    w.register("meet", meet)
    with running_worker(w), gm.Client(gearmill.address, timeout=60) as client:
        items = [b"%d" % i for i in range(n)]
        assert client.map("meet", items) == items


def pid_and_sum(job: gm.WorkerJob) -> dict[str, int]:
    return {"pid": os.getpid(), "sum": sum(job.value)}


def reports_progress(job: gm.WorkerJob) -> bytes:
    job.send_status(1, 2)
    return b"unreachable"


def dies(job: gm.WorkerJob) -> bytes:
    os._exit(3)


def test_process_pool_runs_functions_in_other_processes(gearmill: Running) -> None:
    w = gm.Worker(gearmill.address, concurrency=2, processes=True, codec=JSON)
    w.register("sum", pid_and_sum)
    w.register("progress", reports_progress)
    w.register("dies", dies)
    with pytest.raises(ValueError, match="picklable"):
        w.register("lambda", lambda job: b"")
    with running_worker(w), gm.Client(gearmill.address, timeout=60) as client:
        answers = [json.loads(r) for r in client.map("sum", [b"[1, 2, 3]", b"[4, 5]"])]
        assert [a["sum"] for a in answers] == [6, 9]
        assert all(a["pid"] != os.getpid() for a in answers)
        with pytest.raises(gm.JobException) as failed:
            client.run("progress", b"")
        assert b"RuntimeError: job.send_status() is not available" in failed.value.data
        assert b"processes=True" in failed.value.data
        # a process that dies fails its job, and is replaced for the next one
        with pytest.raises(gm.JobException) as failed:
            client.run("dies", b"")
        assert failed.value.data == (
            b"RuntimeError: the process running the job exited (exit code 3)"
        )
        assert json.loads(client.run("sum", b"[7]"))["sum"] == 7


# ------------------------------------------------------------------ 3. timeouts


def no_refusals(caplog: pytest.LogCaptureFixture) -> bool:
    return not any("JOB_NOT_FOUND" in line for line in worker_lines(caplog))


def timeout_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [line for line in worker_lines(caplog) if "timeout" in line]


def test_timed_out_coroutine_is_cancelled(
    gearmill: Running, worker_log: pytest.LogCaptureFixture
) -> None:
    attempts: list[str] = []

    async def scenario() -> None:
        worker = gm.AsyncWorker(gearmill.address, concurrency=1)

        @worker.function("slow", timeout=1)
        async def slow(job: gm.WorkerJob) -> bytes:
            attempts.append("started")
            if len(attempts) == 1:
                try:
                    await asyncio.sleep(60)
                except asyncio.CancelledError:
                    attempts.append("cancelled")
                    raise
                return b"late"
            return b"second try"

        working = asyncio.ensure_future(worker.work())
        try:
            async with gm.AsyncClient(gearmill.address, timeout=30) as client:
                # one slot: the second try runs only because the first was stopped
                assert await client.run("slow", b"") == b"second try"
        finally:
            worker.stop()
            await asyncio.wait_for(working, 30)

    asyncio.run(scenario())
    assert attempts == ["started", "cancelled", "started"]
    [line] = timeout_lines(worker_log)
    assert "passed its 1 s timeout: cancelled" in line
    assert no_refusals(worker_log)


def test_timed_out_thread_is_abandoned_and_its_result_dropped(
    gearmill: Running, worker_log: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()
    attempts: list[int] = []

    def slow(job: gm.WorkerJob) -> bytes:
        attempts.append(1)
        if len(attempts) == 1:
            release.wait(30)
            return b"late"
        return b"second try"

    w = gm.Worker(gearmill.address, concurrency=1)
    w.register("slow", slow, timeout=1)
    with running_worker(w), gm.Client(gearmill.address, timeout=30) as client:
        job = client.submit("slow", b"")
        wait_until(lambda: bool(timeout_lines(worker_log)), "the timeout warning", timeout=20)
        release.set()
        # the late result would be sent before the next grab on the same connection, so
        # the server's refusal would be logged before the second try's result is back
        assert job.result(30) == b"second try"
        assert no_refusals(worker_log)
    [line] = timeout_lines(worker_log)
    assert "passed its 1 s timeout: abandoned" in line
    assert len(attempts) == 2


def sleep_once(job: gm.WorkerJob) -> bytes:
    marker = Path(job.data.decode())
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        time.sleep(60)
        return b"late"
    return b"second try"


def test_timed_out_process_is_killed(
    gearmill: Running, worker_log: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    marker = tmp_path / "first-pid"
    w = gm.Worker(gearmill.address, concurrency=1, processes=True)
    w.register("slow", sleep_once, timeout=1)
    with running_worker(w), gm.Client(gearmill.address, timeout=30) as client:
        assert client.run("slow", str(marker)) == b"second try"
        assert no_refusals(worker_log)
    first = int(marker.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(first, 0)
    [line] = timeout_lines(worker_log)
    assert "passed its 1 s timeout: its process was killed" in line


# ------------------------------------------------------------------ 4. return values


def test_return_values_bytes_str_or_codec(gearmill: Running) -> None:
    def as_dict(job: gm.WorkerJob) -> Any:
        return {"got": job.data.decode()}

    def as_str(job: gm.WorkerJob) -> str:
        return "é" + job.data.decode()

    plain = gm.Worker(gearmill.address)
    plain.register("dict", as_dict)
    plain.register("str", as_str)
    with running_worker(plain), gm.Client(gearmill.address, timeout=30) as client:
        assert client.run("str", b"x") == "éx".encode()
        with pytest.raises(gm.JobException) as failed:
            client.run("dict", b"x")
        message = failed.value.data.decode()
        assert message.startswith("TypeError: job result must be bytes or str, not dict")
        assert "codec=gearmill.JSON" in message

    def add(job: gm.WorkerJob) -> Any:
        assert isinstance(job.data, bytes)  # still the raw payload
        return {"sum": job.value["a"] + job.value["b"], "raw": len(job.data)}

    coded = gm.Worker(gearmill.address, codec=JSON)
    coded.register("add", add)
    with running_worker(coded), gm.Client(gearmill.address, timeout=30) as client:
        assert json.loads(client.run("add", b'{"a": 1, "b": 2}')) == {"sum": 3, "raw": 16}


# ------------------------------------------------------------------ 5. gearmill work


def start_work(port: int, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CLI, "work", "-p", str(port), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_work_gives_the_job_to_another_worker(
    server: Running, tmp_path: Path, sig: signal.Signals
) -> None:
    marker = tmp_path / "started"
    first = start_work(
        server.port, "-f", "job", "--", "sh", "-c", 'touch "$0"; sleep 60', str(marker)
    )
    second: subprocess.Popen[bytes] | None = None
    try:
        with gm.Client(server.address, timeout=60) as client:
            job = client.submit("job", b"payload")
            wait_until(marker.exists, "the first worker's command to start", timeout=20)
            first.send_signal(sig)
            _, err = first.communicate(timeout=20)
            assert b"given back to the server" in err
            second = start_work(server.port, "-f", "job", "--", "cat")
            assert job.result(30) == b"payload"
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)


def test_work_refuses_a_missing_command(gearmill: Running) -> None:
    out = subprocess.run(
        [*CLI, "work", "-p", str(gearmill.port), "-f", "x", "--", "/no/such/cmd"],
        capture_output=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert out.stderr == b"gearmill work: command not found: /no/such/cmd" + (
        b" (give a program on $PATH or a path to an executable file)\n"
    )


def test_failing_command_is_one_log_line_and_reaches_the_client(gearmill: Running) -> None:
    proc = start_work(gearmill.port, "-f", "oops", "--", "sh", "-c", "echo broken >&2; exit 3")
    try:
        with gm.Client(gearmill.address, timeout=30) as client:
            with pytest.raises(gm.JobException) as failed:
                client.run("oops", b"")
            assert failed.value.data == b"CommandFailed: broken"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert err.decode().splitlines() == [
        f"gearmill work: job {failed.value.handle} (oops) failed: CommandFailed: broken"
    ]


# ------------------------------------------------------- something else on the port


async def _wrong_port(gearmill: Running, greeting: bytes, caplog: pytest.LogCaptureFixture) -> None:
    async def other_service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # an SSH-like service greets first; an HTTP-like one waits for a whole line
        writer.write(greeting)
        await reader.read()
        writer.close()

    other = await asyncio.start_server(other_service, "127.0.0.1", 0)
    port = other.sockets[0].getsockname()[1]
    wrong = f"127.0.0.1:{port}"
    worker = gm.AsyncWorker([wrong, gearmill.address], connect_timeout=0.5)
    worker.register("up", lambda job: job.data.upper())
    working = asyncio.ensure_future(worker.work())
    try:
        async with gm.AsyncClient(gearmill.address, timeout=30) as client:
            assert await client.run("up", b"meanwhile") == b"MEANWHILE"
        # the worker says what is wrong with that address once, keeps retrying with
        # backoff, and sums up after the fourth attempt instead of a line per retry
        await async_wait_until(
            lambda: any("after 4 attempts" in line for line in worker_lines(caplog)),
            "the fourth attempt",
            timeout=20,
        )
    finally:
        worker.stop()
        await asyncio.wait_for(working, 30)
        other.close()
    said = [line for line in worker_lines(caplog) if wrong in line]
    if greeting:
        first = (
            f"{wrong} is not a Gearman job server (it sent unexpected text in binary stream);"
            " give a job server's address (the servers argument, else $GEARMAN_SERVERS, else"
            " 127.0.0.1:4730); retrying in 0.5 s"
        )
    else:
        first = (
            f"could not connect to {wrong}: connected, but no answer to GRAB_JOB_ALL within"
            " 0.5 s (is that a Gearman job server?); retrying in 0.5 s"
        )
    assert said == [
        first,
        f"{wrong}: still the same after 4 attempts; retrying in 4.0 s (said again after 16)",
    ]


@pytest.mark.parametrize("greeting", [b"SSH-2.0-OpenSSH_9.2\r\n", b""], ids=["greets", "silent"])
def test_worker_on_a_port_that_is_not_a_job_server(
    gearmill: Running, greeting: bytes, worker_log: pytest.LogCaptureFixture
) -> None:
    asyncio.run(_wrong_port(gearmill, greeting, worker_log))


# ------------------------------------------------------------------ stopping


async def _stop_while_a_job_runs(address: str, concurrency: int) -> list[Any]:
    started = threading.Event()

    def slow(job: gm.WorkerJob) -> bytes:
        started.set()
        time.sleep(0.5)
        return b"finished " + job.data

    async def aslow(job: gm.WorkerJob) -> bytes:
        started.set()
        await asyncio.sleep(0.5)
        return b"finished " + job.data

    results: list[Any] = []
    for function in (slow, aslow):
        started.clear()
        worker = gm.AsyncWorker(address, concurrency=concurrency)
        worker.register("slow", function)
        working = asyncio.ensure_future(worker.work())
        async with gm.AsyncClient(address, timeout=30) as client:
            job = await client.submit("slow", b"A")
            await async_wait_until(started.is_set, "the job to start", timeout=20)
            worker.stop()
            results.append(await job.result())
        await asyncio.wait_for(working, 30)
    return results


@pytest.mark.parametrize("concurrency", [1, 2])
def test_stop_finishes_the_running_job_and_sends_its_result(
    server: Running, concurrency: int
) -> None:
    # with a free slot the worker is asleep on the server when told to stop: its
    # connection must still carry the running job's result
    results = asyncio.run(_stop_while_a_job_runs(server.address, concurrency))
    assert results == [b"finished A", b"finished A"]


def test_stop_before_work_has_started_is_not_lost(gearmill: Running) -> None:
    async def started_then_stopped() -> None:
        worker = gm.AsyncWorker(gearmill.address)
        worker.register("up", lambda job: job.data.upper())
        working = asyncio.ensure_future(worker.work())
        worker.stop()  # the task has not run yet
        await asyncio.wait_for(working, 30)
        # a stopped worker works again when asked to
        working = asyncio.ensure_future(worker.work())
        async with gm.AsyncClient(gearmill.address, timeout=30) as client:
            assert await client.run("up", b"again") == b"AGAIN"
        worker.stop()
        await asyncio.wait_for(working, 30)

    asyncio.run(started_then_stopped())

    blocking = gm.Worker(gearmill.address)
    blocking.register("up", lambda job: job.data.upper())
    thread = threading.Thread(target=blocking.work, daemon=True)
    blocking.stop()  # e.g. shutting down before the worker's thread got going
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
