"""Admin text commands run against the broker's state (reference §2.2).

Replies are byte-exact with gearmand 1.1.20 except where
docs/compatibility.md lists a deliberate difference.
"""

from __future__ import annotations

from ..protocol import admin as text
from .broker import Broker, Peer


def run(broker: Broker, peer: Peer, line: bytes) -> bytes | None:
    """The reply to one admin line, or None when the connection must close."""
    try:
        tokens = text.tokenize(line)
    except text.TooManyTokens:
        return None
    command = tokens[0].lower()
    handler = _COMMANDS.get(command)
    if handler is None:
        if command == b"shutdown":
            return _shutdown(broker, peer, tokens)
        return text.err_unknown_command(tokens[0])
    return handler(broker, peer, tokens)


def _status(broker: Broker, peer: Peer, tokens: list[bytes]) -> bytes:
    return status(broker)


def status(broker: Broker) -> bytes:
    """The reply to ``status``: one line per function, then the end line."""
    lines = [
        b"%s\t%d\t%d\t%d\n" % (name, high + normal + low + running, running, workers)
        for name, high, normal, low, running, workers in broker.function_rows()
    ]
    lines.append(text.END)
    return b"".join(lines)


def _priority_status(broker: Broker, peer: Peer, tokens: list[bytes]) -> bytes:
    lines = [
        b"%s\t%d\t%d\t%d\t%d\n" % (name, high, normal, low, workers)
        for name, high, normal, low, _running, workers in broker.function_rows()
    ]
    lines.append(text.END)
    return b"".join(lines)


def _workers(broker: Broker, peer: Peer, tokens: list[bytes]) -> bytes:
    lines = []
    for fd, addr, client_id, abilities in broker.peer_rows():
        names = b"".join(b" " + name for name in abilities)
        lines.append(b"%d %s %s :%s\n" % (fd, addr.encode(), client_id, names))
    lines.append(text.END)
    return b"".join(lines)


def _show(broker: Broker, peer: Peer, tokens: list[bytes]) -> bytes:
    if len(tokens) == 1:
        return text.err_unknown_command(tokens[0])
    what = [t.lower() for t in tokens[1:]]
    if what[:1] == [b"jobs"]:
        lines = [
            b"%s\t%d\t%d\t%d\n" % (handle, retries, int(ignored), int(background))
            for handle, _unique, retries, ignored, background in broker.job_rows()
        ]
    elif what[:2] == [b"unique", b"jobs"]:
        lines = [unique + b"\n" for _handle, unique, *_ in broker.job_rows()]
    else:
        return text.ERR_UNKNOWN_SHOW
    lines.append(text.END)
    return b"".join(lines)


def _cancel(broker: Broker, peer: Peer, tokens: list[bytes]) -> bytes:
    if len(tokens) < 3:
        return text.err_unknown_command(tokens[0])
    if len(tokens) > 3 or tokens[1].lower() != b"job":
        return text.ERR_INTERNAL
    return text.OK if broker.cancel(tokens[2]) else text.ERR_UNKNOWN_JOB


def _create_function(broker: Broker, peer: Peer, tokens: list[bytes]) -> bytes:
    if len(tokens) < 3 or tokens[1].lower() != b"function":
        return text.err_arguments(tokens[0])
    broker.function(tokens[2])
    return text.OK


def _drop_function(broker: Broker, peer: Peer, tokens: list[bytes]) -> bytes:
    if len(tokens) < 3 or tokens[1].lower() != b"function":
        return text.err_arguments(tokens[0])
    dropped = broker.drop_function(tokens[2])
    if dropped is None:
        return text.ERR_DROP_MISSING
    # gearmand drops a function with queued jobs and leaves them dangling;
    # refusing keeps those jobs (docs/compatibility.md).
    return text.OK if dropped else text.ERR_DROP_BUSY


def _maxqueue(broker: Broker, peer: Peer, tokens: list[bytes]) -> bytes:
    if len(tokens) < 2:
        return text.err_arguments(tokens[0])
    sizes = [max(text.atoi(t), 0) for t in tokens[2:5]]
    if len(sizes) == 1:
        sizes = sizes * 3
    broker.set_max_queue(tokens[1], [*sizes, 0, 0, 0])
    return text.OK


def _getpid(broker: Broker, peer: Peer, tokens: list[bytes]) -> bytes:
    return text.ok_value(b"%d" % broker.config.pid)


def _verbose(broker: Broker, peer: Peer, tokens: list[bytes]) -> bytes:
    return text.ok_value(broker.config.verbose.encode())


def _version(broker: Broker, peer: Peer, tokens: list[bytes]) -> bytes:
    return text.ok_value(broker.config.version)


def _shutdown(broker: Broker, peer: Peer, tokens: list[bytes]) -> bytes:
    allowed = broker.config.admin_shutdown
    if allowed == "off" or (allowed == "local" and not peer.local):
        return text.err_unknown_command(tokens[0])
    broker.request_stop(graceful=len(tokens) > 1 and tokens[1].lower() == b"graceful")
    return text.OK


_COMMANDS = {
    b"status": _status,
    b"prioritystatus": _priority_status,
    b"workers": _workers,
    b"show": _show,
    b"cancel": _cancel,
    b"create": _create_function,
    b"drop": _drop_function,
    b"maxqueue": _maxqueue,
    b"getpid": _getpid,
    b"verbose": _verbose,
    b"version": _version,
}
