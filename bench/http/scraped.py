"""gearmill serve with --http on and a Prometheus-like scraper: for bench/compare.py -s.

    python3 bench/compare.py --no-gearmand \\
        -s "http+scrape=.venv/bin/python bench/http/scraped.py {port} {tmp}"

Starts ``gearmill serve -p PORT --store memory --http 127.0.0.1:0`` (memory, as the
harness runs every gearmill, so the rows compare like with like), reads the HTTP port from its
start line, GETs /metrics at once and then once a second until stopped (SIGTERM/SIGINT), then stops
the server. The number of scrapes is written to TMP/scrapes.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path


def main() -> int:
    port, tmp = sys.argv[1], Path(sys.argv[2])
    log = tmp / "serve.log"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gearmill.cli.main",
            "serve",
            "-p",
            port,
            "--store",
            "memory",
            "--http",
            "127.0.0.1:0",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    base = None
    deadline = time.monotonic() + 60
    while base is None and time.monotonic() < deadline and server.poll() is None:
        found = re.search(rb"HTTP on (http://\S+/)", log.read_bytes())
        base = found.group(1).decode() if found else None
        time.sleep(0.05)
    scrapes = 0
    # the first at once: most runs are shorter than a second, and would see none
    while base is not None and server.poll() is None:
        with urllib.request.urlopen(base + "metrics", timeout=10) as r:
            r.read()
        scrapes += 1
        if stop.wait(1.0):
            break
    (tmp / "scrapes").write_text(f"{scrapes}\n")
    server.send_signal(signal.SIGTERM)
    return server.wait(30)


if __name__ == "__main__":
    sys.exit(main())
