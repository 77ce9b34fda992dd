"""The systemd unit and the Dockerfile say what gearmill serve understands: their flags
and variables load through the server's own settings, and their stop timeouts leave
the graceful stop its time."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from gearmill.cli import serve
from gearmill.server import config as settings

ROOT = Path(__file__).resolve().parents[2]


def unit_service() -> dict[str, list[str]]:
    """[Service] keys of contrib/gearmill.service (a key may repeat)."""
    keys: dict[str, list[str]] = {}
    section = ""
    for line in (ROOT / "contrib" / "gearmill.service").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, value = line.split("=", 1)
            keys.setdefault(key, []).append(value)
    return keys


def seconds(value: str) -> int:
    found = re.fullmatch(r"(\d+)s", value)
    assert found, value
    return int(found.group(1))


def test_unit_is_notify_and_stops_gracefully_within_its_timeout() -> None:
    unit = unit_service()
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["KillSignal"] == ["SIGUSR1"]
    argv = shlex.split(unit["ExecStart"][0])
    assert argv[1] == "serve"
    config = serve.load(serve.build_parser().parse_args(argv[2:]), {})
    # systemd's SIGKILL must come after the server's own timeout and its close
    assert 0 < config.graceful_timeout < seconds(unit["TimeoutStopSec"][0])
    assert seconds(unit["WatchdogSec"][0]) >= 2
    assert unit["StateDirectory"] == ["gearmill"]
    assert unit["WorkingDirectory"] == ["/var/lib/gearmill"]


def dockerfile() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        if raw.lstrip().startswith("#"):
            continue
        pending += raw.rstrip("\\").rstrip() + " " if raw.endswith("\\") else raw
        if not raw.endswith("\\"):
            if pending.strip():
                lines.append(pending.strip())
            pending = ""
    return lines


def test_dockerfile_runs_as_a_user_with_settings_gearmill_reads() -> None:
    lines = dockerfile()
    final = lines[max(i for i, x in enumerate(lines) if x.startswith("FROM "))]
    run = lines[lines.index(final) :]
    env: dict[str, str] = {}
    for line in run:
        if line.startswith("ENV "):
            env.update(pair.split("=", 1) for pair in shlex.split(line[4:]))
    config = settings.build([settings.from_env(env)])
    assert config.log_format == settings.LogFormat.JSON
    assert [(x.host, x.port) for x in config.listeners] == [("0.0.0.0", 4730)]
    # the jobs in the volume's top folder, not under the user's ~/.local/state
    assert config.store.url == "sqlite:///var/lib/gearmill/queue.db"
    # docker stop sends SIGKILL 10 s after the stop signal unless told otherwise
    assert "STOPSIGNAL SIGUSR1" in run and config.graceful_timeout < 10
    user = next(x for x in run if x.startswith("USER "))
    assert user.split()[1].split(":")[0] not in ("root", "0")
    assert 'VOLUME ["/var/lib/gearmill"]' in run and "WORKDIR /var/lib/gearmill" in run
    assert "EXPOSE 4730 8080" in run
    health = next(x for x in run if x.startswith("HEALTHCHECK "))
    assert health.split(" CMD ", 1)[1] == "gearmill admin check || exit 1"
    assert run[-1] == 'ENTRYPOINT ["gearmill", "serve"]'


def test_the_image_has_every_stores_driver() -> None:
    """gearmand's -q Postgres/MySQL/redis flags (or GEARMILL_STORE=postgresql://...) work
    in the container: the image installs the driver of every store, and the build stage
    has built their wheels (the run stage installs with --no-index)."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    lines = dockerfile()
    final = max(i for i, x in enumerate(lines) if x.startswith("FROM "))
    for stage, command in ((lines[:final], "pip wheel"), (lines[final:], "pip install")):
        line = next(x for x in stage if command in x and "[" in x)
        named = re.findall(r"\[([a-z,]+)\]", line.split(command, 1)[1])
        assert named, line
        installed = {dep for extra in named[0].split(",") for dep in extras[extra]}
        for store in ("postgresql", "mysql", "redis"):
            assert set(extras[store]) <= installed, (command, store, line)
