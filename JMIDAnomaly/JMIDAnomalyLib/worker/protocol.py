"""The worker protocol, defined once: request commands, event kinds and their JSON lines.

Protocol version 1: one JSON object per line, UTF-8.

Requests (the client writes them to the worker's stdin)::

    {"id": "1", "command": "analyze", "config": {AnalyzeConfig fields}}
    {"id": "2", "command": "ping", "seconds": 0.0}     # answers after ``seconds``
    {"command": "quit"}

Events (the worker writes them to its stdout)::

    {"event": "ready", "protocol": 1, "pid": int}
    {"event": "started", "id": str}
    {"event": "progress", "id": str, "fraction": float, "message": str}
    {"event": "result", "id": str, "result": {...}}   # AnalysisRun.to_dict() for analyze
    {"event": "error", "id": str | null, "message": str, "input_error": bool}

The client adds two kinds of its own: ``cancelled`` (Cancel killed the worker) and ``log`` (a
line of the worker's stderr). A job ends with exactly one of :data:`JOB_ENDED`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

PROTOCOL = 1

# Requests.
ANALYZE, PING, QUIT = "analyze", "ping", "quit"
COMMANDS = (ANALYZE, PING, QUIT)

# Events.
READY, STARTED, PROGRESS, RESULT, ERROR = "ready", "started", "progress", "result", "error"
CANCELLED, LOG = "cancelled", "log"
#: The events that end a job.
JOB_ENDED = frozenset({RESULT, ERROR, CANCELLED})


@dataclass
class WorkerEvent:
    """One thing the worker (or the client, for ``cancelled`` and ``log``) reported.

    Attributes:
        kind: one of the event kinds above.
        job: the request id it belongs to (None for ``ready`` and ``log``).
        data: the event's other fields (``fraction``/``message``, ``result``, ``message``...).
    """

    kind: str
    job: str | None = None
    data: dict = field(default_factory=dict)

    @property
    def message(self) -> str:
        """The event's message (progress text, error text or log line)."""
        return str(self.data.get("message", ""))

    @property
    def ended(self) -> bool:
        """Whether this event ends its job (:data:`JOB_ENDED`)."""
        return self.kind in JOB_ENDED


def event_line(kind: str, **fields) -> str:
    """The JSON line of an event (no newline)."""
    return json.dumps({"event": kind, **fields}, ensure_ascii=False)


def parse_event(line: str) -> WorkerEvent:
    """An event line as a :class:`WorkerEvent`; a line that is no JSON object is a ``log``."""
    try:
        data = json.loads(line)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return WorkerEvent(LOG, data={"message": line.rstrip()})
    kind = data.pop("event", LOG)
    return WorkerEvent(kind, data.pop("id", None), data)


def request_line(command: str, job: str | None = None, **payload) -> str:
    """The JSON line of a request (no newline)."""
    request = (
        {"command": command, **payload}
        if job is None
        else {"id": job, "command": command, **payload}
    )
    return json.dumps(request, ensure_ascii=False)
