"""The client side of TLS: an SSL context from a CA and an optional client certificate.

``tls://host:port`` servers are spoken to with the context given to the client,
worker or admin client (``tls=``), else :func:`default_context`: the CA from
``GEARMILL_CLIENT_CA`` (else the system's trusted CAs) and the client
certificate and key from ``GEARMILL_CLIENT_CERT`` and ``GEARMILL_CLIENT_KEY``.
"""

from __future__ import annotations

import functools
import os
import ssl


def client_context(
    ca: str | None = None, cert: str | None = None, key: str | None = None
) -> ssl.SSLContext:
    """A context that checks the server against ``ca`` (PEM; None: the system's CAs) and
    shows ``cert``/``key`` (PEM) when the server asks; ValueError names a bad file."""
    try:
        ctx = ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"TLS CA file {ca}: cannot load it: {_why(e)}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(
                f"TLS client certificate {cert}"
                + (f" / key {key}" if key else "")
                + f": cannot load it: {_why(e)}"
            ) from None
    elif key:
        raise ValueError("a TLS client key without its certificate: give the certificate too")
    return ctx


@functools.cache
def default_context() -> ssl.SSLContext:
    env = os.environ
    return client_context(
        env.get("GEARMILL_CLIENT_CA") or None,
        env.get("GEARMILL_CLIENT_CERT") or None,
        env.get("GEARMILL_CLIENT_KEY") or None,
    )


def _why(e: Exception) -> str:
    if isinstance(e, ssl.SSLError):
        return e.reason or str(e)
    return (e.strerror if isinstance(e, OSError) else None) or str(e)
