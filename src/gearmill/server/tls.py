"""TLS listeners: the server's SSL context and a protocol that names its peer by certificate."""

from __future__ import annotations

import asyncio
import ssl

from .access import subject_text
from .config import TLSConfig
from .connection import GearmanProtocol
from .model import Peer

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
