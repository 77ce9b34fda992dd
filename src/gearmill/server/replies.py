"""The server's fixed replies, encoded once (protocol/packets.py has the encoder)."""

from __future__ import annotations

from typing import Final

from ..protocol.packets import HEADER, RES, ErrorCode, PacketType, encode
from .model import MAX_HANDLE

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
# only an access list configured by the operator sends these
ERR_DENIED: Final = error(b"PERMISSION_DENIED", b"Not allowed for this connection")
ERR_DENIED_TEXT: Final = b"ERR PERMISSION_DENIED Not+allowed+for+this+connection\r\n"
