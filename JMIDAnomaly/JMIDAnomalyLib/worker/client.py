"""Start and drive the background analysis worker
(:mod:`~JMIDAnomalyLib.worker.server`) without ever blocking.

:class:`WorkerClient` is Qt-free: reader threads turn the worker's event lines and log lines
into :class:`WorkerEvent` objects on a queue, and :meth:`WorkerClient.poll` hands over what has
arrived without waiting — the Slicer module calls it from a timer, so the GUI never freezes.
:meth:`WorkerClient.wait` is the blocking form for scripts and tests.

Cancel kills the worker's whole process tree (it runs in its own process group / session;
nnU-Net's preprocessing workers go with it); the next request starts a fresh worker. A worker
that dies on its own is reported as an ``error`` event for every job it had, with the end of
its log.
"""

from __future__ import annotations

import collections
import itertools
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from JMIDAnomalyLib.worker.protocol import (
    ANALYZE,
    CANCELLED,
    ERROR,
    LOG,
    QUIT,
    RESULT,
    WorkerEvent,
    parse_event,
    request_line,
)

#: The folder that holds the JMIDAnomalyLib package (put on the worker's PYTHONPATH).
PACKAGE_PARENT = Path(__file__).resolve().parent.parent


class WorkerClient:
    """One long-lived worker process, started on the first request.

    Args:
        python: the interpreter to run it with (``PythonSlicer`` in Slicer; default
            ``sys.executable``).
        env: extra environment variables for the worker.
        log_lines: how many of the worker's last log lines to keep (for crash reports).
    """

    def __init__(
        self, python: str | os.PathLike | None = None, env: dict | None = None, log_lines: int = 50
    ) -> None:
        self.python = str(python or sys.executable)
        self.env = dict(env or {})
        self.log = collections.deque(maxlen=log_lines)
        self._process: subprocess.Popen | None = None
        self._events: queue.Queue = queue.Queue()
        self._pending: dict[str, subprocess.Popen] = {}  # job -> the process running it
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # -- process ------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The worker's process id while it runs."""
        return self._process.pid if self.alive else None

    @property
    def alive(self) -> bool:
        """Whether the worker process runs."""
        return self._process is not None and self._process.poll() is None

    @property
    def busy(self) -> bool:
        """Whether a job is pending."""
        return bool(self._pending)

    def start(self) -> None:
        """Start the worker if it is not running (it loads models lazily, on the first case)."""
        if self.alive:
            return
        env = dict(os.environ, **self.env)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(PACKAGE_PARENT), env.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("PYTHONIOENCODING", "utf-8")
        options = {}
        if os.name == "nt":
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            options["start_new_session"] = True
        process = subprocess.Popen(
            [self.python, "-m", "JMIDAnomalyLib.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            encoding="utf-8",
            bufsize=1,
            **options,
        )
        self._process = process
        threading.Thread(target=self._read_events, args=(process,), daemon=True).start()
        threading.Thread(target=self._read_log, args=(process,), daemon=True).start()

    def _read_events(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self._events.put(parse_event(line))
        status = process.wait()
        self._events.put(WorkerEvent("_exited", data={"status": status, "process": process}))

    def _read_log(self, process: subprocess.Popen) -> None:
        for line in process.stderr:
            self._events.put(WorkerEvent(LOG, data={"message": line.rstrip()}))

    def _kill_tree(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        if os.name == "nt":
            subprocess.run(
                ["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False
            )
        else:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait()

    # -- requests -----------------------------------------------------------------------------

    def submit(self, command: str, **payload) -> str:
        """Send one request; returns its job id. Starts the worker when needed."""
        self.start()
        job = str(next(self._ids))
        line = request_line(command, job, **payload)
        with self._lock:
            self._pending[job] = self._process
            self._process.stdin.write(line + "\n")
            self._process.stdin.flush()
        return job

    def analyze(self, config) -> str:
        """Queue an analysis (an :class:`~JMIDAnomalyLib.inference.analyze_job.AnalyzeConfig`);
        returns the job id."""
        return self.submit(ANALYZE, config=config.to_dict())

    def poll(self) -> list[WorkerEvent]:
        """Every event that has arrived, without waiting."""
        events = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return events
            events.extend(self._digest(event))

    def _digest(self, event: WorkerEvent) -> list[WorkerEvent]:
        if event.kind == LOG:
            self.log.append(event.message)
            return [event]
        if event.kind == "_exited":
            process, status = event.data["process"], event.data["status"]
            if process is self._process:
                self._process = None
            tail = "\n".join(list(self.log)[-10:])
            how = f"was killed (signal {-status})" if status < 0 else f"exited with status {status}"
            jobs = sorted(j for j, p in self._pending.items() if p is process)
            for job in jobs:
                del self._pending[job]
            return [
                WorkerEvent(
                    ERROR,
                    job,
                    {
                        "message": f"the worker process {how}"
                        + (f"; its last log lines:\n{tail}" if tail else ""),
                        "input_error": False,
                        "status": status,
                    },
                )
                for job in jobs
            ]
        if event.kind in (RESULT, ERROR) and event.job is not None:
            self._pending.pop(event.job, None)
        return [event]

    def wait(self, job: str, timeout: float | None = None, on_event=None) -> WorkerEvent:
        """Block until ``job`` ends; returns its ``result``, ``error`` or ``cancelled`` event.

        Raises:
            TimeoutError: it did not end within ``timeout`` seconds (it keeps running).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"job {job} did not finish within {timeout} s")
            try:
                raw = self._events.get(timeout=min(0.5, remaining) if remaining else 0.5)
            except queue.Empty:
                continue
            for event in self._digest(raw):
                if on_event:
                    on_event(event)
                if event.job == job and event.ended:
                    return event

    def cancel(self) -> list[str]:
        """Kill the worker and everything it started; a ``cancelled`` event is queued for each
        job it had (returned: their ids). The next request starts a new worker."""
        self._kill_tree()
        jobs = sorted(self._pending)
        self._pending.clear()
        self._process = None
        for job in jobs:
            self._events.put(WorkerEvent(CANCELLED, job, {"message": "cancelled"}))
        return jobs

    def close(self, timeout: float = 5.0) -> None:
        """Ask the worker to quit; kill it if it does not within ``timeout`` seconds."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            try:
                process.stdin.write(request_line(QUIT) + "\n")
                process.stdin.flush()
                process.wait(timeout=timeout)
            except (OSError, subprocess.TimeoutExpired):
                self._kill_tree()
        self._pending.clear()
        self._process = None

    def __del__(self) -> None:
        try:
            self._kill_tree()
        except Exception:
            pass
