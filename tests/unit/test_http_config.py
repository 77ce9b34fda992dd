"""The HTTP listener's settings: --http, gearmand's -r http / --http-port, the token rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from gearmill.cli import serve
from gearmill.server.config import Config, ConfigError, HttpConfig, Listener, MetricsConfig


def load(*argv: str, env: dict[str, str] | None = None) -> Config:
    return serve.load(serve.build_parser().parse_args(list(argv)), env or {})


def error(*argv: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as e:
        load(*argv, env=env)
    assert "\n" not in str(e.value)
    return str(e.value)


def toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gearmill.toml"
    path.write_text(text)
    return str(path)


def test_http_is_off_by_default() -> None:
    assert load().http == HttpConfig()
    assert load().http.listen is None


def test_http_flag_and_gearmand_aliases() -> None:
    assert load("--http", "127.0.0.1:9100").http.listen == Listener("127.0.0.1", 9100)
    assert load("--http", ":9100").http.listen == Listener("127.0.0.1", 9100)
    assert load("--http", "[::1]:9100").http.listen == Listener("::1", 9100)
    # gearmand: -r http listens on its default HTTP port 8080, --http-port picks another
    assert load("-r", "http").http.listen == Listener("127.0.0.1", 8080)
    assert load("-r", "http", "--http-port", "8081").http.listen == Listener("127.0.0.1", 8081)
    assert load("--http-port", "8082").http.listen == Listener("127.0.0.1", 8082)
    assert error("-r", "gear") == (
        "--protocol gear: the only protocol module is http; use -r http (with --http-port N)"
    )
    assert error("--http", "9100") == (
        "--http 9100: a port without a host; write HOST:PORT, e.g. 127.0.0.1:9100"
    )
    assert error("--http", "localhost:http") == (
        "--http localhost:http: not a port number; use 0 to 65535 (0 picks a free one)"
    )


def test_off_loopback_needs_a_token() -> None:
    message = error("--http", "0.0.0.0:8080")
    assert message.startswith(
        "--http 0.0.0.0:8080: the HTTP listener on 0.0.0.0 is not on loopback"
    )
    assert "--http-token" in message
    # gearmand's -r http follows the Gearman listener
    assert "not on loopback" in error("-L", "0.0.0.0", "-r", "http")
    config = load("--http", "0.0.0.0:8080", env={"GEARMILL_HTTP_TOKEN": "s3cret"})
    assert config.http == HttpConfig(Listener("0.0.0.0", 8080), "s3cret")


def test_http_and_metrics_sections(tmp_path: Path) -> None:
    path = toml(
        tmp_path,
        '[http]\nlisten = "127.0.0.1:9200"\ntoken = "t"\nkeep_finished = 60\nprobe_every = 1.5\n'
        "[metrics]\ntop_functions = 7\nfunction_histograms = true\n",
    )
    config = load("--config", path)
    assert config.http == HttpConfig(Listener("127.0.0.1", 9200), "t", 60, (), 1.5)
    assert load("--http", "127.0.0.1:0").http.probe_every == 5.0
    assert "use seconds from 0.1 to 3600" in error(
        "--http", "127.0.0.1:0", env={"GEARMILL_HTTP_PROBE_EVERY": "0"}
    )
    assert config.metrics == MetricsConfig(7, True)
    assert load("--config", path, "--metrics-top-functions", "3").metrics.top_functions == 3


def test_tokens_name_identities(tmp_path: Path) -> None:
    path = toml(
        tmp_path,
        '[http]\nlisten = "0.0.0.0:8080"\n'
        '[[http.identity]]\ntoken = "0123456789abcdef-ci"\nsubject = "CN=ci,O=Example"\n',
    )
    http = load("--config", path).http  # an identity's token is a token: off loopback is fine
    assert http.identities == (("0123456789abcdef-ci", "CN=ci,O=Example"),)
    short = toml(tmp_path, '[[http.identity]]\ntoken = "abc"\nsubject = "CN=ci"\n')
    assert "the token is shorter than 16 characters" in error("--config", short)
    odd = toml(tmp_path, '[[http.identity]]\ntoken = "0123456789abcdef"\nwho = "CN=ci"\n')
    assert "unknown key 'who'" in error("--config", odd)
