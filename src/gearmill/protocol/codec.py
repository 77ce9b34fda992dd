"""Incremental, sans-I/O decoder for Gearman streams.

``Decoder.feed(data)`` returns the events completed by ``data`` as
``(kind, args)`` tuples, in order:

* ``kind`` 1..42: a binary packet with the expected magic; ``args`` are its
  arguments as ``bytes`` (exactly ``ARG_COUNT[kind]`` of them).
* ``TEXT`` (0): an admin line (server side only); ``args == [line]`` without
  the line ending.
* ``WRONG_MAGIC`` (-1): a valid type with the other direction's magic;
  ``args == [type as bytes]``; gearmand answers it with ERROR and goes on.
* ``MALFORMED`` (-2): the stream cannot be parsed further; ``args == [reason]``.
  It is always the last event; the connection must be closed.

The decoder keeps only the bytes that arrived, with one exception: a packet
of ``BIG`` or more data bytes gets its final ``bytes`` object as soon as its
leading arguments are in (see ``Decoder``). That reserves address space, not
memory: the pages are zero-filled on demand and become resident only as data
arrives, so a header claiming 4 GiB still costs nothing until the bytes come.
"""

from __future__ import annotations

from typing import Final

from mypy_extensions import i64

from .packets import ARG_COUNT, ARGS, HEADER_SIZE, MAX_TYPE, REQ, RES, SEPARATORS
from .payload import Payload

TEXT: Final = 0
WRONG_MAGIC: Final = -1
MALFORMED: Final = -2

Event = tuple[int, list[bytes]]

# gearmand parses leading arguments inside its 8 KiB receive buffer, so a
# packet without a data argument can never be larger than that (§1.1).
MAX_ARGS_SIZE: Final = 8192
MAX_TEXT_LINE: Final = 8192
MAX_PAYLOAD: Final = 0xFFFFFFFF
# packets with at least this much data are received in place (see Decoder)
BIG: Final = 1 << 20
# called unbound: compiled, ``data.split(...)`` looks the method up by name on every
# packet (about 150 instructions of a round trip's 35,000)
_split: Final = bytes.split

# the packet tables indexed per packet, as bytes: compiled, indexing bytes is
# inline, indexing a tuple of ints is a call and an unboxing
_HAS_DATA: Final = bytes(ARGS[t][1] for t in range(MAX_TYPE + 1))
_ARG_COUNT: Final = bytes(ARG_COUNT)
_SEPARATORS: Final = bytes(SEPARATORS)


def _u32(buf: bytes, at: i64) -> i64:
    """The big-endian 32-bit integer at ``buf[at:at + 4]`` (compiled: machine
    arithmetic, no tagged-int calls)."""
    return i64(buf[at]) << 24 | i64(buf[at + 1]) << 16 | i64(buf[at + 2]) << 8 | i64(buf[at + 3])


class Decoder:
    """Splits a byte stream into packets (and admin lines when ``text`` is on).

    A packet with at least ``BIG`` bytes of data is received in place: once its
    header and leading arguments are in, the decoder allocates the data's final
    ``bytes`` and ``payload_target()`` offers the unfilled part of it, for the
    edge to read the socket straight into (then ``payload_filled(n)``).
    ``feed()`` works in that state too, copying into the target.
    """

    __slots__ = (
        "_args",
        "_buf",
        "_filled",
        "_mine",
        "_need",
        "_payload",
        "_ptype",
        "_text",
        "max_payload",
    )

    def __init__(self, *, server: bool = True, max_payload: int = MAX_PAYLOAD) -> None:
        self._buf = bytearray()
        self._need = 0  # bytes the buffer must hold before parsing can progress
        # last byte of the magic this side expects: "Q" of \0REQ or "S" of \0RES
        self._mine = (REQ if server else RES)[3]
        self._text = server
        self.max_payload = max_payload
        # the large packet being received in place, if any
        self._payload: Payload | None = None
        self._ptype = 0
        self._args: list[bytes] = []
        self._filled = 0

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete event (of a large packet: its data so far)."""
        return len(self._buf) + self._filled

    def payload_target(self) -> memoryview | None:
        """The unfilled part of a large packet's data, to read into; else None."""
        payload = self._payload
        if payload is None:
            return None
        return payload.view[self._filled :]

    def payload_filled(self, n: int) -> list[Event]:
        """``n`` bytes were written at the start of ``payload_target()``."""
        payload = self._payload
        assert payload is not None
        self._filled += n
        if self._filled < len(payload.view):
            return []
        return [self._finish_payload(payload)]

    def _finish_payload(self, payload: Payload) -> Event:
        args = self._args
        args.append(payload.finish())
        self._payload = None
        self._args = []
        self._filled = 0
        return (self._ptype, args)

    def _start_payload(self, buf: bytes, pos: int, end: int, ptype: int, size: int) -> bool:
        """An incomplete large packet starts at ``pos``: switch to receiving in place
        once its leading arguments are all here."""
        stop = pos + HEADER_SIZE + size
        args: list[bytes] = []
        at = pos + HEADER_SIZE
        for _ in range(SEPARATORS[ptype]):
            nul = buf.find(b"\x00", at, end)
            if nul < 0:
                return False
            args.append(buf[at:nul])
            at = nul + 1
        try:
            payload = Payload(stop - at)
        except MemoryError:
            return False  # no address space left: buffer what arrives instead
        payload.view[: end - at] = memoryview(buf)[at:end]
        self._payload = payload
        self._ptype = ptype
        self._args = args
        self._filled = end - at
        self._need = 0
        return True

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        payload = self._payload
        if payload is not None:
            room = len(payload.view) - self._filled
            if len(data) < room:
                payload.view[self._filled : self._filled + len(data)] = data
                self._filled += len(data)
                return events
            payload.view[self._filled :] = memoryview(data)[:room]
            events.append(self._finish_payload(payload))
            if len(data) == room:
                return events
            data = data[room:]
        if len(self._buf):  # (compiled, a bytearray's truth value is a generic call)
            # Accumulate in place: a packet arriving in many reads must not be
            # re-copied or re-parsed on every read.
            self._buf += data
            if len(self._buf) < self._need:
                return events
            buf = bytes(self._buf)
            self._buf = bytearray()
        else:
            buf = data
        # positions and header fields as machine integers (compiled: no tagged-int
        # calls, about 300 instructions a drained job)
        pos: i64 = 0
        end: i64 = len(buf)
        while pos < end:
            if buf[pos] != 0:
                if not self._text:
                    events.append((MALFORMED, [b"unexpected text in binary stream"]))
                    return events
                nl = buf.find(b"\n", pos, pos + MAX_TEXT_LINE)
                if nl < 0:
                    if end - pos >= MAX_TEXT_LINE:
                        events.append((MALFORMED, [b"admin line too long"]))
                        return events
                    self._need = end - pos + 1
                    break
                line = buf[pos:nl]
                if line.endswith(b"\r"):
                    line = line[:-1]
                events.append((TEXT, [bytes(line)]))
                pos = nl + 1
                continue
            if end - pos < HEADER_SIZE:
                self._need = HEADER_SIZE
                break
            # the header byte by byte (compiled, no tuple or magic bytes per packet)
            kind = buf[pos + 3]
            ptype = _u32(buf, pos + 4)
            size = _u32(buf, pos + 8)
            if ptype == 0 or ptype > MAX_TYPE:
                events.append((MALFORMED, [b"invalid packet type %d" % ptype]))
                return events
            if buf[pos + 1] != 0x52 or buf[pos + 2] != 0x45 or (kind != 0x51 and kind != 0x53):
                events.append((MALFORMED, [b"invalid magic"]))
                return events
            if size > self.max_payload or (size > MAX_ARGS_SIZE and not _HAS_DATA[ptype]):
                events.append((MALFORMED, [b"packet too large"]))
                return events
            stop = pos + HEADER_SIZE + size
            if stop > end:
                if (
                    size >= BIG
                    and kind == self._mine
                    and _HAS_DATA[ptype]
                    and self._start_payload(buf, pos, end, ptype, size)
                ):
                    return events
                # not yet: wait for the whole packet, or (a large packet whose
                # leading arguments are still incomplete) for a few more bytes
                if size >= BIG and end - pos < HEADER_SIZE + MAX_ARGS_SIZE:
                    self._need = end - pos + 1
                else:
                    self._need = HEADER_SIZE + size
                break
            if kind != self._mine:
                events.append((WRONG_MAGIC, [b"%d" % ptype]))
                pos = stop
                continue
            nargs = _ARG_COUNT[ptype]
            if nargs == 0:
                args: list[bytes] = []
            elif nargs == 1:
                args = [buf[pos + HEADER_SIZE : stop]]  # a slice of bytes is bytes
            else:
                args = _split(buf[pos + HEADER_SIZE : stop], b"\x00", _SEPARATORS[ptype])
                if len(args) != nargs:
                    events.append((MALFORMED, [b"missing arguments in packet type %d" % ptype]))
                    return events
            events.append((ptype, args))
            pos = stop
        if pos < end:
            self._buf = bytearray(buf[pos:])
        return events
