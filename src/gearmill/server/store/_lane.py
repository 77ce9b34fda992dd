"""What every store's lane connection shares (see `Lane` in _base.py): the one
commit in flight and its `done`, readiness, and how it ends (an answer, `abort`, or
the connection lost, each calling `done` once). Each store's module adds its wire
protocol: connecting, `send`, `data_received`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol, cast


class Owned(Protocol):
    """The store a lane's jobs are stored for: its owner (None: none; set after open)
    is read at each send, as an attribute (a callable would be an interpreted call)."""

    owner: str | None


class LaneConnection(asyncio.Protocol):
    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._done: Callable[[str | None], None] | None = None  # the commit in flight
        self._setup: asyncio.Future[None] | None = None  # a reader waiting, while connecting
        self._ready = False  # connected, authenticated, prepared

    def ready(self) -> bool:
        return self._ready and self._done is None

    def broken(self) -> bool:
        return self._transport is None

    def abort(self, why: str) -> None:
        self._fail(why)
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, why: str) -> None:
        self._ready = False
        done, self._done = self._done, None
        self._forget()
        if done is not None:
            done(why)

    def _forget(self) -> None:
        """What a store's protocol keeps of the commit in flight, dropped with it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        fut = self._setup
        if fut is not None and not fut.done():
            fut.set_exception(ConnectionError("connection lost"))
        self._fail(f"connection lost: {exc}" if exc else "connection lost")
