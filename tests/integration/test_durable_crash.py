"""The crash test: the C gearman tool submits background jobs (and a gearman -w worker
runs them) while the server is SIGKILLed at random moments and restarted on the same
store. Every job that got its JOB_CREATED must complete at least once; a job runs twice
only if it was running at a kill or its completion's delete was not yet committed (the
store is read at each kill to count those)."""

from __future__ import annotations

import collections
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import start_gearmill

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "stores"))
from storekit import DURABLE, Backend, make_backend, restart_flags
from test_durable import GEARMAN, kill, submit

KILLS = 3
SUBMITTERS = 3


@pytest.fixture(params=DURABLE, name="store")
def store_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from make_backend(request.param, tmp_path)


def test_sigkill_at_random_moments_loses_no_acknowledged_job(
    store: Backend, tmp_path: Path
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    out = tmp_path / "done"
    out.touch()
    srv = start_gearmill("--store", store.url, *restart_flags(store))
    stop = threading.Event()
    acked: list[str] = []
    refused: list[str] = []
    counter = iter(range(1 << 30))
    lock = threading.Lock()

    def submitter() -> None:
        while not stop.is_set():
            with lock:
                name = f"j{next(counter)}"
            if submit(srv.port, "crash", name) == "":
                acked.append(name)  # the tool saw JOB_CREATED
            else:
                refused.append(name)
                time.sleep(0.02)  # the server is down: do not spin

    done_event = threading.Event()
    workers: list[subprocess.Popen[bytes]] = []

    def worker() -> None:
        # a gearman -w that leaves when its server dies is replaced (bounded by done_event)
        while not done_event.is_set():
            proc = subprocess.Popen(
                [
                    GEARMAN,
                    "-p",
                    str(srv.port),
                    "-w",
                    "-f",
                    "crash",
                    "--",
                    "sh",
                    "-c",
                    f"cat >> {out}; echo >> {out}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            workers.append(proc)
            while proc.poll() is None and not done_event.is_set():
                time.sleep(0.05)

    threads = [threading.Thread(target=submitter) for _ in range(SUBMITTERS)]
    threads.append(threading.Thread(target=worker))
    for t in threads:
        t.start()
    # what may run twice, counted at each kill: the job the worker was running (one
    # gearman -w: one at a time), and every job that had run but whose row is still in
    # the store (its completion's delete was not yet committed), as the store says
    allowed = 0
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.3, 1.2))  # a random moment, which is the point
            kill(srv)
            ran_before = set(out.read_text().split())
            still_stored = {d.decode() for d in store.stored_data()}
            allowed += 1 + len(ran_before & still_stored)
            srv.restart()
        time.sleep(0.5)
        stop.set()
        for t in threads[:SUBMITTERS]:
            t.join(60)
        # the worker goes on until every acknowledged job has run (bounded)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = set(out.read_text().split())
            if done >= set(acked):
                break
            time.sleep(0.1)
    finally:
        stop.set()
        done_event.set()
        threads[-1].join(60)
        for proc in workers:
            proc.kill()
            proc.wait(10)
        srv.stop()
    runs = collections.Counter(out.read_text().split())
    lost = sorted(set(acked) - set(runs))
    duplicates = sum(n - 1 for n in runs.values() if n > 1)
    print(
        f"{store.kind}: seed {seed}, {len(acked)} acknowledged, {len(refused)} refused, "
        f"{len(runs)} ran, {duplicates} duplicate runs (at most {allowed}), {len(lost)} lost, "
        f"{KILLS} kills"
    )
    assert len(acked) > 50
    assert lost == [], f"seed {seed}: acknowledged but never run: {lost[:10]}"
    assert duplicates <= allowed, f"seed {seed}: {runs.most_common(10)}"
