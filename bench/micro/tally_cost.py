"""What metrics (``--http``'s journal tally) cost per job, in deterministic batches.

    python bench/micro/tally_cost.py [--python PY] [--n 20000]

Drives an in-process broker as ``rt`` does over sockets (a client's SUBMIT_JOB,
then a worker's GRAB_JOB, then its WORK_COMPLETE, each its own batch ended by the
journal's drain and a flush), once bare and once with a metrics Recorder attached,
under ``valgrind --tool=callgrind``, and prints the instructions per job of each.
Unlike bench/micro/icount.py the batches do not depend on timing, so two runs
agree to the instruction (the hash seed is fixed: it moves the count by ~100); it
leaves out the event loop and the sockets, so it gives the tally's own cost, not
its share of a whole round trip.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import gc, sys, time
from gearmill.protocol.packets import PacketType as T
from gearmill.server.broker import Broker, BrokerConfig, Peer
from gearmill.server.recorder import Recorder
from gearmill.server.sink import BufferSink
from gearmill.server.stream import Hub, flush

n, tally = int(sys.argv[1]), sys.argv[2] == "1"
b = Broker(BrokerConfig(handle_prefix=b"H:bench"), time.time)
if tally:
    Recorder().attach(b)
hub = Hub(b, lambda peer, line: None, lambda: None)
client = b.connect(Peer(1, "127.0.0.1", True, BufferSink()))
worker = b.connect(Peer(2, "127.0.0.1", True, BufferSink()))
b.handle(worker, T.CAN_DO, [b"f"])
gc.collect()
gc.freeze()
gc.set_threshold(10_000, 20, 1_000)  # as gearmill serve does


def batch():
    flush(hub)  # the journal's drain, then the writes: the edge's end of a batch
    client.sink.take()
    worker.sink.take()


batch()
for i in range(n):
    b.handle(client, T.SUBMIT_JOB, [b"f", b"", b"x"])
    batch()
    b.handle(worker, T.GRAB_JOB, [])
    batch()
    b.handle(worker, T.WORK_COMPLETE, [b"H:bench:%d" % (i + 1), b"ok"])
    batch()
"""


def instructions(python: str, n: int, tally: bool) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "valgrind.log"
        subprocess.run(
            [
                *("valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg"),
                *(f"--log-file={log}", python, "-c", CHILD, str(n), "1" if tally else "0"),
            ],
            check=True,
            # bytes' hashes (handles in dicts) change with the seed, and the count with them
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        found = re.search(r"Collected : (\d+)", log.read_text())
        if found is None:
            raise SystemExit(f"tally_cost: no instruction count in {log}")
        return int(found.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--n", type=int, default=20000)
    a = ap.parse_args()
    per = {}
    for tally in (False, True):
        one = instructions(a.python, 1, tally)
        many = instructions(a.python, a.n + 1, tally)
        per[tally] = (many - one) / a.n
    print(f"bare:       {per[False]:,.0f} instructions per job")
    print(f"with tally: {per[True]:,.0f} instructions per job (+{per[True] - per[False]:,.0f})")


if __name__ == "__main__":
    main()
