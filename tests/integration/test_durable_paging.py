"""Paging (--memory-jobs): queued background jobs beyond the budget wait in the store and
are loaded as the queue drains; status counts them, a unique id coalesces onto them, and
they survive a SIGKILL. A real server on each durable store, the C gearman tool as client
and worker."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Running, start_gearmill

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
