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
import ipaddress
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
    """The HTTP listener (metrics, gateway, JSON API, dashboard); off when ``listen`` is None."""

    listen: Listener | None = None
    # needed for submissions and job data (always when not on loopback) and for
    # destructive actions (which are refused when it is empty)
    token: str = ""
    # how long a finished job's status stays visible to /api/jobs/<handle>
    keep_finished: int = 600


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """What /metrics exposes: per-function series for the busiest ``top_functions``
    (the rest summed under function="_other"); per-function histograms opt-in."""

    top_functions: int = 50
    function_histograms: bool = False


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


def _protocol(raw: object, text: bool) -> str:
    if not isinstance(raw, str) or raw.lower() != "http":
        raise _Bad("the only protocol module is http; use -r http (with --http-port N)")
    return "http"


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


def _http_addr(raw: object, text: bool) -> tuple[str, int]:
    """HOST:PORT, [V6]:PORT, HOST (port 8080) or :PORT (127.0.0.1)."""
    fix = "write HOST:PORT, e.g. 127.0.0.1:8080"
    if not isinstance(raw, str) or not raw.strip():
        raise _Bad(fix)
    value = raw.strip()
    host, port = value, "8080"
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise _Bad(fix)
            port = rest[1:]
    elif value.count(":") == 1:
        host, port = value.split(":")
    return host or "127.0.0.1", _port(port, True)


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
    "http": _Setting(_http_addr, toml="http.listen"),
    "http_token": _Setting(_str, toml="http.token"),
    "http_keep_finished": _Setting(
        _int(0, 86400 * 7, "use seconds from 0 to 604800"), toml="http.keep_finished"
    ),
    "metrics_top_functions": _Setting(
        _int(1, 100_000, "use a number of functions from 1 to 100000"),
        toml="metrics.top_functions",
    ),
    "metrics_function_histograms": _Setting(_bool, toml="metrics.function_histograms"),
    # flag-only: gearmand's knobs and the command line's own
    "daemon": _Setting(_bool, env=False, toml=None),
    "more_verbose": _Setting(_int(0, 100, "repeat -v at most a few times"), env=False, toml=None),
    "queue_type": _Setting(_queue_type, env=False, toml=None),
    # gearmand's -r http --http-port N: the HTTP listener on the Gearman host
    "protocol": _Setting(_protocol, env=False, toml=None),
    "http_port": _Setting(_port, env=False, toml=None),
    "threads": _Setting(_int(0, 1 << 16, "use a number (ignored)"), env=False, toml=None),
    "hashtable_buckets": _Setting(
        _int(1, 1 << 32, "use a positive number (ignored)"), env=False, toml=None
    ),
}

_TOML_KEYS: Final = {
    (s.toml or key): key for key, s in SETTINGS.items() if s.toml is not None and key != "listen"
}
# [section] tables of the TOML file; their keys are the dotted toml names above
_SECTIONS: Final = ("store", "http", "metrics")


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
    known = [*(k for k in _TOML_KEYS if "." not in k), "listen", *_SECTIONS]
    for key, value in data.items():
        if key == "listen":
            layer["listen"] = Given(value, f"{path}: [[listen]]", False)
        elif key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: {key}: a section; write [{key}] on its own line")
            for sub, subvalue in value.items():
                dotted = f"{key}.{sub}"
                if dotted not in _TOML_KEYS:
                    subs = sorted(k.split(".", 1)[1] for k in _TOML_KEYS if k.startswith(key + "."))
                    raise ConfigError(
                        f"{path}: {dotted}: unknown setting; known: {', '.join(subs)}"
                    )
                layer[_TOML_KEYS[dotted]] = Given(
                    subvalue, f"{path}: {dotted} = {_toml_repr(subvalue)}", False
                )
        elif key in _TOML_KEYS and "." not in key:
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
        if key in Config.__dataclass_fields__ and key not in ("verbose", "store", "http")
    }
    store = values.get("store", "memory")
    assert isinstance(store, str)
    return Config(
        listeners=listeners,
        verbose=level.more_verbose(steps),
        store=StoreConfig(store),
        http=_http_config(values, layers, listeners),
        metrics=MetricsConfig(
            int(values.get("metrics_top_functions", 50)),  # type: ignore[call-overload]
            bool(values.get("metrics_function_histograms", False)),
        ),
        **kwargs,  # type: ignore[arg-type]
    )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return host == "localhost"


def _http_config(
    values: dict[str, object], layers: Sequence[Layer], listeners: tuple[Listener, ...]
) -> HttpConfig:
    """--http HOST:PORT, or gearmand's -r http / --http-port N (the Gearman host,
    port 8080 by default); a listener off loopback needs a token."""
    given = values.get("http")
    http_port = values.get("http_port")
    addr: tuple[str, int] | None = None
    if isinstance(given, tuple):
        addr = (str(given[0]), int(given[1]))
    if isinstance(http_port, int):
        # gearmand's --http-port: the port of --http, or of the Gearman host
        addr = (addr[0] if addr else listeners[0].host if listeners else "127.0.0.1", http_port)
    elif addr is None and values.get("protocol") == "http":
        addr = (listeners[0].host if listeners else "127.0.0.1", 8080)
    token = values.get("http_token", "")
    assert isinstance(token, str)
    keep = values.get("http_keep_finished", 600)
    assert isinstance(keep, int)
    if addr is None:
        return HttpConfig(None, token, keep)
    host, port = addr
    if not token and not _is_loopback(host):
        where = next(
            (
                layer[k].where
                for layer in layers
                for k in ("http", "http_port", "protocol")
                if k in layer
            ),
            "--http",
        )
        raise ConfigError(
            f"{where}: the HTTP listener on {host or '*'} is not on loopback; "
            "give --http-token TOKEN (or GEARMILL_HTTP_TOKEN) so that submissions and "
            "job data need it, or listen on 127.0.0.1"
        )
    return HttpConfig(Listener(host, port), token, keep)
