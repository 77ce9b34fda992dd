"""gearmill serve's settings: where each comes from, and one line for each bad value."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gearmill.cli import serve
from gearmill.server import config as settings
from gearmill.server.config import (
    AdminShutdown,
    Config,
    ConfigError,
    Level,
    Listener,
)

RETRIES_FIX = "use 0 (the retry default, 25 attempts) to 255"


def load(*argv: str, env: dict[str, str] | None = None) -> Config:
    return serve.load(serve.build_parser().parse_args(list(argv)), env or {})


def error(*argv: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as e:
        load(*argv, env=env)
    message = str(e.value)
    assert "\n" not in message
    return message


def toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gearmill.toml"
    path.write_text(text)
    return str(path)


def gearmand_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gearmand.conf"
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------- precedence


def test_defaults() -> None:
    config = load()
    assert config.listeners == (Listener("127.0.0.1", 4730),)
    assert config.job_retries == 0
    assert config.worker_wakeup is None
    assert config.verbose is Level.ERROR
    assert config.admin_shutdown is AdminShutdown.LOCAL
    assert config.store.url == settings.default_store_url()  # SQLite in the state folder
    assert config.log_file == "stderr" and config.pid_file is None and not config.daemon


def test_file_over_defaults_env_over_file_flags_over_env(tmp_path: Path) -> None:
    path = toml(
        tmp_path,
        'job_retries = 3\nworker_wakeup = 2\nverbose = "WARNING"\nadmin_shutdown = "off"\n'
        'log_file = "from-file.log"\n[store]\nurl = "memory"\n',
    )
    env = {"GEARMILL_JOB_RETRIES": "4", "GEARMILL_WORKER_WAKEUP": "5"}
    config = load("--config", path, "--job-retries", "6", env=env)
    assert config.job_retries == 6  # flag over env over file
    assert config.worker_wakeup == 5  # env over file
    assert config.verbose is Level.WARNING  # file over default
    assert config.admin_shutdown is AdminShutdown.OFF
    assert config.log_file == "from-file.log"
    assert config.backlog == 32  # default


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    path = toml(tmp_path, "backlog = 7\n")
    assert load(env={"GEARMILL_CONFIG": path}).backlog == 7


def test_gearmand_port_is_weaker_than_gearmill_port() -> None:
    assert load(env={"GEARMAND_PORT": "4731"}).listeners[0].port == 4731
    env = {"GEARMAND_PORT": "4731", "GEARMILL_PORT": "4732"}
    assert load(env=env).listeners[0].port == 4732
    assert load("-p", "4733", env=env).listeners[0].port == 4733


def test_gearmand_config_file_counts_as_flags_below_the_command_line(tmp_path: Path) -> None:
    path = gearmand_file(
        tmp_path,
        "# gearmand flags, as /etc/gearmand.conf holds them\n"
        "--port=4740 --job-retries 2\n-R\n--verbose=INFO  # trailing comment\n-L 127.0.0.2\n",
    )
    env = {"GEARMILL_JOB_RETRIES": "9", "GEARMILL_BACKLOG": "8"}
    config = load("--config-file", path, "--job-retries", "5", env=env)
    assert config.listeners == (Listener("127.0.0.2", 4740),)
    assert config.job_retries == 5  # command line over the gearmand file
    assert config.round_robin
    assert config.verbose is Level.INFO  # the gearmand file over the environment
    assert config.backlog == 8


def test_listeners_from_the_file_and_who_sets_their_port(tmp_path: Path) -> None:
    path = toml(
        tmp_path,
        'port = 5000\n[[listen]]\nhost = "127.0.0.1"\n[[listen]]\nhost = "::1"\nport = 5001\n',
    )
    # the file's own port is the default for a listener that names none
    assert load("--config", path).listeners == (
        Listener("127.0.0.1", 5000),
        Listener("::1", 5001),
    )
    # a port from a stronger source (flag, environment) applies to every listener
    assert {x.port for x in load("--config", path, "-p", "0").listeners} == {0}
    assert {x.port for x in load("--config", path, env={"GEARMAND_PORT": "6000"}).listeners} == {
        6000
    }
    # listeners from a flag replace the file's
    assert load("--config", path, "-L", "127.0.0.3").listeners == (Listener("127.0.0.3", 5000),)
    assert load(env={"GEARMILL_LISTEN": "127.0.0.1,::1"}).listeners == (
        Listener("127.0.0.1", 4730),
        Listener("::1", 4730),
    )


def test_verbose_and_v_as_before() -> None:
    assert load("-v").verbose is Level.WARNING
    assert load("--verbose", "warning", "-v").verbose is Level.NOTICE
    assert load("-vvvvvvvvvv").verbose is Level.DEBUG
    assert load("-v", env={"GEARMILL_VERBOSE": "INFO"}).verbose is Level.DEBUG


def test_booleans_from_the_environment() -> None:
    config = load(env={"GEARMILL_ROUND_ROBIN": "yes", "GEARMILL_EXCEPTIONS": "0"})
    assert config.round_robin and not config.exceptions


def test_config_is_frozen_and_builds_the_broker_config() -> None:
    config = load("--admin-shutdown", "ANY", "-w", "0", "--job-handle-prefix", "H:x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.job_retries = 1  # type: ignore[misc]
    broker = config.broker_config(pid=42)
    assert (broker.admin_shutdown, broker.worker_wakeup, broker.handle_prefix, broker.pid) == (
        "any",
        0,
        b"H:x",
        42,
    )
    assert broker.version.startswith(b"1.1.20+gearmill.")
    assert load().broker_config(1).worker_wakeup == -1


# -------------------------------------------------------------------- errors


def test_bad_flag_values() -> None:
    assert error("-p", "70000") == "--port 70000: use 0 to 65535 (0 picks a free one)"
    assert error("-j", "x") == f"--job-retries x: not a whole number; {RETRIES_FIX}"
    assert error("--verbose", "LOUD") == (
        "--verbose LOUD: use one of FATAL, ALERT, CRITICAL, ERROR, WARNING, NOTICE, INFO, DEBUG"
    )
    assert error("--admin-shutdown", "nobody") == (
        "--admin-shutdown nobody: use one of off, local, any"
    )
    assert error("--store", "ftp://x") == (
        "--store ftp://x: use memory, sqlite:///path/queue.db, "
        "postgresql://user:password@host/db, mysql://user:password@host/db "
        "or redis://host:6379/0"
    )
    assert error("--job-handle-prefix", "a b") == (
        "--job-handle-prefix a b: use up to 40 characters without spaces (handles are <prefix>:<n>)"
    )


def test_bad_environment_values() -> None:
    assert (
        error(env={"GEARMILL_BACKLOG": "0"}) == "GEARMILL_BACKLOG='0': use 1 to 65535 (default 32)"
    )
    assert error(env={"GEARMILL_KEEPALIVE": "maybe"}) == (
        "GEARMILL_KEEPALIVE='maybe': use 1/0, true/false, yes/no or on/off"
    )


def test_a_bad_value_is_refused_even_where_a_stronger_source_overrides_it(
    tmp_path: Path,
) -> None:
    env = {"GEARMILL_JOB_RETRIES": "many"}
    assert error("-j", "3", env=env) == (
        f"GEARMILL_JOB_RETRIES='many': not a whole number; {RETRIES_FIX}"
    )
    path = toml(tmp_path, 'verbose = "LOUD"\n')
    assert error("--config", path, "--verbose", "INFO").startswith(f'{path}: verbose = "LOUD": ')


def test_empty_environment_variables_count_as_unset() -> None:
    assert load(env={"GEARMAND_PORT": "", "GEARMILL_JOB_RETRIES": ""}) == load()


def test_bad_file_values(tmp_path: Path) -> None:
    path = toml(tmp_path, "job_retries = 300\n")
    assert error("--config", path) == f"{path}: job_retries = 300: {RETRIES_FIX}"
    path = toml(tmp_path, 'job_retries = "3"\n')
    assert error("--config", path) == (
        f'{path}: job_retries = "3": write a number without quotes; {RETRIES_FIX}'
    )
    path = toml(tmp_path, "round_robin = 1\n")
    assert error("--config", path) == f"{path}: round_robin = 1: use true or false"
    path = toml(tmp_path, '[store]\nurl = "sqlite://x.db"\n')
    assert error("--config", path) == (
        f'{path}: store.url = "sqlite://x.db": an SQLite store needs an absolute path: '
        "sqlite:///path/queue.db"
    )
    path = toml(tmp_path, '[[listen]]\nhost = "127.0.0.1"\ntls = true\n')
    assert error("--config", path) == (
        "a tls:// listener needs a certificate: give --tls-cert and --tls-key "
        "(or cert and key in the file's [tls] section)"
    )
    path = toml(tmp_path, 'listen = ["127.0.0.1"]\n')
    assert error("--config", path) == (
        f'{path}: [[listen]]: write [[listen]] tables: host = "127.0.0.1", an optional '
        "port = 4730 and an optional tls = true"
    )


def test_file_shape_errors(tmp_path: Path) -> None:
    path = toml(tmp_path, "job-retries = 3\n")
    assert (
        error("--config", path)
        == f"{path}: job-retries: unknown setting; did you mean job_retries?"
    )
    path = toml(tmp_path, "[http]\nport = 8080\n")
    assert (
        error("--config", path) == f"{path}: http.port: unknown setting; did you mean http.token?"
    )
    path = toml(tmp_path, "job_retries = \n")
    message = error("--config", path)
    assert message.startswith(f"{path}: not valid TOML: ") and "line 1" in message
    assert message.endswith("; fix the file's syntax")
    path = str(tmp_path / "latin1.toml")
    Path(path).write_bytes("job_retries = 3  # réessais\n".encode("latin-1"))
    assert error("--config", path) == (
        f"{path}: not valid TOML: byte 20 is not UTF-8; save the file as UTF-8"
    )
    missing = str(tmp_path / "nope.toml")
    assert error("--config", missing) == (
        f"--config {missing}: cannot read it: No such file or directory; give an existing TOML file"
    )
    assert error(env={"GEARMILL_CONFIG": missing}) == (
        f"GEARMILL_CONFIG={missing}: cannot read it: No such file or directory;"
        " give an existing TOML file"
    )


def test_empty_sections_are_accepted(tmp_path: Path) -> None:
    path = toml(tmp_path, "[store]\n[http]\n[metrics]\n")
    assert load("--config", path) == load()


def test_gearmand_file_errors(tmp_path: Path) -> None:
    path = gearmand_file(tmp_path, "port=4731\n")
    # gearmand silently ignores such a word (and listens on 4730)
    assert error("--config-file", path) == (
        f"{path}: 'port=4731' is not a flag (gearmand ignores it); write --port=4731"
    )
    path = gearmand_file(tmp_path, "listen on all\n")
    assert error("--config-file", path) == (
        f"{path}: 'listen' is not a flag (gearmand ignores it); remove it, or write it as a --flag"
    )
    path = gearmand_file(tmp_path, "--bogus=1\n")
    assert error("--config-file", path) == (
        f"{path}: --bogus=1: not a gearmill serve flag; see gearmill serve --help"
    )
    path = gearmand_file(tmp_path, "--job-retries=300\n")
    assert error("--config-file", path) == f"{path}: --job-retries=300: {RETRIES_FIX}"
    path = gearmand_file(tmp_path, "--syslog\n")
    assert error("--config-file", path) == (
        f"{path}: gearmand option --syslog is not supported: syslog output is not supported; "
        "use --log-file"
    )
    path = gearmand_file(tmp_path, "--port\n")
    assert error("--config-file", path) == (
        f"{path}: argument -p/--port: expected one argument; fix that line"
    )
    missing = str(tmp_path / "nope.conf")
    assert error("--config-file", missing) == (
        f"--config-file {missing}: cannot read it: No such file or directory; "
        "give a file of gearmand flags"
    )


def test_a_misspelt_environment_variable_is_named_with_the_setting_it_looks_like() -> None:
    env = {
        "GEARMILL_JOB_RETRY": "3",  # a typo of GEARMILL_JOB_RETRIES
        "GEARMILL_JOB_RETRIES": "2",
        "GEARMILL_PURE": "0",  # the build's switch, the client tools' and the tests' own
        "GEARMILL_CLIENT_CA": "ca.pem",
        "GEARMILL_TEST_REDIS": "redis://127.0.0.1:1",
        "GEARMILL_WHATEVER": "x",
        "PATH": "/bin",
    }
    assert settings.unknown_env(env) == [
        "GEARMILL_JOB_RETRY is not a setting, and is ignored; did you mean GEARMILL_JOB_RETRIES?",
        "GEARMILL_WHATEVER is not a setting, and is ignored",
    ]
    # serve says so on stderr as it starts
    proc = subprocess.Popen(
        [sys.executable, "-m", "gearmill.cli.main", "serve", "-p", "0", "--store", "memory"],
        env={**os.environ, "GEARMILL_JOB_RETRY": "3"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
    finally:
        proc.terminate()
        proc.wait(10)
    assert first == (
        "gearmill serve: warning: GEARMILL_JOB_RETRY is not a setting, and is ignored; "
        "did you mean GEARMILL_JOB_RETRIES?\n"
    )
