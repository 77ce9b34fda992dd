"""Where a peer's bytes go: a socket stream, an in-process caller, a test.

The broker writes each peer's pending output to the peer's :class:`Sink` on a
flush and never asks what is behind it.
"""

from __future__ import annotations

from typing import Protocol


class Sink(Protocol):
    def write(self, data: bytes) -> None:
        """Send ``data`` (one or more whole packets or admin replies)."""

    def writelines(self, data: list[bytes]) -> None:
        """Send the pieces in turn (a large job's data is one piece, not copied)."""

    def close(self) -> None:
        """Close once what was written has gone out."""

    def abort(self) -> None:
        """Close now, dropping anything not yet sent (a server stopping at once)."""


class BufferSink:
    """An in-process sink: keeps what the broker sent until ``take()``."""

    __slots__ = ("_chunks", "aborted", "closed")

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        if not self.closed:
            self._chunks.append(data)

    def writelines(self, data: list[bytes]) -> None:
        if not self.closed:
            self._chunks += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self._chunks.clear()
        self.closed = self.aborted = True

    def take(self) -> bytes:
        """Everything written since the last call."""
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data
