"""A reader's side of the shared worker (:mod:`.broker`): the calls of
:class:`~JMIDAnomalyLib.worker.client.WorkerClient` over the broker's Unix socket.

:func:`worker_client` picks it when ``JMID_WORKER_SOCKET`` names a broker (the multi-reader
review sets it for each reader's process), else a worker process of one's own.
"""

from __future__ import annotations

import os
import socket
import threading

from JMIDAnomalyLib.worker.client import WorkerClient
from JMIDAnomalyLib.worker.protocol import CANCELLED, WorkerEvent, parse_event, request_line

SOCKET_ENV = "JMID_WORKER_SOCKET"


def worker_client(python=None) -> WorkerClient:
    """The shared worker when ``JMID_WORKER_SOCKET`` is set, else a worker of one's own."""
    path = os.environ.get(SOCKET_ENV)
    return RemoteWorkerClient(path) if path else WorkerClient(python)


class RemoteWorkerClient(WorkerClient):
    """:class:`WorkerClient` whose worker is the broker's: jobs queue there behind other
    readers' jobs; Cancel cancels this reader's jobs only.

    Args:
        path: the broker's socket.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._socket: socket.socket | None = None

    @property
    def pid(self) -> int | None:
        """The worker's process id is the broker's business."""
        return None

    @property
    def alive(self) -> bool:
        """Whether this client is connected to the broker."""
        return self._socket is not None

    def start(self) -> None:
        """Connect to the broker (the worker there starts on its first job)."""
        if self._socket is not None:
            return
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.connect(self.path)
        self._socket = connection
        self._process = connection  # what pending jobs belong to (see WorkerClient._digest)
        threading.Thread(target=self._read_socket, args=(connection,), daemon=True).start()

    def _read_socket(self, connection: socket.socket) -> None:
        with connection.makefile("r", encoding="utf-8") as lines:
            for line in lines:
                self._events.put(parse_event(line))
        self._events.put(WorkerEvent("_exited", data={"status": 1, "process": connection}))

    def _write(self, line: str) -> None:
        self._socket.sendall((line + "\n").encode())

    def submit(self, command: str, **payload) -> str:
        """Queue one request at the broker; returns its job id."""
        self.start()
        job = str(next(self._ids))
        with self._lock:
            self._pending[job] = self._socket
            self._write(request_line(command, job, **payload))
        return job

    def _digest(self, event: WorkerEvent) -> list[WorkerEvent]:
        if event.kind == "_exited":
            if event.data["process"] is self._socket:
                self._socket = None
            event.data["process"] = self._process
        if event.kind == CANCELLED:
            self._pending.pop(event.job, None)
        return super()._digest(event)

    def cancel(self) -> list[str]:
        """Cancel this reader's jobs at the broker (its ``cancelled`` events follow)."""
        jobs = sorted(self._pending)
        if self._socket is not None and jobs:
            self._write(request_line("cancel"))
        return jobs

    def _kill_tree(self) -> None:
        """Nothing to kill here: the worker belongs to the broker."""

    def close(self, timeout: float = 5.0) -> None:
        """Leave the broker (it cancels this reader's jobs)."""
        connection, self._socket = self._socket, None
        if connection is not None:
            connection.close()
        self._pending.clear()
        self._process = None
