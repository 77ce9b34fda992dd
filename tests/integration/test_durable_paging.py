"""Paging (--memory-jobs): queued background jobs beyond the budget wait in the store and
are loaded as the queue drains; status counts them, a unique id coalesces onto them, and
they survive a SIGKILL. A real server on each durable store, the C gearman tool as client
and worker."""

from __future__ import annotations

import collections
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import gearmill as gm
from conftest import Conn, Running, start_gearmill
from gearmill.protocol.packets import PacketType

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "stores"))
from storekit import DURABLE, Backend, make_backend, restart_flags
from test_durable import drain, kill, status, submit, wait_queued


@pytest.fixture(params=DURABLE, name="store")
def store_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from make_backend(request.param, tmp_path)


BUDGET = 40
JOBS = 400


def in_memory(srv: Running) -> int:
    """Jobs the server holds in memory: 'show jobs' lists those (not the stored-only)."""
    with srv.conn() as c:
        shown = c.admin(b"show jobs\n").decode()
    return sum(1 for line in shown.splitlines() if "\t" in line)


def test_jobs_beyond_the_budget_wait_in_the_store_and_drain_in_order_once(
    store: Backend, tmp_path: Path
) -> None:
    srv = start_gearmill("--store", store.url, "--memory-jobs", str(BUDGET), *restart_flags(store))
    try:
        assert submit(srv.port, "paged", "-u", "kept", "first") == ""
        lines = "".join(f"n{i}\n" for i in range(JOBS))
        assert submit(srv.port, "paged", "-N", stdin=lines) == ""
        assert submit(srv.port, "paged", "-L", "low1") == ""
        assert submit(srv.port, "paged", "-I", "high1", "high2") == ""
        total = 1 + JOBS + 3
        wait_queued(srv, "paged", total)
        counts = None
        with srv.conn() as c:
            counts = c.admin(b"prioritystatus\n").decode()
        assert "paged\t2\t401\t1\t0" in counts  # stored-only jobs counted per priority
        # memory holds about the budget (a page of slack), not the whole queue
        assert in_memory(srv) <= BUDGET + 2 * (BUDGET // 4)
        # the same unique id as a job kept only in the store joins it
        assert submit(srv.port, "paged", "-u", "kept", "second") == ""
        assert status(srv)["paged"][0] == total

        kill(srv)
        srv.restart()
        wait_queued(srv, "paged", total)
        assert in_memory(srv) <= BUDGET + 2 * (BUDGET // 4)
        assert submit(srv.port, "paged", "-u", "kept", "third") == ""
        assert status(srv)["paged"][0] == total

        got = drain(srv.port, "paged", total, tmp_path / "out", timeout=120)
        assert got[:2] == ["high1", "high2"]  # paged in before the normal ones
        assert got[-1] == "low1"
        assert got[2:-1] == ["first"] + [f"n{i}" for i in range(JOBS)]
        assert status(srv)["paged"][0] == 0
    finally:
        srv.stop()


def test_concurrent_submissions_to_waiting_workers_each_run_once(
    store: Backend, tmp_path: Path
) -> None:
    """Workers wait while several connections submit background jobs at once (plain,
    with a unique id, and unique ids several submit), beyond the memory budget: each
    acknowledged job runs once (a shared unique id at least once, at most as often as
    it was submitted), nothing unacknowledged runs, nothing is left queued."""
    srv = start_gearmill("--store", store.url, "--memory-jobs", str(BUDGET))
    ran: list[tuple[bytes, str]] = []
    lock = threading.Lock()

    def record(job: gm.WorkerJob) -> bytes:
        with lock:
            ran.append((job.data, job.unique))
        return b""

    workers = [gm.Worker(srv.address, concurrency=2) for _ in range(2)]
    for w in workers:
        w.register("mix", record)
    threads = [threading.Thread(target=w.work, daemon=True) for w in workers]
    for t in threads:
        t.start()
    accepted: dict[bytes, str] = {}
    failures: list[str] = []
    kinds = (PacketType.SUBMIT_JOB_HIGH_BG, PacketType.SUBMIT_JOB_BG, PacketType.SUBMIT_JOB_LOW_BG)

    def submitter(n: int) -> None:
        try:
            with Conn(srv.port, timeout=60) as c:
                for start in range(0, 300, 50):  # 50 in flight on each connection
                    sent = []
                    for i in range(start, start + 50):
                        unique = ("", f"own{n}.{i}", f"shared{i % 7}")[i % 3]
                        data = f"{n}.{i}".encode()
                        c.send(kinds[i % 3], b"mix", unique.encode(), data)
                        sent.append((data, unique))
                    for data, unique in sent:
                        kind, payload = c.recv()
                        assert kind == PacketType.JOB_CREATED, payload
                        with lock:
                            accepted[data] = unique
        except Exception as e:  # reported below, from the test thread
            failures.append(f"connection {n}: {e!r}")

    try:
        submitters = [threading.Thread(target=submitter, args=(n,)) for n in range(3)]
        for t in submitters:
            t.start()
        for t in submitters:
            t.join(120)
        assert failures == []
        assert len(accepted) == 900
        shared = collections.Counter(u for u in accepted.values() if u.startswith("shared"))
        deadline = time.monotonic() + 120
        while True:
            with lock:
                runs = collections.Counter(d for d, _ in ran)
                by_unique = collections.Counter(u for _, u in ran if u.startswith("shared"))
            own = [d for d, u in accepted.items() if not u.startswith("shared")]
            if all(runs[d] for d in own) and set(by_unique) == set(shared):
                if status(srv).get("mix", [0, 0])[:2] == [0, 0]:
                    break
            assert time.monotonic() < deadline, "jobs left unrun: " + repr(
                (sum(1 for d in own if not runs[d]), status(srv))
            )
            time.sleep(0.1)
        assert [d for d in own if runs[d] != 1] == []  # each once
        assert set(runs) <= set(accepted)  # nothing ran that was not acknowledged
        for unique, n in shared.items():
            assert 1 <= by_unique[unique] <= n, unique
        assert status(srv)["mix"][:2] == [0, 0]  # nothing queued, nothing running
    finally:
        for w in workers:
            w.stop()
        for t in threads:
            t.join(30)
        srv.stop()
