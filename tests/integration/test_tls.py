"""TLS listeners beside a plain one, client certificates and the access list, on a real server.

The certificates are made here: a test CA, the server's (for 127.0.0.1), clients' and
a stranger's signed by another CA. The server listens plain (-p) and TLS (-L tls://)
at once, asks for client certificates (optional) and reads an [access] section.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import socket
import ssl
import struct
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import gearmill as gm
from conftest import REQ, RES, Running, running_worker, start_gearmill, wait_until
from gearmill.client.tls import client_context
from gearmill.errors import GearmanError

ORG = "Gearmill Test"
ERROR = 19


# ------------------------------------------------------------ certificates


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


@dataclass
class Issuer:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey


def _cert(
    folder: Path,
    cn: str,
    issuer: Issuer | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> tuple[Path, Path, Issuer]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    signer = issuer or Issuer(_name(cn), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(signer.name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(signer.key, hashes.SHA256())
    cert_path, key_path = folder / f"{cn}.crt", folder / f"{cn}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, Issuer(_name(cn), key)


@dataclass
class PKI:
    ca: Path
    server: tuple[Path, Path]
    clients: dict[str, tuple[Path, Path]]

    def context(self, who: str | None = None) -> ssl.SSLContext:
        cert, key = self.clients[who] if who else (None, None)
        return client_context(str(self.ca), cert and str(cert), key and str(key))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    folder = tmp_path_factory.mktemp("pki")
    ca, _, ca_issuer = _cert(folder, "test-ca", None, ca=True)
    srv_cert, srv_key, _ = _cert(folder, "server", ca_issuer, server=True)
    clients = {}
    for cn in ("worker-1", "client-1", "admin", "nobody"):
        cert, key, _ = _cert(folder, cn, ca_issuer)
        clients[cn] = (cert, key)
    # a certificate the server's CA did not sign
    _, _, rogue = _cert(folder, "rogue-ca", None, ca=True)
    cert, key, _ = _cert(folder, "intruder", rogue)
    clients["intruder"] = (cert, key)
    return PKI(ca, (srv_cert, srv_key), clients)


CLIENT_TOKEN = "client-1-token-0123456789"
ADMIN_TOKEN = "admin-token-0123456789abc"

ACCESS = f"""
[http]
listen = "127.0.0.1:0"
# tokens name the same identities as certificates (the [access] rules below)
[[http.identity]]
token = "{CLIENT_TOKEN}"
subject = "CN=client-1,O={ORG}"
[[http.identity]]
token = "{ADMIN_TOKEN}"
subject = "CN=admin,O={ORG}"

[access]
# peers no rule matches: public functions only, no workers, read-only admin
submit = ["public.*"]
work = []
admin = "read"

[[access.rule]]
subject = "CN=worker-*,O={ORG}"
work = ["reverse", "public.*"]
submit = []

[[access.rule]]
subject = "CN=client-1,O={ORG}"
submit = ["reverse", "public.*"]
admin = "none"

[[access.rule]]
subject = "CN=admin,O={ORG}"
admin = "all"

[[access.rule]]
subject = "CN=*"
# any other certificate: the section's rights

[[access.rule]]
address = "127.0.0.0/8"
# plain peers on loopback (and TLS peers without a certificate): everything
submit = ["*"]
work = ["*"]
admin = "all"
"""


@dataclass
class TLSServer:
    running: Running
    plain: str  # 127.0.0.1:port
    tls: str  # tls://127.0.0.1:port
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def srv(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    folder = tmp_path_factory.mktemp("tls-server")
    config = folder / "gearmill.toml"
    config.write_text(ACCESS)
    running = start_gearmill(
        "-L",
        "127.0.0.1",
        "-L",
        "tls://127.0.0.1:0",
        "--ssl-certificate",  # gearmand's spelling
        str(pki.server[0]),
        "--tls-key",
        str(pki.server[1]),
        "--tls-ca",
        str(pki.ca),
        "--tls-verify-client",
        "optional",
        "--config",
        str(config),
        "--verbose",
        "WARNING",
        tmp=folder,
    )
    log = folder / "server.log"
    found = re.search(
        r"Listening on 127\.0\.0\.1:(\d+), tls://127\.0\.0\.1:(\d+) ", log.read_text()
    )
    assert found, log.read_text()
    assert int(found.group(1)) == running.port
    yield TLSServer(running, f"127.0.0.1:{running.port}", f"tls://127.0.0.1:{found.group(2)}", log)
    running.stop()


# ----------------------------------------------------------------- helpers


class TLSConn:
    """A raw Gearman connection over TLS, for exact packets."""

    def __init__(self, address: str, context: ssl.SSLContext) -> None:
        host, port = address.removeprefix("tls://").rsplit(":", 1)
        raw = socket.create_connection((host, int(port)), timeout=5)
        self.sock = context.wrap_socket(raw, server_hostname=host)
        self.buf = b""

    def send(self, ptype: int, *args: bytes) -> None:
        payload = b"\x00".join(args)
        self.sock.sendall(struct.pack(">4sII", REQ, ptype, len(payload)) + payload)

    def recv(self) -> tuple[int, bytes]:
        while len(self.buf) < 12 or len(self.buf) < 12 + struct.unpack(">I", self.buf[8:12])[0]:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("closed by server")
            self.buf += chunk
        magic, ptype, size = struct.unpack(">4sII", self.buf[:12])
        assert magic == RES
        payload, self.buf = self.buf[12 : 12 + size], self.buf[12 + size :]
        return ptype, payload

    def admin(self, line: bytes) -> bytes:
        self.sock.sendall(line)
        while not (self.buf.startswith((b"OK", b"ERR")) and b"\n" in self.buf) and not (
            self.buf == b".\n" or b"\n.\n" in self.buf
        ):
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("closed by server")
            self.buf += chunk
        reply, self.buf = self.buf, b""
        return reply

    def close(self) -> None:
        self.sock.close()


def reverse(job: gm.WorkerJob) -> bytes:
    return job.data[::-1]


def workers_of(srv: TLSServer, function: str) -> int:
    with gm.AdminClient(srv.plain) as admin:
        return sum(f.workers for f in admin.status() if f.name == function)


# ------------------------------------------------------------------- tests


def test_client_and_worker_over_tls_beside_a_plain_listener(srv: TLSServer, pki: PKI) -> None:
    worker = gm.Worker(srv.tls, tls=pki.context("worker-1"))
    worker.register("reverse", reverse)
    with running_worker(worker):
        wait_until(lambda: workers_of(srv, "reverse") == 1, "the TLS worker")
        with gm.Client(srv.tls, tls=pki.context("client-1"), timeout=30) as client:
            assert client.run("reverse", b"over tls") == b"slt revo"
            # a job above the server's in-place size (1 MiB) both ways over TLS: its data
            # is read through a buffered protocol put in for it, then ordinary reads go on
            big = os.urandom(3 << 20)
            assert client.run("reverse", big) == big[::-1]
            assert client.run("reverse", b"after") == b"retfa"
        # the C gearman tool on the plain listener reaches the same worker
        out = subprocess.run(
            ["gearman", "-h", "127.0.0.1", "-p", str(srv.running.port), "-f", "reverse"],
            input=b"plain",
            capture_output=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout == b"nialp"


def test_a_tls_worker_sends_its_exception_text_to_a_tls_client(srv: TLSServer, pki: PKI) -> None:
    # the worker asks the server whether it is gearmill before choosing WORK_EXCEPTION:
    # that question must go over TLS too, or it gets no answer and the text is lost
    def explode(job: gm.WorkerJob) -> bytes:
        raise ValueError("bad input")

    worker = gm.Worker(srv.tls, tls=pki.context("worker-1"))
    worker.register("public.explode", explode)
    with running_worker(worker):
        wait_until(lambda: workers_of(srv, "public.explode") == 1, "the TLS worker")
        with (
            gm.Client(srv.tls, tls=pki.context("client-1"), timeout=30) as client,
            pytest.raises(gm.JobException, match="ValueError: bad input"),
        ):
            client.run("public.explode", b"x")


def test_a_plain_client_on_the_tls_port_is_told_to_use_tls(srv: TLSServer) -> None:
    address = srv.tls.removeprefix("tls://")
    with (
        pytest.raises(GearmanError, match=f"a TLS listener does that: then use {srv.tls}"),
        gm.Client(address, timeout=5, connect_timeout=5) as client,
    ):
        client.echo(b"hello")


def test_a_certificate_the_ca_did_not_sign_is_refused(srv: TLSServer, pki: PKI) -> None:
    with (
        pytest.raises(GearmanError, match="refused this client's certificate"),
        gm.Client(srv.tls, tls=pki.context("intruder"), timeout=5, connect_timeout=5) as client,
    ):
        client.echo(b"hello")
    # and a client that does not trust the server's CA refuses the server
    with (
        pytest.raises(GearmanError, match="the server's TLS certificate is not trusted"),
        gm.Client(srv.tls, tls=client_context(str(pki.clients["intruder"][0])), timeout=5) as c,
    ):
        c.echo(b"hello")
    # a client without a certificate may connect (verify_client optional) and echo
    with gm.Client(srv.tls, tls=pki.context(), timeout=5) as client:
        assert client.echo(b"hello") == b"hello"


def test_a_refused_submission_gets_an_error_and_the_connection_goes_on(
    srv: TLSServer, pki: PKI
) -> None:
    conn = TLSConn(srv.tls, pki.context("client-1"))
    try:
        conn.send(7, b"payroll", b"", b"data")  # SUBMIT_JOB to a function not on its list
        kind, payload = conn.recv()
        assert kind == ERROR
        code, text = payload.split(b"\x00")
        assert code == b"INVALID_COMMAND" and b"ermission denied" in text
        conn.send(18, b"public.report", b"", b"x")  # SUBMIT_JOB_BG: allowed
        assert conn.recv()[0] == 8  # JOB_CREATED
        conn.send(16, b"still here")  # ECHO_REQ
        assert conn.recv() == (17, b"still here")
    finally:
        conn.close()
    # our client sees the refusal as a ServerError naming it
    with gm.Client(srv.tls, tls=pki.context("client-1"), timeout=10) as client:
        with pytest.raises(gm.ServerError, match="ermission denied"):
            client.submit("payroll", b"x", background=True)
    wait_until(
        lambda: (
            "access list: refused submit to 'payroll' from 127.0.0.1 "
            f"(CN=client-1,O={ORG})" in srv.log_text()
        ),
        "the refusal in the log",
    )


def test_a_refused_can_do_registers_nothing(srv: TLSServer, pki: PKI) -> None:
    conn = TLSConn(srv.tls, pki.context("client-1"))  # a client, not a worker
    try:
        conn.send(1, b"reverse")  # CAN_DO
        kind, payload = conn.recv()
        assert kind == ERROR and b"ermission denied" in payload
        conn.send(16, b"ping")
        assert conn.recv() == (17, b"ping")
        assert workers_of(srv, "reverse") == 0
    finally:
        conn.close()
    # a worker certificate may register the functions on its list only
    conn = TLSConn(srv.tls, pki.context("worker-1"))
    try:
        conn.send(1, b"public.report")
        conn.send(1, b"payroll")
        kind, payload = conn.recv()
        assert kind == ERROR  # for payroll; public.report has no reply
        wait_until(lambda: workers_of(srv, "public.report") == 1, "the allowed CAN_DO")
        assert workers_of(srv, "payroll") == 0
    finally:
        conn.close()
    assert "refused register 'payroll' (CAN_DO)" in srv.log_text()


def test_admin_commands_by_certificate(srv: TLSServer, pki: PKI) -> None:
    denied = TLSConn(srv.tls, pki.context("client-1"))  # admin = "none"
    try:
        assert denied.admin(b"status\n").startswith(b"ERR PERMISSION_DENIED")
        assert denied.admin(b"maxqueue public.report 5\n").startswith(b"ERR PERMISSION_DENIED")
    finally:
        denied.close()
    # a certificate with admin = "all" changes state; the admin client speaks TLS
    with gm.AdminClient(srv.tls, tls=pki.context("admin")) as admin:
        assert admin.command("maxqueue public.report 5").startswith(b"OK")
        assert any(f.name == "public.report" for f in admin.status())
    assert "refused admin command 'status'" in srv.log_text()


def test_the_cli_speaks_tls(srv: TLSServer, pki: PKI) -> None:
    cli = [sys.executable, "-m", "gearmill.cli.main"]

    def tls_flags(who: str) -> list[str]:
        cert, key = pki.clients[who]
        return ["--tls-ca", str(pki.ca), "--tls-cert", str(cert), "--tls-key", str(key)]

    # gearmill work with a worker certificate, its server from GEARMAN_SERVERS
    env = {**os.environ, "GEARMAN_SERVERS": srv.tls}
    work = subprocess.Popen(
        [*cli, "work", *tls_flags("worker-1"), "-f", "reverse", "--", "rev"],
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: workers_of(srv, "reverse") == 1, "gearmill work over TLS")
        out = subprocess.run(
            [*cli, "submit", "-s", srv.tls, *tls_flags("client-1"), "-f", "reverse"],
            input=b"abc\n",
            capture_output=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout == b"cba\n"
    finally:
        work.terminate()
        work.wait(30)
    out = subprocess.run(
        [*cli, "admin", "-s", srv.tls, *tls_flags("admin"), "--status"],
        capture_output=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert b"reverse" in out.stdout
    out = subprocess.run(
        [*cli, "schedule", "-s", srv.tls, *tls_flags("admin"), "list"],
        capture_output=True,
        timeout=30,
    )
    assert (out.returncode, out.stderr) == (0, b"")


def test_a_certificate_that_cannot_be_loaded_is_one_line(tmp_path: Path, pki: PKI) -> None:
    cmd = [sys.executable, "-m", "gearmill.cli.main", "serve", "-p", "0"]
    missing = tmp_path / "missing.crt"
    out = subprocess.run([*cmd, "--tls-cert", str(missing)], capture_output=True, timeout=30)
    assert out.returncode == 1
    assert out.stderr.decode() == (
        f"gearmill serve: --tls-cert {missing}: cannot load the certificate and key: "
        "No such file or directory; give PEM files of a certificate and its private key\n"
    )
    # a key that is not the certificate's
    cert, _ = pki.clients["admin"]
    _, key = pki.clients["nobody"]
    out = subprocess.run(
        [*cmd, "--tls-cert", str(cert), "--tls-key", str(key)], capture_output=True, timeout=30
    )
    assert out.returncode == 1 and out.stderr.count(b"\n") == 1
    assert b"cannot load the certificate and key: KEY_VALUES_MISMATCH" in out.stderr, out.stderr


def _refused_by(sock: socket.socket) -> None:
    """Read until the server ends the connection (it has logged the refusal by then)."""
    sock.settimeout(10)
    try:
        while sock.recv(1 << 16):
            pass
    except (ssl.SSLError, ConnectionResetError):
        pass
    finally:
        sock.close()


def _tls_attempt(address: str, context: ssl.SSLContext) -> str:
    """A handshake with ``context``; the client's own address, to find in the server's log."""
    host, port = address.removeprefix("tls://").rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=10)
    me = "{}:{}".format(*raw.getsockname()[:2])
    try:
        sock = context.wrap_socket(raw, server_hostname=host)
    except (ssl.SSLError, ConnectionResetError):
        raw.close()  # TLS 1.2: the refusal came during the client's handshake
        return me
    sock.sendall(struct.pack(">4sII", REQ, 16, 2) + b"hi")  # ECHO_REQ, never answered
    _refused_by(sock)
    return me


def _plain_attempt(address: str) -> str:
    """A plain Gearman packet on the TLS port."""
    host, port = address.removeprefix("tls://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    me = "{}:{}".format(*sock.getsockname()[:2])
    sock.sendall(struct.pack(">4sII", REQ, 16, 2) + b"hi")
    _refused_by(sock)
    return me


def test_refused_handshakes_are_logged_with_the_peer_and_why_at_most_10_a_minute(
    tmp_path: Path, pki: PKI
) -> None:
    running = start_gearmill(
        "-L",
        "tls://127.0.0.1:0",
        "--tls-cert",
        str(pki.server[0]),
        "--tls-key",
        str(pki.server[1]),
        "--tls-ca",
        str(pki.ca),
        "--tls-verify-client",
        "required",
        "--verbose",
        "WARNING",
        tmp=tmp_path,
    )
    log = tmp_path / "server.log"
    address = f"tls://127.0.0.1:{running.port}"
    try:
        intruder = _tls_attempt(address, pki.context("intruder"))  # a CA we do not trust
        anonymous = _tls_attempt(address, pki.context())  # no certificate, one is required
        plain = _plain_attempt(address)  # not TLS at all

        def refusals() -> list[str]:
            return [x for x in log.read_text().splitlines() if "refused a TLS handshake" in x]

        # the TLS layer closes the connection just before the server logs why
        wait_until(lambda: len(refusals()) >= 3, "3 lines in the log")
        lines = refusals()
        assert len(lines) == 3, lines
        assert lines[0].endswith(
            f"refused a TLS handshake from {intruder}: bad client certificate "
            "(unable to get local issuer certificate)"
        ), lines[0]
        assert lines[1].endswith(
            f"refused a TLS handshake from {anonymous}: no client certificate, and one is "
            "required (PEER_DID_NOT_RETURN_A_CERTIFICATE)"
        ), lines[1]
        assert lines[2].endswith(
            f"refused a TLS handshake from {plain}: wrong protocol: not TLS (a plain Gearman "
            "client on the TLS port?) (WRONG_VERSION_NUMBER)"
        ), lines[2]
        # a flood: 10 lines in all, then a count; the server goes on serving
        for _ in range(40):
            _plain_attempt(address)
        with gm.Client(address, tls=pki.context("client-1"), timeout=10) as client:
            assert client.echo(b"still serving") == b"still serving"
    finally:
        running.stop()
    text = log.read_text()
    assert text.count("refused a TLS handshake from") == 10, text
    assert "refused 33 more TLS handshakes (at most 10 in 60 s are logged one by one)" in text


# ----------------------------------------------------------------- HTTP tokens


def _http(srv: TLSServer, method: str, path: str, token: str) -> tuple[int, bytes]:
    found = re.search(r"HTTP on http://127\.0\.0\.1:(\d+)/", srv.log_text())
    assert found, srv.log_text()
    req = urllib.request.Request(
        f"http://127.0.0.1:{found.group(1)}{path}",
        b"data",
        {"Authorization": f"Bearer {token}", "X-Gearman-Background": "true"},
        method=method,
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_a_token_is_checked_as_the_certificate_of_its_identity(srv: TLSServer, pki: PKI) -> None:
    # over TLS, CN=client-1 may submit reverse and public.*, not payroll
    conn = TLSConn(srv.tls, pki.context("client-1"))
    try:
        conn.send(18, b"payroll", b"", b"x")  # SUBMIT_JOB_BG
        assert conn.recv()[0] == ERROR
        conn.send(18, b"reverse", b"", b"x")
        assert conn.recv()[0] == 8  # JOB_CREATED
    finally:
        conn.close()
    # over HTTP, from loopback (which the address rule would let do anything),
    # the token makes the request CN=client-1: the same answers
    status, body = _http(srv, "POST", "/payroll", CLIENT_TOKEN)
    assert status == 403 and b"ermission denied" in body
    status, _ = _http(srv, "POST", "/reverse", CLIENT_TOKEN)
    assert status == 200
    # client-1 has admin = "none": no cancel; the admin identity may
    with gm.Client(srv.plain, timeout=10) as client:
        handle = client.submit("idle.job", b"x", background=True).handle
    path = f"/api/jobs/{handle}/cancel"
    status, body = _http(srv, "POST", path, CLIENT_TOKEN)
    assert status == 403 and b"ERR_DENIED" in body
    assert _http(srv, "POST", path, ADMIN_TOKEN)[0] == 200
    # an unknown token is no identity at all
    assert _http(srv, "POST", "/reverse", "not-a-token-0123456789")[0] == 401
    wait_until(
        lambda: (
            "access list: refused submit to 'payroll' from 127.0.0.1 "
            f"(CN=client-1,O={ORG})" in srv.log_text()
        ),
        "the HTTP refusal in the log, naming the identity",
    )
