"""The [limits] section: flags, environment and TOML keys, defaults, bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from gearmill.cli import serve
from gearmill.server.config import DEFAULT_MAX_OWED, Config, ConfigError, LimitsConfig


def load(*argv: str, env: dict[str, str] | None = None) -> Config:
    return serve.load(serve.build_parser().parse_args(list(argv)), env or {})


def test_defaults_refuse_nothing_gearmand_accepts() -> None:
    config = load()
    assert config.limits == LimitsConfig()
    assert config.max_packet == 0xFFFFFFFF  # 4 GiB payloads
    limits = config.limits
    assert limits.max_owed == DEFAULT_MAX_OWED < 64 << 20
    assert limits.max_connections == limits.max_connections_per_address == 0
    assert limits.max_functions_per_worker == limits.max_function_name == 0
    assert limits.idle_timeout == 0


def test_flags_over_environment_over_file(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text(
        "[limits]\nmax_payload = 1000\nmax_owed = 100000\nmax_connections = 5\n"
        "max_connections_per_address = 4\nmax_functions_per_worker = 3\n"
        "max_function_name = 2\nidle_timeout = 1\n"
    )
    config = load(
        "--config", str(path), "--max-connections", "50", env={"GEARMILL_IDLE_TIMEOUT": "9"}
    )
    assert config.max_packet == 1000
    assert config.limits == LimitsConfig(
        max_owed=100000,
        max_connections=50,
        max_connections_per_address=4,
        max_functions_per_worker=3,
        max_function_name=2,
        idle_timeout=9,
    )
    broker = config.broker_config(1)
    assert (broker.max_functions_per_worker, broker.max_function_name) == (3, 2)


def test_bad_values_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--max-owed 10: use bytes, at least 65536"):
        load("--max-owed", "10")
    path = tmp_path / "g.toml"
    path.write_text("[limits]\nmax_conections = 5\n")
    with pytest.raises(ConfigError, match=r"limits.max_conections: unknown setting; did you mean"):
        load("--config", str(path))
