"""Who may do what: the operator's access list, by TLS certificate subject or address.

The ``[access]`` section of the TOML file (see README) becomes an
:class:`AccessConfig`; :class:`AccessList` plugs into the broker's one access
check (``broker.access``). A peer gets the first rule that matches it (its
certificate subject, glob-matched, and/or its address, a CIDR network), or the
section's own settings. A rule leaves its peer free of any check when it allows
everything, so such peers cost nothing per packet.

What a rule says:

* ``submit``: the functions the peer may submit jobs to (globs; ``["*"]`` all);
* ``work``: the functions it may register as a worker (CAN_DO, CAN_DO_TIMEOUT);
* ``admin``: ``none`` (no admin commands), ``read`` (the commands that only
  read; the ones that change state, ``shutdown``, ``cancel job``, ``drop
  function``, ``create function`` and ``maxqueue``, from loopback peers only)
  or ``all``.

A refused packet is answered with gearmand's ERROR and logged; the connection
and its other jobs go on.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import logging
from dataclasses import dataclass
from typing import Final

from ..protocol.codec import TEXT
from ..protocol.packets import SUBMIT_TYPES, PacketType
from .model import Peer

log = logging.getLogger("gearmill.server")

ADMIN_LEVELS: Final = ("none", "read", "all")
# admin commands that change the server's state (the first word of the line)
STATE_CHANGING: Final = frozenset({b"shutdown", b"cancel", b"drop", b"create", b"maxqueue"})
_SUBMITS: Final = frozenset(
    {
        *SUBMIT_TYPES,
        int(PacketType.SUBMIT_JOB_SCHED),
        int(PacketType.SUBMIT_REDUCE_JOB),
        int(PacketType.SUBMIT_REDUCE_JOB_BACKGROUND),
    }
)
_WORK: Final = frozenset({int(PacketType.CAN_DO), int(PacketType.CAN_DO_TIMEOUT)})
# refusals logged per connection; after that one line says the rest are not
_LOGGED: Final = 10
# function names whose verdict a peer remembers (a hostile peer can send many)
_MEMO: Final = 1024

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class AccessRule:
    """One ``[[access.rule]]``: who it is for, and what they may do (None: the section's)."""

    subject: str | None = None  # a glob on the certificate subject, "CN=ci-*,O=Example"
    address: Network | None = None
    submit: tuple[str, ...] | None = None
    work: tuple[str, ...] | None = None
    admin: str | None = None


@dataclass(frozen=True, slots=True)
class AccessConfig:
    """The ``[access]`` section: what peers no rule matches may do, then the rules."""

    submit: tuple[str, ...] = ("*",)
    work: tuple[str, ...] = ("*",)
    admin: str = "read"
    rules: tuple[AccessRule, ...] = ()


class Rules:
    """One peer's rights (the broker's ``PeerAccess``)."""

    __slots__ = ("admin", "local", "memo", "refused", "submit", "who", "work")

    def __init__(
        self, who: str, local: bool, submit: tuple[str, ...], work: tuple[str, ...], admin: str
    ) -> None:
        self.who = who
        self.local = local
        self.submit = submit
        self.work = work
        self.admin = admin
        self.memo: dict[tuple[bool, bytes], bool] = {}
        self.refused = 0

    @property
    def everything(self) -> bool:
        admin = self.admin == "all" or (self.admin == "read" and self.local)
        return admin and "*" in self.submit and "*" in self.work

    def _may(self, worker: bool, name: bytes) -> bool:
        key = (worker, name)
        verdict = self.memo.get(key)
        if verdict is None:
            text = name.decode(errors="replace")
            globs = self.work if worker else self.submit
            verdict = any(fnmatch.fnmatchcase(text, g) for g in globs)
            if len(self.memo) < _MEMO:
                self.memo[key] = verdict
        return verdict

    def allows(self, ptype: int, args: list[bytes]) -> bool:
        if ptype in _SUBMITS:
            if self._may(False, args[0]):
                return True
            what = f"submit to {args[0].decode(errors='replace')!r}"
        elif ptype in _WORK:
            if self._may(True, args[0]):
                return True
            what = f"register {args[0].decode(errors='replace')!r} (CAN_DO)"
        elif ptype == TEXT:
            command = args[0].split(None, 1)[0].lower() if args[0].strip() else b""
            if self.admin == "all" or (
                self.admin == "read" and (self.local or command not in STATE_CHANGING)
            ):
                return True
            what = f"admin command {command.decode(errors='replace')!r}"
        else:
            return True
        self.refused += 1
        if self.refused <= _LOGGED:
            log.warning(
                "access list: refused %s from %s%s",
                what,
                self.who,
                "; further refusals on this connection are not logged"
                if self.refused == _LOGGED
                else "",
            )
        return False


class AccessList:
    """The broker's ``AccessList``: each new peer's rules from its subject and address."""

    def __init__(self, config: AccessConfig) -> None:
        self.config = config

    def rules_for(self, peer: Peer) -> Rules:
        cfg = self.config
        submit, work, admin = cfg.submit, cfg.work, cfg.admin
        for rule in cfg.rules:
            if _matches(rule, peer):
                submit = cfg.submit if rule.submit is None else rule.submit
                work = cfg.work if rule.work is None else rule.work
                admin = cfg.admin if rule.admin is None else rule.admin
                break
        who = f"{peer.addr} ({peer.subject})" if peer.subject else peer.addr
        return Rules(who, peer.local, submit, work, admin)

    def for_peer(self, peer: Peer) -> Rules | None:
        rules = self.rules_for(peer)
        return None if rules.everything else rules


def _matches(rule: AccessRule, peer: Peer) -> bool:
    if rule.subject is not None and not (
        peer.subject and fnmatch.fnmatchcase(peer.subject, rule.subject)
    ):
        return False
    if rule.address is not None:
        try:
            if ipaddress.ip_address(peer.addr.split("%", 1)[0]) not in rule.address:
                return False
        except ValueError:
            return False
    return True


def subject_text(cert: object) -> str:
    """A peer certificate's subject (``getpeercert()``'s form) as ``CN=a,O=b``, RFC 4514
    order (most specific first); "" without a certificate."""
    if not isinstance(cert, dict):
        return ""
    parts = []
    for rdn in reversed(cert.get("subject", ())):
        for name, value in rdn:
            parts.append(f"{_SHORT.get(name, name)}={value}")
    return ",".join(parts)


_SHORT: Final = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "domainComponent": "DC",
    "emailAddress": "emailAddress",
    "userId": "UID",
}
