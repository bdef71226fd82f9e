"""The background analysis worker process: ``python -m JMIDAnomalyLib.worker``.

In Slicer it runs as ``PythonSlicer -m JMIDAnomalyLib.worker``, so segmentation and inference
never run on the GUI thread; it stays alive between cases with the bundles and segmentation
models loaded (:class:`~JMIDAnomalyLib.inference.analyze_job.AnalysisRunner`).
:class:`~JMIDAnomalyLib.worker.client.WorkerClient` starts and talks to it; the protocol is
:mod:`JMIDAnomalyLib.worker.protocol`.

stderr is the log. Anything a library prints goes there too: the worker moves its own stdout
to a private descriptor first, so nothing but events ever reaches the event stream.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from typing import IO

from JMIDAnomalyLib.worker.protocol import (
    ANALYZE,
    COMMANDS,
    ERROR,
    PING,
    PROGRESS,
    PROTOCOL,
    QUIT,
    READY,
    RESULT,
    STARTED,
    event_line,
)

logger = logging.getLogger(__name__)


def _claim_stdout() -> IO[str]:
    """Return a stream on the original stdout and point file descriptor 1 at stderr."""
    sys.stdout.flush()
    events = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return events


class _Emitter:
    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def __call__(self, event: str, **fields) -> None:
        self.stream.write(event_line(event, **fields) + "\n")
        self.stream.flush()


def _handle(request: dict, runner, emit: _Emitter) -> None:
    from JMIDAnomalyLib.common.errors import JMIDError
    from JMIDAnomalyLib.inference.analyze_job import AnalyzeConfig

    job = request.get("id")
    command = request.get("command")
    emit(STARTED, id=job)
    if command == ANALYZE:
        config = AnalyzeConfig.from_dict(dict(request.get("config") or {}))

        def progress(fraction: float, message: str) -> None:
            emit(PROGRESS, id=job, fraction=round(float(fraction), 4), message=message)

        result = runner.run(config, progress).to_dict()
    elif command == PING:
        time.sleep(float(request.get("seconds", 0.0)))
        result = {"pid": os.getpid(), "loaded": runner.loaded}
    else:
        raise JMIDError(f"unknown command {command!r}; the worker knows {', '.join(COMMANDS)}")
    emit(RESULT, id=job, result=result)


def serve(requests: IO[str], emit: _Emitter) -> None:
    """Answer requests until ``quit`` or the end of ``requests``."""
    from JMIDAnomalyLib.common.errors import JMIDError
    from JMIDAnomalyLib.inference.analyze_job import AnalysisRunner

    runner = AnalysisRunner()
    emit(READY, protocol=PROTOCOL, pid=os.getpid())
    for line in requests:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
        except ValueError as exc:
            emit(ERROR, id=None, message=f"unreadable request: {exc}", input_error=True)
            continue
        if request.get("command") == QUIT:
            break
        try:
            _handle(request, runner, emit)
        except JMIDError as exc:
            emit(ERROR, id=request.get("id"), message=str(exc), input_error=True)
        except Exception as exc:  # the worker must survive one bad case
            traceback.print_exc()
            emit(ERROR, id=request.get("id"), message=f"internal error: {exc!r}", input_error=False)


def main() -> int:
    """Serve requests from stdin until ``quit``; the process's exit status."""
    events = _claim_stdout()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    serve(sys.stdin, _Emitter(events))
    return 0
