"""Redis's lane (see `Lane`): one connection of its own speaking RESP, for a job
committed alone.

redis-py costs a lone commit script call about 60 us of CPU here (its command packer,
its parser, a future, two task switches); the same EVALSHA written from bytes and
answered in data_received costs a fraction of that, which is what decides whether a
client submitting one job at a time waits longer than gearmand's. The keys and the
job's field and packed form are those `frame_parts` frames for a group; the script is
the store's `_LONE_ADD`, which does for one add what the commit script does, with less
work for Redis.

It connects only as redis-py would, and never to less: plain TCP, AUTH with the URL's
user and password, SELECT of its database. rediss://, unix sockets or any option in
the URL's query leave the lane off and every commit goes through redis-py, with one
INFO line saying why. A script cache that lost the script (Redis restarted, SCRIPT
FLUSH) answers NOSCRIPT: the same arguments are sent again with EVAL of the script's
text, which loads it again.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
from collections.abc import Callable, Sequence
from typing import Final
from urllib.parse import unquote, urlsplit

from ._base import StoredJob, Unsupported
from ._lane import LaneConnection, Owned

_CRLF = b"\r\n"
# pack_job's header (seq 0 in a lone add: the script's INCR gives the order)
_HEAD: Final = struct.Struct("!QBqIIII")
_HEAD_SIZE: Final = _HEAD.size
_DONE: Final = (b":1\r\n", b":0\r\n")
_LEN = struct.Struct("!I")
_FRAMED = struct.Struct("!IQBqIIII")  # the length of what follows, then pack_job's header
_FIXED = _FRAMED.size - 4


def frame_parts(job: StoredJob) -> tuple[bytes, bytes, bytes, bytes, bytes, bytes, bytes]:
    """One add as the commit scripts read it: its field (field_of) after its length,
    then its packed form (pack_job with seq 0) after its length. Compiled here, for the
    lane's lone jobs and the store's groups alike."""
    f, u, r, d = job.function, job.unique, job.reducer, job.data
    field = b"%d:%b%b" % (len(f), f, u)
    length = _FIXED + len(f) + len(u) + len(r) + len(d)
    head = _FRAMED.pack(length, 0, job.priority, job.when, job.attempts, len(f), len(u), len(r))
    return _LEN.pack(len(field)), field, head, f, u, r, d


def _digits(n: int) -> int:
    """How many decimal digits ``n`` (0 or more) is written with."""
    k = 1
    while n >= 10:
        n //= 10
        k += 1
    return k


def lane_target(url: str) -> tuple[str, int, str | None, str | None, int]:
    """(host, port, user, password, db) the way redis-py reads a redis:// URL (the store's
    own options, such as prefix, already taken out); Unsupported for anything beyond."""
    u = urlsplit(url)
    if u.scheme != "redis":
        raise Unsupported(f"{u.scheme}:// is not a plain TCP connection")
    if u.query or u.fragment:
        raise Unsupported("the URL has options the lone-job connection does not take")
    user = unquote(u.username) if u.username else None
    password = unquote(u.password) if u.password else None
    if user and password is None:
        raise Unsupported("a user without a password")
    path = u.path.lstrip("/")
    try:
        db = int(path) if path else 0
    except ValueError:
        raise Unsupported(f"database {path!r} is not a number") from None
    return unquote(u.hostname or "localhost"), u.port or 6379, user, password, db


def _bulk(arg: bytes | str | int) -> bytes:
    b = arg if isinstance(arg, bytes) else str(arg).encode()
    return b"$%d\r\n%b\r\n" % (len(b), b)


def _command(*args: bytes | str | int) -> bytes:
    return b"*%d\r\n%b" % (len(args), b"".join(_bulk(a) for a in args))


class ReplyError(Exception):
    pass


def _reply(buf: bytes) -> tuple[bytes | int | ReplyError, int] | None:
    """One reply of the few kinds the lane is answered with (status, error, integer,
    bulk string) and where it ends; None while incomplete."""
    end = buf.find(_CRLF)
    if end < 0:
        return None
    kind, line = buf[:1], buf[1:end]
    if kind == b"+":
        return line, end + 2
    if kind == b"-":
        return ReplyError(line.decode(errors="replace")), end + 2
    if kind == b":":
        return int(line), end + 2
    if kind == b"$":
        size = int(line)
        if size < 0:
            return b"", end + 2
        stop = end + 2 + size
        if len(buf) < stop + 2:
            return None
        return buf[end + 2 : stop], stop + 2
    raise ConnectionError(f"unexpected reply {buf[:40]!r}")


class RedisLane(LaneConnection):
    def __init__(
        self,
        script: str,
        keys: Sequence[bytes],
        prefix: bytes,
        store: Owned,
    ) -> None:
        super().__init__()
        self._script = script.encode()
        sha = hashlib.sha1(self._script).hexdigest().encode()  # as SCRIPT LOAD answers
        # EVALSHA's head, then the keys (the last is the owner's set) and the arguments
        # (field, packed job, owner): all but the job's own change only with the owner
        # (it changes when the server joins others)
        self._sha = sha
        self._n = 3 + len(keys) + 1 + 3  # verb, sha or script, key count, keys, arguments
        self._evalsha = b"*%d\r\n$7\r\nEVALSHA\r\n%b" % (self._n, _bulk(sha))
        self._keys = keys
        self._prefix = prefix
        self._store = store  # its owner is read per job (an attribute, not a call)
        self._owner_was: str | None = None
        self._lead = b""  # EVALSHA's head, the key count and the keys, encoded
        self._owner_bytes = b""  # the owner, encoded
        self._buf = b""
        self._sent = b""  # the commit in flight: sent again with EVAL on NOSCRIPT
        # the last job's packed header, and the values it was packed from
        self._head = b""
        self._lf = self._lu = self._lr = self._priority = self._when = self._attempts = -1
        self._retried = False
        # while connecting: the replies not yet read, and the reader waiting for one
        self._inbox: list[bytes | int | ReplyError] | None = []

    # ---------------------------------------------------------------- the lane

    def send(self, job: StoredJob, done: Callable[[str | None], None]) -> None:
        owner = self._store.owner or ""
        if owner != self._owner_was or not self._lead:  # encoded once per owner
            self._owner_was = owner
            keys = [*self._keys, self._prefix + b"own:" + owner.encode()]
            self._lead = self._evalsha + _bulk(len(keys)) + b"".join([_bulk(k) for k in keys])
            self._owner_bytes = _bulk(owner)
        # the arguments as frame_parts frames them for a group, without the length
        # words, in one build (a lone job's framing was most of the lane's cost)
        f, u, r, d = job.function, job.unique, job.reducer, job.data
        lf, lu, lr = len(f), len(u), len(r)
        priority, when, attempts = job.priority, job.when, job.attempts
        head = self._head
        if (
            lf != self._lf
            or lu != self._lu
            or lr != self._lr
            or priority != self._priority
            or when != self._when
            or attempts != self._attempts
        ):  # a client submitting one job at a time mostly sends jobs of one shape
            head = self._head = _HEAD.pack(0, priority, when, attempts, lf, lu, lr)
            self._lf, self._lu, self._lr = lf, lu, lr
            self._priority, self._when, self._attempts = priority, when, attempts
        self._sent = sent = b"%b$%d\r\n%d:%b%b\r\n$%d\r\n%b%b%b%b%b\r\n%b" % (
            self._lead,
            _digits(lf) + 1 + lf + lu,
            lf,
            f,
            u,
            _HEAD_SIZE + lf + lu + lr + len(d),
            head,
            f,
            u,
            r,
            d,
            self._owner_bytes,
        )
        self._retried = False
        self._done = done
        assert self._transport is not None
        self._transport.write(sent)

    def _forget(self) -> None:
        self._sent = b""

    # ------------------------------------------------------------ the protocol

    def data_received(self, data: bytes) -> None:
        # the script answers 1 (stored) or 0 (the key was there already)
        if self._done is not None and not self._buf and data in _DONE:
            done, self._done = self._done, None
            self._sent = b""
            done(None)
            return
        buf = self._buf + data
        try:
            while buf:
                got = _reply(buf)
                if got is None:
                    break
                value, end = got
                buf = buf[end:]
                self._answer(value)
        except (ConnectionError, ValueError) as e:  # not Redis, or out of step with it
            self._buf = b""
            self.abort(f"the store's answer is unreadable: {e}")
            return
        self._buf = buf

    def _answer(self, value: bytes | int | ReplyError) -> None:
        if self._inbox is not None:
            self._inbox.append(value)
            fut, self._setup = self._setup, None
            if fut is not None and not fut.done():
                fut.set_result(None)
            return
        if self._done is None:
            raise ConnectionError("an answer to no command")
        if isinstance(value, ReplyError):
            if str(value).startswith("NOSCRIPT") and not self._retried and self._transport:
                # the script cache lost it: the same arguments with its text (cached again)
                self._retried = True
                head = b"*%d\r\n$4\r\nEVAL\r\n%b" % (self._n, _bulk(self._script))
                self._transport.write(head + self._sent[len(self._evalsha) :])
                return
            done, self._done = self._done, None
            self._sent = b""
            done(f"commit failed: {value}")
            return
        done, self._done = self._done, None
        self._sent = b""
        done(None)

    # ------------------------------------------------------------ connecting

    async def _next(self) -> bytes | int:
        """The next reply while connecting (no commit is in flight then)."""
        inbox = self._inbox
        assert inbox is not None
        while not inbox:
            if self._transport is None:
                raise ConnectionError("connection lost")
            self._setup = asyncio.get_running_loop().create_future()
            await self._setup
        value = inbox.pop(0)
        if isinstance(value, ReplyError):
            raise ConnectionError(str(value))
        return value

    async def start(self, user: str | None, password: str | None, db: int) -> None:
        """AUTH and SELECT as redis-py sends them, on a connected transport."""
        assert self._transport is not None
        if password is not None:
            auth = _command("AUTH", user, password) if user else _command("AUTH", password)
            self._transport.write(auth)
            await self._next()
        if db:
            self._transport.write(_command("SELECT", db))
            await self._next()
        # named in CLIENT LIST, as the PostgreSQL lane is in pg_stat_activity
        self._transport.write(_command("CLIENT", "SETNAME", "gearmill-lone"))
        await self._next()
        # loaded now, so that the first job does not go twice (NOSCRIPT, then EVAL)
        self._transport.write(_command("SCRIPT", "LOAD", self._script))
        if await self._next() != self._sha:
            raise ConnectionError("SCRIPT LOAD answered another digest")
        self._inbox = None
        self._ready = True

    def close(self) -> None:
        self._ready = False
        if self._transport is not None:
            self._transport.write(_command("QUIT"))
            self._transport.close()


async def connect_lane(
    url: str,
    script: str,
    keys: Sequence[bytes],
    prefix: bytes,
    store: Owned,
    timeout: float,
) -> RedisLane:
    """A ready lane, or an exception saying why not (Unsupported, OSError, ...)."""
    host, port, user, password, db = lane_target(url)
    loop = asyncio.get_running_loop()
    lane = RedisLane(script, keys, prefix, store)

    async def go() -> None:
        await loop.create_connection(lambda: lane, host, port)
        await lane.start(user, password, db)

    try:
        await asyncio.wait_for(go(), timeout)
    except BaseException:
        if lane._transport is not None:
            lane._transport.abort()
        raise
    return lane
