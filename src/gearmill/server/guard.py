"""The edge's limits on connections: how many in all and per address, and how
long one may stay without sending a byte (docs/threat-model.md).

Interpreted, not compiled: it runs once per connection, never per packet.
"""

from __future__ import annotations

import logging

log = logging.getLogger("gearmill.server")


class Guard:
    """Counts open connections; refuses one over a limit (0 = none), logging
    each limit once."""

    __slots__ = ("by_address", "idle_timeout", "logged", "max_per_address", "max_total", "total")

    def __init__(self, max_total: int = 0, max_per_address: int = 0, idle_timeout: int = 0) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.idle_timeout = idle_timeout
        self.total = 0
        self.by_address: dict[str, int] = {}
        self.logged: set[str] = set()

    def admit(self, addr: str) -> bool:
        """Count a new connection from ``addr``; False (and not counted) when over a limit."""
        if self.max_total and self.total >= self.max_total:
            self.once("max_connections", f"{self.total} connections open (--max-connections)")
            return False
        count = self.by_address.get(addr, 0)
        if self.max_per_address and count >= self.max_per_address:
            self.once(
                "max_connections_per_address",
                f"{count} connections open from {addr} (--max-connections-per-address)",
            )
            return False
        self.total += 1
        self.by_address[addr] = count + 1
        return True

    def leave(self, addr: str) -> None:
        self.total -= 1
        count = self.by_address.get(addr, 0) - 1
        if count > 0:
            self.by_address[addr] = count
        else:
            self.by_address.pop(addr, None)

    def once(self, limit: str, detail: str) -> None:
        if limit not in self.logged:
            self.logged.add(limit)
            log.warning("refused a connection: %s (logged once per limit)", detail)
