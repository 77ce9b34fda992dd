"""Foreground round trips per second over TLS next to plain TCP, on one server.

    python bench/tls_rate.py [--seconds 3] [--rounds 5] [--inflight 32]

Starts ``gearmill serve`` with a plain and a TLS listener (a throw-away CA and
certificates made with the ``cryptography`` package; client certificates
required), one AsyncWorker per listener process-free (a trivial function), and
an AsyncClient keeping ``--inflight`` foreground jobs in flight for
``--seconds``. Plain and TLS rounds alternate; the median of ``--rounds`` each
is printed with their ratio. The client and worker are our Python libraries,
so the figure is end-to-end (client + server + worker on one machine), not
the server alone.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gearmill.client.aio import AsyncClient
from gearmill.client.tls import client_context
from gearmill.worker.aio import AsyncWorker, WorkerJob


def _pem(
    folder: Path,
    name: str,
    cn: str,
    signer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    ca: bool = False,
) -> tuple[x509.Name, ec.EllipticCurvePrivateKey]:
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_name, issuer_key = signer or (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    )
    cert = builder.sign(issuer_key, hashes.SHA256())
    (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return subject, key


def echo(job: WorkerJob) -> bytes:
    return job.data


async def one_round(server: str, tls: object, seconds: float, inflight: int) -> float:
    worker = AsyncWorker(server, tls=tls)  # type: ignore[arg-type]
    worker.register("echo", echo)
    task = asyncio.create_task(worker.work())
    async with AsyncClient(server, tls=tls, timeout=30) as client:  # type: ignore[arg-type]
        await client.run("echo", b"warm-up")
        done = 0
        stop = time.monotonic() + seconds

        async def loop() -> None:
            nonlocal done
            while time.monotonic() < stop:
                await client.run("echo", b"x" * 64)
                done += 1

        start = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(inflight)))
        rate = done / (time.monotonic() - start)
    worker.stop()
    await asyncio.wait_for(task, 30)
    return rate


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--inflight", type=int, default=32)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ca = _pem(folder, "ca", "bench-ca", None, ca=True)
        _pem(folder, "server", "server", ca)
        _pem(folder, "client", "client", ca)
        log = folder / "server.log"
        cmd = [
            *(sys.executable, "-m", "gearmill.cli.main", "serve", "-p", "0", "-L", "127.0.0.1"),
            *("-L", "tls://127.0.0.1:0", "--tls-cert", str(folder / "server.crt")),
            *("--tls-key", str(folder / "server.key"), "--tls-ca", str(folder / "ca.crt")),
            *("--log-file", str(log)),
        ]
        server = subprocess.Popen(cmd)
        try:
            deadline = time.monotonic() + 30
            found = None
            while found is None and time.monotonic() < deadline:
                found = re.search(
                    r"Listening on 127\.0\.0\.1:(\d+), tls://127\.0\.0\.1:(\d+) ",
                    log.read_text() if log.exists() else "",
                )
                time.sleep(0.05)
            assert found, "the server did not start"
            plain = f"127.0.0.1:{found.group(1)}"
            secure = f"tls://127.0.0.1:{found.group(2)}"
            ctx = client_context(
                str(folder / "ca.crt"), str(folder / "client.crt"), str(folder / "client.key")
            )
            rates: dict[str, list[float]] = {"plain": [], "tls": []}
            for _ in range(args.rounds):
                rates["plain"].append(
                    asyncio.run(one_round(plain, None, args.seconds, args.inflight))
                )
                rates["tls"].append(
                    asyncio.run(one_round(secure, ctx, args.seconds, args.inflight))
                )
        finally:
            server.terminate()
            server.wait(30)
    med = {k: statistics.median(v) for k, v in rates.items()}
    for k, v in rates.items():
        print(f"{k:>5}: median {med[k]:8.0f} round trips/s  ({', '.join(f'{x:.0f}' for x in v)})")
    print(f"  tls/plain: {med['tls'] / med['plain']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
