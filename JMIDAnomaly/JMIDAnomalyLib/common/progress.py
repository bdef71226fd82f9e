"""The callables long jobs take: ``progress(fraction, message)`` and ``should_stop()``.

Every long job (segmentation, crops, training, analysis, label import, the demo) takes a
:data:`Progress` and, where it can stop between steps, a :data:`ShouldStop`; the CLI turns them
into a progress bar (:func:`console_progress`), Slicer into its progress UI, the worker into
``progress`` events.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

#: ``progress(fraction, message)``: fraction of the job done (0..1) and what it is doing.
Progress = Callable[[float, str], None]
#: ``should_stop()``: True when the job should stop at its next step.
ShouldStop = Callable[[], bool]


def no_progress(fraction: float, message: str) -> None:
    """A :data:`Progress` that reports nothing."""


def console_progress(
    name: str, stream: TextIO | None = None, min_interval_s: float = 0.5
) -> Progress:
    """A one-line progress bar on stderr (a plain line per update when not a terminal).

    Args:
        name: the job's name, shown before the bar.
        stream: where to write (default stderr).
        min_interval_s: at most one update per this many seconds (the last one always shows).
    """
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
