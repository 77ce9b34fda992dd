"""A one-line progress counter on a terminal; silent when not enabled."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, enabled: bool, every: float = 0.2) -> None:
        self.enabled = enabled
        self.every = every
        self._last = 0.0
        self._start = time.monotonic()

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            rate = done / max(now - self._start, 1e-9)
            sys.stderr.write(f"\r{done} jobs  {rate:,.0f}/s")
            sys.stderr.flush()

    def finish(self, done: int, seconds: float) -> None:
        if self.enabled:
            sys.stderr.write(f"\r{done} jobs in {seconds:.1f} s\n")
            sys.stderr.flush()
