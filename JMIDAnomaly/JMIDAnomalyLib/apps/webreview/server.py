"""Serving ``jmid review``: sign-in (:mod:`.access`), TLS, and the trame server's start."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys

from JMIDAnomalyLib.apps.webreview.app import DEFAULT_HOST, ReviewApp, ReviewOptions
from JMIDAnomalyLib.common.errors import InputError


def serve(options: ReviewOptions, host: str = DEFAULT_HOST, port: int = 8080) -> None:
    """Run the review server until interrupted, behind sign-in (:mod:`.access`), over TLS with
    a certificate: with a token printed in the URL, one reader's review; with the readers of
    ``options.users``, the :mod:`.gateway` giving each reader a review of their own."""
    from JMIDAnomalyLib.apps.webreview.access import Access
    from JMIDAnomalyLib.apps.webreview.gateway import BACKEND_KEY_ENV, watch_parent

    # trame must not parse jmid's own command line (it has --host/--port/--data of its own).
    os.environ.setdefault("TRAME_ARGS", "")
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        # No screen (a server): render offscreen through EGL instead of failing over from X.
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    for name in ("trame", "trame_client", "trame_server", "trame_rca", "wslink", "aiohttp"):
        logging.getLogger(name).setLevel(logging.WARNING)  # their INFO is a debug trace
    ssl_context = _ssl_context(options.certfile, options.keyfile)
    key = os.environ.pop(BACKEND_KEY_ENV, "")
    if key:  # a reader's review behind the gateway: loopback, the gateway's key only
        access, host, ssl_context = (
            Access(backend_key=key, reader=options.reader),
            DEFAULT_HOST,
            None,
        )
        watch_parent()
    else:
        access = Access.create(options.users, options.reader, secure=ssl_context is not None)
        if access.users:
            options.check()  # the backends' options, checked once before any reader comes
            return _serve_gateway(options, access, host, port, ssl_context)
    app = ReviewApp(options)
    access.on_reader = app.set_reader

    def bind(web_server) -> None:
        access.install(web_server.app)
        if ssl_context is not None:
            web_server.config["ssl"] = ssl_context

    app.server.controller.on_server_bind.add(bind)

    app.server.controller.on_server_ready.add(
        lambda **_: _announce(access, ssl_context, host, app.server.port)
    )
    app.server.start(host=host, port=port, open_browser=False, timeout=0)


def _serve_gateway(options, access, host: str, port: int, ssl_context) -> None:
    """Serve the multi-reader gateway until interrupted (Ctrl-C or SIGTERM stop the readers'
    reviews too)."""
    import signal

    from aiohttp import web

    from JMIDAnomalyLib.apps.webreview.gateway import Gateway

    async def main() -> None:
        runner = web.AppRunner(Gateway(options, access).app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
        _announce(access, ssl_context, host, runner.addresses[0][1] if runner.addresses else port)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


def _announce(access, ssl_context, host: str, port: int) -> None:
    """Print the sign-in URL once the server serves (the tests and benchmarks wait for it)."""
    scheme = "https" if ssl_context else "http"
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(f"JMID review: {access.url(scheme, shown, port)}", flush=True)


def _ssl_context(certfile: str, keyfile: str):
    """TLS from a certificate and its key (both or neither), checked before the server starts."""
    if not certfile and not keyfile:
        return None
    if not (certfile and keyfile):
        raise InputError("--certfile/--keyfile", "give both the certificate and its key")
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise InputError(certfile, f"cannot be used with {keyfile} for TLS ({exc})") from None
    return context
