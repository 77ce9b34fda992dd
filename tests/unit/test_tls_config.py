"""TLS and access-list settings: listeners by URL or table, the [tls] and [access]
sections, gearmand's --ssl spellings, one line for each bad value; the rules a peer gets."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from gearmill.cli import serve
from gearmill.client.servers import TLSAddress, format_address, parse_server, parse_servers
from gearmill.protocol.codec import TEXT
from gearmill.protocol.packets import PacketType as T
from gearmill.server.access import AccessConfig, AccessList, AccessRule
from gearmill.server.config import Config, ConfigError, Listener, TLSConfig, VerifyClient
from gearmill.server.model import Peer


def load(*argv: str) -> Config:
    return serve.load(serve.build_parser().parse_args(list(argv)), {})


def error(*argv: str) -> str:
    with pytest.raises(ConfigError) as e:
        load(*argv)
    assert "\n" not in str(e.value)
    return str(e.value)


def toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gearmill.toml"
    path.write_text(text)
    return str(path)


def test_a_certificate_makes_the_p_listener_speak_tls() -> None:
    config = load("--tls-cert", "s.crt", "--tls-key", "s.key", "-p", "4733")
    assert config.listeners == (Listener("127.0.0.1", 4733, tls=True),)
    assert config.tls == TLSConfig("s.crt", "s.key", None, VerifyClient.NONE)
    # gearmand's spelling; a CA given asks clients for a certificate
    config = load("--ssl", "--ssl-certificate", "s.crt", "--ssl-ca-file", "ca.crt")
    assert config.listeners[0].tls and config.tls.verify is VerifyClient.REQUIRED
    assert load().listeners == (Listener("127.0.0.1", 4730),)
    assert serve.check_unsupported(["--ssl", "--ssl-key=k"]) is None


def test_plain_and_tls_listeners_side_by_side(tmp_path: Path) -> None:
    cert = ("--tls-cert", "s.crt")
    assert load("-L", "127.0.0.1", "-L", "tls://0.0.0.0:4731", *cert).listeners == (
        Listener("127.0.0.1", 4730),
        Listener("0.0.0.0", 4731, tls=True),
    )
    # --tls (--ssl) keeps the -p listener on TLS beside tls:// ones
    assert load("-L", "::1", "-L", "tls://[::1]:4731", "--ssl", *cert).listeners == (
        Listener("::1", 4730, tls=True),
        Listener("::1", 4731, tls=True),
    )
    assert load("-L", "tcp://[::1]:5000", "-L", "tls://[::1]", *cert).listeners == (
        Listener("::1", 5000),
        Listener("::1", 4730, tls=True),
    )
    path = toml(
        tmp_path,
        '[tls]\ncert = "s.crt"\nca = "ca.crt"\nverify_client = "optional"\n'
        '[[listen]]\nhost = "127.0.0.1"\n'
        '[[listen]]\nhost = "127.0.0.1"\nport = 4731\ntls = true\n',
    )
    config = load("--config", path)
    assert config.listeners == (Listener("127.0.0.1", 4730), Listener("127.0.0.1", 4731, True))
    assert config.tls == TLSConfig("s.crt", None, "ca.crt", VerifyClient.OPTIONAL)
    # a flag beats the file
    assert load("--config", path, "--tls-verify-client", "none").tls.verify is VerifyClient.NONE


def test_tls_setting_errors(tmp_path: Path) -> None:
    assert "needs a certificate" in error("-L", "tls://127.0.0.1:4731")
    assert "needs a certificate" in error("--ssl")
    # the value is named once
    assert error("-L", "udp://127.0.0.1:1").count("udp://127.0.0.1:1") == 1
    assert "unknown scheme 'udp'" in error("-L", "udp://127.0.0.1:1")
    assert "in brackets" in error("-L", "tls://::1:4731", "--tls-cert", "c")
    assert "port number" in error("-L", "tls://127.0.0.1:x", "--tls-cert", "c")
    assert "needs --tls-ca" in error("--tls-cert", "c", "--tls-verify-client", "required")
    assert "use one of none, optional, required" in error("--tls-verify-client", "maybe")
    bad = toml(tmp_path, '[[listen]]\nhost = "::1"\ntls = "yes"\n')
    assert error("--config", bad).endswith('tls = "yes": use true or false')
    bad = toml(tmp_path, '[tls]\ncertificate = "x"\n')
    assert error("--config", bad).endswith(
        "tls.certificate: unknown setting; did you mean tls.cert?"
    )


ACCESS = """
[access]
submit = ["public.*"]
work = []
[[access.rule]]
subject = "CN=worker-*"
work = ["*"]
[[access.rule]]
address = "10.0.0.0/8"
admin = "all"
"""


def test_the_access_section(tmp_path: Path) -> None:
    config = load("--config", toml(tmp_path, ACCESS))
    assert config.access == AccessConfig(
        ("public.*",),
        (),
        "read",
        (
            AccessRule(subject="CN=worker-*", work=("*",)),
            AccessRule(address=ipaddress.ip_network("10.0.0.0/8"), admin="all"),
        ),
    )
    assert load().access is None
    for text, message in (
        ('[access]\nsubmit = "x"\n', "submit: write a list of function names or globs"),
        ('[access]\nadmin = "root"\n', 'admin = "root": use one of none, read, all'),
        ("[access]\nwho = 1\n", "unknown key 'who'"),
        ("[[access.rule]]\nwork = []\n", "rule 1: say whom it is for"),
        ('[[access.rule]]\naddress = "10.0.0.300"\n', 'rule 1: address = "10.0.0.300"'),
    ):
        message_got = error("--config", toml(tmp_path, text))
        assert message in message_got, message_got
        assert message_got.startswith(str(tmp_path))


def peer(addr: str, subject: str = "", local: bool = False) -> Peer:
    p = Peer(5, addr, local)
    p.subject = subject
    return p


def test_the_rules_a_peer_gets() -> None:
    acl = AccessList(
        AccessConfig(
            ("public.*",),
            (),
            "read",
            (
                AccessRule(subject="CN=worker-*,O=Example", work=("resize",), submit=()),
                AccessRule(address=ipaddress.ip_network("10.0.0.0/8"), admin="none"),
                AccessRule(subject="CN=root,O=Example", submit=("*",), work=("*",), admin="all"),
            ),
        )
    )
    worker = acl.for_peer(peer("192.0.2.7", "CN=worker-3,O=Example"))
    assert worker is not None
    assert worker.allows(T.CAN_DO, [b"resize"])
    assert not worker.allows(T.CAN_DO_TIMEOUT, [b"payroll", b"10"])
    assert not worker.allows(T.SUBMIT_JOB, [b"resize", b"", b"x"])
    assert worker.allows(T.GRAB_JOB_UNIQ, [])  # the rest of the protocol goes on
    # nobody's rules: the section's; admin "read" keeps state-changing commands local
    stranger = acl.for_peer(peer("192.0.2.8"))
    assert stranger is not None
    assert stranger.allows(T.SUBMIT_JOB_LOW_BG, [b"public.x", b"", b""])
    assert not stranger.allows(T.SUBMIT_REDUCE_JOB, [b"x", b"", b"r", b"", b""])
    assert stranger.allows(TEXT, [b"status"]) and stranger.allows(TEXT, [b"workers"])
    for line in (b"shutdown", b"cancel job H:x:1", b"drop function f", b"MAXQUEUE f 1"):
        assert not stranger.allows(TEXT, [line]), line
    local = acl.rules_for(peer("127.0.0.1", local=True))
    assert local.allows(TEXT, [b"maxqueue f 1"])
    assert not local.allows(T.SUBMIT_JOB, [b"private", b"", b""])
    by_address = acl.for_peer(peer("10.1.2.3"))
    assert by_address is not None and not by_address.allows(TEXT, [b"version"])
    # a rule that allows everything leaves its peer without a check per packet
    assert acl.for_peer(peer("192.0.2.9", "CN=root,O=Example")) is None
    everyone = AccessList(AccessConfig())  # TLS without [access]: admin "read"
    assert everyone.for_peer(peer("127.0.0.1", local=True)) is None
    remote = everyone.for_peer(peer("192.0.2.10"))
    assert remote is not None and not remote.allows(TEXT, [b"shutdown"])


def test_tls_server_addresses() -> None:
    servers = parse_servers("tls://10.0.0.5:4731,127.0.0.1,tls://[::1],tcp://h:1")
    assert servers == [("10.0.0.5", 4731), ("127.0.0.1", 4730), ("::1", 4730), ("h", 1)]
    assert [isinstance(a, TLSAddress) for a in servers] == [True, False, True, False]
    assert [format_address(a) for a in servers] == [
        "tls://10.0.0.5:4731",
        "127.0.0.1:4730",
        "tls://[::1]:4730",
        "h:1",
    ]
    with pytest.raises(ValueError, match="unknown scheme 'http'"):
        parse_server("http://h:1")
