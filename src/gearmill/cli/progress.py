"""A one-line progress bar on a terminal; silent when not enabled (piped, redirected)."""

from __future__ import annotations

import sys
import time

WIDTH = 30


class Progress:
    """Jobs done and rate; with ``total`` (bytes of a regular input file) a bar and a percent."""

    def __init__(self, enabled: bool, total: int | None = None, every: float = 0.2) -> None:
        self.enabled = enabled
        self.total = total or None
        self.every = every
        self._last = 0.0
        self._start = time.monotonic()

    def _line(self, done: int, position: int, seconds: float) -> str:
        rate = done / max(seconds, 1e-9)
        text = f"{done:,} jobs  {rate:,.0f}/s"
        if self.total:
            frac = min(position / self.total, 1.0)
            filled = int(frac * WIDTH)
            text = f"[{'#' * filled}{'.' * (WIDTH - filled)}] {frac * 100:3.0f}%  " + text
        return text

    def update(self, done: int, position: int = 0) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            sys.stderr.write("\r" + self._line(done, position, now - self._start))
            sys.stderr.flush()

    def finish(self, done: int, seconds: float) -> None:
        if self.enabled:
            end = self.total or 0
            sys.stderr.write(f"\r{self._line(done, end, seconds)}  in {seconds:.1f} s\n")
            sys.stderr.flush()
