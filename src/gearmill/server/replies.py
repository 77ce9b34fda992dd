"""The server's fixed replies, encoded once (protocol/packets.py has the encoder)."""

from __future__ import annotations

from typing import Final

from ..protocol.packets import HEADER, MAX_TYPE, RES, ErrorCode, PacketType, encode
from .model import MAX_HANDLE

# the header packer as a bound method: no attribute lookup per packet
_pack: Final = HEADER.pack
_STATUS_RES: Final = int(PacketType.STATUS_RES)
# "known 0, running 0, numerator 0, denominator 0"
_UNKNOWN: Final = b"\x000\x000\x000\x000"

NOOP: Final = encode(PacketType.NOOP)
NO_JOB: Final = encode(PacketType.NO_JOB)

# JOB_CREATED headers for the usual handle lengths: a submission's answer is
# then one concatenation
_JOB_CREATED_HEAD: Final = tuple(
    HEADER.pack(RES, PacketType.JOB_CREATED, n) for n in range(MAX_HANDLE + 1)
)


def job_created(handle: bytes) -> bytes:
    n = len(handle)
    if n <= MAX_HANDLE:
        return _JOB_CREATED_HEAD[n] + handle
    return encode(PacketType.JOB_CREATED, handle)


# Fixed-arity encoders for the replies of the benchmarked paths: the generic
# ``encode(ptype, *args)`` costs about 1,800 instructions a packet (argument
# tuple, method lookup of the header packer), a sixth of a GET_STATUS.
# A small packet's header is two table lookups (magic and type, then the size)
# instead of a struct call: about 550 instructions less a packet.
_SMALL: Final = 2048
_SIZES: Final = tuple(n.to_bytes(4, "big") for n in range(_SMALL))
_PREFIX: Final = tuple(RES + t.to_bytes(4, "big") for t in range(MAX_TYPE + 1))


def packet2(ptype: int, a: bytes, b: bytes) -> bytes:
    n = len(a) + len(b) + 1
    if n < _SMALL:
        return b"%b%b%b\x00%b" % (_PREFIX[ptype], _SIZES[n], a, b)
    return b"".join([_pack(RES, ptype, n), a, b"\x00", b])


def packet3(ptype: int, a: bytes, b: bytes, c: bytes) -> bytes:
    n = len(a) + len(b) + len(c) + 2
    if n < _SMALL:
        return b"%b%b%b\x00%b\x00%b" % (_PREFIX[ptype], _SIZES[n], a, b, c)
    return b"".join([_pack(RES, ptype, n), a, b"\x00", b, b"\x00", c])


def packet4(ptype: int, a: bytes, b: bytes, c: bytes, d: bytes) -> bytes:
    n = len(a) + len(b) + len(c) + len(d) + 3
    if n < _SMALL:
        return b"%b%b%b\x00%b\x00%b\x00%b" % (_PREFIX[ptype], _SIZES[n], a, b, c, d)
    return b"".join([_pack(RES, ptype, n), a, b"\x00", b, b"\x00", c, b"\x00", d])


# STATUS_RES headers for a handle of the usual lengths and an 8-byte tail (unknown,
# or known without a WORK_STATUS): a GET_STATUS answer is then one join, no struct
# call (about 700 of a GET_STATUS round trip's 9,900 instructions)
_STATUS_HEAD: Final = tuple(
    HEADER.pack(RES, PacketType.STATUS_RES, n + 8) for n in range(MAX_HANDLE + 1)
)
_QUEUED: Final = b"\x001\x000\x000\x000"
_RUNNING: Final = b"\x001\x001\x000\x000"


def status_res(handle: bytes, known: bool, running: bool, num: int, den: int) -> bytes:
    """STATUS_RES: known, running, numerator, denominator."""
    if not known:
        tail = _UNKNOWN
    elif num == 0 and den == 0:
        tail = _RUNNING if running else _QUEUED
    else:
        tail = b"\x001\x00%d\x00%d\x00%d" % (int(running), num, den)
        return b"".join([_pack(RES, _STATUS_RES, len(handle) + len(tail)), handle, tail])
    n = len(handle)
    if n <= MAX_HANDLE:
        return b"%b%b%b" % (_STATUS_HEAD[n], handle, tail)
    return b"".join([_pack(RES, _STATUS_RES, n + 8), handle, tail])


def error(code: bytes, message: bytes) -> bytes:
    return encode(PacketType.ERROR, code, message)


ERR_NOT_EXPECTED: Final = error(ErrorCode.INVALID_COMMAND, b"Command not expected")
ERR_MAGIC: Final = error(ErrorCode.INVALID_MAGIC, b"Request magic expected")
ERR_UNIQUE: Final = error(ErrorCode.ARGUMENT_TOO_LARGE, b"Unique value too large")
ERR_QUEUE_FULL: Final = error(ErrorCode.QUEUE_ERROR, b"Job queue is full")
ERR_SHUTTING_DOWN: Final = error(ErrorCode.QUEUE_ERROR, b"Server is shutting down")
ERR_RESULT_NOT_FOUND: Final = error(ErrorCode.JOB_NOT_FOUND, b"Job given in work result not found")
ERR_DATA_NOT_FOUND: Final = error(ErrorCode.JOB_NOT_FOUND, b"Job does not exist on server")
ERR_EXCEPTION_NOT_FOUND: Final = error(
    ErrorCode.JOB_NOT_FOUND, b"An exception was received for a job that does not exist"
)
ERR_HANDLE_SIZE: Final = error(
    ErrorCode.ARGUMENT_TOO_LARGE,
    b"Error occurred due to GEARMAND_JOB_HANDLE_SIZE being too small from snprintf",
)
ERR_OPTION: Final = error(ErrorCode.UNKNOWN_OPTION, b"Server does not recognize given option")
# limits set by the operator (docs/threat-model.md)
ERR_NAME_SIZE: Final = error(ErrorCode.ARGUMENT_TOO_LARGE, b"Function name too large")
ERR_TOO_MANY_FUNCTIONS: Final = error(
    ErrorCode.ARGUMENT_TOO_LARGE, b"Too many functions registered on this connection"
)
# only an access list sends these; gearmand's own code for a packet not accepted
# from this peer, so every client already handles it (the text says why)
ERR_DENIED: Final = error(ErrorCode.INVALID_COMMAND, b"Permission denied for this connection")
ERR_DENIED_TEXT: Final = b"ERR PERMISSION_DENIED Not+allowed+for+this+connection\r\n"
