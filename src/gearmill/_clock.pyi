def monotonic() -> float:
    """time.monotonic's reading (see _clock.c)."""
