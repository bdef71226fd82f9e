"""One analysis worker shared by several readers' processes, with a queue:
``python -m JMIDAnomalyLib.worker.broker SOCKET``.

The multi-reader review (:mod:`JMIDAnomalyLib.apps.webreview.gateway`) starts one broker; each
reader's review process talks to it through
:class:`~JMIDAnomalyLib.worker.remote.RemoteWorkerClient` (the same calls as
:class:`~JMIDAnomalyLib.worker.client.WorkerClient`) over a Unix socket in a private folder.
The broker owns the one worker process (models loaded once, one GPU) and runs the readers'
jobs one at a time, first come first served. Each event goes back to the reader whose job it
is, under that reader's job id; the worker's log lines go to the reader whose job is running.
A reader's Cancel drops their queued jobs and, when their job is the one running, restarts the
worker: nobody else's job is lost (theirs are still in the broker's queue). A reader who
disconnects is cancelled. The broker exits when the process that started it is gone.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import sys
from dataclasses import dataclass

from JMIDAnomalyLib.worker.client import WorkerClient
from JMIDAnomalyLib.worker.protocol import CANCELLED, ERROR, LOG, READY, event_line

CANCEL = "cancel"  # a reader's request to the broker: cancel all my jobs
POLL_SECONDS = 0.05


@dataclass
class _Job:
    reader: asyncio.StreamWriter
    job: str  # the reader's id
    command: str
    payload: dict


class Broker:
    """The queue in front of one worker.

    Args:
        worker: the worker to run jobs in (default: a new :class:`WorkerClient`).
    """

    def __init__(self, worker: WorkerClient | None = None) -> None:
        self.worker = worker or WorkerClient()
        self.queue: collections.deque[_Job] = collections.deque()
        self.running: tuple[_Job, str] | None = None  # (job, the worker's id for it)

    async def serve(self, path: str) -> None:
        """Serve readers on the Unix socket ``path`` until cancelled."""
        server = await asyncio.start_unix_server(self._reader, path=path)
        os.chmod(path, 0o600)
        pump = asyncio.ensure_future(self._pump())
        try:
            async with server:
                await server.serve_forever()
        finally:
            pump.cancel()
            self.worker.close()

    async def _reader(self, stream: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await stream.readline():
                try:
                    request = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(request, dict):
                    continue
                command = request.pop("command", "")
                if command == CANCEL:
                    self.cancel(writer)
                elif command and "id" in request:
                    job = str(request.pop("id"))
                    self.queue.append(_Job(writer, job, command, request))
        finally:
            self.cancel(writer, notify=False)
            writer.close()

    def cancel(self, writer: asyncio.StreamWriter, notify: bool = True) -> None:
        """Drop a reader's queued jobs; restart the worker when their job is running."""
        for job in [j for j in self.queue if j.reader is writer]:
            self.queue.remove(job)
            if notify:
                self._send(job, CANCELLED, message="cancelled")
        if self.running is not None and self.running[0].reader is writer:
            job, _ = self.running
            self.running = None
            self.worker.cancel()
            self.worker.poll()  # the worker's own cancelled event: ours is below
            if notify:
                self._send(job, CANCELLED, message="cancelled")

    def _send(self, job: _Job, kind: str, **fields) -> None:
        if job.reader.is_closing():
            return
        job.reader.write((event_line(kind, id=job.job, **fields) + "\n").encode())

    async def _pump(self) -> None:
        while True:
            for event in self.worker.poll():
                self._route(event)
            if self.running is None and self.queue:
                job = self.queue.popleft()
                self.running = (job, self.worker.submit(job.command, **job.payload))
            await asyncio.sleep(POLL_SECONDS)

    def _route(self, event) -> None:
        if self.running is None or event.kind == READY:
            return
        job, worker_job = self.running
        if event.kind == LOG:
            self._send(job, LOG, message=event.message)
            return
        if event.job != worker_job and not (event.kind == ERROR and event.job is None):
            return
        self._send(job, event.kind, **event.data)
        if event.ended:
            self.running = None


def main(argv: list[str] | None = None) -> int:
    """Serve the socket given as the only argument until the parent process is gone."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m JMIDAnomalyLib.worker.broker SOCKET", file=sys.stderr)
        return 2
    parent = os.getppid()

    async def run() -> None:
        serving = asyncio.ensure_future(Broker().serve(args[0]))
        while os.getppid() == parent and not serving.done():
            await asyncio.sleep(1.0)
        serving.cancel()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
