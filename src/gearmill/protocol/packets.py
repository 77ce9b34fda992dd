"""The Gearman binary packet table: types, magic codes and argument counts.

Everything here mirrors libgearman's ``gearmand_command_info_list`` (and
gearmand's PROTOCOL document): server and clients share that table, so a
packet whose layout differs by one NUL desynchronises the stream.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

REQ: Final = b"\x00REQ"
RES: Final = b"\x00RES"
HEADER: Final = struct.Struct(">4sII")
HEADER_SIZE: Final = 12
DEFAULT_PORT: Final = 4730


class PacketType(enum.IntEnum):
    TEXT = 0
    CAN_DO = 1
    CANT_DO = 2
    RESET_ABILITIES = 3
    PRE_SLEEP = 4
    UNUSED = 5
    NOOP = 6
    SUBMIT_JOB = 7
    JOB_CREATED = 8
    GRAB_JOB = 9
    NO_JOB = 10
    JOB_ASSIGN = 11
    WORK_STATUS = 12
    WORK_COMPLETE = 13
    WORK_FAIL = 14
    GET_STATUS = 15
    ECHO_REQ = 16
    ECHO_RES = 17
    SUBMIT_JOB_BG = 18
    ERROR = 19
    STATUS_RES = 20
    SUBMIT_JOB_HIGH = 21
    SET_CLIENT_ID = 22
    CAN_DO_TIMEOUT = 23
    ALL_YOURS = 24
    WORK_EXCEPTION = 25
    OPTION_REQ = 26
    OPTION_RES = 27
    WORK_DATA = 28
    WORK_WARNING = 29
    GRAB_JOB_UNIQ = 30
    JOB_ASSIGN_UNIQ = 31
    SUBMIT_JOB_HIGH_BG = 32
    SUBMIT_JOB_LOW = 33
    SUBMIT_JOB_LOW_BG = 34
    SUBMIT_JOB_SCHED = 35
    SUBMIT_JOB_EPOCH = 36
    SUBMIT_REDUCE_JOB = 37
    SUBMIT_REDUCE_JOB_BACKGROUND = 38
    GRAB_JOB_ALL = 39
    JOB_ASSIGN_ALL = 40
    GET_STATUS_UNIQUE = 41
    STATUS_RES_UNIQUE = 42


MAX_TYPE: Final = 42

# (number of NUL-terminated leading arguments, has a trailing opaque data argument).
# For packets without data the last declared argument is "the rest of the payload".
ARGS: Final[dict[int, tuple[int, bool]]] = {
    0: (5, False),
    1: (1, False),
    2: (1, False),
    3: (0, False),
    4: (0, False),
    5: (0, False),
    6: (0, False),
    7: (2, True),
    8: (1, False),
    9: (0, False),
    10: (0, False),
    11: (2, True),
    12: (3, False),
    13: (1, True),
    14: (1, False),
    15: (1, False),
    16: (0, True),
    17: (0, True),
    18: (2, True),
    19: (2, False),
    20: (5, False),
    21: (2, True),
    22: (1, False),
    23: (2, False),
    24: (0, False),
    25: (1, True),
    26: (1, False),
    27: (1, False),
    28: (1, True),
    29: (1, True),
    30: (0, False),
    31: (3, True),
    32: (2, True),
    33: (2, True),
    34: (2, True),
    35: (7, True),
    36: (3, True),
    37: (4, True),
    38: (4, True),
    39: (0, False),
    40: (4, True),
    41: (1, False),
    42: (6, False),
}

# Number of NUL separators a payload needs, and whether the payload can be empty of args.
# Derived from ARGS so both stay one table.
SEPARATORS: Final[tuple[int, ...]] = tuple(
    (argc if data else max(argc - 1, 0)) for argc, data in (ARGS[t] for t in range(MAX_TYPE + 1))
)
ARG_COUNT: Final[tuple[int, ...]] = tuple(
    (argc + 1 if data else argc) for argc, data in (ARGS[t] for t in range(MAX_TYPE + 1))
)


class Priority(enum.IntEnum):
    """Queue priority; the values are the ones gearmand's stores write (0 = high)."""

    HIGH = 0
    NORMAL = 1
    LOW = 2


# submit packet type -> (priority, background)
SUBMIT_TYPES: Final[dict[int, tuple[Priority, bool]]] = {
    PacketType.SUBMIT_JOB: (Priority.NORMAL, False),
    PacketType.SUBMIT_JOB_BG: (Priority.NORMAL, True),
    PacketType.SUBMIT_JOB_HIGH: (Priority.HIGH, False),
    PacketType.SUBMIT_JOB_HIGH_BG: (Priority.HIGH, True),
    PacketType.SUBMIT_JOB_LOW: (Priority.LOW, False),
    PacketType.SUBMIT_JOB_LOW_BG: (Priority.LOW, True),
    PacketType.SUBMIT_JOB_EPOCH: (Priority.NORMAL, True),
    PacketType.SUBMIT_REDUCE_JOB: (Priority.NORMAL, False),
    PacketType.SUBMIT_REDUCE_JOB_BACKGROUND: (Priority.NORMAL, True),
}


def submit_type(priority: Priority, background: bool) -> PacketType:
    """The plain SUBMIT_JOB* packet type for a priority and mode."""
    for ptype, (prio, bg) in SUBMIT_TYPES.items():
        if prio == priority and bg == background and ptype < PacketType.SUBMIT_JOB_SCHED:
            return PacketType(ptype)
    raise ValueError(priority)


# ERROR codes gearmand sends (libgearman's gearman_return_t names without GEARMAN_).
class ErrorCode:
    INVALID_MAGIC: Final = b"INVALID_MAGIC"
    INVALID_COMMAND: Final = b"INVALID_COMMAND"
    ARGUMENT_TOO_LARGE: Final = b"ARGUMENT_TOO_LARGE"
    QUEUE_ERROR: Final = b"QUEUE_ERROR"
    JOB_NOT_FOUND: Final = b"JOB_NOT_FOUND"
    UNKNOWN_OPTION: Final = b"UNKNOWN_OPTION"


def encode(ptype: int, *args: bytes, magic: bytes = RES) -> bytes:
    """Encode one packet; arguments are joined by NUL (the last one is never terminated)."""
    payload = b"\x00".join(args)
    return HEADER.pack(magic, ptype, len(payload)) + payload


def encode_req(ptype: int, *args: bytes) -> bytes:
    return encode(ptype, *args, magic=REQ)


# A last argument at least this large is written as its own piece, never copied.
BIG_PIECE: Final = 1 << 20


def encode_pieces(ptype: int, *args: bytes) -> list[bytes]:
    """``encode`` as a list of pieces to write in turn: a large last argument is not joined."""
    last = args[-1]
    if len(last) < BIG_PIECE:
        return [encode(ptype, *args)]
    head = b"".join(a + b"\x00" for a in args[:-1])
    return [HEADER.pack(RES, ptype, len(head) + len(last)) + head, last]
