"""Several readers on one ``jmid review``: a signed-in front that gives each reader their own
review process and relays their page to it.

With ``--users``, ``jmid review`` serves this gateway on the address asked for. Each reader
who signs in gets a review process of their own (``jmid review`` in backend mode on a free
loopback port, started on their first page, reached only through the gateway with a key that
exists in memory and in that process's environment): their own MRML scene, case, view state,
progress, and marks recorded under their name in the shared feedback store (SQLite, so
several processes mark at once without losing one). Their analyses go to one worker shared
through a queue (:mod:`JMIDAnomalyLib.worker.broker`): the models are loaded once, one
reader's job waits behind another's without blocking either page, and each page sees its own
progress. HTTP and the websocket (trame's state and the streamed views) are relayed both ways
unchanged. A backend and the broker exit when the gateway does, also after ``kill -9`` (they
watch their parent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import sys
from dataclasses import dataclass

from JMIDAnomalyLib.worker.remote import SOCKET_ENV

logger = logging.getLogger(__name__)

BACKEND_KEY_ENV = "JMID_REVIEW_BACKEND_KEY"
BACKEND_HEADER = "X-JMID-Backend"
# hop-by-hop headers (and the ones aiohttp sets itself) are not relayed
_HOP = frozenset(
    "connection keep-alive transfer-encoding upgrade content-length content-encoding host".split()
)
_PRINTED = re.compile(r"JMID review: https?://[^:/]+:(\d+)/")


@dataclass
class Backend:
    """A reader's review process."""

    reader: str
    process: asyncio.subprocess.Process
    port: int

    @property
    def url(self) -> str:
        """Its loopback address."""
        return f"http://127.0.0.1:{self.port}"


def backend_command(options) -> list[str]:
    """The ``jmid review`` command line of a backend for ``options`` (without reader)."""
    # -P: the current folder stays off the path (a stray timeit.py there must not shadow)
    command = [sys.executable, "-P", "-m", "JMIDAnomalyLib.apps.cli.main", "review"]
    for bundle in options.bundles:
        command += ["--bundle", bundle]
    pairs = (
        ("--ct", options.ct),
        ("--seg", options.seg),
        ("--seg-labels", options.seg_labels),
        ("--seg-model", options.seg_model),
        ("--cases", options.cases),
        ("--data-root", options.data_root),
        ("--feedback", options.feedback),
        ("--explain", options.explain),
        ("--device", options.device),
    )
    for flag, value in pairs:
        if value:
            command += [flag, value]
    if options.organs:
        command += ["--organs", ",".join(options.organs)]
    return command + ["--host", "127.0.0.1", "--port", "0"]


class Gateway:
    """The front of a multi-reader review: sign-in, one backend per reader, relaying.

    Args:
        options: what the backends open (:class:`~JMIDAnomalyLib.apps.webreview.app.ReviewOptions`).
        access: the readers and their sessions (:class:`~.access.Access` with users).
        start_timeout: seconds a backend may take to serve.
    """

    def __init__(self, options, access, start_timeout: float = 300.0) -> None:
        self.command = backend_command(options)
        self.access = access
        self.key = secrets.token_urlsafe(32)
        self.start_timeout = start_timeout
        self.backends: dict[str, Backend] = {}
        self._starting: dict[str, asyncio.Task] = {}
        self._client = None
        self._broker = None  # the worker all readers share (worker.broker), and its folder
        self._folder = None
        self.socket = ""

    def app(self):
        """The aiohttp application: sign-in, then everything relayed to the reader's backend."""
        from aiohttp import web

        app = web.Application()
        self.access.install(app)
        app.router.add_route("*", "/{tail:.*}", self.relay)
        app.on_startup.append(self._start_broker)
        app.on_cleanup.append(self._close)
        return app

    async def _start_broker(self, _app) -> None:
        """Start the shared worker's broker, its socket in a folder only this user reads."""
        import tempfile

        self._folder = tempfile.TemporaryDirectory(prefix="jmid-review-")
        path = os.path.join(self._folder.name, "worker.sock")
        self._broker = await asyncio.create_subprocess_exec(
            sys.executable, "-P", "-m", "JMIDAnomalyLib.worker.broker", path
        )
        for _ in range(600):
            if os.path.exists(path) or self._broker.returncode is not None:
                break
            await asyncio.sleep(0.05)
        if not os.path.exists(path):
            raise RuntimeError("the shared worker's broker did not start")
        self.socket = path
        logger.info("review process %d is the readers' shared worker", self._broker.pid)

    async def backend(self, reader: str) -> Backend:
        """The reader's backend, started on first use (one start at a time per reader)."""
        running = self.backends.get(reader)
        if running is not None and running.process.returncode is None:
            return running
        if reader not in self._starting or self._starting[reader].done():
            self._starting[reader] = asyncio.ensure_future(self._start(reader))
        return await self._starting[reader]

    async def _start(self, reader: str) -> Backend:
        env = dict(os.environ, **{BACKEND_KEY_ENV: self.key, SOCKET_ENV: self.socket})
        process = await asyncio.create_subprocess_exec(
            *self.command, "--reader", reader, env=env, stdout=asyncio.subprocess.PIPE
        )
        try:
            port = await asyncio.wait_for(self._port(process), self.start_timeout)
        except (TimeoutError, EOFError):
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            raise
        asyncio.ensure_future(process.stdout.read())  # keep its stdout drained
        backend = Backend(reader, process, port)
        self.backends[reader] = backend
        logger.info("review process %d serves a reader on port %d", process.pid, port)
        return backend

    @staticmethod
    async def _port(process) -> int:
        while True:
            line = await process.stdout.readline()
            if not line:
                raise EOFError("the review process exited before serving")
            found = _PRINTED.search(line.decode(errors="replace"))
            if found:
                return int(found.group(1))

    async def relay(self, request):
        """Relay a signed-in reader's request (HTTP or websocket) to their backend."""
        from aiohttp import ClientSession, web

        reader = self.access.reader_of(request)
        try:
            backend = await self.backend(reader)
        except (TimeoutError, EOFError, OSError) as exc:
            return web.Response(status=503, text=f"Your review could not start ({exc}).\n")
        if self._client is None:
            self._client = ClientSession(auto_decompress=False)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers[BACKEND_HEADER] = self.key
        target = backend.url + request.rel_url.path_qs
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._relay_socket(request, target)
        async with self._client.request(
            request.method,
            target,
            headers=headers,
            data=await request.read(),
            allow_redirects=False,
        ) as answer:
            body = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
            if "Content-Encoding" in answer.headers:
                kept["Content-Encoding"] = answer.headers["Content-Encoding"]
            return web.Response(status=answer.status, body=body, headers=kept)

    async def _relay_socket(self, request, target: str):
        from aiohttp import WSMsgType, web

        page = web.WebSocketResponse(max_msg_size=0)
        await page.prepare(request)
        async with self._client.ws_connect(
            target, headers={BACKEND_HEADER: self.key}, max_msg_size=0
        ) as upstream:

            async def pump(source, sink) -> None:
                async for message in source:
                    if message.type == WSMsgType.TEXT:
                        await sink.send_str(message.data)
                    elif message.type == WSMsgType.BINARY:
                        await sink.send_bytes(message.data)
                    else:
                        break

            tasks = [
                asyncio.ensure_future(pump(page, upstream)),
                asyncio.ensure_future(pump(upstream, page)),
            ]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
        await page.close()
        return page

    async def _close(self, _app) -> None:
        if self._client is not None:
            await self._client.close()
        for backend in self.backends.values():
            with contextlib.suppress(ProcessLookupError):
                backend.process.terminate()
        if self._broker is not None:
            with contextlib.suppress(ProcessLookupError):
                self._broker.terminate()
            await self._broker.wait()
        if self._folder is not None:
            self._folder.cleanup()


def watch_parent() -> None:
    """Exit this process when the process that started it is gone (a backend outliving a
    killed gateway would keep a port and a worker for nothing)."""
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()
