"""One tree of errors for the client and worker libraries."""

from __future__ import annotations

import errno
import os
import re
import socket
import ssl

# Said after a connection failure: where the address came from and how to change it.
ADDRESS_HINT = (
    "is a job server running there? (`gearmill serve` starts one; the address comes from"
    " the servers argument, else $GEARMAN_SERVERS, else 127.0.0.1:4730)"
)
# Said when every address answered, but none as a job server: a wrong port, not a stopped server.
WRONG_PORT_HINT = (
    "give a job server's address (the servers argument, else $GEARMAN_SERVERS, else 127.0.0.1:4730)"
)


class GearmanError(Exception):
    """Root of every gearmill library error."""


class ProtocolError(GearmanError):
    """The peer sent something that is not valid Gearman; ``sent`` says what, when the
    bytes were not Gearman at all (another service on the port)."""

    def __init__(self, message: str, sent: str = "") -> None:
        super().__init__(message)
        self.sent = sent


class ConnectionLost(GearmanError):
    """The connection to a job server broke (a foreground job on it is lost)."""

    def __init__(self, server: str, detail: str = "") -> None:
        self.server = server
        self.detail = detail
        super().__init__(f"connection to {server} lost" + (f": {detail}" if detail else ""))


class CannotConnect(ConnectionLost):
    """A job server could not be reached at all (refused, unknown host, no answer)."""

    def __init__(self, server: str, reason: str) -> None:
        super().__init__(server)
        self.reason = reason
        self.args = (f"could not connect to {server}: {reason}",)


class NotAJobServer(CannotConnect):
    """Something listens at the address, but it does not speak Gearman (a web server,
    SSH, a database: a wrong port)."""

    def __init__(self, server: str, sent: str) -> None:
        super().__init__(server, f"not a Gearman job server (it sent {sent})")
        self.args = (f"{server} is {self.reason}",)


def connect_reason(error: BaseException, timeout: float | None = None) -> str:
    """Why a connect failed, in words: 'connection refused', 'unknown host', …"""
    if isinstance(error, socket.gaierror):
        return f"unknown host ({error.strerror or error})"
    if isinstance(error, ssl.SSLCertVerificationError):
        return (
            f"the server's TLS certificate is not trusted ({error.verify_message}); give the "
            "CA that signed it (--tls-ca, GEARMILL_CLIENT_CA or tls=client_context(ca=...))"
        )
    if isinstance(error, ssl.SSLError):
        return f"TLS handshake failed ({error.reason or error})"
    if isinstance(error, TimeoutError):
        return "no answer" + (f" within {seconds(timeout)} s" if timeout is not None else "")
    code = error.errno if isinstance(error, OSError) else None
    if code is None:
        # asyncio joins the failures of several addresses (::1 and 127.0.0.1 for
        # localhost) into one "Multiple exceptions" OSError without an errno
        codes = set(re.findall(r"\[Errno (\d+)\]", str(error)))
        code = int(codes.pop()) if len(codes) == 1 else None
    if code is not None:
        return os.strerror(code).lower()
    return str(error) or type(error).__name__


def listen_reason(error: OSError) -> str:
    """Why a listen failed, in words, with the fix when it is a port in use. asyncio's
    text repeats the address ("error while attempting to bind on address ('127.0.0.1',
    4730): address already in use"): the errno's says it."""
    if error.errno and not isinstance(error, socket.gaierror):
        reason = os.strerror(error.errno)
    else:
        reason = error.strerror or str(error)
    if error.errno == errno.EADDRINUSE:
        # a port in the ephemeral range can also be a client connection's local end
        reason += (
            "; another server listens there (or a connection holds it as its local port):"
            " stop it or choose another port"
        )
    return reason


def seconds(value: float) -> str:
    """A duration as people write it: 2, 0.5, 1.25, 120 (not 1.99984)."""
    return f"{value:.0f}" if value >= 10 else f"{value:.3g}"


class NoServersAvailable(GearmanError):
    """No configured job server accepted a connection; ``errors`` says why, per server."""

    def __init__(
        self, servers: list[str], errors: list[str] | None = None, *, wrong_port: bool = False
    ) -> None:
        self.servers = servers
        self.errors = errors or []
        # every server answered, but none speaks Gearman: the hint is not "start one"
        self.wrong_port = wrong_port
        if len(self.errors) == 1:
            what = self.errors[0]
        else:
            what = f"any of {', '.join(servers)} (" + "; ".join(self.errors) + ")"
        self.reason = f"could not connect to {what}"
        super().__init__(f"{self.reason}; {WRONG_PORT_HINT if wrong_port else ADDRESS_HINT}")


class Timeout(GearmanError, TimeoutError):
    """An operation did not finish in the time it was given."""


class ServerError(GearmanError):
    """The job server answered with an ERROR packet."""

    def __init__(self, code: str, text: str) -> None:
        self.code = code
        self.text = text
        super().__init__(f"{code}: {text}")


def _named(handle: str, function: str) -> str:
    return f"job {handle}" + (f" ({function})" if function else "")


class JobFailed(GearmanError):
    """The worker reported WORK_FAIL (or the server gave up on the job)."""

    def __init__(self, handle: str, data: bytes = b"", function: str = "") -> None:
        self.handle = handle
        self.data = data
        self.function = function
        super().__init__(
            f"{_named(handle, function)} failed: the worker reported failure (WORK_FAIL)"
        )


class JobException(JobFailed):
    """The worker reported WORK_EXCEPTION; ``data`` holds what it sent, ``text`` decoded.

    gearmill workers send ``TypeName: message``, so ``text`` reads like the
    worker's own traceback line, e.g. ``ValueError: bad input``.
    """

    def __init__(self, handle: str, data: bytes, function: str = "") -> None:
        super().__init__(handle, data, function)
        self.text = data.decode(errors="replace")
        raised = self.text or "an exception (no details sent)"
        self.args = (f"{_named(handle, function)} failed: the worker raised {raised}",)
