"""``--verbose DEBUG``: what workers register, and jobs their worker gave back.

A journal consumer (server/fanout.py), attached only when the server starts at
DEBUG: at any other level it does not exist, and the job path pays nothing for
it. Connections opening and closing are logged by the connection's edge
(server/connection.py), store commits by the store's writer (server/durable.py).
"""

from __future__ import annotations

import logging

from .journal import REASONS, Entry, JobRequeued, WorkerCame, WorkerLeft
from .model import Peer

log = logging.getLogger("gearmill.broker")


def who(peer: Peer) -> str:
    """``worker 7 (127.0.0.1, id w-1)``: the connection number admin ``workers`` shows."""
    client_id = peer.client_id.decode(errors="replace")
    named = "" if client_id == "-" else f", id {client_id}"
    return f"connection {peer.fd} ({peer.addr}{named})"


class DebugLog:
    """One line per peer per batch for what it registered or dropped; one per job a
    worker gave back."""

    __slots__ = ()

    def consume(self, entries: list[Entry], held: list[Peer]) -> None:
        came: dict[Peer, list[str]] = {}
        left: dict[Peer, list[str]] = {}
        for entry in entries:
            if isinstance(entry, WorkerCame):
                came.setdefault(entry.peer, []).append(entry.function.decode(errors="replace"))
            elif isinstance(entry, WorkerLeft):
                left.setdefault(entry.peer, []).append(entry.function.decode(errors="replace"))
            elif isinstance(entry, JobRequeued):
                job = entry.job
                log.debug(
                    "job %s (%s) back in its queue (%s)%s",
                    job.handle.decode(errors="replace"),
                    job.func.name.decode(errors="replace"),
                    REASONS[entry.why],
                    f" from {who(entry.worker)}" if entry.worker is not None else "",
                )
        for peer, names in came.items():
            log.debug("%s can do: %s", who(peer), ", ".join(names))
        for peer, names in left.items():
            log.debug("%s no longer does: %s", who(peer), ", ".join(names))
