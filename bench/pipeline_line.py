"""How much a blocking client may pipeline before reading (docs/threat-model.md).

    python bench/pipeline_line.py PORT SIZE TYPE

Writes packets of TYPE (16 = ECHO_REQ with SIZE bytes, 18 = SUBMIT_JOB_BG
with a SIZE-byte payload) to a server on 127.0.0.1:PORT without reading
anything, until a write makes no progress for 2 s: the server stopped
reading because it owes this connection more than its --max-owed.
"""

from __future__ import annotations

import socket
import struct
import sys


def main() -> None:
    port, size, ptype = (int(a) for a in sys.argv[1:4])
    if ptype == 16:
        payload = b"x" * size
    else:
        payload = b"linefn\0\0" + b"x" * size
    pkt = struct.pack(">4sII", b"\0REQ", ptype, len(payload)) + payload
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(2)
    n = 0
    try:
        while n < 10_000_000:
            sock.sendall(pkt)
            n += 1
    except TimeoutError:
        pass
    mib = n * len(pkt) / 2**20
    print(f"type {ptype}, {size} bytes: {n} packets ({mib:.1f} MiB) before reads stopped")


if __name__ == "__main__":
    main()
