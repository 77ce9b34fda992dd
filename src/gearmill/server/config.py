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
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, TypeVar
from urllib.parse import urlsplit

from .. import __version__
from ..protocol.codec import MAX_PAYLOAD
from ..protocol.packets import DEFAULT_PORT
from .access import ADMIN_LEVELS, AccessConfig, AccessRule
from .broker import BrokerConfig
from .policy import (
    DEFAULT_MAX_ATTEMPTS,
    RetryConfig,
    RetryRule,
    RuleError,
    ScheduleSpec,
    change_rule,
    check_cron,
    parse_endings,
)
from .store._base import FIX_URL

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


class LogFormat(enum.StrEnum):
    """How log lines look: gearmand's plain lines, or one JSON object per line."""

    PLAIN = "plain"
    JSON = "json"


class ConfigError(ValueError):
    """A bad setting; the text is the whole one-line message."""


@dataclass(frozen=True, slots=True)
class Listener:
    host: str  # "" = every interface
    port: int
    tls: bool = False  # speaks TLS with Config.tls's certificate


class VerifyClient(enum.StrEnum):
    """Whether a TLS listener asks for a client certificate (checked against the CA)."""

    NONE = "none"
    OPTIONAL = "optional"
    REQUIRED = "required"


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """The certificate of every TLS listener, and how clients are checked."""

    cert: str | None = None  # PEM certificate (chain); None: no TLS listener
    key: str | None = None  # PEM private key; None: in the cert file
    ca: str | None = None  # PEM CA certificates client certificates must chain to
    verify: VerifyClient = VerifyClient.NONE


DEFAULT_LEASE: Final = 15.0  # a dead server's jobs are offered again within ~20 s


@dataclass(frozen=True, slots=True)
class StoreConfig:
    url: str = "memory"  # memory | sqlite:///path | postgresql:// | mysql:// | redis://
    # gearmand's queue table (SQL) or key prefix (Redis) to import jobs from at start
    gearmand_source: str | None = None
    # several servers on one shared store (server/cluster.py): None = host:port
    node_id: str | None = None
    lease: float = DEFAULT_LEASE  # seconds without a heartbeat before the others take over
    # where the operator named the store, for "fix ..." in a start-up error
    origin: str = FIX_URL


STORE_SCHEMES: Final = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "redis", "rediss")


def default_state_dir(env: Mapping[str, str] = os.environ) -> str:
    """Where a server keeps its state when no store is named.

    GEARMILL_STATE_DIR, else systemd's STATE_DIRECTORY (StateDirectory=), else
    $XDG_STATE_HOME/gearmill, else ~/.local/state/gearmill: never the working
    directory, which is / for a service and differs between two starts by hand.
    """
    for name in ("GEARMILL_STATE_DIR", "STATE_DIRECTORY"):
        value = env.get(name, "").split(":")[0]
        if value:
            return os.path.abspath(value)
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(os.path.abspath(base), "gearmill")


def default_store_url(env: Mapping[str, str] = os.environ) -> str:
    return "sqlite://" + os.path.join(default_state_dir(env), "queue.db")


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The HTTP listener (metrics, gateway, JSON API, dashboard); off when ``listen`` is None."""

    listen: Listener | None = None
    # needed for submissions and job data (always when not on loopback) and for
    # destructive actions (which are refused when it is empty)
    token: str = ""
    # how long a finished job's status stays visible to /api/jobs/<handle>
    keep_finished: int = 600
    # [[http.identity]] tables: (token, subject) -- a request with that token
    # is a peer with that subject for the [access] list, as a TLS certificate is
    identities: tuple[tuple[str, str], ...] = ()
    # seconds between two pings of the store while idle (/readyz notices a store gone)
    probe_every: float = 5.0


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """What /metrics exposes: per-function series for the busiest ``top_functions``
    (the rest summed under function="_other"); per-function histograms opt-in."""

    top_functions: int = 50
    function_histograms: bool = False


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
    log_format: LogFormat = LogFormat.PLAIN
    # seconds a graceful stop (SIGUSR1, shutdown graceful) waits for running jobs; 0 = no limit
    graceful_timeout: int = 30
    pid_file: str | None = None
    daemon: bool = False
    file_descriptors: int | None = None
    store: StoreConfig = StoreConfig()
    # background jobs kept in memory; beyond, queued ones wait in the store (0 = no limit)
    memory_jobs: int = 200_000
    limits: LimitsConfig = LimitsConfig()
    http: HttpConfig = HttpConfig()
    metrics: MetricsConfig = MetricsConfig()
    tls: TLSConfig = TLSConfig()
    # None: every peer may do everything (gearmand's way), unless TLS is on
    access: AccessConfig | None = None
    retry: RetryConfig = field(default_factory=RetryConfig)

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


_STORE_FIX: Final = (
    "use memory, sqlite:///path/queue.db, postgresql://user:password@host/db, "
    "mysql://user:password@host/db or redis://host:6379/0"
)


def _store(raw: object, text: bool) -> str:
    value = _str(raw, text).strip()
    if value.lower() == "memory":
        return "memory"
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    if scheme not in STORE_SCHEMES:
        raise _Bad(_STORE_FIX)
    if scheme == "sqlite" and not value[len("sqlite://") :].startswith("/"):
        raise _Bad("an SQLite store needs an absolute path: sqlite:///path/queue.db")
    try:
        _ = urlsplit(value).port  # raises for a port out of range, a bad [IPv6]
    except ValueError as e:
        raise _Bad(f"{e}; e.g. postgresql://user:password@host:5432/db") from None
    return value


def _node_id(raw: object, text: bool) -> str:
    value = _str(raw, text).strip()
    if len(value) > 200 or "#" in value or any(c.isspace() for c in value):
        raise _Bad("use 1 to 200 characters, without spaces or '#'")
    return value


# gearmand's -q names (any case) and the store each stands for
QUEUE_TYPES: Final = {
    "builtin": "memory",
    "libsqlite3": "sqlite",
    "postgres": "postgresql",
    "mysql": "mysql",
    "redis": "redis",
}


def _queue_type(raw: object, text: bool) -> str:
    if not isinstance(raw, str) or raw.lower() not in QUEUE_TYPES:
        raise _Bad("use builtin, libsqlite3, Postgres, MySQL or redis (or --store URL)")
    return raw.lower()


def _protocol(raw: object, text: bool) -> str:
    if not isinstance(raw, str) or raw.lower() != "http":
        raise _Bad("the only protocol module is http; use -r http (with --http-port N)")
    return "http"


def _listen(raw: object, text: bool) -> tuple[tuple[str, int | None, bool | None], ...]:
    """Hosts from flags (a list) or GEARMILL_LISTEN (commas); [[listen]] tables from TOML."""
    if text:
        hosts = raw.split(",") if isinstance(raw, str) else raw
        assert isinstance(hosts, list | tuple)
        # the error names the value; the item too when there are several
        return tuple(_listen_url(str(h).strip(), len(hosts) > 1) for h in hosts)
    fix = (
        'write [[listen]] tables: host = "127.0.0.1", an optional port = 4730 '
        "and an optional tls = true"
    )
    if not isinstance(raw, list) or not raw:
        raise _Bad(fix)
    out: list[tuple[str, int | None, bool | None]] = []
    for table in raw:
        if not isinstance(table, dict) or not isinstance(table.get("host"), str):
            raise _Bad(fix)
        for key in table:
            if key not in ("host", "port", "tls"):
                raise _Bad(f"unknown key {key!r}; {fix}")
        port = table.get("port")
        tls = table.get("tls")
        if tls is not None and not isinstance(tls, bool):
            raise _Bad(f"tls = {_toml_repr(tls)}: use true or false")
        out.append((table["host"], None if port is None else _port(port, False), tls))
    return tuple(out)


def _listen_url(text: str, name_it: bool = False) -> tuple[str, int | None, bool | None]:
    """A -L value: a host (the -p listener), or tcp://host[:port] or tls://host[:port]."""
    scheme, sep, rest = text.partition("://")
    which = f"{text}: " if name_it else ""
    if not sep:
        return text, None, None
    if scheme.lower() not in ("tcp", "tls"):
        raise _Bad(
            f"{which}unknown scheme {scheme!r}; use a host, tcp://host:port or tls://host:port"
        )
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0 or (rest[end + 1 :] and not rest[end + 1 :].startswith(":")):
            raise _Bad(f"{which}write an IPv6 address as tls://[::1]:4730")
        host, port_text = rest[1:end], rest[end + 2 :]
    elif rest.count(":") > 1:
        raise _Bad(f"{which}write an IPv6 address in brackets, as tls://[::1]:4730")
    else:
        host, _, port_text = rest.partition(":")
    port = None if not port_text else _port(port_text, True)
    return host, port, scheme.lower() == "tls"


def _tls_config(values: dict[str, object]) -> TLSConfig:
    cert, key, ca = (values.get(k) for k in ("tls_cert", "tls_key", "tls_ca"))
    assert cert is None or isinstance(cert, str)
    assert key is None or isinstance(key, str)
    assert ca is None or isinstance(ca, str)
    verify = values.get("tls_verify_client")
    if verify is None:
        # a CA given is a CA to check clients against
        verify = VerifyClient.REQUIRED if ca else VerifyClient.NONE
    assert isinstance(verify, VerifyClient)
    if verify is not VerifyClient.NONE and not ca:
        raise ConfigError(
            f"--tls-verify-client {verify.value} needs --tls-ca: the CA that signs "
            "client certificates"
        )
    if key and not cert:
        raise ConfigError("--tls-key without --tls-cert: give the certificate too")
    return TLSConfig(cert, key, ca, verify)


def _globs(raw: object, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(g, str) and g for g in raw):
        raise _Bad(f'{where}: write a list of function names or globs, e.g. ["resize", "img.*"]')
    return tuple(raw)


def _admin_level(raw: object, where: str) -> str:
    if raw not in ADMIN_LEVELS:
        raise _Bad(f"{where} = {_toml_repr(raw)}: use one of " + ", ".join(ADMIN_LEVELS))
    assert isinstance(raw, str)
    return raw


def _access(raw: object, text: bool) -> AccessConfig:
    """The [access] section: submit, work, admin for peers no rule matches, then [[access.rule]]."""
    if not isinstance(raw, dict):
        raise _Bad("a section; write [access] on its own line")
    rights = ("submit", "work", "admin")
    for key in raw:
        if key not in (*rights, "rule"):
            raise _Bad(f"unknown key {key!r}; known: submit, work, admin, [[access.rule]]")
    rules = raw.get("rule", [])
    if not isinstance(rules, list):
        raise _Bad("rule: write [[access.rule]] tables")
    out: list[AccessRule] = []
    for n, table in enumerate(rules, 1):
        where = f"rule {n}"
        if not isinstance(table, dict):
            raise _Bad(f"{where}: write [[access.rule]] tables")
        for key in table:
            if key not in (*rights, "subject", "address"):
                raise _Bad(
                    f"{where}: unknown key {key!r}; known: subject, address, {', '.join(rights)}"
                )
        subject = table.get("subject")
        if subject is not None and (not isinstance(subject, str) or not subject):
            raise _Bad(f'{where}: subject: write a glob such as "CN=worker-*,O=Example"')
        network = None
        if "address" in table:
            try:
                network = ipaddress.ip_network(str(table["address"]), strict=False)
            except ValueError:
                raise _Bad(
                    f"{where}: address = {_toml_repr(table['address'])}: write an address "
                    'or network, e.g. "10.0.0.0/8" or "::1"'
                ) from None
        if subject is None and network is None:
            raise _Bad(f'{where}: say whom it is for: subject = "CN=..." and/or address = "..."')
        out.append(
            AccessRule(
                subject,
                network,
                None if "submit" not in table else _globs(table["submit"], f"{where}: submit"),
                None if "work" not in table else _globs(table["work"], f"{where}: work"),
                None if "admin" not in table else _admin_level(table["admin"], f"{where}: admin"),
            )
        )
    return AccessConfig(
        _globs(raw["submit"], "submit") if "submit" in raw else ("*",),
        _globs(raw["work"], "work") if "work" in raw else ("*",),
        _admin_level(raw["admin"], "admin") if "admin" in raw else "read",
        tuple(out),
    )


def _http_addr(raw: object, text: bool) -> tuple[str, int]:
    """HOST:PORT, [V6]:PORT, HOST (port 8080) or :PORT (127.0.0.1)."""
    fix = "write HOST:PORT, e.g. 127.0.0.1:8080"
    if not isinstance(raw, str) or not raw.strip():
        raise _Bad(fix)
    value = raw.strip()
    if value.isdigit():  # a port alone would be taken for a host name
        raise _Bad(f"a port without a host; write HOST:PORT, e.g. 127.0.0.1:{value}")
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


def _float(lo: float, hi: float, fix: str) -> Callable[[object, bool], float]:
    def convert(raw: object, text: bool) -> float:
        if text and isinstance(raw, str):
            try:
                raw = float(raw.strip())
            except ValueError:
                raise _Bad(f"not a number; {fix}") from None
        elif isinstance(raw, bool) or not isinstance(raw, int | float):
            raise _Bad(f"write a number without quotes; {fix}")
        if not lo <= raw <= hi:
            raise _Bad(fix)
        return float(raw)

    return convert


def _endings(raw: object, text: bool) -> frozenset[str]:
    if isinstance(raw, list) and all(isinstance(v, str) for v in raw):
        raw = ",".join(raw) or "none"
    if not isinstance(raw, str):
        raise _Bad('write a list of endings: ["lost", "timeout", "cant_do", "fail", "exception"]')
    try:
        return parse_endings(raw)
    except RuleError as e:
        raise _Bad(str(e)) from None


_RULE_KEYS: Final = ("max_attempts", "backoff", "retry_on", "dead", "dead_on_fail")
_RULE_FIX: Final = '[[retry.function]] tables need name = "FUNCTION" and some of ' + ", ".join(
    _RULE_KEYS
)


def _retry_functions(raw: object, text: bool) -> tuple[tuple[bytes, dict[str, str]], ...]:
    """[[retry.function]] tables: name and the rule's keys (checked when built)."""
    if not isinstance(raw, list):
        raise _Bad(_RULE_FIX)
    out = []
    for table in raw:
        if not isinstance(table, dict) or not isinstance(table.get("name"), str):
            raise _Bad(_RULE_FIX)
        settings = {}
        for key, value in table.items():
            if key == "name":
                continue
            if key not in _RULE_KEYS:
                raise _Bad(f"unknown key {key!r}; {_RULE_FIX}")
            if isinstance(value, list):
                value = ",".join(str(v) for v in value) or "none"
            settings[key] = str(value).lower() if isinstance(value, bool) else str(value)
        out.append((table["name"].encode(), settings))
    return tuple(out)


_SCHEDULE_FIX: Final = (
    '[[schedule]] tables need name, cron = "*/5 * * * *" and function, '
    'and may have data = "..." and priority = "high"|"normal"|"low"'
)


_IDENTITY_FIX = (
    'write [[http.identity]] tables with token = "..." and subject = "CN=...,O=..." '
    "(the subject the [access] rules match, as for a TLS certificate)"
)


def _http_identities(raw: object, text: bool) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, list):
        raise _Bad(_IDENTITY_FIX)
    out: list[tuple[str, str]] = []
    for table in raw:
        if not isinstance(table, dict):
            raise _Bad(_IDENTITY_FIX)
        for key in table:
            if key not in ("token", "subject"):
                raise _Bad(f"unknown key {key!r}; {_IDENTITY_FIX}")
        token, subject = table.get("token"), table.get("subject")
        if not (isinstance(token, str) and token and isinstance(subject, str) and subject):
            raise _Bad(_IDENTITY_FIX)
        if len(token) < 16:
            raise _Bad(f"identity {subject}: the token is shorter than 16 characters")
        if any(token == t for t, _ in out):
            raise _Bad(f"identity {subject}: the same token names two identities")
        out.append((token, subject))
    return tuple(out)


def _schedules(raw: object, text: bool) -> tuple[ScheduleSpec, ...]:
    if not isinstance(raw, list):
        raise _Bad(_SCHEDULE_FIX)
    out = []
    for table in raw:
        if not isinstance(table, dict):
            raise _Bad(_SCHEDULE_FIX)
        for key in table:
            if key not in ("name", "cron", "function", "data", "priority", "paused"):
                raise _Bad(f"unknown key {key!r}; {_SCHEDULE_FIX}")
        name, cron, function = table.get("name"), table.get("cron"), table.get("function")
        data, priority = table.get("data", ""), table.get("priority", "normal")
        if not all(isinstance(v, str) and v for v in (name, cron, function)):
            raise _Bad(_SCHEDULE_FIX)
        if not isinstance(data, str) or priority not in ("high", "normal", "low"):
            raise _Bad(_SCHEDULE_FIX)
        assert isinstance(name, str) and isinstance(cron, str) and isinstance(function, str)
        try:
            check_cron(cron)
        except RuleError as e:
            raise _Bad(f"schedule {name}: {e}") from None
        out.append(
            ScheduleSpec(
                name,
                cron,
                function.encode(),
                data.encode(),
                ("high", "normal", "low").index(priority),
                bool(table.get("paused", False)),
            )
        )
    return tuple(out)


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
    "job_retries": _Setting(_int(0, 255, "use 0 (the retry default, 25 attempts) to 255")),
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
    "log_format": _Setting(_choice(LogFormat, str.lower)),
    "graceful_timeout": _Setting(
        _int(
            0,
            7 * 86400,
            "use seconds from 0 (no limit) to 604800 (default 30)",
            "a whole number of seconds",
        )
    ),
    "pid_file": _Setting(_str),
    "file_descriptors": _Setting(_int(1, 1 << 30, "use a positive number of open files")),
    "store": _Setting(_store, toml="store.url"),
    "node_id": _Setting(_node_id, toml="store.node_id"),
    "lease": _Setting(
        _float(0.3, 3600, "use seconds from 0.3 to 3600 (default 15)"), toml="store.lease"
    ),
    "memory_jobs": _Setting(
        _int(0, 1 << 40, "use a number of jobs, 0 = no limit (default 200000)"),
        toml="store.memory_jobs",
    ),
    "tls_cert": _Setting(_str, toml="tls.cert"),
    "tls_key": _Setting(_str, toml="tls.key"),
    "tls_ca": _Setting(_str, toml="tls.ca"),
    "tls_verify_client": _Setting(_choice(VerifyClient, str.lower), toml="tls.verify_client"),
    "access": _Setting(_access, env=False, toml=None),
    # gearmand's --ssl: TLS on the -p listener (a certificate alone does that too)
    "tls": _Setting(_bool, env=False, toml=None),
    # [retry]: the default rule, the dead set's bounds, SUBMIT_JOB_SCHED
    "retry_max_attempts": _Setting(
        _int(0, 1_000_000, "use the number of attempts in all, 0 for no limit"),
        toml="retry.max_attempts",
    ),
    "retry_backoff": _Setting(
        _float(0, 86400, "use a base in seconds from 0 (at once) to 86400"), toml="retry.backoff"
    ),
    "retry_on": _Setting(_endings, toml="retry.retry_on"),
    "retry_dead": _Setting(_bool, toml="retry.dead"),
    "retry_dead_on_fail": _Setting(_bool, toml="retry.dead_on_fail"),
    "dead_max": _Setting(
        _int(0, 1 << 30, "use a number of jobs, 0 for no limit"), toml="retry.dead_max"
    ),
    "dead_max_age": _Setting(
        _float(0, 1e10, "use seconds, 0 for no limit"), toml="retry.dead_max_age"
    ),
    "submit_sched": _Setting(_bool, toml="retry.submit_sched"),
    "retry_functions": _Setting(_retry_functions, env=False, toml="retry.function"),
    "schedules": _Setting(_schedules, env=False, toml="schedule"),
    "state_dir": _Setting(_str),
    "http": _Setting(_http_addr, toml="http.listen"),
    "http_token": _Setting(_str, toml="http.token"),
    "http_identities": _Setting(_http_identities, env=False, toml="http.identity"),
    "http_keep_finished": _Setting(
        _int(0, 86400 * 7, "use seconds from 0 to 604800"), toml="http.keep_finished"
    ),
    "http_probe_every": _Setting(
        _float(0.1, 3600, "use seconds from 0.1 to 3600"), toml="http.probe_every"
    ),
    "metrics_top_functions": _Setting(
        _int(1, 100_000, "use a number of functions from 1 to 100000"),
        toml="metrics.top_functions",
    ),
    "metrics_function_histograms": _Setting(_bool, toml="metrics.function_histograms"),
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
    # gearmand's -r http --http-port N: the HTTP listener on the Gearman host
    "protocol": _Setting(_protocol, env=False, toml=None),
    "http_port": _Setting(_port, env=False, toml=None),
    "threads": _Setting(_int(0, 1 << 16, "use a number (ignored)"), env=False, toml=None),
    "hashtable_buckets": _Setting(
        _int(1, 1 << 32, "use a positive number (ignored)"), env=False, toml=None
    ),
    # gearmand's persistent-queue flags, turned into a store URL (see gearmand_store)
    **{
        key: _Setting(_str, env=False, toml=None)
        for key in (
            "libsqlite3_db",
            "libsqlite3_table",
            "libpq_conninfo",
            "libpq_table",
            "mysql_host",
            "mysql_port",
            "mysql_user",
            "mysql_password",
            "mysql_db",
            "mysql_table",
            "redis_server",
            "redis_port",
            "redis_password",
            "redis_prefix",
        )
    },
    "store_queue_on_shutdown": _Setting(_bool, env=False, toml=None),
}

_TOML_KEYS: Final = {
    (s.toml or key): key for key, s in SETTINGS.items() if s.toml is not None and key != "listen"
}
_LIMITS: Final = tuple(key for key, s in SETTINGS.items() if (s.toml or "").startswith("limits."))
# [section] tables of the TOML file; their keys are the dotted toml names above
_SECTIONS: Final = ("store", "tls", "http", "metrics", "limits")


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


# GEARMILL_ variables that are not server settings: the file, the state folder, the
# build's switches, the client tools' and the test suite's
_OTHER_ENV: Final = (
    "GEARMILL_CONFIG",
    "GEARMILL_STATE_DIR",
    "GEARMILL_PURE",
    "GEARMILL_NO_COMPILE",
)
_OTHER_PREFIXES: Final = ("GEARMILL_CLIENT_", "GEARMILL_TEST_")


def unknown_env(env: Mapping[str, str]) -> list[str]:
    """One line per GEARMILL_ variable that names nothing (a misspelt setting would
    otherwise be ignored without a word), with the nearest setting's name."""
    keys = [key.upper() for key, s in SETTINGS.items() if s.env]
    out = []
    for name in sorted(env):
        if not name.startswith("GEARMILL_") or name[9:] in keys or name in _OTHER_ENV:
            continue
        if name.startswith(_OTHER_PREFIXES):
            continue
        near = difflib.get_close_matches(name[9:], keys, n=1)  # the shared prefix aside
        hint = f"; did you mean GEARMILL_{near[0]}?" if near else ""
        out.append(f"{name} is not a setting, and is ignored{hint}")
    return out


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


def from_toml(path: str, given: str = "--config ") -> Layer:
    """The TOML file's settings (not yet checked, except its syntax and key names);
    ``given`` names where the path came from, for a file that cannot be read."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(
            f"{given}{path}: cannot read it: {e.strerror or e}; give an existing TOML file"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}; fix the file's syntax") from None
    except UnicodeDecodeError as e:  # TOML is UTF-8; tomllib lets the decode error through
        raise ConfigError(
            f"{path}: not valid TOML: byte {e.start} is not UTF-8; save the file as UTF-8"
        ) from None
    layer: Layer = {}
    known = [
        *(k for k in _TOML_KEYS if "." not in k),
        *("listen", "access", "retry", "schedule"),
        *_SECTIONS,
    ]
    for key, value in data.items():
        if key == "listen":
            layer["listen"] = Given(value, f"{path}: [[listen]]", False)
        elif key == "schedule":
            layer["schedules"] = Given(value, f"{path}: [[schedule]]", False)
        elif key == "retry":
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: retry: a section; write [retry] on its own line")
            for sub, subvalue in value.items():
                full = f"retry.{sub}"
                if full not in _TOML_KEYS:
                    raise _unknown(path, full, [k for k in _TOML_KEYS if k.startswith("retry.")])
                shown = "[[retry.function]]" if sub == "function" else _toml_repr(subvalue)
                layer[_TOML_KEYS[full]] = Given(subvalue, f"{path}: {full} = {shown}", False)
        elif key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: {key}: a section; write [{key}] on its own line")
            for sub, subvalue in value.items():
                dotted = f"{key}.{sub}"
                if dotted not in _TOML_KEYS:
                    raise _unknown(path, dotted, [k for k in _TOML_KEYS if k.startswith(key + ".")])
                layer[_TOML_KEYS[dotted]] = Given(
                    subvalue, f"{path}: {dotted} = {_toml_repr(subvalue)}", False
                )
        elif key == "access":
            layer["access"] = Given(value, f"{path}: [access]", False)
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
                raise ConfigError(f"{_shown(given.where)}: {e}") from None
            if key not in values:
                values[key] = value
                rank[key] = i
    port = values.get("port", DEFAULT_PORT)
    assert isinstance(port, int)
    hosts = values.get("listen", (("127.0.0.1", None, None),))
    assert isinstance(hosts, tuple)
    # a port from a stronger source than the listeners' overrides theirs
    port_wins = rank.get("port", len(layers)) < rank.get("listen", len(layers))
    tls = _tls_config(values)
    # the -p listeners speak TLS when a certificate is set and no tls:// listener is
    # given, or when --tls (--ssl) says so
    explicit = any(t is True for _, _, t in hosts)
    default_tls = tls.cert is not None and (not explicit or bool(values.get("tls")))
    listeners = tuple(
        Listener(host, port if own is None or port_wins else own, default_tls if t is None else t)
        for host, own, t in hosts
    )
    if values.get("tls") and tls.cert is None:
        raise ConfigError("--tls (--ssl) needs a certificate: give --tls-cert and --tls-key")
    if tls.cert is None and any(x.tls for x in listeners):
        raise ConfigError(
            "a tls:// listener needs a certificate: give --tls-cert and --tls-key "
            "(or cert and key in the file's [tls] section)"
        )
    access = values.get("access")
    assert access is None or isinstance(access, AccessConfig)
    level = values.get("verbose", Level.ERROR)
    assert isinstance(level, Level)
    steps = values.get("more_verbose", 0)
    assert isinstance(steps, int)
    kwargs = {
        key: value
        for key, value in values.items()
        if key in Config.__dataclass_fields__
        and key not in ("verbose", "store", "tls", "access", "http")
    }
    limits = {key: values[key] for key in _LIMITS if key in values and key != "max_packet"}
    return Config(
        listeners=listeners,
        verbose=level.more_verbose(steps),
        store=_cluster_config(_store_config(values, rank, layers), values),
        tls=tls,
        access=access,
        retry=_retry_config(values, layers),
        http=_http_config(values, layers, listeners),
        metrics=MetricsConfig(
            int(values.get("metrics_top_functions", 50)),  # type: ignore[call-overload]
            bool(values.get("metrics_function_histograms", False)),
        ),
        limits=LimitsConfig(**limits),  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


def _retry_config(values: dict[str, object], layers: Sequence[Layer]) -> RetryConfig:
    """The [retry] settings; --job-retries N (N > 0) is the default max_attempts
    unless max_attempts is given, and -j 0 keeps gearmill's limit (not gearmand's none)."""
    attempts = values.get("retry_max_attempts")
    if attempts is None:
        retries = values.get("job_retries", 0)
        attempts = retries if isinstance(retries, int) and retries > 0 else DEFAULT_MAX_ATTEMPTS
    plain = {"max_attempts": attempts}
    for key, setting in (
        ("backoff", "retry_backoff"),
        ("retry_on", "retry_on"),
        ("dead", "retry_dead"),
        ("dead_on_fail", "retry_dead_on_fail"),
    ):
        if setting in values:
            plain[key] = values[setting]
    default = RetryRule(**plain)  # type: ignore[arg-type]
    functions = []
    raw = values.get("retry_functions", ())
    assert isinstance(raw, tuple)
    for name, settings in raw:
        try:
            functions.append((name, change_rule(default, settings.items())))
        except RuleError as e:
            where = next(
                layer["retry_functions"].where for layer in layers if "retry_functions" in layer
            )
            raise ConfigError(f"{where}: {name.decode(errors='replace')}: {e}") from None
    schedules = values.get("schedules", ())
    assert isinstance(schedules, tuple)
    dead_max = values.get("dead_max", RetryConfig().dead_max)
    dead_max_age = values.get("dead_max_age", RetryConfig().dead_max_age)
    submit_sched = values.get("submit_sched", False)
    assert isinstance(dead_max, int) and isinstance(dead_max_age, float)
    assert isinstance(submit_sched, bool)
    return RetryConfig(
        default=default,
        functions=tuple(functions),
        dead_max=dead_max,
        dead_max_age=dead_max_age,
        submit_sched=submit_sched,
        schedules=schedules,
    )


def _cluster_config(store: StoreConfig, values: dict[str, object]) -> StoreConfig:
    node_id, lease = values.get("node_id"), values.get("lease", DEFAULT_LEASE)
    assert (node_id is None or isinstance(node_id, str)) and isinstance(lease, float)
    return replace(store, node_id=node_id, lease=lease)


def _store_config(
    values: dict[str, object], rank: dict[str, int], layers: Sequence[Layer]
) -> StoreConfig:
    """--store or gearmand's -q with its flags, whichever comes from the stronger
    source, else SQLite in the state folder."""
    queue_type = values.get("queue_type")
    store = values.get("store")
    if queue_type is not None and store is not None:
        for layer in layers:
            if "queue_type" in layer and "store" in layer:
                raise ConfigError(
                    f"{_shown(layer['store'].where)} and {layer['queue_type'].where}: "
                    "two stores named; keep one of them"
                )
        if rank["queue_type"] < rank["store"]:
            store = None  # -q on the command line wins over GEARMILL_STORE or the file
    if store is None and queue_type is not None:
        kind = QUEUE_TYPES[str(queue_type)]
        named = _origin(layers[rank["queue_type"]]["queue_type"])
        flags = _QUEUE_FLAGS.get(kind)
        origin = f"{named} and its {flags} flags" if flags else named
        return replace(gearmand_store(str(queue_type), values), origin=origin)
    if store is None:
        state = values.get("state_dir")
        if isinstance(state, str):
            return StoreConfig("sqlite://" + os.path.join(os.path.abspath(state), "queue.db"))
        return StoreConfig(default_store_url())
    assert isinstance(store, str)
    return StoreConfig(store, origin=f"the URL given to {_origin(layers[rank['store']]['store'])}")


# the flags of gearmand's -q that say where its queue is, for messages
_QUEUE_FLAGS: Final = {
    "sqlite": "--libsqlite3-*",
    "postgresql": "--libpq-*",
    "mysql": "--mysql-*",
    "redis": "--redis-*",
}


def _origin(given: Given) -> str:
    """Where a setting was given, without its value: `--store`, `GEARMILL_STORE`,
    `/etc/gearmill.toml: store.url`, `gearmand.conf: --store`."""
    value = str(given.value)
    cut = given.where.find(value) if value else -1
    return given.where[:cut].rstrip(" ='\"") if cut > 0 else given.where


_URL_IN_TEXT: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")


def _shown(where: str) -> str:
    """A source's label with the password of any URL in it hidden (a store's)."""
    from .store import hide_password

    return _URL_IN_TEXT.sub(lambda m: hide_password(m[0]), where)


def _q(value: object) -> str:
    from urllib.parse import quote

    return quote(str(value), safe="")


def parse_conninfo(text: str) -> dict[str, str]:
    """libpq's `key=value ...` as gearmand hands it to PQconnectdb: blanks around '='
    allowed, a value bare or in single quotes ('my pass'), a backslash taking the next
    character as it is. Raises ValueError naming the word that is not key=value."""
    out: dict[str, str] = {}
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return out
        start = i
        while i < n and text[i] != "=" and not text[i].isspace():
            i += 1
        key = text[start:i]
        while i < n and text[i].isspace():
            i += 1
        if not key or i >= n or text[i] != "=":
            raise ValueError(f"{(key or text[start:]).split()[0]!r} is not key=value")
        i += 1
        while i < n and text[i].isspace():
            i += 1
        quoted = i < n and text[i] == "'"
        i += quoted
        value: list[str] = []
        while True:
            if i >= n:
                if quoted:
                    raise ValueError(f"{key}: the quote is not closed")
                break
            c = text[i]
            if c == "\\" and i + 1 < n:
                value.append(text[i + 1])
                i += 2
                continue
            if (quoted and c == "'") or (not quoted and c.isspace()):
                i += quoted
                break
            value.append(c)
            i += 1
        out[key.lower()] = "".join(value)


def gearmand_store(queue_type: str, values: Mapping[str, object]) -> StoreConfig:
    """The store URL gearmand's -q and --libsqlite3-*/--libpq-*/--mysql-*/--redis-* name."""
    kind = QUEUE_TYPES[queue_type]
    if kind == "memory":
        return StoreConfig("memory")
    if kind == "sqlite":
        db = values.get("libsqlite3_db")
        if not isinstance(db, str):
            raise ConfigError("-q libsqlite3 needs --libsqlite3-db=FILE (the queue database)")
        table = values.get("libsqlite3_table")
        return StoreConfig(
            "sqlite://" + os.path.abspath(db), str(table) if table else "gearman_queue"
        )
    if kind == "postgresql":
        conninfo = str(values.get("libpq_conninfo") or "")
        if conninfo.startswith(("postgresql://", "postgres://")):
            url = conninfo
        else:
            try:
                params = parse_conninfo(conninfo)
            except ValueError as e:
                raise ConfigError(
                    f"--libpq-conninfo: {e}; "
                    "write 'host=... port=... dbname=... user=... password=...'"
                ) from None
            user = params.pop("user", "")
            password = params.pop("password", "")
            auth = _q(user) + (":" + _q(password) if password else "")
            auth += "@" if auth else ""
            # No host (or a socket folder) means the unix socket for libpq, as for the
            # driver here: not TCP to localhost, which pg_hba.conf may treat otherwise.
            host = params.pop("host", "")
            if host.startswith("/"):
                params["host"], host = host, ""
            port = params.pop("port", "")
            db = params.pop("dbname", "")
            query = "&".join(f"{k}={_q(v)}" for k, v in params.items())
            url = f"postgresql://{auth}{host}{':' + port if port else ''}/{_q(db)}"
            url += "?" + query if query else ""
        table = values.get("libpq_table")
        return StoreConfig(url, str(table) if table else None)
    if kind == "mysql":
        user = str(values.get("mysql_user") or "root")
        secret = values.get("mysql_password")
        auth = _q(user) + (":" + _q(secret) if secret else "") + "@"
        host = str(values.get("mysql_host") or "localhost")
        port = str(values.get("mysql_port") or "3306")
        db = str(values.get("mysql_db") or "Gearmand")
        table = values.get("mysql_table")
        url = f"mysql://{auth}{host}:{port}/{_q(db)}"
        # gearmand's client library takes "localhost" (its default) as the unix socket,
        # where MariaDB may authenticate otherwise (unix_socket for root on Debian)
        socket = _mysql_socket() if host == "localhost" else None
        if socket:
            url += f"?unix_socket={_q(socket)}"
        return StoreConfig(url, str(table) if table else "gearman_queue")
    host = str(values.get("redis_server") or "127.0.0.1")
    port = str(values.get("redis_port") or "6379")
    secret = values.get("redis_password")
    auth = ":" + _q(secret) + "@" if secret else ""
    prefix = values.get("redis_prefix")
    if not prefix:
        return StoreConfig(f"redis://{auth}{host}:{port}/0")
    # gearmand's prefix names one queue: two gearmands with two prefixes on one Redis
    # stay two queues here too (gearmand's keys are `P-...`, gearmill's `P:...`).
    return StoreConfig(f"redis://{auth}{host}:{port}/0?prefix={_q(f'{prefix}:')}", str(prefix))


# where MariaDB's and MySQL's client libraries look for the server's socket
MYSQL_SOCKETS: Final = ("/run/mysqld/mysqld.sock", "/var/run/mysqld/mysqld.sock", "/tmp/mysql.sock")


def _mysql_socket() -> str | None:
    return next((p for p in MYSQL_SOCKETS if os.path.exists(p)), None)


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
    identities = values.get("http_identities", ())
    assert isinstance(identities, tuple)
    probe = values.get("http_probe_every", 5.0)
    assert isinstance(probe, float)
    if addr is None:
        return HttpConfig(None, token, keep, identities, probe)
    host, port = addr
    if not token and not identities and not _is_loopback(host):
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
    return HttpConfig(Listener(host, port), token, keep, identities, probe)
