"""The HTTP listener against a real server: /metrics, gearmand's gateway, tokens, the API."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import (
    Conn,
    Running,
    free_port,
    gearmill_cmd,
    start_gearmand,
    start_gearmill,
    wait_listening,
    wait_until,
)
from gearmill.protocol.packets import PacketType as P

_HTTP = re.compile(rb"HTTP on http://127\.0\.0\.1:(\d+)/")


class Web:
    """A gearmill server with its HTTP listener."""

    def __init__(self, srv: Running, log: Path) -> None:
        self.srv = srv
        found = wait_until(lambda: _HTTP.search(log.read_bytes()), f"'HTTP on' in {log}")
        self.base = f"http://127.0.0.1:{int(found.group(1))}"

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.base + path, body, headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def json(self, path: str, headers: dict[str, str] | None = None) -> object:
        status, _, body = self.call("GET", path, headers=headers)
        assert status == 200, (path, status, body)
        return json.loads(body)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, headers, body = self.call("GET", "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        out = {}
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                out[s.name, tuple(sorted(s.labels.items()))] = s.value
        return out


def start_web(*extra: str, env: dict[str, str] | None = None) -> tuple[Running, Web]:
    srv = start_gearmill("--http", "127.0.0.1:0", *extra, env=env)
    return srv, Web(srv, srv.tmp / "server.log")


@pytest.fixture
def web() -> Iterator[Web]:
    srv, w = start_web("-j", "2")
    yield w
    srv.stop()


def gearadmin_status(port: int) -> dict[str, tuple[int, int, int]]:
    out = subprocess.run(
        ["gearadmin", "-h", "127.0.0.1", "-p", str(port), "--status"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    rows = {}
    for line in out.splitlines():
        if line != ".":
            name, total, running, workers = line.split("\t")
            rows[name] = (int(total), int(running), int(workers))
    return rows


def metric(m: dict, name: str, **labels: str) -> float:
    return m[name, tuple(sorted(labels.items()))]


# ---------------------------------------------------------------- metrics


def test_metrics_count_every_ending_and_gauges_match_gearadmin(web: Web) -> None:
    port = web.srv.port
    with Conn(port) as worker, Conn(port) as client, Conn(port) as admin:
        worker.send(P.CAN_DO, b"f")

        def run(background: bool, end: int, *args: bytes) -> bytes:
            client.send(P.SUBMIT_JOB_BG if background else P.SUBMIT_JOB, b"f", b"", b"x")
            handle = client.expect(P.JOB_CREATED)
            worker.send(P.GRAB_JOB)
            assert worker.expect(P.JOB_ASSIGN).startswith(handle + b"\0")
            worker.send(end, handle, *args)
            if not background:
                client.recv()  # the ending, forwarded
            return handle

        run(False, P.WORK_COMPLETE, b"done")
        run(True, P.WORK_COMPLETE, b"done")
        run(True, P.WORK_FAIL)
        run(False, P.WORK_EXCEPTION, b"boom")
        # cancelled by an operator
        client.send(P.SUBMIT_JOB_BG, b"idle", b"", b"c")
        handle = client.expect(P.JOB_CREATED)
        assert admin.admin(b"cancel job " + handle + b"\n").startswith(b"OK")
        # a worker dying twice with -j 2: retried once, then dead-lettered
        client.send(P.SUBMIT_JOB_BG, b"crash", b"", b"d")
        client.expect(P.JOB_CREATED)
        for _ in range(2):
            with Conn(port) as dying:
                dying.send(P.CAN_DO, b"crash")
                dying.send(P.GRAB_JOB)
                dying.expect(P.JOB_ASSIGN)
        # a foreground client leaving before its job ran: abandoned
        with Conn(port) as leaving:
            leaving.send(P.SUBMIT_JOB, b"idle", b"", b"a")
            leaving.expect(P.JOB_CREATED)
        # one stays queued, one runs
        client.send(P.SUBMIT_JOB_BG, b"idle", b"", b"q")
        client.expect(P.JOB_CREATED)
        client.send(P.SUBMIT_JOB_BG, b"f", b"", b"r")
        client.expect(P.JOB_CREATED)
        worker.send(P.GRAB_JOB)
        worker.expect(P.JOB_ASSIGN)

        def settled() -> dict | None:
            m = web.metrics()
            done = metric(
                m, "gearmill_jobs_dead_lettered_total", function="crash", kind="background"
            )
            gone = metric(m, "gearmill_jobs_abandoned_total", function="idle", kind="foreground")
            return m if done == 1 and gone == 1 else None

        m = wait_until(settled, "the dead-lettered and abandoned jobs in /metrics")
        assert isinstance(m, dict)
        status = gearadmin_status(port)

    def c(name: str, function: str, kind: str) -> float:
        return metric(m, f"gearmill_jobs_{name}_total", function=function, kind=kind)

    assert c("submitted", "f", "foreground") == 2
    assert c("submitted", "f", "background") == 3
    assert c("completed", "f", "foreground") == 1
    assert c("completed", "f", "background") == 1
    assert c("failed", "f", "background") == 1
    assert c("exceptions", "f", "foreground") == 1
    assert c("cancelled", "idle", "background") == 1
    assert c("retried", "crash", "background") == 1
    assert c("dead_lettered", "crash", "background") == 1
    assert c("abandoned", "idle", "foreground") == 1
    assert c("failed", "f", "foreground") == 0
    # waits: 4 endings of f, the running one and two attempts of crash; runs: the 4
    # endings of f (a dropped job's worker died: no run time)
    assert metric(m, "gearmill_job_queue_wait_seconds_count") == 7
    assert metric(m, "gearmill_job_run_seconds_count") == 4
    assert metric(m, "gearmill_job_queue_wait_seconds_bucket", le="+Inf") == 7
    assert metric(m, "gearman_up") == 1
    assert ("gearman_version_info", (("version", "1.1.20+gearmill.0.1.0"),)) in m
    assert metric(m, "gearmill_connections", role="worker") == 1
    assert metric(m, "gearmill_connections", role="client") == 2
    # the exporter's gauges are what gearadmin --status shows
    assert status == {"f": (1, 1, 1), "idle": (1, 0, 0), "crash": (0, 0, 0)}
    for name, (total, running, workers) in status.items():
        assert metric(m, "gearman_jobs", function=name) == total
        assert metric(m, "gearman_jobs_running", function=name) == running
        assert metric(m, "gearman_jobs_waiting", function=name) == total - running
        assert metric(m, "gearman_workers", function=name) == workers


def test_process_metrics_where_proc_stat_is_hidden(tmp_path: Path) -> None:
    """contrib/gearmill.service sets ProcSubset=pid: /proc shows processes only, no
    /proc/stat. The process's CPU, memory and open files are still reported (needs
    root for the mount namespace, as systemd has)."""
    log = tmp_path / "server.log"
    hide = 'mount -t proc -o subset=pid proc /proc && test ! -e /proc/stat && exec "$@"'
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", hide, "sh"]
    cmd += gearmill_cmd(0, "--http", "127.0.0.1:0")
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out)
    srv = Running("gearmill", proc, wait_listening(log, proc), tmp_path, cmd)
    try:
        m = Web(srv, log).metrics()
        assert metric(m, "process_cpu_seconds_total") > 0
        assert metric(m, "process_resident_memory_bytes") > 1 << 20
        assert metric(m, "process_open_fds") > 3
        assert abs(metric(m, "process_start_time_seconds") - time.time()) < 600
    finally:
        srv.stop()


def test_series_stay_bounded_with_many_functions() -> None:
    srv, web = start_web("--metrics-top-functions", "3")
    try:
        with Conn(srv.port) as client:
            for i in range(20):
                for _ in range(1 + (i == 7) * 5 + (i == 11) * 4 + (i == 13) * 3):
                    client.send(P.SUBMIT_JOB_BG, b"fn%d" % i, b"", b"")
                    client.expect(P.JOB_CREATED)
        m = web.metrics()
        named = {
            dict(labels)["function"]
            for (name, labels) in m
            if name == "gearmill_jobs_submitted_total"
        }
        assert named == {"fn7", "fn11", "fn13", "_other"}
        assert (
            metric(m, "gearmill_jobs_submitted_total", function="_other", kind="background") == 17
        )
        assert metric(m, "gearman_jobs", function="_other") == 17
        assert metric(m, "gearman_jobs", function="fn7") == 6
    finally:
        srv.stop()


def test_bytes_in_and_out_are_counted_per_function_and_bounded() -> None:
    """Job data in, results out (data, warnings, the end, exceptions), per function;
    beyond the busiest one the rest is summed under _other."""
    srv, web = start_web("--metrics-top-functions", "1")
    port = srv.port
    try:
        with Conn(port) as worker, Conn(port) as client:
            worker.send(P.CAN_DO, b"resize")
            worker.send(P.CAN_DO, b"ocr")
            worker.send(P.CAN_DO, b"zip")

            def run(name: bytes, data: bytes, *replies: tuple[int, bytes]) -> None:
                client.send(P.SUBMIT_JOB, name, b"", data)
                handle = client.expect(P.JOB_CREATED)
                worker.send(P.GRAB_JOB)
                worker.expect(P.JOB_ASSIGN)
                for ptype, payload in replies:
                    worker.send(ptype, handle, payload)
                    client.recv()  # forwarded

            # resize is the busiest: 3 jobs, 3 x 1000 bytes in
            for _ in range(3):
                run(
                    b"resize",
                    b"p" * 1000,
                    (P.WORK_DATA, b"d" * 300),
                    (P.WORK_WARNING, b"w" * 20),
                    (P.WORK_COMPLETE, b"c" * 4000),
                )
            run(b"ocr", b"o" * 50, (P.WORK_EXCEPTION, b"e" * 7))
            run(b"zip", b"z" * 60, (P.WORK_COMPLETE, b"r" * 9))
            # a background job's result counts too, though nobody waits for it
            client.send(P.SUBMIT_JOB_BG, b"zip", b"", b"b" * 11)
            handle = client.expect(P.JOB_CREATED)
            worker.send(P.GRAB_JOB)
            worker.expect(P.JOB_ASSIGN)
            worker.send(P.WORK_COMPLETE, handle, b"x" * 13)
            worker.send(P.ECHO_REQ, b"sync")
            worker.expect(P.ECHO_RES)  # the server has read the result
        m = web.metrics()
        assert metric(m, "gearmill_job_in_bytes_total", function="resize") == 3000
        assert metric(m, "gearmill_job_out_bytes_total", function="resize") == 3 * 4320
        assert metric(m, "gearmill_job_in_bytes_total", function="_other") == 50 + 60 + 11
        assert metric(m, "gearmill_job_out_bytes_total", function="_other") == 7 + 9 + 13
        named = {
            dict(labels)["function"] for (n, labels) in m if n == "gearmill_job_in_bytes_total"
        }
        assert named == {"resize", "_other"}
        rows = {r["name"]: r for r in web.json("/api/functions")}  # type: ignore[union-attr]
        assert (rows["zip"]["bytes_in"], rows["zip"]["bytes_out"]) == (71, 22)
    finally:
        srv.stop()


# ---------------------------------------------------------------- gateway


@pytest.fixture(params=["gearmill", "gearmand"])
def gateway(request: pytest.FixtureRequest) -> Iterator[tuple[Running, Web]]:
    """gearmill --http, or C gearmand -r http: the same requests get the same answers."""
    if request.param == "gearmill":
        srv, w = start_web()
    else:
        http_port = free_port()
        srv = start_gearmand("-r", "http", f"--http-port={http_port}")
        w = Web.__new__(Web)
        w.srv = srv
        w.base = f"http://127.0.0.1:{http_port}"
        wait_until(lambda: _answers(w.base), "the HTTP listener to answer")
    yield srv, w
    srv.stop()


def _answers(base: str) -> bool:
    try:
        urllib.request.urlopen(
            urllib.request.Request(base + "/", b"", method="POST"), timeout=1
        ).close()
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


def c_worker(port: int, function: str, *command: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["gearman", "-h", "127.0.0.1", "-p", str(port), "-w", "-f", function, "--", *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(
        lambda: gearadmin_status(port).get(function, (0, 0, 0))[2] == 1, f"a worker for {function}"
    )
    return proc


def test_gateway_as_gearmand_documents_it(gateway: tuple[Running, Web]) -> None:
    srv, web = gateway
    worker = c_worker(srv.port, "reverse", "rev")
    failing = c_worker(srv.port, "fails", "false")
    try:
        for method in ("POST", "PUT"):
            status, headers, body = web.call(method, "/reverse", b"hello")
            assert status == 200
            assert body == b"olleh"
            assert headers["X-Gearman-Command"] == "WORK_COMPLETE"
            assert re.fullmatch(r"H:test:\d+", headers["X-Gearman-Job-Handle"])
        status, headers, body = web.call(
            "POST", "/reverse", b"later", {"X-Gearman-Background": "true"}
        )
        assert (status, body, headers["X-Gearman-Command"]) == (200, b"", "JOB_CREATED")
        assert re.fullmatch(r"H:test:\d+", headers["X-Gearman-Job-Handle"])
        status, headers, _ = web.call("POST", "/fails", b"x")
        assert (status, headers["X-Gearman-Command"]) == (200, "WORK_FAIL")
        # the same unique id (and a high priority) is one job while it waits
        one = {"X-Gearman-Background": "true", "X-Gearman-Unique": "u1"}
        high = {**one, "X-Gearman-Priority": "high"}
        _, h1, _ = web.call("POST", "/nobody", b"a", one)
        _, h2, _ = web.call("POST", "/nobody", b"b", high)
        assert h1["X-Gearman-Job-Handle"] == h2["X-Gearman-Job-Handle"]
        assert gearadmin_status(srv.port)["nobody"] == (1, 0, 0)
        # no function: 404
        assert web.call("POST", "/", b"x")[0] == 404
    finally:
        worker.terminate()
        failing.terminate()
        worker.wait(10)
        failing.wait(10)


def test_gateway_answers_a_work_exception_with_its_text() -> None:
    """docs/compatibility.md: WORK_EXCEPTION too, with the exception text (a worker that
    raises, as gearmill's own and many others send WORK_EXCEPTION)."""
    import threading

    import gearmill as gm

    srv, web = start_web()
    worker = gm.Worker(srv.address, exceptions=True)

    def broken(job: gm.WorkerJob) -> bytes:
        raise ValueError("bad input")

    worker.register("broken", broken)
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    try:
        wait_until(
            lambda: gearadmin_status(srv.port).get("broken", (0, 0, 0))[2] == 1,
            "a worker for broken",
        )
        status, headers, body = web.call("POST", "/broken", b"x")
        assert (status, headers["X-Gearman-Command"]) == (200, "WORK_EXCEPTION")
        assert body == b"ValueError: bad input"
    finally:
        worker.stop()
        thread.join(30)
        srv.stop()


def test_get_never_submits_and_operator_paths_are_reserved() -> None:
    srv, web = start_web()
    try:
        for path in ("/favicon.ico", "/reverse", "/metrics", "/healthz"):
            web.call("GET", path)
        status, headers, body = web.call("GET", "/reverse")
        assert status == 405 and b"GET never submits" in body
        assert headers["Allow"] == "POST, PUT"  # what a 405 must say
        status, headers, body = web.call("DELETE", "/reverse")
        assert (status, headers["Allow"]) == (405, "POST, PUT")
        assert b"DELETE never submits" in body
        for path in ("/metrics", "/healthz"):
            status, headers, _ = web.call("POST", path, b"x")
            assert (status, headers["Allow"]) == (405, "GET, HEAD")
        assert gearadmin_status(srv.port) == {}
        # a high-priority background job is queued as such
        web.call(
            "POST", "/later", b"x", {"X-Gearman-Background": "true", "X-Gearman-Priority": "low"}
        )
        jobs = web.json("/api/jobs")
        assert isinstance(jobs, dict)
        assert [(j["function"], j["priority"]) for j in jobs["jobs"]] == [("later", "low")]
    finally:
        srv.stop()


def test_a_client_leaving_abandons_its_foreground_job() -> None:
    srv, web = start_web()
    try:
        with pytest.raises(OSError):
            web.call("POST", "/nobody", b"x", timeout=0.5)
        wait_until(
            lambda: gearadmin_status(srv.port).get("nobody") == (0, 0, 0),
            "the abandoned job to leave the status",
        )
        m = web.metrics()
        assert metric(m, "gearmill_jobs_abandoned_total", function="nobody", kind="foreground") == 1
    finally:
        srv.stop()


# ---------------------------------------------------------------- tokens


def test_tokens_are_asked_for_submissions_data_and_destructive_actions() -> None:
    srv, web = start_web("--http-token", "s3cret")
    good = {"Authorization": "Bearer s3cret"}
    try:
        for bad in ({}, {"Authorization": "Bearer wrong"}, {"X-Gearmill-Token": "nope"}):
            status, _, body = web.call("POST", "/f", b"x", {"X-Gearman-Background": "true", **bad})
            assert status == 401 and b"needs the token" in body
        assert gearadmin_status(srv.port) == {}
        status, headers, _ = web.call(
            "POST", "/f", b"payload", {"X-Gearman-Background": "true", **good}
        )
        assert status == 200
        handle = headers["X-Gearman-Job-Handle"]
        # listing needs no token; the payload does
        job = web.json(f"/api/jobs/{handle}")
        assert isinstance(job, dict) and "data_base64" not in job and job["state"] == "queued"
        assert web.call("GET", f"/api/jobs/{handle}?data=1")[0] == 401
        job = web.json(f"/api/jobs/{handle}?data=1", good)
        assert isinstance(job, dict) and job["data_base64"] == "cGF5bG9hZA=="
        # cancel and drop: refused without the token, done with it
        assert web.call("POST", f"/api/jobs/{handle}/cancel")[0] == 401
        assert gearadmin_status(srv.port)["f"] == (1, 0, 0)
        assert web.call("POST", f"/api/jobs/{handle}/cancel", b"", good)[0] == 200
        assert gearadmin_status(srv.port)["f"] == (0, 0, 0)
        done = web.json(f"/api/jobs/{handle}")
        assert isinstance(done, dict) and (done["state"], done["outcome"]) == (
            "finished",
            "cancelled",
        )
        assert web.call("DELETE", "/api/functions/f")[0] == 401
        assert web.call("DELETE", "/api/functions/f", None, good)[0] == 200
        assert "f" not in gearadmin_status(srv.port)
    finally:
        srv.stop()


def test_destructive_actions_are_refused_without_a_token_set() -> None:
    srv, web = start_web()
    try:
        _, headers, _ = web.call("POST", "/f", b"x", {"X-Gearman-Background": "true"})
        handle = headers["X-Gearman-Job-Handle"]
        status, _, body = web.call("POST", f"/api/jobs/{handle}/cancel", b"")
        assert status == 403 and b"--http-token" in body
        assert gearadmin_status(srv.port)["f"] == (1, 0, 0)
    finally:
        srv.stop()


def test_a_listener_off_loopback_without_a_token_does_not_start() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "gearmill.cli.main", "serve", "-p", "0", "--http", "0.0.0.0:0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "gearmill serve: --http 0.0.0.0:0: the HTTP listener on 0.0.0.0 is not on loopback; "
        "give --http-token TOKEN (or GEARMILL_HTTP_TOKEN) so that submissions and job data "
        "need it, or listen on 127.0.0.1"
    ]


# ---------------------------------------------------------------- dashboard API


def test_dashboard_and_its_api_show_what_gearadmin_shows(web: Web) -> None:
    status, headers, page = web.call("GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'src="/static/app.js"' in page
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        status, headers, body = web.call("GET", f"/static/{name}")
        assert status == 200 and headers["Content-Type"].startswith(kind) and body
    # nothing is fetched from elsewhere (no CDN): no absolute URLs in the page or its script
    assert not re.search(rb"https?://", page + web.call("GET", "/static/app.js")[2])
    port = web.srv.port
    with Conn(port) as worker, Conn(port) as client:
        worker.send(P.SET_CLIENT_ID, b"w-1")
        worker.send(P.CAN_DO, b"resize")
        for i in range(30):
            client.send(P.SUBMIT_JOB_BG, b"resize", b"", b"%d" % i)
            client.expect(P.JOB_CREATED)
        worker.send(P.GRAB_JOB)
        handle = worker.expect(P.JOB_ASSIGN).split(b"\0")[0]
        worker.send(P.WORK_STATUS, handle, b"3", b"10")
        status_rows = gearadmin_status(port)
        functions = wait_until(
            lambda: [
                f
                for f in web.json("/api/functions")
                if f["name"] == "resize"  # type: ignore[union-attr]
            ],
            "resize in /api/functions",
        )
        assert isinstance(functions, list)
        f = functions[0]
        assert (f["queued"] + f["running"], f["running"], f["workers"]) == status_rows["resize"]
        workers = web.json("/api/workers")
        assert isinstance(workers, list)
        assert [(w["client_id"], w["functions"], w["running"]) for w in workers] == [
            ("w-1", ["resize"], [handle.decode()])
        ]

        def running() -> dict | None:
            page = web.json("/api/jobs?state=running")
            assert isinstance(page, dict)
            jobs = page["jobs"]
            return jobs[0] if jobs and jobs[0]["progress"] == [3, 10] else None

        job = wait_until(running, "the running job with progress 3/10 in /api/jobs")
        assert isinstance(job, dict) and job["handle"] == handle.decode()
        # the progress moves without anything else happening
        worker.send(P.WORK_STATUS, handle, b"7", b"10")
        wait_until(
            lambda: web.json(f"/api/jobs/{handle.decode()}")["progress"] == [7, 10],  # type: ignore[index]
            "progress 7/10 in /api/jobs/HANDLE",
        )
        page1 = web.json("/api/jobs?offset=0&limit=25")
        page2 = web.json("/api/jobs?offset=25&limit=25")
        assert isinstance(page1, dict) and isinstance(page2, dict)
        assert (page1["total"], len(page1["jobs"]), len(page2["jobs"])) == (30, 25, 5)
        handles = [j["handle"] for j in page1["jobs"] + page2["jobs"]]
        assert len(set(handles)) == 30
        worker.send(P.WORK_COMPLETE, handle, b"ok")
        done = wait_until(
            lambda: web.json(f"/api/jobs/{handle.decode()}")["state"] == "finished",  # type: ignore[index]
            "the job finished in /api/jobs/HANDLE",
        )
        assert done
        summary = web.json("/api/summary")
        assert isinstance(summary, dict)
        assert (summary["jobs_queued"], summary["workers"], summary["completed"]) == (29, 1, 1)


def test_health_and_readiness_during_a_graceful_stop() -> None:
    srv, web = start_web()
    try:
        assert web.call("GET", "/healthz")[:1] == (200,)
        assert web.call("GET", "/readyz")[0] == 200
        with Conn(srv.port) as worker, Conn(srv.port) as client:
            worker.send(P.CAN_DO, b"slow")
            client.send(P.SUBMIT_JOB_BG, b"slow", b"", b"")
            client.expect(P.JOB_CREATED)
            worker.send(P.GRAB_JOB)
            handle = worker.expect(P.JOB_ASSIGN).split(b"\0")[0]
            srv.proc.send_signal(signal.SIGUSR1)  # graceful: waits for the running job
            wait_until(lambda: web.call("GET", "/readyz")[0] == 503, "/readyz to answer 503")
            assert web.call("GET", "/healthz")[0] == 200
            worker.send(P.WORK_COMPLETE, handle, b"")
            srv.proc.wait(10)
    finally:
        srv.stop()
