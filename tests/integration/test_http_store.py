"""What /metrics and /readyz say of a durable store, against a real Redis or
PostgreSQL server that the test starts, stops and starts again."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_http import gearadmin_status, metric, start_web

from conftest import Conn
from gearmill.protocol.packets import PacketType as P

sys.path.insert(0, str(Path(__file__).parents[1] / "stores"))
from storekit import PrivatePostgres, PrivateRedis

AOF = ("--appendonly", "yes", "--appendfsync", "always")


def test_store_metrics_and_readiness_follow_the_store(tmp_path: Path) -> None:
    redis = PrivateRedis(tmp_path, *AOF)
    srv, web = start_web("--store", redis.url)
    try:
        assert web.call("GET", "/readyz")[0] == 200
        with Conn(srv.port) as client:
            for i in range(3):
                client.send(P.SUBMIT_JOB_BG, b"kept", b"", b"%d" % i)
                client.expect(P.JOB_CREATED)  # sent once committed
        m = web.metrics()
        assert metric(m, "gearmill_store_up") == 1
        assert metric(m, "gearmill_store_committed_jobs_total") == 3
        commits = metric(m, "gearmill_store_commits_total")
        assert 1 <= commits <= 3  # grouped or not
        assert metric(m, "gearmill_store_commit_seconds_count") == commits
        assert metric(m, "gearmill_store_commit_batch_size_count") == commits
        assert metric(m, "gearmill_store_commit_batch_size_sum") == 3  # three adds
        # the jobs the store holds, as gearadmin counts them queued
        assert metric(m, "gearmill_store_jobs") == gearadmin_status(srv.port)["kept"][0] == 3

        redis.kill()
        with Conn(srv.port) as client:
            client.send(P.SUBMIT_JOB_BG, b"kept", b"", b"during")
            assert client.recv()[0] == P.ERROR  # QUEUE_ERROR: the writer saw it go
        status, _, body = web.call("GET", "/readyz")
        assert status == 503 and body.startswith(b"store unreachable")
        assert metric(web.metrics(), "gearmill_store_up") == 0

        redis.start()
        deadline = time.monotonic() + 30
        while web.call("GET", "/readyz")[0] != 200:
            assert time.monotonic() < deadline, "not ready again after the store came back"
            time.sleep(0.1)
        assert metric(web.metrics(), "gearmill_store_up") == 1
    finally:
        srv.stop()
        redis.close()
        shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture(params=["postgresql", "redis"])
def own_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[PrivatePostgres | PrivateRedis]:
    store = PrivatePostgres() if request.param == "postgresql" else PrivateRedis(tmp_path, *AOF)
    try:
        yield store
    finally:
        store.close()


def test_an_idle_server_whose_store_went_away_is_not_ready(
    own_store: PrivatePostgres | PrivateRedis,
) -> None:
    """No job is submitted while the store is down (so no commit fails): the periodic
    ping alone makes /readyz 503, and 200 again once the store is back."""
    env = {**os.environ, "GEARMILL_HTTP_PROBE_EVERY": "0.2"}
    srv, web = start_web("--store", own_store.url, env=env)

    def ready_within(status: int, seconds: float) -> bytes:
        deadline = time.monotonic() + seconds
        while True:
            got, _, body = web.call("GET", "/readyz")
            if got == status:
                return body
            assert time.monotonic() < deadline, f"/readyz still {got} {body!r}"
            time.sleep(0.1)

    try:
        ready_within(200, 10)
        own_store.kill()
        body = ready_within(503, 20)
        assert body.startswith(b"store unreachable")
        assert metric(web.metrics(), "gearmill_store_reachable") == 0
        assert b"does not answer" in (srv.tmp / "server.log").read_bytes()
        assert srv.proc.poll() is None  # not ready, but still running
        own_store.start()
        ready_within(200, 30)
        assert metric(web.metrics(), "gearmill_store_reachable") == 1
        # and it takes work again
        with Conn(srv.port) as client:
            client.send(P.SUBMIT_JOB_BG, b"after", b"", b"x")
            client.expect(P.JOB_CREATED)
    finally:
        srv.stop()


def test_a_stalled_store_is_named_with_the_wait(tmp_path: Path) -> None:
    """A store that accepts connections but does not answer (paused, overloaded) makes
    /readyz and the log say so in words, not a bare exception name or nothing."""
    redis = PrivateRedis(tmp_path, *AOF)
    env = {**os.environ, "GEARMILL_HTTP_PROBE_EVERY": "0.2"}
    srv, web = start_web("--store", redis.url, "--lease", "3", env=env)
    assert redis.proc is not None
    log = srv.tmp / "server.log"
    try:
        redis.proc.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 20
        while (answer := web.call("GET", "/readyz"))[0] != 503:
            assert time.monotonic() < deadline, answer
            time.sleep(0.1)
        assert (
            answer[2]
            == f"store unreachable: {redis.url}: no answer to a ping within 2 s\n".encode()
        )
        # the heartbeat's own call gives up later (10 s), and says so in words too
        while b"heartbeat to" not in log.read_bytes():
            assert time.monotonic() < deadline + 20, log.read_text()
            time.sleep(0.1)
        assert (
            f"heartbeat to {redis.url} failed: no answer within 10 s; retrying" in log.read_text()
        )
        redis.proc.send_signal(signal.SIGCONT)
        while web.call("GET", "/readyz")[0] != 200:
            assert time.monotonic() < deadline + 20, "not ready again once the store answers"
            time.sleep(0.1)
    finally:
        if redis.proc is not None:
            redis.proc.send_signal(signal.SIGCONT)
        srv.stop()
        redis.close()
