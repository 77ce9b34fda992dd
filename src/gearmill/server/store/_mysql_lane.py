"""MariaDB's (and MySQL's) lane (see `Lane`): one connection of its own speaking the
client/server protocol, for a job committed alone.

Through asyncmy (its cursor, the statement escaped into text, a future, two task
switches) a lone job cost the server about 170 us of CPU here; a prepared INSERT
executed with binary parameters, written in the loop turn the job arrived in and
answered in data_received, about 100 us (the lane's own part: ~3 us), against ~75 us
for gearmand's synchronous INSERT through libmysqlclient. That is what decides whether
a client submitting one job at a time waits longer than with gearmand.

The session is the store's writer's: utf8mb4 (45, utf8mb4_general_ci, as asyncmy
sends it), autocommit on, nothing else set. The statement is the store's own
(`_INSERT`), prepared once per connection; every value goes in binary, the bytes as
BLOB parameters (the binary character set: no conversion, as asyncmy's _binary'').

It connects only as asyncmy would for the store, and never to less: a plain
connection (TCP or unix_socket), authentication mysql_native_password or
caching_sha2_password's fast path (the server holds the password's hash in its cache);
any other method or URL setting leaves the lane off and every commit goes through
asyncmy, with one INFO line saying why.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import time
from collections.abc import Callable
from typing import Any

from ._base import StoredJob, Unsupported
from ._lane import LaneConnection

# capabilities: LONG_PASSWORD (MySQL's meaning; MariaDB reads it as "no extended
# capabilities"), LONG_FLAG, CONNECT_WITH_DB, PROTOCOL_41, TRANSACTIONS,
# SECURE_CONNECTION, MULTI_RESULTS, PLUGIN_AUTH
_LONG_PASSWORD = 1
_CONNECT_WITH_DB = 8
_PROTOCOL_41 = 0x200
_SECURE_CONNECTION = 0x8000
_PLUGIN_AUTH = 0x80000
_CLIENT = _LONG_PASSWORD | 4 | _CONNECT_WITH_DB | _PROTOCOL_41 | 0x2000
_CLIENT |= _SECURE_CONNECTION | 0x20000 | _PLUGIN_AUTH
_CONNECT_ATTRS = 0x100000
# its name among the server's sessions (performance_schema.session_connect_attrs)
_ATTRS = b"\x0cprogram_name\x0dgearmill-lone"
_ACCESS_DENIED = 1045
_NEEDED = _PROTOCOL_41 | _SECURE_CONNECTION | _PLUGIN_AUTH | _CONNECT_WITH_DB
_UTF8MB4 = 45  # utf8mb4_general_ci, the id asyncmy sends for charset="utf8mb4"
_MAX_PACKET = (1 << 24) - 1
_AUTOCOMMIT = 2  # SERVER_STATUS_AUTOCOMMIT
_COM_QUIT = b"\x01"
_COM_QUERY = b"\x03"
_COM_STMT_PREPARE = b"\x16"
_COM_STMT_EXECUTE = b"\x17"
# the statement's parameters: function, unique_key, data, priority, when_to_run,
# reducer, attempts, created; as types (BLOB 0xfc, TINY 1, LONGLONG 8, LONG 3), signed
_TYPES = bytes((0xFC, 0, 0xFC, 0, 0xFC, 0, 1, 0, 8, 0, 0xFC, 0, 3, 0, 8, 0))
_PARAMS = 8
_BQ = struct.Struct("<bq")  # priority, when_to_run
_IQ = struct.Struct("<iq")  # attempts, created
_I = struct.Struct("<i")
_U32 = struct.Struct("<I")  # a packet's header below 16 MiB: 3 bytes of length, sequence 0
_SHORT = [bytes((n,)) for n in range(251)]  # a length-encoded integer below 251
_PRIORITY_NOW = [_BQ.pack(p, 0) for p in (0, 1, 2)]  # priority, when_to_run 0
_H = struct.Struct("<H")


def _lenenc(n: int) -> bytes:
    if n < 251:
        return bytes((n,))
    if n < 1 << 16:
        return b"\xfc" + n.to_bytes(2, "little")
    if n < 1 << 24:
        return b"\xfd" + n.to_bytes(3, "little")
    return b"\xfe" + n.to_bytes(8, "little")


def _packets(payload: bytes, seq: int = 0) -> bytes:
    """``payload`` framed: 3-byte length and sequence number, split at 16 MiB - 1 (a
    payload of exactly a multiple of that ends with an empty packet)."""
    n = len(payload)
    if n < _MAX_PACKET:
        return n.to_bytes(3, "little") + bytes((seq,)) + payload
    out = []
    for i in range(0, n + 1, _MAX_PACKET):
        chunk = payload[i : i + _MAX_PACKET]
        out.append(len(chunk).to_bytes(3, "little") + bytes((seq & 0xFF,)) + chunk)
        seq += 1
    return b"".join(out)


def _error_text(payload: bytes) -> str:
    """An ERR packet's message, with its error code (and SQL state)."""
    code = _H.unpack_from(payload, 1)[0]
    rest = payload[3:]
    if rest[:1] == b"#":
        return f"({code}, {rest[6:].decode(errors='replace')!r})"
    return f"({code}, {rest.decode(errors='replace')!r})"


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def scramble(plugin: str, password: str, salt: bytes) -> bytes:
    """The auth response of mysql_native_password or caching_sha2_password (its fast
    path: the server compares with the hash it cached); empty for no password."""
    if not password:
        return b""
    pw = password.encode()
    if plugin == "mysql_native_password":
        s1 = hashlib.sha1(pw).digest()
        return _xor(s1, hashlib.sha1(salt + hashlib.sha1(s1).digest()).digest())
    if plugin == "caching_sha2_password":
        p1 = hashlib.sha256(pw).digest()
        p3 = hashlib.sha256(hashlib.sha256(p1).digest() + salt).digest()
        return _xor(p1, p3)
    raise Unsupported(f"the server asks for authentication by {plugin}")


def lane_target(params: dict[str, Any], query: dict[str, str]) -> dict[str, Any]:
    """The store's connection settings (MySQLStore._params) as the lane takes them;
    Unsupported for a URL setting beyond them."""
    extra = sorted(set(query) - {"unix_socket"})
    if extra:
        raise Unsupported(f"the URL sets {', '.join(extra)}")
    return {
        "host": params["host"],
        "port": params["port"],
        "unix_socket": params.get("unix_socket"),
        "user": params["user"],
        "password": params["password"],
        "database": params["database"],
    }


class MySQLLane(LaneConnection):
    def __init__(self, insert: str, explain: Callable[[str], str]) -> None:
        super().__init__()
        self._insert = insert.replace("%s", "?")
        self._explain = explain  # an error's text as the store's commit words it
        self._buf = b""
        self._head = b""  # COM_STMT_EXECUTE up to the parameters' values
        self._again = b""  # the same without the types, once the server has them
        # encoded once (see send)
        self._functions: dict[bytes, bytes] = {}
        self._now = 0
        self._created = b""
        # while connecting: the packets not yet read (sequence number, payload), and
        # the reader waiting for one
        self._inbox: list[tuple[int, bytes]] | None = []
        self.thread_id = 0  # the server's id of this connection (KILL takes it)

    # ---------------------------------------------------------------- the lane

    def send(self, job: StoredJob, done: Callable[[str | None], None]) -> None:
        # COM_STMT_EXECUTE, every value binary; what repeats from job to job (the
        # function's field, a job due now, no attempts in this second) is encoded once
        f, u, d, r = job.function, job.unique, job.data, job.reducer
        field = self._functions.get(f)
        if field is None:
            if len(self._functions) >= 1024:
                self._functions.clear()
            field = self._functions[f] = _lenenc(len(f)) + f
        nu, nd = len(u), len(d)
        lu = _SHORT[nu] if nu < 251 else _lenenc(nu)
        ld = _SHORT[nd] if nd < 251 else _lenenc(nd)
        when = job.when
        middle = _PRIORITY_NOW[job.priority] if not when else _BQ.pack(job.priority, when)
        reducer = _lenenc(len(r)) + r if r else b"\0"
        now = int(time.time())
        if now != self._now:
            self._now = now
            self._created = _IQ.pack(0, now)
        last = _IQ.pack(job.attempts, now) if job.attempts else self._created
        head = self._head
        n = len(head) + len(field) + len(lu) + nu + len(ld) + nd + 9 + len(reducer) + 12
        self._done = done
        self._head = self._again
        assert self._transport is not None
        if n < _MAX_PACKET:  # one packet: its length, sequence number 0
            self._transport.write(
                b"".join((_U32.pack(n), head, field, lu, u, ld, d, middle, reducer, last))
            )
        else:
            payload = b"".join((head, field, lu, u, ld, d, middle, reducer, last))
            self._transport.write(_packets(payload))

    # ------------------------------------------------------------ the protocol

    def data_received(self, data: bytes) -> None:
        # the usual answer: one OK packet (0, affected rows, insert id, status, warnings)
        if (
            self._done is not None
            and not self._buf
            and data[4:5] == b"\0"
            and len(data) == 4 + int.from_bytes(data[:3], "little")
        ):
            done, self._done = self._done, None
            done(None)
            return
        buf = self._buf + data
        while len(buf) >= 4:
            size = int.from_bytes(buf[:3], "little") + 4
            if len(buf) < size:
                break
            seq, payload, buf = buf[3], buf[4:size], buf[size:]
            self._packet(seq, payload)
        self._buf = buf

    def _packet(self, seq: int, payload: bytes) -> None:
        if self._inbox is not None:
            self._inbox.append((seq, payload))
            fut, self._setup = self._setup, None
            if fut is not None and not fut.done():
                fut.set_result(None)
            return
        done, self._done = self._done, None
        if done is None:
            return  # nothing asked: not an answer of ours (the lane is closing)
        if payload[:1] == b"\0":
            done(None)
            return
        # refused: the server may be closing this connection (a packet too big does),
        # so the lane goes; the store's next successful commit connects a new one
        self._ready = False
        if self._transport is not None:
            self._transport.close()
        if payload[:1] == b"\xff":
            done(self._explain(_error_text(payload)))
        else:
            done(f"unexpected answer {payload[:1]!r} to the INSERT")

    # ------------------------------------------------------------ connecting

    async def _next(self) -> tuple[int, bytes]:
        """The next packet while connecting (no commit is in flight then)."""
        inbox = self._inbox
        assert inbox is not None
        while not inbox:
            if self._transport is None:
                raise ConnectionError("connection lost")
            self._setup = asyncio.get_running_loop().create_future()
            await self._setup
        return inbox.pop(0)

    async def _ok(self) -> bytes:
        _, payload = await self._next()
        if payload[:1] == b"\xff":
            raise ConnectionError(_error_text(payload))
        if payload[:1] != b"\0":
            raise ConnectionError(f"unexpected answer {payload[:1]!r}")
        return payload

    async def start(self, user: str, password: str, database: str) -> None:
        """Handshake, authentication, the session and the statement, on a connected
        transport."""
        assert self._transport is not None
        _, hello = await self._next()
        if hello[:1] == b"\xff":
            raise ConnectionError(_error_text(hello))
        if hello[:1] != b"\x0a":
            raise Unsupported(f"handshake version {hello[:1]!r}")
        end = hello.index(b"\0", 1)
        at = end + 1
        self.thread_id = _I.unpack_from(hello, at)[0] & 0xFFFFFFFF
        salt = hello[at + 4 : at + 12]
        caps = _H.unpack_from(hello, at + 13)[0]
        at += 15
        plugin = "mysql_native_password"
        if len(hello) > at:
            caps |= _H.unpack_from(hello, at + 3)[0] << 16
            salt_len = hello[at + 5]
            at += 16
            rest = max(13, salt_len - 8)
            part = hello[at : at + rest]
            salt += part[:-1] if part.endswith(b"\0") else part
            at += rest
            if caps & _PLUGIN_AUTH:
                plugin = hello[at:].split(b"\0", 1)[0].decode()
        if caps & _NEEDED != _NEEDED:
            raise Unsupported("the server lacks the 4.1 protocol or plugin authentication")
        answer = scramble(plugin, password, salt)
        attrs = caps & _CONNECT_ATTRS
        body = b"".join(
            (
                struct.pack("<IIB23x", _CLIENT | attrs, _MAX_PACKET, _UTF8MB4),
                user.encode() + b"\0",
                bytes((len(answer),)),
                answer,
                database.encode() + b"\0",
                plugin.encode() + b"\0",
                bytes((len(_ATTRS),)) + _ATTRS if attrs else b"",
            )
        )
        self._transport.write(_packets(body, 1))
        ok = await self._authenticate(plugin, password)
        # the session asyncmy's autocommit=True makes: SET only when the server's
        # default is not autocommit
        if not _H.unpack_from(ok, _status_at(ok))[0] & _AUTOCOMMIT:
            self._transport.write(_packets(_COM_QUERY + b"SET AUTOCOMMIT = 1"))
            await self._ok()
        self._transport.write(_packets(_COM_STMT_PREPARE + self._insert.encode()))
        ok = await self._ok()
        stmt = ok[1:5]
        columns, params = struct.unpack_from("<HH", ok, 5)
        if params != _PARAMS or columns:
            raise ConnectionError(f"the INSERT prepared with {params} parameters")
        for _ in range(params + 1):  # their definitions, then an EOF packet
            await self._next()
        # statement, no cursor, one iteration, no NULLs, then the types: bound by the
        # first execute, which the server keeps for the next ones
        self._head = _COM_STMT_EXECUTE + stmt + b"\0\x01\0\0\0" + b"\0\x01" + _TYPES
        self._again = _COM_STMT_EXECUTE + stmt + b"\0\x01\0\0\0" + b"\0\0"
        self._inbox = None
        self._ready = True

    async def _authenticate(self, plugin: str, password: str) -> bytes:
        """Answers to the handshake until OK (returned); an auth switch is followed to
        the two methods this lane knows."""
        assert self._transport is not None
        while True:
            seq, payload = await self._next()
            kind = payload[:1]
            if kind == b"\0":
                return payload
            if kind == b"\xff":
                if _H.unpack_from(payload, 1)[0] == _ACCESS_DENIED:
                    # the driver got in with the same user and password: a password
                    # changed since, or a host rule; trying again every second would
                    # only fill the log
                    raise Unsupported(_error_text(payload))
                raise ConnectionError(_error_text(payload))
            if kind == b"\xfe":  # auth switch: plugin name, then its salt
                name, _, salt = payload[1:].partition(b"\0")
                plugin = name.decode()
                salt = salt[:-1] if salt.endswith(b"\0") else salt
                answer = scramble(plugin, password, salt)
                self._transport.write(_packets(answer, seq + 1))
            elif kind == b"\x01" and plugin == "caching_sha2_password":
                if payload[1:2] != b"\x03":
                    # 4: full authentication (TLS or RSA), which the lane does not do;
                    # asyncmy's next connection fills the server's cache, so a later
                    # try takes the fast path
                    raise ConnectionError("caching_sha2_password asks for full authentication")
            else:
                raise Unsupported(f"unexpected answer {kind!r} while authenticating")

    def close(self) -> None:
        self._ready = False
        if self._transport is not None:
            self._transport.write(_packets(_COM_QUIT))
            self._transport.close()


def _status_at(ok: bytes) -> int:
    """Where an OK packet's status flags are: after its two length-encoded numbers."""
    at = 1
    for _ in range(2):
        first = ok[at]
        at += {0xFC: 3, 0xFD: 4, 0xFE: 9}.get(first, 1)
    return at


async def connect_lane(
    params: dict[str, Any],
    query: dict[str, str],
    insert: str,
    explain: Callable[[str], str],
    timeout: float,
) -> MySQLLane:
    """A ready lane, or an exception saying why not (Unsupported, OSError, ...)."""
    target = lane_target(params, query)
    loop = asyncio.get_running_loop()
    lane = MySQLLane(insert, explain)

    async def go() -> None:
        if target["unix_socket"]:
            await loop.create_unix_connection(lambda: lane, target["unix_socket"])
        else:
            await loop.create_connection(lambda: lane, target["host"], target["port"])
        await lane.start(target["user"], target["password"], target["database"])

    try:
        await asyncio.wait_for(go(), timeout)
    except BaseException:
        if lane._transport is not None:
            lane._transport.abort()
        raise
    return lane
