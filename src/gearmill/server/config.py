"""The job server's settings: one frozen :class:`Config`, from flags, environment and a file.

Where a setting comes from, strongest first:

1. command-line flags (the flags of a gearmand ``--config-file`` count as flags,
   but the ones typed on the command line win over them);
2. environment variables: ``GEARMILL_<SETTING>`` (``GEARMILL_JOB_RETRIES``, ...),
   and ``GEARMAND_PORT`` for the port when ``GEARMILL_PORT`` is unset;
3. the TOML file named by ``--config`` (or ``GEARMILL_CONFIG``);
4. the defaults below.

Every value is checked where it is read; a bad one raises :class:`ConfigError`
whose text names the source (flag, variable or ``file: key``), the value and the fix.
"""

from __future__ import annotations

import difflib
import enum
import json
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

from .. import __version__
from ..protocol.codec import MAX_PAYLOAD
from ..protocol.packets import DEFAULT_PORT
from .broker import BrokerConfig

GEARMAND_VERSION: Final = "1.1.20"

# gearmand's log levels, least verbose first; --verbose takes one, each -v moves one right
LEVELS: Final = ("FATAL", "ALERT", "CRITICAL", "ERROR", "WARNING", "NOTICE", "INFO", "DEBUG")


class Level(enum.StrEnum):
    FATAL = "FATAL"
    ALERT = "ALERT"
    CRITICAL = "CRITICAL"
    ERROR = "ERROR"
    WARNING = "WARNING"
    NOTICE = "NOTICE"
    INFO = "INFO"
    DEBUG = "DEBUG"

    def more_verbose(self, steps: int) -> Level:
        return Level(LEVELS[min(LEVELS.index(self.value) + steps, len(LEVELS) - 1)])


class AdminShutdown(enum.StrEnum):
    """Who may use the admin ``shutdown [graceful]`` command."""

    OFF = "off"  # gearmand 1.1.15+: the command does not exist
    LOCAL = "local"  # loopback peers only
    ANY = "any"


class ConfigError(ValueError):
    """A bad setting; the text is the whole one-line message."""


@dataclass(frozen=True, slots=True)
class Listener:
    host: str  # "" = every interface
    port: int


@dataclass(frozen=True, slots=True)
class StoreConfig:
    url: str = "memory"  # where jobs live; only "memory" so far


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The HTTP interface: not implemented yet, so it has no settings."""


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """The metrics endpoint: not implemented yet, so it has no settings."""


# the bytes owed to one peer above which the server reads no more from it
DEFAULT_MAX_OWED: Final = 32 << 20


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """What one peer may cost (docs/threat-model.md); 0 = no limit. The
    defaults refuse nothing gearmand accepts and real deployments use."""

    max_owed: int = DEFAULT_MAX_OWED  # bytes owed to a peer before it is read no more
    max_connections: int = 0  # in all (the open-files limit bounds it too)
    max_connections_per_address: int = 0
    max_functions_per_worker: int = 0
    max_function_name: int = 0  # bytes (packets bound it below 8 KiB anyway)
    idle_timeout: int = 0  # seconds a connection may stay without sending a byte


def default_handle_prefix() -> str:
    return "H:" + os.uname().nodename


@dataclass(frozen=True, slots=True)
class Config:
    listeners: tuple[Listener, ...] = (Listener("127.0.0.1", DEFAULT_PORT),)
    backlog: int = 32
    keepalive: bool = False
    keepalive_idle: int = -1
    keepalive_interval: int = -1
    keepalive_count: int = -1
    max_packet: int = MAX_PAYLOAD
    job_retries: int = 0
    job_handle_prefix: str = field(default_factory=default_handle_prefix)
    # None: one wake-up per queued job nobody was woken for; 0: all; N: at most N
    worker_wakeup: int | None = None
    round_robin: bool = False
    global_priority: bool = False
    exceptions: bool = False
    admin_shutdown: AdminShutdown = AdminShutdown.LOCAL
    verbose: Level = Level.ERROR
    log_file: str = "stderr"
    pid_file: str | None = None
    daemon: bool = False
    file_descriptors: int | None = None
    store: StoreConfig = StoreConfig()
    limits: LimitsConfig = LimitsConfig()
    http: HttpConfig = HttpConfig()
    metrics: MetricsConfig = MetricsConfig()

    def broker_config(self, pid: int) -> BrokerConfig:
        return BrokerConfig(
            handle_prefix=self.job_handle_prefix.encode(),
            job_retries=self.job_retries,
            worker_wakeup=-1 if self.worker_wakeup is None else self.worker_wakeup,
            round_robin=self.round_robin,
            global_priority=self.global_priority,
            exceptions=self.exceptions,
            version=f"{GEARMAND_VERSION}+gearmill.{__version__}".encode(),
            pid=pid,
            verbose=self.verbose.value,
            admin_shutdown=self.admin_shutdown.value,
            max_functions_per_worker=self.limits.max_functions_per_worker,
            max_function_name=self.limits.max_function_name,
        )


# ------------------------------------------------------------------ sources


@dataclass(frozen=True, slots=True)
class Given:
    """One setting as a source gave it."""

    value: object
    where: str  # "--port abc", "GEARMILL_PORT='abc'", "f.toml: port = \"abc\""
    text: bool  # a string to parse (flag, environment), or a typed TOML value


Layer = dict[str, Given]


class _Bad(ValueError):
    """A converter's complaint: what is wrong and the fix, without the source."""


# ---------------------------------------------------------------- converters


def _int(lo: int, hi: int, fix: str, noun: str = "a whole number") -> Callable[[object, bool], int]:
    def convert(raw: object, text: bool) -> int:
        if text and isinstance(raw, str):
            try:
                raw = int(raw.strip())
            except ValueError:
                raise _Bad(f"not {noun}; {fix}") from None
        elif isinstance(raw, bool) or not isinstance(raw, int):
            raise _Bad(f"write a number without quotes; {fix}")
        if not lo <= raw <= hi:
            raise _Bad(fix)
        return raw

    return convert


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _bool(raw: object, text: bool) -> bool:
    if isinstance(raw, bool):
        return raw
    if text and isinstance(raw, str) and raw.strip().lower() in _TRUE + _FALSE:
        return raw.strip().lower() in _TRUE
    raise _Bad("use true or false" if not text else "use 1/0, true/false, yes/no or on/off")


def _str(raw: object, text: bool) -> str:
    if not isinstance(raw, str) or not raw:
        raise _Bad("write a non-empty string in quotes" if not text else "give a value")
    return raw


_E = TypeVar("_E", bound=enum.StrEnum)


def _choice(kind: type[_E], normalize: Callable[[str], str]) -> Callable[[object, bool], _E]:
    names = ", ".join(e.value for e in kind)

    def convert(raw: object, text: bool) -> _E:
        if isinstance(raw, str):
            try:
                return kind(normalize(raw.strip()))
            except ValueError:
                pass
        raise _Bad(f"use one of {names}")

    return convert


def _prefix(raw: object, text: bool) -> str:
    value = _str(raw, text)
    if len(value.encode()) > 40 or any(c.isspace() or c == "\0" for c in value):
        raise _Bad("use up to 40 characters without spaces (handles are <prefix>:<n>)")
    return value


def _store(raw: object, text: bool) -> str:
    if raw != "memory":
        raise _Bad("jobs are kept in memory only so far; use memory")
    return "memory"


def _queue_type(raw: object, text: bool) -> str:
    if not isinstance(raw, str) or raw.lower() != "builtin":
        raise _Bad("only the in-memory 'builtin' queue exists so far; drop -q or use -q builtin")
    return "builtin"


def _listen(raw: object, text: bool) -> tuple[tuple[str, int | None], ...]:
    """Hosts from flags (a list) or GEARMILL_LISTEN (commas); [[listen]] tables from TOML."""
    if text:
        hosts = raw.split(",") if isinstance(raw, str) else raw
        assert isinstance(hosts, list | tuple)
        return tuple((str(h).strip(), None) for h in hosts)
    fix = 'write [[listen]] tables: host = "127.0.0.1" and an optional port = 4730'
    if not isinstance(raw, list) or not raw:
        raise _Bad(fix)
    out: list[tuple[str, int | None]] = []
    for table in raw:
        if not isinstance(table, dict) or not isinstance(table.get("host"), str):
            raise _Bad(fix)
        for key in table:
            if key == "tls":
                raise _Bad("TLS is not implemented yet; remove tls")
            if key not in ("host", "port"):
                raise _Bad(f"unknown key {key!r}; {fix}")
        port = table.get("port")
        out.append((table["host"], None if port is None else _port(port, False)))
    return tuple(out)


_port = _int(0, 65535, "use 0 to 65535 (0 picks a free one)", "a port number")
_KEEPALIVE_FIX: Final = "use seconds (or a count) from 1 to 32767, or -1 for the default"
_keepalive_range = _int(-1, 32767, _KEEPALIVE_FIX)


def _keepalive(raw: object, text: bool) -> int:
    value = _keepalive_range(raw, text)
    if value == 0:  # the kernel refuses 0
        raise _Bad(_KEEPALIVE_FIX)
    return value


@dataclass(frozen=True, slots=True)
class _Setting:
    convert: Callable[[object, bool], object]
    env: bool = True  # GEARMILL_<KEY>
    toml: str | None = ""  # "" = the key itself at top level; None = not in the file


# Every setting, by key: the Config field (or a flag-only knob), the TOML key and
# the lower-cased tail of its environment variable.
SETTINGS: Final[dict[str, _Setting]] = {
    "listen": _Setting(_listen),
    "port": _Setting(_port),
    "backlog": _Setting(_int(1, 65535, "use 1 to 65535 (default 32)")),
    "job_retries": _Setting(_int(0, 255, "use 0 (no limit) to 255")),
    "job_handle_prefix": _Setting(_prefix),
    "worker_wakeup": _Setting(
        _int(
            0,
            1 << 31,
            "use 0 (all), N (at most N), or leave it out (one per queued job)",
        )
    ),
    "round_robin": _Setting(_bool),
    "global_priority": _Setting(_bool),
    "exceptions": _Setting(_bool),
    "keepalive": _Setting(_bool),
    "keepalive_idle": _Setting(_keepalive),
    "keepalive_interval": _Setting(_keepalive),
    "keepalive_count": _Setting(_keepalive),
    "admin_shutdown": _Setting(_choice(AdminShutdown, str.lower)),
    "verbose": _Setting(_choice(Level, str.upper)),
    "log_file": _Setting(_str),
    "pid_file": _Setting(_str),
    "file_descriptors": _Setting(_int(1, 1 << 30, "use a positive number of open files")),
    "store": _Setting(_store, toml="store.url"),
    # the [limits] section (LimitsConfig); max_packet is the payload size limit
    "max_packet": _Setting(
        _int(12, MAX_PAYLOAD, "use bytes from 12 to 4294967295 (the default)"),
        toml="limits.max_payload",
    ),
    "max_owed": _Setting(
        _int(1 << 16, 1 << 40, "use bytes, at least 65536 (default 33554432)"),
        toml="limits.max_owed",
    ),
    "max_connections": _Setting(
        _int(0, 1 << 30, "use a number of connections, 0 = no limit"),
        toml="limits.max_connections",
    ),
    "max_connections_per_address": _Setting(
        _int(0, 1 << 30, "use a number of connections, 0 = no limit"),
        toml="limits.max_connections_per_address",
    ),
    "max_functions_per_worker": _Setting(
        _int(0, 1 << 30, "use a number of functions, 0 = no limit"),
        toml="limits.max_functions_per_worker",
    ),
    "max_function_name": _Setting(
        _int(0, 1 << 20, "use bytes, 0 = no limit"), toml="limits.max_function_name"
    ),
    "idle_timeout": _Setting(
        _int(0, 1 << 30, "use whole seconds, 0 = never"), toml="limits.idle_timeout"
    ),
    # flag-only: gearmand's knobs and the command line's own
    "daemon": _Setting(_bool, env=False, toml=None),
    "more_verbose": _Setting(_int(0, 100, "repeat -v at most a few times"), env=False, toml=None),
    "queue_type": _Setting(_queue_type, env=False, toml=None),
    "threads": _Setting(_int(0, 1 << 16, "use a number (ignored)"), env=False, toml=None),
    "hashtable_buckets": _Setting(
        _int(1, 1 << 32, "use a positive number (ignored)"), env=False, toml=None
    ),
}

_TOML_KEYS: Final = {
    (s.toml or key): key for key, s in SETTINGS.items() if s.toml is not None and key != "listen"
}
_LIMITS: Final = tuple(key for key, s in SETTINGS.items() if (s.toml or "").startswith("limits."))
# sections the next features fill; present now so a file can be written for them
_SECTIONS: Final = {
    "store": "url",
    "http": "the HTTP interface is not implemented yet",
    "metrics": "the metrics endpoint is not implemented yet",
}


def from_env(env: Mapping[str, str]) -> Layer:
    """GEARMILL_<KEY> for each setting; an empty variable counts as unset."""
    layer: Layer = {}
    for key, setting in SETTINGS.items():
        name = "GEARMILL_" + key.upper()
        if setting.env and env.get(name):
            layer[key] = Given(env[name], f"{name}={env[name]!r}", True)
    if "port" not in layer and env.get("GEARMAND_PORT"):
        value = env["GEARMAND_PORT"]
        layer["port"] = Given(value, f"GEARMAND_PORT={value!r}", True)
    return layer


def _toml_repr(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return json.dumps(value)
    return "[...]" if isinstance(value, list) else "{...}"


def _unknown(path: str, key: str, known: Sequence[str]) -> ConfigError:
    near = difflib.get_close_matches(key.replace("-", "_"), known, n=1)
    hint = f"did you mean {near[0]}?" if near else "known: " + ", ".join(sorted(known))
    return ConfigError(f"{path}: {key}: unknown setting; {hint}")


def from_toml(path: str) -> Layer:
    """The TOML file's settings (not yet checked, except its syntax and key names)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(
            f"--config {path}: cannot read it: {e.strerror or e}; give an existing TOML file"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}; fix the file's syntax") from None
    layer: Layer = {}
    known = [*_TOML_KEYS, "listen", "limits", *_SECTIONS]
    for key, value in data.items():
        if key == "listen":
            layer["listen"] = Given(value, f"{path}: [[listen]]", False)
        elif key == "limits":
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: limits: a section; write [limits] on its own line")
            for sub, subvalue in value.items():
                full = f"limits.{sub}"
                if full not in _TOML_KEYS:
                    raise _unknown(path, full, [k for k in _TOML_KEYS if k.startswith("limits.")])
                layer[_TOML_KEYS[full]] = Given(
                    subvalue, f"{path}: {full} = {_toml_repr(subvalue)}", False
                )
        elif key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: {key}: a section; write [{key}] on its own line")
            for sub, subvalue in value.items():
                if key != "store" or sub != "url":
                    why = "unknown setting; known: url" if key == "store" else _SECTIONS[key]
                    raise ConfigError(f"{path}: {key}.{sub}: {why}")
                layer["store"] = Given(
                    subvalue, f"{path}: store.url = {_toml_repr(subvalue)}", False
                )
        elif key in _TOML_KEYS:
            layer[_TOML_KEYS[key]] = Given(value, f"{path}: {key} = {_toml_repr(value)}", False)
        else:
            raise _unknown(path, key, known)
    return layer


# -------------------------------------------------------------------- build


def build(layers: Sequence[Layer]) -> Config:
    """One Config from layers, strongest first; raises ConfigError on the first bad value.

    Values a stronger source overrides are checked too: a bad one would surface the
    day the override goes away.
    """
    values: dict[str, object] = {}
    rank: dict[str, int] = {}
    for i, layer in enumerate(layers):
        for key, given in layer.items():
            setting = SETTINGS.get(key)
            if setting is None:
                continue  # --config, --config-file: read by the caller
            try:
                value = setting.convert(given.value, given.text)
            except _Bad as e:
                raise ConfigError(f"{given.where}: {e}") from None
            if key not in values:
                values[key] = value
                rank[key] = i
    port = values.get("port", DEFAULT_PORT)
    assert isinstance(port, int)
    hosts = values.get("listen", (("127.0.0.1", None),))
    assert isinstance(hosts, tuple)
    # a port from a stronger source than the listeners' overrides theirs
    port_wins = rank.get("port", len(layers)) < rank.get("listen", len(layers))
    listeners = tuple(
        Listener(host, port if own is None or port_wins else own) for host, own in hosts
    )
    level = values.get("verbose", Level.ERROR)
    assert isinstance(level, Level)
    steps = values.get("more_verbose", 0)
    assert isinstance(steps, int)
    kwargs = {
        key: value
        for key, value in values.items()
        if key in Config.__dataclass_fields__ and key not in ("verbose", "store")
    }
    store = values.get("store", "memory")
    assert isinstance(store, str)
    limits = {key: values[key] for key in _LIMITS if key in values and key != "max_packet"}
    return Config(
        listeners=listeners,
        verbose=level.more_verbose(steps),
        store=StoreConfig(store),
        limits=LimitsConfig(**limits),  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )
