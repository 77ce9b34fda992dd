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

The decoder never allocates from a size header: it only keeps the bytes that
arrived, so a header claiming 4 GiB costs nothing until the bytes come.
"""

from __future__ import annotations

from typing import Final

from .packets import ARG_COUNT, ARGS, HEADER, HEADER_SIZE, MAX_TYPE, REQ, RES, SEPARATORS

TEXT: Final = 0
WRONG_MAGIC: Final = -1
MALFORMED: Final = -2

Event = tuple[int, list[bytes]]

# gearmand parses leading arguments inside its 8 KiB receive buffer, so a
# packet without a data argument can never be larger than that (§1.1).
MAX_ARGS_SIZE: Final = 8192
MAX_TEXT_LINE: Final = 8192
MAX_PAYLOAD: Final = 0xFFFFFFFF
# buffered packets at least this large take the one-copy path
BIG: Final = 1 << 20

_HAS_DATA: Final = tuple(ARGS[t][1] for t in range(MAX_TYPE + 1))


class Decoder:
    """Splits a byte stream into packets (and admin lines when ``text`` is on)."""

    __slots__ = ("_buf", "_expect", "_need", "_other", "_text", "max_payload")

    def __init__(self, *, server: bool = True, max_payload: int = MAX_PAYLOAD) -> None:
        self._buf = bytearray()
        self._need = 0  # bytes the buffer must hold before parsing can progress
        self._expect = REQ if server else RES
        self._other = RES if server else REQ
        self._text = server
        self.max_payload = max_payload

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete event."""
        return len(self._buf)

    def _feed_big(self) -> list[Event]:
        """The buffer starts with a large packet: take its arguments with one copy.

        The general path would copy the whole buffer to ``bytes`` and then again
        when splitting; for a 64 MiB job that is most of the server's work.
        """
        buf = self._buf
        magic, ptype, size = HEADER.unpack_from(buf, 0)
        stop = HEADER_SIZE + size
        if (
            magic != self._expect
            or ptype == 0
            or ptype > MAX_TYPE
            or size > self.max_payload
            or not _HAS_DATA[ptype]
            or len(buf) < stop
        ):
            # anything unusual: the general path reports it exactly as usual
            self._buf = bytearray()
            self._need = 0
            return self.feed(bytes(buf))
        args: list[bytes] = []
        pos = HEADER_SIZE
        for _ in range(SEPARATORS[ptype]):
            nul = buf.find(b"\x00", pos, stop)
            if nul < 0:
                self._buf = bytearray()
                self._need = 0
                return [(MALFORMED, [b"missing arguments in packet type %d" % ptype])]
            args.append(bytes(buf[pos:nul]))
            pos = nul + 1
        with memoryview(buf) as view:
            args.append(view[pos:stop].tobytes())
            rest = bytes(view[stop:])
        self._buf = bytearray()
        self._need = 0
        events: list[Event] = [(ptype, args)]
        if rest:
            events += self.feed(rest)
        return events

    def feed(self, data: bytes) -> list[Event]:
        if self._buf:
            # Accumulate in place: a 64 MiB packet arriving in 256 KiB reads
            # must not be re-copied or re-parsed on every read.
            self._buf += data
            if len(self._buf) < self._need:
                return []
            if len(self._buf) >= BIG and self._buf[0] == 0:
                return self._feed_big()
            buf = bytes(self._buf)
            self._buf = bytearray()
        else:
            buf = data
        events: list[Event] = []
        pos = 0
        end = len(buf)
        unpack = HEADER.unpack_from
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
            magic, ptype, size = unpack(buf, pos)
            if ptype == 0 or ptype > MAX_TYPE:
                events.append((MALFORMED, [b"invalid packet type %d" % ptype]))
                return events
            if magic != self._expect and magic != self._other:
                events.append((MALFORMED, [b"invalid magic"]))
                return events
            if size > self.max_payload or (size > MAX_ARGS_SIZE and not _HAS_DATA[ptype]):
                events.append((MALFORMED, [b"packet too large"]))
                return events
            stop = pos + HEADER_SIZE + size
            if stop > end:
                self._need = HEADER_SIZE + size
                break
            if magic != self._expect:
                events.append((WRONG_MAGIC, [b"%d" % ptype]))
                pos = stop
                continue
            nargs = ARG_COUNT[ptype]
            if nargs == 0:
                args: list[bytes] = []
            elif nargs == 1:
                args = [bytes(buf[pos + HEADER_SIZE : stop])]
            else:
                args = buf[pos + HEADER_SIZE : stop].split(b"\x00", SEPARATORS[ptype])
                if len(args) != nargs:
                    events.append((MALFORMED, [b"missing arguments in packet type %d" % ptype]))
                    return events
            events.append((ptype, args))
            pos = stop
        if pos < end:
            self._buf = bytearray(buf[pos:])
        return events
