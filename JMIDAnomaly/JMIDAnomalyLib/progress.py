"""Progress callbacks: long jobs take ``progress(fraction, message)`` and ``should_stop()``."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

Progress = Callable[[float, str], None]


def console_progress(name: str, stream=None, min_interval_s: float = 0.5) -> Progress:
    """A one-line progress bar on stderr (a plain line per update when not a terminal)."""
    stream = stream or sys.stderr
    last = [0.0]

    def report(fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - last[0] < min_interval_s and fraction < 1.0:
            return
        last[0] = now
        filled = int(round(30 * max(0.0, min(1.0, fraction))))
        line = f"{name} [{'#' * filled}{'.' * (30 - filled)}] {100 * fraction:5.1f}% {message}"
        if stream.isatty():
            stream.write("\r" + line + ("\n" if fraction >= 1.0 else ""))
        else:
            stream.write(line + "\n")
        stream.flush()

    return report
