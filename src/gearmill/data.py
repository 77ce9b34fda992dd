"""Job data as the libraries accept and return it: bytes on the wire, codecs on request.

Gearman payloads are opaque bytes. The client and worker pass ``bytes`` (and
``bytearray``/``memoryview``) through and encode ``str`` as UTF-8; anything
else is a :class:`TypeError` naming the type, unless a :class:`Codec` was
given, which then turns any object into bytes and back (``JSON`` for dicts,
lists and numbers).
"""

from __future__ import annotations

import json
from typing import Any, Protocol

Data = bytes | bytearray | memoryview | str


class Codec(Protocol):
    """Turns job data (arguments and results) into bytes and back."""

    def encode(self, value: Any) -> bytes: ...
    def decode(self, data: bytes) -> Any: ...


class JsonCodec:
    """UTF-8 JSON: dicts, lists, numbers, strings, booleans and None round-trip."""

    def encode(self, value: Any) -> bytes:
        try:
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError) as e:
            raise TypeError(f"job data cannot be encoded as JSON: {e}") from None

    def decode(self, data: bytes) -> Any:
        if not data:
            return None
        try:
            return json.loads(data)
        except ValueError as e:  # also UnicodeDecodeError
            shown = data[:40] + (b"..." if len(data) > 40 else b"")
            raise ValueError(f"job result is not JSON ({e}): {shown!r}") from None

    def __repr__(self) -> str:
        return "JSON"


JSON = JsonCodec()


def to_bytes(value: object, what: str = "job data") -> bytes:
    """``bytes``-like values as they are, ``str`` as UTF-8; anything else is a TypeError.

    ``bytes(5)`` would be five NUL bytes and ``bytes([1, 2])`` two bytes: never what
    a caller meant, so they are refused instead of converted.
    """
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(
        f"{what} must be bytes or str, not {type(value).__name__}"
        " (pass codec=gearmill.JSON to send other objects as JSON)"
    )


def encode(value: object, codec: Codec | None, what: str = "job data") -> bytes:
    """Bytes for the wire: through ``codec`` when one is set, else :func:`to_bytes`."""
    if codec is None:
        return to_bytes(value, what)
    return codec.encode(value)
