"""Admin text commands for retries, the dead set and schedules (gearmill's own).

In gearmand's style: lists end in ``.\\n``, a count or value is ``OK <n>\\n``,
an error is one ``ERR <CODE> <text+with+pluses>\\r\\n`` line saying the fix::

    retry show [FUNCTION]             retry set FUNCTION|* KEY=VALUE...   retry reset FUNCTION
    dead status                       dead list [FUNCTION]                dead show HANDLE
    dead requeue HANDLE|function F|all                  dead purge HANDLE|function F|all
    schedule list                     schedule add NAME FUNCTION CRON [DATA]
    schedule pause|resume|remove NAME
    nodes                             the servers sharing the store (server/cluster.py)

CRON is five fields (UTC) or a macro (@hourly, ...); DATA is the rest of the line.
These lines may have more than gearmand's five words, so they are split here,
before gearmand's tokenizer would close the connection.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

from .policy import (
    DeadJob,
    Policies,
    RuleError,
    ScheduleSpec,
    change_rule,
    now_text,
)

COMMANDS = (b"retry", b"dead", b"schedule")
END = b".\n"


def _err(code: str, message: str) -> bytes:
    return b"ERR " + code.encode() + b" " + message.replace(" ", "+").encode() + b"\r\n"


def _ok(value: int | str) -> bytes:
    return b"OK " + str(value).encode() + b"\n"


def _usage(usage: str) -> bytes:
    return _err("INVALID_ARGUMENTS", "usage: " + usage)


def run(policies: Policies, line: bytes) -> bytes | None:
    """The reply to one of these commands, or None when ``line`` is none of them."""
    words = line.split(None, 1)
    if not words or words[0].lower() not in COMMANDS:
        return None
    handler = _HANDLERS[words[0].lower()]
    try:
        return handler(policies, line.split())
    except RuleError as e:
        return _err("INVALID_ARGUMENTS", str(e))


# ------------------------------------------------------------------ retry


def _retry(policies: Policies, words: list[bytes]) -> bytes:
    retry = policies.retry
    sub = words[1].lower() if len(words) > 1 else b""
    if sub == b"show":
        names = [words[2]] if len(words) > 2 else list(retry.rules)
        lines = [b"*\t" + retry.default.describe().encode() + b"\n"]
        lines += [n + b"\t" + retry.rule(n).describe().encode() + b"\n" for n in names]
        return b"".join(lines) + END
    if sub == b"set" and len(words) > 3:
        settings = []
        for word in words[3:]:
            key, eq, value = word.decode(errors="replace").partition("=")
            if not eq:
                return _usage("retry set FUNCTION|* KEY=VALUE... (max_attempts, backoff, ...)")
            settings.append((key, value))
        if words[2] == b"*":
            retry.default = change_rule(retry.default, settings)
        else:
            retry.rules[words[2]] = change_rule(retry.rule(words[2]), settings)
        return b"OK\r\n"
    if sub == b"reset" and len(words) == 3:
        return _ok(1 if retry.rules.pop(words[2], None) is not None else 0)
    return _usage(
        "retry show [FUNCTION] | retry set FUNCTION|* KEY=VALUE... | retry reset FUNCTION"
    )


# ------------------------------------------------------------------- dead


def _dead_row(d: DeadJob) -> bytes:
    return b"%s\t%s\t%s\t%d\t%s\t%s\n" % (
        d.handle,
        d.function,
        d.unique,
        d.attempts,
        d.reason.encode(),
        now_text(d.died),
    )


def _escape(value: bytes) -> bytes:
    """One line of text: newlines and tabs of an exception text made visible."""
    return value.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\t", b"\\t")


def _pick(policies: Policies, words: list[bytes]) -> list[bytes] | None:
    """The handles named by ``HANDLE``, ``function F`` or ``all``."""
    dead = policies.dead
    if len(words) == 3 and words[2].lower() == b"all":
        return list(dead.jobs)
    if len(words) == 4 and words[2].lower() == b"function":
        return [d.handle for d in dead.select(words[3])]
    if len(words) == 3:
        return [words[2]] if words[2] in dead.jobs else []
    return None


def _dead(policies: Policies, words: list[bytes]) -> bytes:
    dead = policies.dead
    sub = words[1].lower() if len(words) > 1 else b""
    if sub == b"status" and len(words) == 2:
        lines = [b"%s\t%d\n" % (name, n) for name, n in dead.counts().items()]
        return b"".join(lines) + END
    if sub == b"list" and len(words) <= 3:
        rows = dead.select(words[2] if len(words) == 3 else None)
        return b"".join(_dead_row(d) for d in rows) + END
    if sub == b"show" and len(words) == 3:
        d = dead.jobs.get(words[2])
        if d is None:
            return b"ERR UNKNOWN_JOB\r\n"
        fields = [
            (b"handle", d.handle),
            (b"function", d.function),
            (b"unique", d.unique),
            (b"priority", (b"high", b"normal", b"low")[d.priority]),
            (b"attempts", b"%d" % d.attempts),
            (b"reason", d.reason.encode()),
            (b"error", _escape(d.error)),
            (b"died", now_text(d.died)),
            (b"size", b"%d" % len(d.data)),
            (b"data_base64", base64.b64encode(d.data)),
        ]
        return b"".join(k + b"\t" + v + b"\n" for k, v in fields) + END
    if sub in (b"requeue", b"purge"):
        handles = _pick(policies, words)
        if handles is None:
            return _usage(f"dead {sub.decode()} HANDLE | function NAME | all")
        if len(words) == 3 and words[2].lower() != b"all" and not handles:
            return b"ERR UNKNOWN_JOB\r\n"
        if sub == b"purge":
            for handle in handles:
                dead.remove(handle)
            return _ok(len(handles))
        done, refused = policies.requeue(handles)
        if refused and not done:
            return _err("UNIQUE_IN_USE", "a live job has its unique id; retry when it is done")
        return _ok(done)
    return _usage(
        "dead status | dead list [FUNCTION] | dead show HANDLE | "
        "dead requeue|purge HANDLE|function NAME|all"
    )


# ------------------------------------------------------------------ nodes


def nodes(view: list[tuple[str, str, float, int, bool]] | None) -> bytes:
    """``nodes``: the servers sharing the store as this server last read them
    (``Cluster.view``): node id, owner token, seconds until its heartbeat expires, stored
    jobs it holds, and ``self`` for this one. ``view`` None: the store is not shared."""
    if view is None:
        return _err("NOT_SHARED", "the store is not shared: this server runs alone")
    lines = []
    for node, token, left, held, me in view:
        lines.append(
            b"%s\t%s\t%s\t%d\t%s\n"
            % (
                node.encode(),
                token.encode(),
                b"%.1f" % left if left >= 0 else b"expired",
                held,
                b"self" if me else b"-",
            )
        )
    return b"".join(lines) + END


# --------------------------------------------------------------- schedule

_PRIORITY = {b"high": 0, b"normal": 1, b"low": 2}


def _schedule(policies: Policies, words: list[bytes]) -> bytes:
    scheduler = policies.scheduler
    sub = words[1].lower() if len(words) > 1 else b""
    if sub == b"list" and len(words) == 2:
        lines = []
        for s in scheduler.schedules.values():
            lines.append(
                b"%s\t%s\t%s\t%s\t%s\t%d\n"
                % (
                    s.spec.name.encode(),
                    s.expr.replace(" ", "_").encode(),
                    s.spec.function,
                    b"paused" if s.paused else b"active",
                    now_text(s.next_at),
                    s.fired,
                )
            )
        return b"".join(lines) + END
    if sub == b"add" and len(words) >= 5:
        name, function = words[2].decode(errors="replace"), words[3]
        rest = words[4:]
        # one macro word, one word with _ for spaces (as "schedule list" shows), or five fields
        if rest[0].startswith(b"@") or b"_" in rest[0]:
            cron, data_words = rest[0].replace(b"_", b" "), rest[1:]
        elif len(rest) >= 5:
            cron, data_words = b" ".join(rest[:5]), rest[5:]
        else:
            return _usage("schedule add NAME FUNCTION MIN HOUR DAY MONTH WEEKDAY [DATA]")
        priority = 1
        if data_words and data_words[0].lower().startswith(b"priority="):
            level = data_words[0].split(b"=", 1)[1].lower()
            if level not in _PRIORITY:
                return _usage("priority=high|normal|low")
            priority = _PRIORITY[level]
            data_words = data_words[1:]
        spec = ScheduleSpec(name, cron.decode(), function, b" ".join(data_words), priority)
        if name in scheduler.schedules:
            return _err("EXISTS", f"schedule {name} exists; remove it first")
        scheduler.add(spec)
        return b"OK\r\n"
    if sub in (b"pause", b"resume", b"remove") and len(words) == 3:
        name = words[2].decode(errors="replace")
        if sub == b"remove":
            found = scheduler.remove(name)
        else:
            found = scheduler.pause(name, sub == b"pause")
        return b"OK\r\n" if found else _err("UNKNOWN_SCHEDULE", f"no schedule named {name}")
    return _usage(
        "schedule list | schedule add NAME FUNCTION CRON [priority=high|normal|low] [DATA] | "
        "schedule pause|resume|remove NAME"
    )


_HANDLERS: dict[bytes, Callable[[Policies, list[bytes]], bytes]] = {
    b"retry": _retry,
    b"dead": _dead,
    b"schedule": _schedule,
}
