"""Redis through redis-py (hiredis parser when installed).

Keys, all under one prefix (default `gearmill:`; `?prefix=` in the URL):
  {p}schema   string   the key layout's version (SCHEMA)
  {p}seq      string   the submission counter (moved once per group)
  {p}jobs     hash     field(function, unique) -> packed job (seq, priority, when, ...)
  {p}order    zset     field -> seq; replay pages through it (never KEYS)
  {p}dead     hash     dead letters (id -> packed job + error), {p}dead:seq their counter
  {p}schedules hash    name -> recurring job
  {p}own:<owner> set   the fields an owner holds ("" for none); {p}owners the set of owners
                       (schema 2: several servers share the prefix)
  {p}leases   hash     field -> "<owner> <fence>" of a claimed job (schema 3: a job its
                       owner stored itself has none, fence 0)
  {p}nodes    hash     node id -> "<owner> <expiry ms, Redis's clock>": the heartbeats
  {p}ticks    hash     schedule name -> the minute it last fired (once across servers)
A group is one Lua script (atomic, one round trip). Redis is only as durable as its AOF: open reads
appendonly/appendfsync and warns loudly, naming the loss window, unless it is `always`.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis import exceptions as rexc

from ._base import (
    FIX_URL,
    PRIORITY_NORMAL,
    DeadLetter,
    Key,
    Lane,
    LaneKeeper,
    StoredJob,
    StoredSchedule,
    StoreError,
    check_job,
    check_schedule,
    field_of,
    log,
    pack_dead,
    pack_schedule,
    unpack_dead,
    unpack_job,
    unpack_schedule,
    unreachable,
)
from ._redis_lane import connect_lane, frame_parts

_ERRORS = (OSError, TimeoutError, rexc.RedisError)
# The key layout's version (Redis's own: the SQL stores' schema is versioned apart).
# 2: leases and owners' sets; 3: a lease only for a claimed job (fence 1 and up).
SCHEMA = 3

# One group in one atomic script: removes first, then adds. A few commands per group
# whatever its size (each written command is also a line of Redis's AOF): reads to
# decide, then one HDEL/ZREM/SREM and one HSET/ZADD/SADD over all the group's fields.
# An add keeps a stored key's job and place (as HSETNX would); only a real add takes
# the next sequence number (the zset score). Adds belong to ARGV[2] ('' none): member of
# own:<owner>, no lease (fence 0). A claimed job has a lease "<owner> <fence>" (fence 1
# and up). With an owner, a remove deletes only a job it holds with the fence it knows
# (fenced): fence 0, in its own set with no lease; else leases[field] is "<owner> <fence>".
# Without one ('' ), a remove deletes whoever holds the job.
# ARGV: prefix, owner, how many arguments of removes, the removes (_frame_removes), then
# the adds (_frames).
_BULK = """
local function bulk(cmd, key, t)
  for s = 1, #t, 4000 do
    redis.call(cmd, key, unpack(t, s, math.min(s + 3999, #t)))
  end
end
-- ARGV[from..to] as framed pairs (struct format fmt, two fields a job): two tables
local function unframe(from, to, fmt)
  local a, b, n = {}, {}, 0
  for i = from, to do
    local blob = ARGV[i]
    local pos, size = 1, #blob
    while pos <= size do
      n = n + 1
      a[n], b[n], pos = struct.unpack(fmt, blob, pos)
    end
  end
  return a, b, n
end
local function gather(cmd, key, t)
  local out = {}
  for s = 1, #t, 4000 do
    local part = redis.call(cmd, key, unpack(t, s, math.min(s + 3999, #t)))
    for k = 1, #part do out[#out + 1] = part[k] end
  end
  return out
end
"""
_COMMIT_LEASED = (
    _BULK
    + """
local jobs, order, seqkey, leases, owners = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local prefix, owner = ARGV[1], ARGV[2]
local mine = prefix .. 'own:' .. owner
local first = 4 + tonumber(ARGV[3])
if first > 4 then
  -- the removes, a few to an argument: per job its field after its length, and the
  -- fence its remover knows (4 bytes each)
  local fields, fences, n = unframe(4, first - 1, '>I4c0I4')
  local held = gather('HMGET', leases, fields)
  local gone, own, fenced = {}, {}, {}
  for k = 1, n do
    local f, fence, l = fields[k], fences[k], held[k]
    if owner == '' then
      if l then
        redis.call('SREM', prefix .. 'own:' .. string.match(l, '^(.*) %d+$'), f)
        fenced[#fenced + 1] = f
      elseif redis.call('SREM', mine, f) == 0 then
        for _, o in ipairs(redis.call('SMEMBERS', owners)) do
          if redis.call('SREM', prefix .. 'own:' .. o, f) == 1 then break end
        end
      end
      gone[#gone + 1] = f
    elseif fence == 0 then
      if not l and redis.call('SISMEMBER', mine, f) == 1 then
        gone[#gone + 1] = f
        own[#own + 1] = f
      end
    elseif l == owner .. ' ' .. string.format('%d', fence) then
      gone[#gone + 1] = f
      own[#own + 1] = f
      fenced[#fenced + 1] = f
    end
  end
  if #gone > 0 then
    bulk('HDEL', jobs, gone)
    bulk('ZREM', order, gone)
  end
  if #own > 0 then bulk('SREM', mine, own) end
  if #fenced > 0 then bulk('HDEL', leases, fenced) end
end
if first > #ARGV then return 0 end
-- the adds, a few to an argument: per job its field and its packed form, each after
-- its length (4 bytes)
local fields, values = unframe(first, #ARGV, '>I4c0I4c0')
local there = gather('HMGET', jobs, fields)
local seq = tonumber(redis.call('GET', seqkey) or '0')
local hs, zs, ss, seen = {}, {}, {}, {}
for k = 1, #fields do
  local f = fields[k]
  if not there[k] and not seen[f] then
    seen[f] = true
    seq = seq + 1
    hs[#hs + 1] = f
    hs[#hs + 1] = values[k]
    zs[#zs + 1] = string.format('%d', seq)
    zs[#zs + 1] = f
    ss[#ss + 1] = f
  end
end
if #ss == 0 then return seq end
bulk('HSET', jobs, hs)
bulk('ZADD', order, zs)
bulk('SADD', mine, ss)
redis.call('SADD', owners, owner)
redis.call('SET', seqkey, string.format('%d', seq))
return seq
"""
)
# One new job and no removes (the lane's, _redis_lane.py): what the commit script does
# for one add, with less work: HSETNX instead of HMGET then HSET, INCR instead of GET
# then SET, no tables, the field and the packed job as arguments of their own, the
# owner's set as a key. Redis spends ~4 us on it (HMSET, gearmand's write: ~0.8 us;
# the commit script's framed form of one add: ~5 us; INFO commandstats, pinned).
# KEYS: jobs, order, seq, owners, own:<owner>; ARGV: field, packed job, owner
_LONE_ADD = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], string.format('%d', redis.call('INCR', KEYS[3])), ARGV[1])
redis.call('SADD', KEYS[5], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[3])
return 1
"""

# Heartbeats and claims, on Redis's own clock (milliseconds).
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
# KEYS: nodes; ARGV: node, owner, ttl ms, replace owner, replace expiry
_JOIN = (
    _NOW
    + """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then
  local o, e = string.match(v, '^(.*) (%d+)$')
  if tonumber(e) >= now and not (o == ARGV[4] and e == ARGV[5]) then return {o, e} end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. string.format('%d', now + tonumber(ARGV[3])))
return false
"""
)
# KEYS: nodes; ARGV: node, owner. A clean stop: expiry 0, reaped by the next survivor
_LEAVE = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v or string.match(v, '^(.*) %d+$') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' 0')
return 1
"""
# KEYS: nodes; ARGV: node, owner, ttl ms
_RENEW = (
    _NOW
    + """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v or string.match(v, '^(.*) %d+$') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. string.format('%d', now + tonumber(ARGV[3])))
return 1
"""
)
# KEYS: nodes; ARGV: prefix, '1' to count jobs. Node, owner, ms left, jobs held (or -1)
_NODES = (
    _NOW
    + """
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local o, e = string.match(all[i + 1], '^(.*) (%d+)$')
  out[#out + 1] = all[i]
  out[#out + 1] = o
  out[#out + 1] = tonumber(e) - now
  out[#out + 1] = ARGV[2] == '1' and redis.call('SCARD', ARGV[1] .. 'own:' .. o) or -1
end
return out
"""
)
# KEYS: nodes
_REAP = (
    _NOW
    + """
local dead = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local o, e = string.match(all[i + 1], '^(.*) (%d+)$')
  if tonumber(e) < now then
    redis.call('HDEL', KEYS[1], all[i])
    dead[#dead + 1] = o
    dead[#dead + 1] = e == '0' and 1 or 0
  end
end
return dead
"""
)
# KEYS: nodes, owners, jobs, leases, order; ARGV: prefix, me, limit. Returns seq, field,
# fence, job per claimed job: the jobs of owners with no heartbeat, each to one claimer.
_CLAIM = """
local nodes, owners, jobs, leases, order = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local prefix, me, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local live = {}
local all = redis.call('HGETALL', nodes)
for i = 2, #all, 2 do live[string.match(all[i], '^(.*) %d+$')] = true end
local out = {}
local got = 0
for _, o in ipairs(redis.call('SMEMBERS', owners)) do
  if got >= limit then break end
  if o ~= me and not live[o] then
    local fields = redis.call('SPOP', prefix .. 'own:' .. o, limit - got)
    for _, f in ipairs(fields) do
      local job = redis.call('HGET', jobs, f)
      if job then
        local l = redis.call('HGET', leases, f)
        local fence = 1
        if l then fence = tonumber(string.match(l, ' (%d+)$')) + 1 end
        redis.call('HSET', leases, f, me .. ' ' .. string.format('%d', fence))
        redis.call('SADD', prefix .. 'own:' .. me, f)
        out[#out + 1] = redis.call('ZSCORE', order, f)
        out[#out + 1] = f
        out[#out + 1] = string.format('%d', fence)
        out[#out + 1] = job
        got = got + 1
      end
    end
    if redis.call('SCARD', prefix .. 'own:' .. o) == 0 then redis.call('SREM', owners, o) end
  end
end
if got > 0 then redis.call('SADD', owners, me) end
return out
"""
# KEYS: ticks; ARGV: name, minute: the last tick fired per schedule, moved forward once
_TICK = """
local last = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if last >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
# KEYS: an owner's set; ARGV: fields. 1 per field the owner holds, else 0
_MINE = """
local out = {}
for i = 1, #ARGV do out[i] = redis.call('SISMEMBER', KEYS[1], ARGV[i]) end
return out
"""
_SCAN_PAGE = 2000  # jobs a paging scan reads at a time
_GLOB = re.compile(rb"([\\*?\[\]])")


_LEN = struct.Struct("!I")
_FRAME_BYTES = 64 << 20


def _frames(add: Sequence[StoredJob]) -> list[bytes]:
    """The commit script's adds in a few arguments: per job its framed pieces
    (`frame_parts`); an argument stays within _FRAME_BYTES (Redis refuses one over
    512 MB) unless one job is larger."""
    out: list[bytes] = []
    parts: list[bytes] = []
    total = 0
    for job in add:
        pieces = frame_parts(job)
        length = sum(map(len, pieces))
        if total and total + length > _FRAME_BYTES:
            out.append(b"".join(parts))
            parts, total = [], 0
        total += length
        parts += pieces
    out.append(b"".join(parts))
    return out


def _frame_removes(remove: Sequence[Key], fences: dict[Key, int]) -> list[bytes]:
    """The commit script's removes in a few arguments: per job its field after its
    length, then the fence its remover knows (0: never claimed)."""
    out: list[bytes] = []
    parts: list[bytes] = []
    size, fence = _LEN.pack, fences.get
    total = 0
    for key in remove:
        f, u = key
        field = b"%d:%b%b" % (len(f), f, u)
        if total > _FRAME_BYTES:
            out.append(b"".join(parts))
            parts, total = [], 0
        total += len(field) + 8
        parts += (size(len(field)), field, size(fence(key, 0)))
    out.append(b"".join(parts))
    return out


def split_prefix(raw_url: str) -> tuple[str, str]:
    """The URL without gearmill's own `prefix` query option, and that prefix."""
    parts = urlsplit(raw_url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = "gearmill:"
    rest = []
    for k, v in query:
        if k == "prefix":
            prefix = v
        else:
            rest.append((k, v))
    return urlunsplit(parts._replace(query=urlencode(rest))), prefix


class RedisStore:
    durable = True
    shared = True

    def __init__(self, url: str, raw_url: str, *, connect_timeout: float = 5.0) -> None:
        self.url = url
        self._raw, prefix = split_prefix(raw_url)
        self.prefix = prefix.encode()
        self._timeout = connect_timeout
        self._r: Any = None  # redis-py types replies as str | bytes; ours are bytes
        # the writer's own connection (one writer at a time calls commit): the client's
        # pool takes and gives back a connection per command, about 10 us of a lone
        # job's latency
        self._writer: Any = None
        p = self.prefix
        self._k_schema, self._k_seq = p + b"schema", p + b"seq"
        self._k_jobs, self._k_order = p + b"jobs", p + b"order"
        self._k_dead, self._k_dead_seq = p + b"dead", p + b"dead:seq"
        self._k_schedules = p + b"schedules"
        self._k_leases, self._k_owners, self._k_nodes = p + b"leases", p + b"owners", p + b"nodes"
        self._k_ticks = p + b"ticks"
        self._shas: dict[str, str] = {}
        self._commit_keys = (
            self._k_jobs,
            self._k_order,
            self._k_seq,
            self._k_leases,
            self._k_owners,
        )
        self.owner: str | None = None
        # the lone-job connection (_redis_lane.py); without it redis-py commits all
        self._keeper = LaneKeeper(
            self.url,
            "redis-py",
            lambda: connect_lane(
                self._raw,
                _LONE_ADD,
                (self._k_jobs, self._k_order, self._k_seq, self._k_owners),
                self.prefix,
                lambda: self.owner,
                self._timeout,
            ),
        )
        self.fences: dict[Key, int] = {}  # claimed jobs' fencing numbers (0: not here)

    def _error(self, e: BaseException, doing: str) -> StoreError:
        return StoreError(f"{self.url}: {doing}: {e or type(e).__name__}")

    def _c(self) -> Any:
        if self._r is None:
            raise StoreError(f"{self.url}: store is not open")
        return self._r

    async def open(self) -> None:
        if self._r is not None:
            return
        try:
            self._r = aioredis.from_url(
                self._raw,
                socket_connect_timeout=self._timeout,
                socket_timeout=60,
                decode_responses=False,
            )
        except ValueError as e:
            raise StoreError(f"{self.url}: {e}; fix {FIX_URL}") from None
        try:
            try:
                await self._r.ping()
            except _ERRORS as e:
                raise unreachable(self.url, e, "Redis") from None
            await self._check_aof()
            await self._migrate()
            await self._load_script()
            await self._keeper.open()
        except BaseException:
            await self.close()
            raise

    @property
    def lane(self) -> Lane | None:
        return self._keeper.lane

    async def _check_aof(self) -> None:
        r = self._c()
        try:
            conf = await r.config_get("append*")
            appendonly = _s(conf.get(b"appendonly", conf.get("appendonly", b"")))
            fsync = _s(conf.get(b"appendfsync", conf.get("appendfsync", b"")))
        except rexc.ResponseError:  # CONFIG renamed or refused (managed Redis)
            info = await r.info("persistence")
            appendonly = "yes" if info.get("aof_enabled") else "no"
            fsync = "unknown"
        if appendonly != "yes":
            window = (
                "every job committed since its last RDB snapshot (all of them if it takes none)"
            )
        elif fsync == "always":
            return
        elif fsync == "everysec":
            window = "about the last second of committed jobs"
        elif fsync == "no":
            window = "the jobs committed in the last ~30 seconds (whenever the OS flushes)"
        else:
            window = "an unknown amount of committed jobs (CONFIG GET is not allowed here)"
        log.warning(
            "STORE NOT FULLY DURABLE: %s runs with appendonly=%s appendfsync=%s: a crash of "
            "Redis or its machine can lose %s. For durable jobs set `appendonly yes` and "
            "`appendfsync always` in redis.conf.",
            self.url,
            appendonly,
            fsync,
            window,
        )

    async def _migrate(self) -> None:
        r = self._c()
        try:
            kind = await r.type(self._k_jobs)
            if kind not in (b"none", b"hash"):
                raise StoreError(
                    f"{self.url}: key {self._k_jobs.decode(errors='replace')} holds a {_s(kind)}, "
                    "not gearmill's jobs; give gearmill its own ?prefix= or database number"
                )
            version = await r.get(self._k_schema)
            current = 0 if version is None else int(version)
            if current > SCHEMA:
                raise StoreError(
                    f"{self.url}: schema version {current} was written by a newer gearmill "
                    f"(this one knows {SCHEMA}); upgrade gearmill"
                )
            if current < SCHEMA:
                # Version 1 had no leases; later versions convert here, in order.
                if current == 1:
                    await self._to_leases(r)
                if current == 2:
                    await self._to_claimed_leases(r)
                await r.set(self._k_schema, SCHEMA)
                log.info("store %s: schema migrated to version %d", self.url, SCHEMA)
        except _ERRORS as e:
            raise self._error(e, "reading the schema version") from None

    async def _to_leases(self, r: Any) -> None:
        """Version 2: the jobs of version 1 belong to nobody (the first claimer takes them)."""
        unowned = self.prefix + b"own:"
        cursor = 0
        while True:
            cursor, pairs = await r.zscan(self._k_order, cursor, count=1000)
            if pairs:
                await r.sadd(unowned, *[f for f, _ in pairs])
                await r.sadd(self._k_owners, b"")
            if cursor == 0:
                return

    async def _to_claimed_leases(self, r: Any) -> None:
        """Version 3: the lease of a job never claimed ("<owner> 0") goes; its owner's
        set says who holds it."""
        cursor = 0
        while True:
            cursor, pairs = await r.hscan(self._k_leases, cursor, count=1000)
            unclaimed = [f for f, lease in pairs.items() if lease.endswith(b" 0")]
            if unclaimed:
                await r.hdel(self._k_leases, *unclaimed)
            if cursor == 0:
                return

    async def close(self) -> None:
        self._keeper.close()
        await self._drop_writer()
        r, self._r = self._r, None
        if r is not None:
            try:
                await r.aclose()
            except _ERRORS:
                pass

    async def commit(self, add: Sequence[StoredJob], remove: Sequence[Key]) -> None:
        for job in add:
            check_job(job)
        if not add and not remove:
            return
        try:
            await self._commit(self._commit_keys, self._commit_args(add, remove))
        except _ERRORS as e:
            await self._drop_writer()
            # the idle pooled connections most likely broke with it (Redis restarted):
            # dropped too, as when commits went through the pool, so that the next query
            # connects afresh instead of failing once on a dead socket
            if self._r is not None:
                try:
                    await self._r.connection_pool.disconnect(inuse_connections=False)
                except _ERRORS:
                    pass
            raise self._error(e, "commit failed") from None
        except BaseException:  # cancelled (the writer's timeout) mid-command
            await self._drop_writer()
            raise
        fences = self.fences
        if fences:
            for key in remove:
                fences.pop(key, None)
        if self._r is not None:  # not closed meanwhile
            self._keeper.committed()

    def _commit_args(
        self, add: Sequence[StoredJob], remove: Sequence[Key]
    ) -> list[bytes | int | str]:
        """The commit script's arguments (after its keys)."""
        removes = _frame_removes(remove, self.fences) if remove else []
        args: list[bytes | int | str] = [self.prefix, self.owner or "", len(removes), *removes]
        if add:
            args += _frames(add)
        return args

    async def _commit(self, keys: Sequence[bytes], args: Sequence[Any]) -> None:
        con = self._writer
        if con is None:
            con = self._c().connection_pool.make_connection()
            await con.connect()
            self._writer = con
        sha = self._shas.get(_COMMIT_LEASED)
        if sha is not None:
            await con.send_command("EVALSHA", sha, len(keys), *keys, *args)
            try:
                await con.read_response()
                return
            except rexc.NoScriptError:  # Redis restarted or flushed its script cache
                pass
        await con.send_command("SCRIPT", "LOAD", _COMMIT_LEASED)
        sha = self._shas[_COMMIT_LEASED] = (await con.read_response()).decode()
        await con.send_command("EVALSHA", sha, len(keys), *keys, *args)
        await con.read_response()

    async def _drop_writer(self) -> None:
        con, self._writer = self._writer, None
        if con is not None:
            try:
                await con.disconnect(nowait=True)
            except _ERRORS:
                pass

    async def _script(
        self, script: str, keys: Sequence[bytes], args: Sequence[Any], doing: str
    ) -> Any:
        sha = self._shas.get(script)
        try:
            r = self._c()
            if sha is not None:
                try:
                    return await r.evalsha(sha, len(keys), *keys, *args)
                except rexc.NoScriptError:  # Redis restarted or flushed its script cache
                    pass
            sha = self._shas[script] = await r.script_load(script)
            return await r.evalsha(sha, len(keys), *keys, *args)
        except _ERRORS as e:
            raise self._error(e, doing) from None

    # ------------------------------------------------------------ leases

    async def join(
        self, owner: str, lease: float, replace: tuple[str, int] | None = None
    ) -> tuple[str, int] | None:
        old, expires = replace if replace is not None else ("", 0)
        args = (owner.partition("#")[0], owner, int(lease * 1000), old, expires)
        held = await self._script(_JOIN, (self._k_nodes,), args, "joining failed")
        if not held:
            return None
        return _s(held[0]), int(held[1])

    async def renew(self, owner: str, lease: float) -> bool:
        args = (owner.partition("#")[0], owner, int(lease * 1000))
        return bool(await self._script(_RENEW, (self._k_nodes,), args, "heartbeat failed"))

    async def leave(self, owner: str) -> None:
        args = (owner.partition("#")[0], owner)
        await self._script(_LEAVE, (self._k_nodes,), args, "leaving failed")

    async def reap(self) -> list[tuple[str, bool]]:
        flat = await self._script(_REAP, (self._k_nodes,), (), "reaping failed")
        return [(_s(flat[i]), flat[i + 1] == 1) for i in range(0, len(flat), 2)]

    async def claim_tick(self, name: str, minute: int, next_run: int) -> bool:
        args = (name, minute)
        return bool(await self._script(_TICK, (self._k_ticks,), args, "claiming a tick failed"))

    async def nodes(self, count: bool = True) -> list[tuple[str, int, int]]:
        args = (self.prefix, "1" if count else "0")
        flat = await self._script(_NODES, (self._k_nodes,), args, "query failed")
        rows = sorted(
            (_s(flat[i]), _s(flat[i + 1]), int(flat[i + 2]), int(flat[i + 3]))
            for i in range(0, len(flat), 4)
        )
        return [(owner, left, held) for _node, owner, left, held in rows]

    async def claim(self, owner: str, limit: int) -> list[tuple[int, StoredJob]]:
        keys = (self._k_nodes, self._k_owners, self._k_jobs, self._k_leases, self._k_order)
        flat = await self._script(_CLAIM, keys, (self.prefix, owner, limit), "claiming failed")
        out = []
        for i in range(0, len(flat), 4):
            job = unpack_job(flat[i + 3])[1]
            self.fences[(job.function, job.unique)] = int(flat[i + 2])
            out.append((int(float(flat[i])), job))
        out.sort(key=lambda p: p[0])
        return out

    async def _load_script(self) -> None:
        try:
            self._shas[_COMMIT_LEASED] = await self._c().script_load(_COMMIT_LEASED)
        except _ERRORS as e:
            raise self._error(e, "loading the commit script") from None

    async def load(self, after: int, limit: int) -> list[tuple[int, StoredJob]]:
        r = self._c()
        try:
            pairs = await r.zrangebyscore(
                self._k_order, f"({after}", "+inf", start=0, num=limit, withscores=True
            )
            if not pairs:
                return []
            values = await r.hmget(self._k_jobs, [f for f, _ in pairs])
        except _ERRORS as e:
            raise self._error(e, "query failed") from None
        # The sequence number is the score; the packed value's own is not used.
        return [
            (int(score), unpack_job(v)[1])
            for (_, score), v in zip(pairs, values, strict=True)
            if v is not None
        ]

    async def last_seq(self) -> int:
        try:
            top = await self._c().zrevrange(self._k_order, 0, 0, withscores=True)
        except _ERRORS as e:
            raise self._error(e, "query failed") from None
        return int(top[0][1]) if top else 0

    async def _scan(self, after: int, upto: float, page: int) -> list[tuple[int, StoredJob]]:
        """One page of stored jobs in sequence order (Redis has no filter by field)."""
        return [(s, j) for s, j in await self.load(after, page) if s <= upto]

    async def _mine(self, page: list[tuple[int, StoredJob]]) -> list[tuple[int, StoredJob]]:
        """With an owner (several servers share the prefix), the jobs of the page it holds:
        paging must never load another live server's jobs."""
        if self.owner is None or not page:
            return page
        fields = [field_of(j.function, j.unique) for _, j in page]
        held = await self._script(_MINE, (self._own(self.owner),), fields, "query failed")
        return [row for row, yes in zip(page, held, strict=True) if yes]

    def _own(self, owner: str) -> bytes:
        return self.prefix + b"own:" + owner.encode()

    async def queued_counts(self, after: int, upto: int) -> list[tuple[bytes, int, int]]:
        counts: dict[tuple[bytes, int], int] = {}
        while True:
            page = await self._scan(after, upto, _SCAN_PAGE)
            for _, job in await self._mine(page):
                key = (job.function, job.priority)
                counts[key] = counts.get(key, 0) + 1
            if len(page) < _SCAN_PAGE:
                return [(f, p, n) for (f, p), n in counts.items()]
            after = page[-1][0]

    async def load_queued(
        self, function: bytes, priority: int, after: int, limit: int
    ) -> list[tuple[int, StoredJob]]:
        out: list[tuple[int, StoredJob]] = []
        while len(out) < limit:
            page = await self.load(after, _SCAN_PAGE)
            for seq, job in await self._mine(page):
                if job.function == function and job.priority == priority:
                    out.append((seq, job))
                    if len(out) >= limit:
                        break
            if len(page) < _SCAN_PAGE:
                break
            after = page[-1][0]
        return out

    async def find(self, keys: Sequence[Key]) -> list[Key]:
        if not keys:
            return []
        try:
            pipe = self._c().pipeline(transaction=False)
            for f, u in keys:
                pipe.hexists(self._k_jobs, field_of(f, u))
            there = await pipe.execute()
        except _ERRORS as e:
            raise self._error(e, "query failed") from None
        return [k for k, yes in zip(keys, there, strict=True) if yes]

    async def add_dead(self, dead: Sequence[DeadLetter]) -> list[int]:
        for d in dead:
            check_job(d.job)
        if not dead:
            return []
        r = self._c()
        try:
            last = int(await r.incrby(self._k_dead_seq, len(dead)))
            ids = list(range(last - len(dead) + 1, last + 1))
            await r.hset(
                self._k_dead, mapping={i: pack_dead(d) for i, d in zip(ids, dead, strict=True)}
            )
        except _ERRORS as e:
            raise self._error(e, "keeping dead letters failed") from None
        return ids

    async def list_dead(self, after: int, limit: int) -> list[tuple[int, DeadLetter]]:
        # the dead set is bounded (thousands): one HGETALL, sorted here
        try:
            items = await self._c().hgetall(self._k_dead)
        except _ERRORS as e:
            raise self._error(e, "query failed") from None
        rows = sorted((int(k), v) for k, v in items.items() if int(k) > after)[:limit]
        return [(i, unpack_dead(v)) for i, v in rows]

    async def remove_dead(self, ids: Sequence[int]) -> None:
        if ids:
            try:
                await self._c().hdel(self._k_dead, *ids)
            except _ERRORS as e:
                raise self._error(e, "removing dead letters failed") from None

    async def dead_ids(self) -> list[int]:
        try:
            return [int(k) for k in await self._c().hkeys(self._k_dead)]
        except _ERRORS as e:
            raise self._error(e, "query failed") from None

    async def take_dead(self, ids: Sequence[int]) -> list[int]:
        if not ids:
            return []
        try:
            pipe = self._c().pipeline(transaction=False)
            for i in ids:
                pipe.hdel(self._k_dead, i)
            gone = await pipe.execute()
        except _ERRORS as e:
            raise self._error(e, "removing dead letters failed") from None
        return [i for i, n in zip(ids, gone, strict=True) if n]

    async def put_schedule(self, schedule: StoredSchedule) -> None:
        check_schedule(schedule)
        try:
            await self._c().hset(self._k_schedules, schedule.name, pack_schedule(schedule))
        except _ERRORS as e:
            raise self._error(e, "keeping the schedule failed") from None

    async def list_schedules(self) -> list[StoredSchedule]:
        try:
            items = await self._c().hgetall(self._k_schedules)
        except _ERRORS as e:
            raise self._error(e, "query failed") from None
        named = sorted((k.decode(), v) for k, v in items.items())
        return [unpack_schedule(name, value) for name, value in named]

    async def remove_schedule(self, name: str) -> bool:
        try:
            return bool(await self._c().hdel(self._k_schedules, name))
        except _ERRORS as e:
            raise self._error(e, "removing the schedule failed") from None

    async def count(self) -> int:
        try:
            return int(await self._c().hlen(self._k_jobs))
        except _ERRORS as e:
            raise self._error(e, "query failed") from None

    async def ping(self) -> None:
        try:
            await self._c().ping()
        except _ERRORS as e:
            raise self._error(e, "ping failed") from None

    async def size_bytes(self) -> int:
        r = self._c()
        try:
            total = 0
            for key in (self._k_jobs, self._k_order):
                total += int(await r.memory_usage(key) or 0)
            return total
        except _ERRORS as e:
            raise self._error(e, "query failed") from None

    async def import_gearmand(self, source: str | None = None) -> int:
        """Import the keys gearmand's `-q redis` left: `{prefix}-{function}-{unique}` hashes.

        gearmand 1.1.16+ stores a hash {data, priority}; older ones a plain string (the
        data, normal priority). Found with SCAN (never KEYS), deleted once committed here.
        gearmand splits the key at the first '-', so a function name never holds one.
        """
        prefix = (source if source is not None else "_gear_").encode() + b"-"
        pattern = _GLOB.sub(rb"\\\1", prefix) + b"*"
        r = self._c()
        total = 0
        try:
            cursor = 0
            while True:
                cursor, keys = await r.scan(cursor, match=pattern, count=1000)
                jobs: list[StoredJob] = []
                done: list[bytes] = []
                for key in keys:
                    job = await self._gearmand_job(r, key, len(prefix))
                    if job is not None:
                        jobs.append(job)
                        done.append(key)
                if jobs:
                    await self.commit(jobs, ())
                    await r.delete(*done)
                    total += len(jobs)
                if cursor == 0:
                    break
        except _ERRORS as e:
            raise self._error(e, "importing gearmand's keys") from None
        if total:
            log.info("store %s: imported %d jobs from gearmand's keys", self.url, total)
        return total

    async def _gearmand_job(self, r: Any, key: bytes, skip: int) -> StoredJob | None:
        function, sep, unique = key[skip:].partition(b"-")
        if not sep:
            return None
        kind = await r.type(key)
        if kind == b"hash":
            h: dict[Any, Any] = await r.hgetall(key)
            data = h.get(b"data", b"")
            priority = int(h.get(b"priority", PRIORITY_NORMAL))
        elif kind == b"string":
            data = await r.get(key) or b""
            priority = PRIORITY_NORMAL
        else:
            return None
        if priority not in (0, 1, 2):
            priority = PRIORITY_NORMAL
        return StoredJob(function, unique, data, priority)


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
