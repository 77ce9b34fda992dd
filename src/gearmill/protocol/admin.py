"""The admin text protocol: line tokenising and gearmand's exact reply strings.

gearmand mixes line endings: lists end in ``\\n`` and ``.\\n``, ``OK <value>``
ends in ``\\n``, bare ``OK`` and every ``ERR`` in ``\\r\\n`` (reference §2.1).
"""

from __future__ import annotations

from typing import Final

MAX_TOKENS: Final = 5

OK: Final = b"OK\r\n"
END: Final = b".\n"
ERR_UNKNOWN_JOB: Final = b"ERR UNKNOWN_JOB\r\n"
ERR_INTERNAL: Final = b"ERR UNKNOWN_ERROR\r\n"
ERR_UNKNOWN_SHOW: Final = b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"
ERR_DROP_BUSY: Final = b"ERR there are still connected workers or executing clients\r\n"
ERR_DROP_MISSING: Final = b"ERR function not found\r\n"


def ok_value(value: bytes) -> bytes:
    return b"OK " + value + b"\n"


def err_unknown_command(command: bytes) -> bytes:
    return b"ERR UNKNOWN_COMMAND Unknown+server+command" + command + b"\r\n"


def err_arguments(command: bytes) -> bytes:
    return (
        b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+"
        + command
        + b"\r\n"
    )


class TooManyTokens(ValueError):
    """gearmand closes the connection on a line with more than five tokens."""


def tokenize(line: bytes) -> list[bytes]:
    """Split an admin line as gearmand does.

    Single spaces separate; runs of spaces after the first token collapse, but
    a leading space yields an empty command. Tabs are not separators.
    """
    parts = line.split(b" ")
    tokens = [parts[0]] + [p for p in parts[1:] if p]
    if len(tokens) > MAX_TOKENS:
        raise TooManyTokens(line)
    return tokens


def atoi(value: bytes) -> int:
    """C ``atoi``: optional sign and leading digits, anything else stops; garbage is 0."""
    value = value.strip()
    sign = 1
    if value[:1] in (b"-", b"+"):
        sign = -1 if value[:1] == b"-" else 1
        value = value[1:]
    n = 0
    for c in value:
        if 48 <= c <= 57:
            n = n * 10 + (c - 48)
        else:
            break
    return sign * n
