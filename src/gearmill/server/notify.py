"""systemd's service notifications (``Type=notify``), in the standard library.

systemd passes ``NOTIFY_SOCKET`` (a unix datagram socket: a path, or an abstract
name written with a leading ``@``) and, when the unit sets ``WatchdogSec=``,
``WATCHDOG_USEC`` (and ``WATCHDOG_PID``). The server says ``READY=1`` once it
listens, ``STOPPING=1`` when a stop begins, ``WATCHDOG=1`` at half the
watchdog interval from its event loop (so a stuck loop gets the service
restarted), and ``STATUS=`` lines that ``systemctl status`` shows. Without
``NOTIFY_SOCKET`` every call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger("gearmill.server")

STATUS_PERIOD = 10.0  # seconds between STATUS= refreshes when there is no watchdog


class Notifier:
    """Datagrams to the service manager; failures are logged once, never raised."""

    def __init__(self, address: str | None, watchdog_usec: int = 0) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._failed = False
        self._stopping = False
        self._timer: asyncio.TimerHandle | None = None
        self._status: Callable[[], str] | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Notifier:
        """From systemd's variables; a watchdog meant for another process is ignored."""
        address = env.get("NOTIFY_SOCKET") or None
        usec = 0
        raw = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if raw.isdigit() and (not pid or pid == str(os.getpid())):
            usec = int(raw)
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> None:
        """One datagram of ``KEY=value`` lines."""
        if self.address is None or self._failed:
            return
        # '@' names an abstract socket: a leading NUL byte on the wire
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # never block the event loop on a busy manager
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(fields).encode(), target)
        except BlockingIOError:
            pass  # its queue is full: this one is dropped, the next ping tries again
        except OSError as e:
            # the server runs on without the manager; say so once
            self._failed = True
            log.error(
                "NOTIFY_SOCKET %s: cannot notify the service manager: %s",
                self.address,
                e.strerror or e,
            )

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def stopping(self, status: str) -> None:
        """STOPPING=1 once (a graceful stop that ends says only its new status)."""
        if self._stopping:
            self.status(status)
        else:
            self._stopping = True
            self.send("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    # ------------------------------------------------------------- watchdog

    def start(self, status: Callable[[], str] | None = None) -> None:
        """From the running loop: WATCHDOG=1 at half the interval, and a fresh STATUS
        with each ping (every STATUS_PERIOD seconds without a watchdog)."""
        self._status = status
        if self.enabled and self._timer is None:
            self._tick()

    def _tick(self) -> None:
        fields = ["WATCHDOG=1"] if self.watchdog_usec else []
        if self._status is not None:
            fields.append(f"STATUS={self._status()}")
        if fields:
            self.send(*fields)
        delay = self.watchdog_usec / 2_000_000 if self.watchdog_usec else STATUS_PERIOD
        self._timer = asyncio.get_running_loop().call_later(delay, self._tick)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
