"""PostgreSQL's lane (see `Lane`): one connection of its own speaking the wire protocol,
for a job committed alone.

asyncpg costs a lone INSERT about 90 us of CPU here (its Python layers, a future, two
task switches); the same statement written from a prepared Bind and answered in
data_received costs about 50 us, which is what decides whether a client submitting one
job at a time waits longer than gearmand's. The statement is the store's own
(`_INSERT_ONE`), prepared once per connection; every value goes in binary.

It connects only as asyncpg would, and never to less: trust, password, md5 and
SCRAM-SHA-256 authentication; TLS when the server offers it under sslmode prefer (the
default; unverified, as asyncpg and libpq do for prefer). A URL asking for what it
does not do (sslmode require or stricter, certificates, several hosts, a password kept
in .pgpass) leaves the lane off and every commit goes through asyncpg, with one INFO
line saying why.
"""

from __future__ import annotations

import asyncio
import base64
import getpass
import hashlib
import hmac
import logging
import os
import ssl
import struct
import time
from collections.abc import Callable
from urllib.parse import parse_qsl, unquote, urlsplit

from ._base import StoredJob, Unsupported
from ._lane import LaneConnection, Owned

log = logging.getLogger("gearmill.store")

_I32 = struct.Struct("!i")
_SSL_REQUEST = struct.pack("!ii", 8, 80877103)
# what a lone INSERT is answered with: BindComplete, CommandComplete, ReadyForQuery (idle)
_DONE = (
    b"2\0\0\0\x04C\0\0\0\x0fINSERT 0 1\0Z\0\0\0\x05I",
    b"2\0\0\0\x04C\0\0\0\x0fINSERT 0 0\0Z\0\0\0\x05I",  # the key was there already
)
_NAME = b"gearmill_lone"
# parameter types of the statement, as their oids: function, unique, data (bytea),
# priority (int2), when (int8), reducer (bytea), attempts (int4), created (int8), owner (text)
_TYPES = (17, 17, 17, 21, 20, 17, 23, 20, 25)
_P2 = struct.Struct("!ih")
_P4 = struct.Struct("!ii")
_P8 = struct.Struct("!iq")
_SSLMODES = {"", "disable", "allow", "prefer"}
# Bind's fixed pieces: portal "", the statement, one format code for all (binary), 9 values
_BIND_HEAD = b"\0" + _NAME + b"\0\0\x01\0\x01\0\x09"
_PRIORITIES = [_P2.pack(2, p) for p in (0, 1, 2)]
_WHEN_NOW = _P8.pack(8, 0)
_NO_ATTEMPTS = _P4.pack(4, 0)
# after the owner: results in binary (there are none), then Execute (all rows) and Sync
_TAIL = b"\0\x01\0\x01" + b"E\0\0\0\x09\0\0\0\0\0" + b"S\0\0\0\x04"
# Bind's length without the variable parts: itself, the head, the four length words of
# unique, data, reducer and the result formats, priority, when, attempts, created
_BIND_FIXED = 4 + len(_BIND_HEAD) + 4 * 4 + 6 + 12 + 8 + 12


def lane_target(dsn: str) -> tuple[str, int, str, str | None, str, str]:
    """(host or socket folder, port, user, password, database, sslmode) the way asyncpg
    reads a postgresql:// URL and the PG* environment; Unsupported for anything beyond."""
    u = urlsplit(dsn)
    query = dict(parse_qsl(u.query))
    sslmode = query.pop("sslmode", os.environ.get("PGSSLMODE", ""))
    host = query.pop("host", "") or unquote(u.hostname or "") or os.environ.get("PGHOST", "")
    port_s = query.pop("port", "") or (str(u.port) if u.port else os.environ.get("PGPORT", ""))
    user = query.pop("user", "") or unquote(u.username or "") or os.environ.get("PGUSER", "")
    password = query.pop("password", None) or (
        unquote(u.password) if u.password else os.environ.get("PGPASSWORD")
    )
    database = query.pop("dbname", "") or query.pop("database", "") or u.path.lstrip("/")
    if query or sslmode not in _SSLMODES or "," in host or "," in port_s:
        raise Unsupported("the URL has settings the lone-job connection does not take")
    if os.environ.get("PGSSLCERT") or os.environ.get("PGSERVICE"):
        raise Unsupported("PGSSLCERT or PGSERVICE is set")
    user = user or getpass.getuser()
    database = unquote(database) or os.environ.get("PGDATABASE", "") or user
    if not host:
        host = "/run/postgresql" if os.path.isdir("/run/postgresql") else "localhost"
    return host, int(port_s or 5432), user, password, database, sslmode or "prefer"


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + _I32.pack(len(body) + 4) + body


def _cstr(s: str | bytes) -> bytes:
    return (s.encode() if isinstance(s, str) else s) + b"\0"


def _fields(body: bytes) -> dict[bytes, str]:
    return {f[:1]: f[1:].decode(errors="replace") for f in body.split(b"\0") if f}


def _error_text(body: bytes) -> str:
    fields = _fields(body)
    return fields.get(b"M", "error") + (f" ({fields[b'C']})" if b"C" in fields else "")


class PostgreSQLLane(LaneConnection):
    """`insert` is a plain INSERT: a key already stored fails it on `unique` (the
    constraint's name), which the lane takes as done, nothing changed: what the store's
    ON CONFLICT DO NOTHING does, without the speculative insertion it costs every job."""

    def __init__(self, insert: str, unique: str, store: Owned) -> None:
        super().__init__()
        self._insert = insert
        self._unique = unique
        self._store = store
        self._buf = b""
        self._error: str | None = None
        # while connecting: the messages not yet read, and the reader waiting for one
        self._inbox: list[bytes] | None = []
        self._byte: asyncio.Future[bytes] | None = None  # the answer to the SSL request
        # encoded once (see send)
        self._functions: dict[bytes, bytes] = {}
        self._now = 0
        self._created = b""
        self._tail_owner: str | None = ""  # never an owner: the first send encodes its own
        self._tail = b""

    # ---------------------------------------------------------------- the lane

    def send(self, job: StoredJob, done: Callable[[str | None], None]) -> None:
        # One Bind (every value binary), Execute, Sync; what repeats from job to job (the
        # function's field, the second's timestamp, the owner and the tail) is encoded once.
        f, u, d, r = job.function, job.unique, job.data, job.reducer
        field = self._functions.get(f)
        if field is None:
            if len(self._functions) >= 1024:
                self._functions.clear()
            field = self._functions[f] = _I32.pack(len(f)) + f
        now = int(time.time())
        if now != self._now:
            self._now = now
            self._created = _P8.pack(8, now)
        owner = self._store.owner
        if owner != self._tail_owner:
            self._tail_owner = owner
            param = b"\xff\xff\xff\xff" if owner is None else _I32.pack(len(owner)) + owner.encode()
            self._tail = param + _TAIL
        tail = self._tail
        when = _P8.pack(8, job.when) if job.when else _WHEN_NOW
        attempts = _P4.pack(4, job.attempts) if job.attempts else _NO_ATTEMPTS
        size = _BIND_FIXED + len(field) + len(u) + len(d) + len(r) + len(tail) - len(_TAIL)
        self._done = done
        self._error = None
        assert self._transport is not None
        self._transport.write(
            b"".join(
                (
                    b"B",
                    _I32.pack(size),
                    _BIND_HEAD,
                    field,
                    _I32.pack(len(u)),
                    u,
                    _I32.pack(len(d)),
                    d,
                    _PRIORITIES[job.priority],
                    when,
                    _I32.pack(len(r)) if r else b"\0\0\0\0",
                    r,
                    attempts,
                    self._created,
                    tail,
                )
            )
        )

    # ------------------------------------------------------------ the protocol

    def connection_lost(self, exc: Exception | None) -> None:
        fut = self._byte
        if fut is not None and not fut.done():
            fut.set_exception(ConnectionError("connection lost"))
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._byte is not None:  # one unframed byte: S or N
            fut, self._byte = self._byte, None
            fut.set_result(data[:1])
            data = data[1:]
        if self._done is not None and not self._buf and data in _DONE:
            done, self._done = self._done, None
            done(None)
            return
        buf = self._buf + data
        while len(buf) >= 5:
            size = _I32.unpack_from(buf, 1)[0] + 1
            if len(buf) < size:
                break
            kind, body, buf = buf[:1], buf[5:size], buf[size:]
            self._message(kind, body)
        self._buf = buf

    def _message(self, kind: bytes, body: bytes) -> None:
        if self._inbox is not None:
            self._inbox.append(kind + body)
            fut, self._setup = self._setup, None
            if fut is not None and not fut.done():
                fut.set_result(None)
            return
        if kind == b"E":
            fields = _fields(body)
            if fields.get(b"C") != "23505" or fields.get(b"n") != self._unique:
                self._error = _error_text(body)
        elif kind == b"Z":
            done, self._done = self._done, None
            if done is not None:
                done(self._error)
            self._error = None

    # ------------------------------------------------------------ connecting

    async def _next(self) -> tuple[bytes, bytes]:
        """The next message while connecting (no commit is in flight then)."""
        inbox = self._inbox
        assert inbox is not None
        while not inbox:
            if self._transport is None:
                raise ConnectionError("connection lost")
            self._setup = asyncio.get_running_loop().create_future()
            await self._setup
        m = inbox.pop(0)
        return m[:1], m[1:]

    async def _until_ready(self) -> None:
        while True:
            kind, body = await self._next()
            if kind == b"E":
                raise ConnectionError(_error_text(body))
            if kind == b"Z":
                return

    async def start(self, user: str, password: str | None, database: str) -> None:
        """Startup, authentication and the statement, on a connected transport."""
        assert self._transport is not None
        params = b"".join(
            _cstr(k) + _cstr(v)
            for k, v in (
                ("user", user),
                ("database", database),
                ("application_name", "gearmill-lone"),  # tells it apart in pg_stat_activity
                ("synchronous_commit", "on"),
            )
        )
        body = struct.pack("!i", 196608) + params + b"\0"
        self._transport.write(_I32.pack(len(body) + 4) + body)
        while True:
            kind, body = await self._next()
            if kind == b"E":
                raise ConnectionError(_error_text(body))
            if kind != b"R":
                raise ConnectionError(f"unexpected message {kind!r} while authenticating")
            code = _I32.unpack_from(body)[0]
            if code == 0:
                break
            if password is None:  # e.g. in a .pgpass file, which asyncpg reads
                raise Unsupported("the server asks for a password the URL does not give")
            if code == 3:
                self._transport.write(_message(b"p", _cstr(password)))
            elif code == 5:
                inner = hashlib.md5(password.encode() + user.encode()).hexdigest()
                outer = hashlib.md5(inner.encode() + body[4:8]).hexdigest()
                self._transport.write(_message(b"p", _cstr("md5" + outer)))
            elif code == 10 and b"SCRAM-SHA-256\0" in body[4:]:
                await self._scram(password)
            else:
                raise Unsupported(f"the server asks for authentication method {code}")
        await self._until_ready()
        parse = _cstr(_NAME) + _cstr(self._insert) + struct.pack("!h", len(_TYPES))
        parse += b"".join(_I32.pack(t) for t in _TYPES)
        self._transport.write(_message(b"P", parse) + b"S\0\0\0\x04")
        kind, body = await self._next()
        if kind == b"E":
            raise ConnectionError(_error_text(body))
        await self._until_ready()
        self._inbox = None
        self._ready = True

    async def _scram(self, password: str) -> None:
        assert self._transport is not None
        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n=,r={nonce}"
        first = ("n,," + first_bare).encode()
        self._transport.write(
            _message(b"p", _cstr("SCRAM-SHA-256") + _I32.pack(len(first)) + first)
        )
        kind, body = await self._next()
        if kind != b"R" or _I32.unpack_from(body)[0] != 11:
            raise ConnectionError("SCRAM: unexpected answer")
        server_first = body[4:].decode()
        attrs = dict(a.split("=", 1) for a in server_first.split(","))
        if not attrs["r"].startswith(nonce):
            raise ConnectionError("SCRAM: the server's nonce does not extend ours")
        salted = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
        )
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        final_bare = f"c=biws,r={attrs['r']}"
        auth = f"{first_bare},{server_first},{final_bare}".encode()
        signature = hmac.digest(hashlib.sha256(client_key).digest(), auth, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        final = f"{final_bare},p={base64.b64encode(proof).decode()}".encode()
        self._transport.write(_message(b"p", final))
        kind, body = await self._next()
        if kind == b"E":
            raise ConnectionError(_error_text(body))
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        expected = base64.b64encode(hmac.digest(server_key, auth, "sha256")).decode()
        if kind != b"R" or body[4:].decode() != f"v={expected}":
            raise ConnectionError("SCRAM: the server's signature is wrong")

    def close(self) -> None:
        self._ready = False
        if self._transport is not None:
            self._transport.write(b"X\0\0\0\x04")
            self._transport.close()


async def connect_lane(
    dsn: str, insert: str, unique: str, store: Owned, timeout: float
) -> PostgreSQLLane:
    """A ready lane, or an exception saying why not (Unsupported, OSError, ...)."""
    host, port, user, password, database, sslmode = lane_target(dsn)
    loop = asyncio.get_running_loop()
    lane = PostgreSQLLane(insert, unique, store)

    async def go() -> None:
        if host.startswith("/"):
            await loop.create_unix_connection(lambda: lane, f"{host}/.s.PGSQL.{port}")
        else:
            await loop.create_connection(lambda: lane, host, port)
            assert lane._transport is not None
            if sslmode == "prefer":  # as asyncpg (and libpq): TLS when the server has it
                lane._byte = loop.create_future()
                lane._transport.write(_SSL_REQUEST)
                if await lane._byte == b"S":
                    # prefer verifies nothing (asyncpg's context for it does the same)
                    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                    tls = await loop.start_tls(lane._transport, lane, context)
                    assert tls is not None
                    lane._transport = tls
        await lane.start(user, password, database)

    try:
        await asyncio.wait_for(go(), timeout)
    except BaseException:
        if lane._transport is not None:
            lane._transport.abort()
        raise
    return lane
