"""TLS listeners: the server's SSL context, the handshake (a refused one is logged) and a
protocol that names its peer by certificate."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import cast

from .access import subject_text
from .config import TLSConfig
from .connection import GearmanProtocol
from .model import Peer

log = logging.getLogger("gearmill.server")

_VERIFY = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


def server_context(cfg: TLSConfig) -> ssl.SSLContext:
    """The context of every TLS listener; OSError with one line saying which file is wrong."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    assert cfg.cert is not None
    try:
        ctx.load_cert_chain(cfg.cert, cfg.key)
    except (OSError, ssl.SSLError) as e:
        what = f"--tls-cert {cfg.cert}" + (f" / --tls-key {cfg.key}" if cfg.key else "")
        raise OSError(
            f"{what}: cannot load the certificate and key: {_why(e)}; give PEM files "
            "of a certificate and its private key"
        ) from None
    if cfg.ca:
        try:
            ctx.load_verify_locations(cafile=cfg.ca)
        except (OSError, ssl.SSLError) as e:
            raise OSError(
                f"--tls-ca {cfg.ca}: cannot load the CA certificates: {_why(e)}; "
                "give a PEM file of the CA that signs client certificates"
            ) from None
    ctx.verify_mode = _VERIFY[cfg.verify]
    return ctx


def _why(e: Exception) -> str:
    if isinstance(e, ssl.SSLError):
        return e.reason or str(e)
    return (e.strerror if isinstance(e, OSError) else None) or str(e)


class TLSProtocol(GearmanProtocol):
    """A TLS connection: the peer is known by its certificate's subject too."""

    __slots__ = ()

    def identify(self, peer: Peer, transport: asyncio.BaseTransport) -> None:
        peer.subject = subject_text(transport.get_extra_info("peercert"))


# A refused handshake is logged (peer and reason), at most REFUSAL_BURST lines in
# REFUSAL_WINDOW seconds; past that, one line per window says how many more there were.
REFUSAL_BURST = 10
REFUSAL_WINDOW = 60.0

# the OpenSSL reasons a peer that does not speak TLS (1.2 or later) gets
_WRONG_PROTOCOL = {
    "WRONG_VERSION_NUMBER": "not TLS (a plain Gearman client on the TLS port?)",
    "HTTP_REQUEST": "not TLS (an HTTP request)",
    "HTTPS_PROXY_REQUEST": "not TLS (an HTTP proxy request)",
    "UNKNOWN_PROTOCOL": "not TLS",
    "UNSUPPORTED_PROTOCOL": "a TLS version older than 1.2",
    "VERSION_TOO_LOW": "a TLS version older than 1.2",
    "NO_PROTOCOLS_AVAILABLE": "a TLS version older than 1.2",
    "NO_SHARED_CIPHER": "no cipher in common",
}


def refusal_reason(error: BaseException) -> str:
    """Why a handshake failed, in words, with OpenSSL's own name for it."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"bad client certificate ({error.verify_message})"
    if isinstance(error, ssl.SSLError):
        reason = error.reason or ""
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return f"no client certificate, and one is required ({reason})"
        if reason in _WRONG_PROTOCOL:
            return f"wrong protocol: {_WRONG_PROTOCOL[reason]} ({reason})"
        if "ALERT" in reason:
            # the client ended it: most often it did not trust our certificate
            return f"the client refused the handshake ({reason})"
        return reason or str(error)
    if isinstance(error, (ConnectionAbortedError, TimeoutError)):
        return f"no handshake in time ({error})"
    return str(error) or type(error).__name__


class Refusals:
    """The log of refused handshakes, rate-limited so that a flood cannot fill it."""

    __slots__ = ("burst", "logged", "missed", "started", "summary", "window")

    def __init__(self, burst: int = REFUSAL_BURST, window: float = REFUSAL_WINDOW) -> None:
        self.burst = burst
        self.window = window
        self.started = 0.0  # when the current window began
        self.logged = 0  # lines in the current window
        self.missed = 0  # refusals not logged in it
        self.summary: asyncio.TimerHandle | None = None  # the line that counts them

    def refused(self, peer: str, error: BaseException) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now - self.started >= self.window:
            self.started = now
            self.logged = 0
        if self.logged < self.burst:
            self.logged += 1
            log.warning("refused a TLS handshake from %s: %s", peer, refusal_reason(error))
            return
        if self.summary is None:
            self.summary = loop.call_at(self.started + self.window, self.close)
        self.missed += 1

    def close(self) -> None:
        """The count of the refusals not logged one by one (at the window's end or a stop)."""
        if self.summary is not None:
            self.summary.cancel()
            self.summary = None
        if self.missed:
            log.warning(
                "refused %d more TLS handshakes (at most %d in %s s are logged one by one)",
                self.missed,
                self.burst,
                f"{self.window:g}",
            )
            self.missed = 0


class _Early(asyncio.Protocol):
    """Holds what arrives between the handshake's end and the Gearman
    protocol's start (a client writes its first packet at once)."""

    __slots__ = ("data", "eof", "lost")

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.eof = False
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self.data.append(data)

    def eof_received(self) -> bool:
        self.eof = True
        return True  # the Gearman protocol decides, once it has started

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


class Handshake(asyncio.Protocol):
    """A TLS listener's connection until its handshake is done: the handshake
    runs here (asyncio's own TLS listener drops a failed one without a word),
    then ``app`` takes the connection. A refused handshake is logged."""

    __slots__ = ("app", "context", "lost", "raw_early", "refusals", "tasks")

    def __init__(
        self,
        app: Callable[[], GearmanProtocol],
        context: ssl.SSLContext,
        refusals: Refusals,
        tasks: set[asyncio.Task[None]],
    ) -> None:
        self.app = app()
        self.context = context
        self.refusals = refusals
        self.tasks = tasks  # holds the running handshakes (the loop keeps weak references)
        self.raw_early: list[bytes] = []  # read before the TLS layer was in place
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop starts reading after this returns, whatever it asks: what
        # arrives before the TLS layer is in place is kept for it)
        raw = cast(asyncio.Transport, transport)
        task = asyncio.get_running_loop().create_task(self._handshake(raw))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def data_received(self, data: bytes) -> None:
        self.raw_early.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True

    def _hand_over(self, raw: asyncio.Transport) -> None:
        """Give the TLS layer what was read before it was in place."""
        if self.raw_early:
            # asyncio's and uvloop's TLS layers are buffered protocols (uvloop's
            # is not a subclass of asyncio.BufferedProtocol)
            _feed(cast(asyncio.BufferedProtocol, raw.get_protocol()), b"".join(self.raw_early))
            self.raw_early = []

    async def _handshake(self, raw: asyncio.Transport) -> None:
        if self.lost:
            return
        peername = raw.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else "-"
        early = _Early()
        loop = asyncio.get_running_loop()
        # start_tls pauses reading and puts its protocol in place before it first
        # waits, and calls its protocol's connection_made and resume_reading with
        # call_soon: this callback runs in between (call_soon keeps order)
        loop.call_soon(self._hand_over, raw)
        try:
            tls = await loop.start_tls(raw, early, self.context, server_side=True)
        except (ssl.SSLError, ConnectionAbortedError, TimeoutError) as e:
            # ConnectionAbortedError: asyncio's and uvloop's handshake timeout
            self.refusals.refused(peer, e)
            raw.abort()
            return
        except (OSError, RuntimeError):  # the peer left mid-way: nothing was refused
            raw.abort()
            return
        if tls is None or early.lost:
            return
        app = self.app
        tls.set_protocol(app)
        app.connection_made(tls)
        for data in early.data:
            app.data_received(data)
        if early.eof and not app.eof_received():
            tls.close()


def _feed(app: asyncio.BufferedProtocol, data: bytes) -> None:
    view = memoryview(data)
    while view:
        target = memoryview(app.get_buffer(len(view)))
        n = min(len(target), len(view))
        target[:n] = view[:n]
        app.buffer_updated(n)
        view = view[n:]
