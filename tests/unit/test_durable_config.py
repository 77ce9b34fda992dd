"""Where background jobs are kept: --store, the state folder, gearmand's -q flags."""

from __future__ import annotations

import pytest

from gearmill.cli import serve
from gearmill.server.config import Config, ConfigError, default_state_dir
from gearmill.server.store import hide_password


def load(*argv: str, env: dict[str, str] | None = None) -> Config:
    return serve.load(serve.build_parser().parse_args(list(argv)), env or {})


def test_state_folder_never_the_working_directory() -> None:
    assert default_state_dir({"GEARMILL_STATE_DIR": "/srv/gm"}) == "/srv/gm"
    assert default_state_dir({"STATE_DIRECTORY": "/var/lib/gearmill"}) == "/var/lib/gearmill"
    assert default_state_dir({"XDG_STATE_HOME": "/home/u/.state"}) == "/home/u/.state/gearmill"
    assert default_state_dir({}).endswith("/.local/state/gearmill")
    assert load("--state-dir", "/srv/x").store.url == "sqlite:///srv/x/queue.db"
    assert load(env={"GEARMILL_STATE_DIR": "/srv/y"}).store.url == "sqlite:///srv/y/queue.db"
    assert load("--store", "memory").store.url == "memory"
    assert load(env={"GEARMILL_STORE": "memory"}).store.url == "memory"


def test_gearmand_queue_flags_name_the_same_stores() -> None:
    c = load("-q", "libsqlite3", "--libsqlite3-db=/var/q.db", "--libsqlite3-table=jobs")
    assert (c.store.url, c.store.gearmand_source) == ("sqlite:///var/q.db", "jobs")
    c = load("-q", "Postgres", "--libpq-conninfo=host=db port=5433 dbname=gm user=u password=p")
    assert c.store.url == "postgresql://u:p@db:5433/gm"
    c = load("-q", "Postgres", "--libpq-conninfo=host = db dbname='g m' password='a \\'b c'")
    assert c.store.url == "postgresql://:a%20%27b%20c@db/g%20m"  # a password, no user
    c = load("-q", "MySQL", "--mysql-host=h", "--mysql-user=u", "--mysql-password=s@cret")
    assert c.store.url == "mysql://u:s%40cret@h:3306/Gearmand"
    assert hide_password(c.store.url) == "mysql://u:***@h:3306/Gearmand"
    c = load("-q", "redis", "--redis-server=r", "--redis-port=6380")
    assert c.store.url == "redis://r:6380/0"
    assert load("-q", "builtin").store.url == "memory"


def test_two_stores_or_a_missing_database_are_one_line() -> None:
    with pytest.raises(ConfigError, match="two stores named; keep one of them"):
        load("--store", "memory", "-q", "redis")
    with pytest.raises(ConfigError, match=r"-q libsqlite3 needs --libsqlite3-db=FILE"):
        load("-q", "libsqlite3")


def test_q_on_the_command_line_wins_over_a_store_from_the_environment() -> None:
    c = load("-q", "libsqlite3", "--libsqlite3-db=/var/q.db", env={"GEARMILL_STORE": "memory"})
    assert c.store.url == "sqlite:///var/q.db"
    c = load("--store", "memory", env={"GEARMILL_STORE": "sqlite:///x.db"})
    assert c.store.url == "memory"


def test_node_id_and_lease_of_servers_sharing_a_store() -> None:
    c = load("--store", "postgresql://db/gm", "--node-id", "web-1", "--lease", "4.5")
    assert (c.store.url, c.store.node_id, c.store.lease) == ("postgresql://db/gm", "web-1", 4.5)
    c = load("--store", "redis://r/0", env={"GEARMILL_NODE_ID": "b", "GEARMILL_LEASE": "30"})
    assert (c.store.node_id, c.store.lease) == ("b", 30.0)
    assert (load().store.node_id, load().store.lease) == (None, 15.0)
    with pytest.raises(ConfigError, match=r"--node-id a#1: .*without spaces or '#'"):
        load("--node-id", "a#1")
    with pytest.raises(ConfigError, match=r"--lease 0: .*from 0\.3 to 3600"):
        load("--lease", "0")


def test_memory_budget_from_a_flag_the_environment_or_the_file(tmp_path: object) -> None:
    from pathlib import Path

    assert load().memory_jobs == 200_000
    assert load("--memory-jobs", "5000").memory_jobs == 5000
    assert load("--memory-jobs", "0").memory_jobs == 0  # no limit
    assert load(env={"GEARMILL_MEMORY_JOBS": "7"}).memory_jobs == 7
    toml = Path(str(tmp_path)) / "gm.toml"
    toml.write_text('[store]\nurl = "memory"\nmemory_jobs = 9\n')
    assert load("--config", str(toml)).memory_jobs == 9
    with pytest.raises(ConfigError, match="use a number of jobs"):
        load("--memory-jobs", "-1")
