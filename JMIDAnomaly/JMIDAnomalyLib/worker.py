"""The background analysis worker: ``python -m JMIDAnomalyLib.worker``.

In Slicer it runs as ``PythonSlicer -m JMIDAnomalyLib.worker``, so segmentation and inference
never run on the GUI thread; it stays alive between cases with the bundles and segmentation
models loaded (:class:`analyzejob.AnalysisRunner`). :class:`workerclient.WorkerClient` starts
and talks to it.

Protocol (version 1): one JSON object per line, UTF-8.

stdin, requests::

    {"id": "1", "command": "analyze", "config": {AnalyzeConfig fields}}
    {"id": "2", "command": "ping", "seconds": 0.0}     # answers after ``seconds``
    {"command": "quit"}

stdout, events::

    {"event": "ready", "protocol": 1, "pid": int}
    {"event": "started", "id": str}
    {"event": "progress", "id": str, "fraction": float, "message": str}
    {"event": "result", "id": str, "result": {...}}   # AnalysisRun.to_dict() for analyze
    {"event": "error", "id": str | null, "message": str, "input_error": bool}

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

PROTOCOL = 1

logger = logging.getLogger("JMIDAnomalyLib.worker")


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
        self.stream.write(json.dumps({"event": event, **fields}, ensure_ascii=False) + "\n")
        self.stream.flush()


def _handle(request: dict, runner, emit: _Emitter) -> None:
    from .analyzejob import AnalyzeConfig
    from .errors import JMIDError

    job = request.get("id")
    command = request.get("command")
    emit("started", id=job)
    if command == "analyze":
        config = AnalyzeConfig.from_dict(dict(request.get("config") or {}))

        def progress(fraction: float, message: str) -> None:
            emit("progress", id=job, fraction=round(float(fraction), 4), message=message)

        result = runner.run(config, progress).to_dict()
    elif command == "ping":
        time.sleep(float(request.get("seconds", 0.0)))
        result = {"pid": os.getpid(), "loaded": runner.loaded}
    else:
        raise JMIDError(f"unknown command {command!r}; the worker knows analyze, ping and quit")
    emit("result", id=job, result=result)


def serve(requests: IO[str], emit: _Emitter) -> None:
    """Answer requests until ``quit`` or the end of ``requests``."""
    from .analyzejob import AnalysisRunner
    from .errors import JMIDError

    runner = AnalysisRunner()
    emit("ready", protocol=PROTOCOL, pid=os.getpid())
    for line in requests:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
        except ValueError as exc:
            emit("error", id=None, message=f"unreadable request: {exc}", input_error=True)
            continue
        if request.get("command") == "quit":
            break
        try:
            _handle(request, runner, emit)
        except JMIDError as exc:
            emit("error", id=request.get("id"), message=str(exc), input_error=True)
        except Exception as exc:  # the worker must survive one bad case
            traceback.print_exc()
            emit("error", id=request.get("id"), message=f"internal error: {exc!r}",
                 input_error=False)  # fmt: skip


def main() -> int:
    events = _claim_stdout()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    serve(sys.stdin, _Emitter(events))
    return 0


if __name__ == "__main__":
    sys.exit(main())
