"""What /metrics and /readyz say of a durable store, against a real Redis server
that the test starts, stops and starts again."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from test_http import gearadmin_status, metric, start_web

from conftest import Conn
from gearmill.protocol.packets import PacketType as P

sys.path.insert(0, str(Path(__file__).parents[1] / "stores"))
from storekit import PrivateRedis

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
