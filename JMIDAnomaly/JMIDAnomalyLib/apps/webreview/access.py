"""Sign-in for ``jmid review``: a token in the URL (as Jupyter prints) or a users file of
hashed passwords, kept in a cookie after the first visit; nothing is served without it.

- Token: generated at start (``secrets.token_urlsafe``), printed in the URL
  ``http://HOST:PORT/?token=...``. The first visit with it sets an HttpOnly, SameSite=Strict
  cookie and redirects to ``/`` so the token leaves the address bar; comparisons are
  constant-time (``hmac.compare_digest``).
- Users file (``--users FILE``): one ``name:scrypt$n$r$p$salt$hash`` line per reader, written
  by ``jmid review-user``; passwords are hashed with scrypt (``hashlib``, OpenSSL's KDF) and
  checked in constant time. ``/login`` is a plain form.
- The aiohttp middleware guards every route, the websocket included: without a session the
  page answers 401 (403 for a wrong token) and no state is sent.
- Behind the multi-reader gateway (:mod:`.gateway`) the readers' own reviews answer only the
  gateway's key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from JMIDAnomalyLib.common.atomic import atomic_output
from JMIDAnomalyLib.common.errors import InputError

COOKIE = "jmid_review_session"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$hash`` of a password (salt 16 random bytes, key 32 bytes)."""
    salt = os.urandom(16)
    key = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    encoded = [base64.b64encode(v).decode() for v in (salt, key)]
    return "scrypt${n}${r}${p}$".format(**_SCRYPT) + "$".join(encoded)


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a :func:`hash_password` string (constant-time)."""
    try:
        kind, n, r, p, salt, key = stored.split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(key)
        salt_bytes = base64.b64decode(salt)
        cost = {"n": int(n), "r": int(r), "p": int(p)}
        got = hashlib.scrypt(password.encode(), salt=salt_bytes, dklen=len(expected), **cost)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def read_users(path: str | os.PathLike) -> dict[str, str]:
    """name -> password hash of a users file.

    Raises:
        InputError: missing file, a line that is not ``name:scrypt$...``, or no user.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "the users file does not exist (create it with jmid review-user)")
    users = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, _, stored = line.partition(":")
        if not name.strip() or not stored.startswith("scrypt$") or stored.count("$") != 5:
            raise InputError(path, f"line {number} is not 'name:scrypt$...'")
        users[name.strip()] = stored.strip()
    if not users:
        raise InputError(path, "no user in the users file")
    return users


def check_reader_name(name: str) -> str:
    """A reader's name as the users file can hold it.

    Raises:
        InputError: empty, with ':' or with surrounding spaces.
    """
    if not name or ":" in name or name != name.strip():
        raise InputError("--name", "a reader name without ':' or surrounding spaces")
    return name


def add_user(path: str | os.PathLike, name: str, password: str) -> None:
    """Add or replace a reader in a users file (written atomically, mode 600)."""
    check_reader_name(name)
    if len(password) < 8:
        raise InputError("password", "use at least 8 characters")
    path = Path(path)
    users = read_users(path) if path.exists() else {}
    users[name] = hash_password(password)
    with atomic_output(path) as tmp:
        tmp.write_text("".join(f"{n}:{h}\n" for n, h in users.items()), encoding="utf-8")
        os.chmod(tmp, 0o600)


@dataclass
class Access:
    """Who may use the server: a token, or readers with passwords; sessions by cookie."""

    token: str | None = None
    users: dict[str, str] = field(default_factory=dict)
    reader: str = "reader"  # the name marks record for token sessions
    secure: bool = False  # cookies only over TLS
    sessions: dict[str, str] = field(default_factory=dict)  # cookie -> reader
    on_reader: object = None  # called with the reader whose page connects
    backend_key: str | None = None  # a gateway's backend: only requests carrying this key

    @classmethod
    def create(cls, users_file: str = "", reader: str = "", secure: bool = False):
        """A users-file access when one is given, else a fresh token."""
        from JMIDAnomalyLib.review.feedback import default_reader

        reader = reader or default_reader()
        if users_file:
            return cls(users=read_users(users_file), reader=reader, secure=secure)
        return cls(token=secrets.token_urlsafe(24), reader=reader, secure=secure)

    def url(self, scheme: str, host: str, port: int) -> str:
        """The address to print: with ``?token=`` for token access."""
        shown = f"[{host}]" if ":" in host else host
        base = f"{scheme}://{shown}:{port}/"
        return f"{base}?token={self.token}" if self.token else f"{base}login"

    def install(self, app) -> None:
        """Guard an aiohttp application (before it starts): the middleware and /login."""
        from aiohttp import web

        app.middlewares.append(self._middleware())
        if self.users:
            app.router.add_get("/login", self._login_page)
            app.router.add_post("/login", self._login)
        self._web = web

    def reader_of(self, request) -> str | None:
        """The reader signed in on this request, or None."""
        return self.sessions.get(request.cookies.get(COOKIE, ""))

    def _signed_in(self, response, reader: str):
        cookie = secrets.token_urlsafe(32)
        self.sessions[cookie] = reader
        response.set_cookie(
            COOKIE, cookie, httponly=True, samesite="Strict", secure=self.secure, path="/"
        )
        return response

    def _middleware(self):
        from aiohttp import web

        @web.middleware
        async def guard(request, handler):
            if self.backend_key is not None:
                return await self._from_gateway(request, handler)
            if request.path == "/login" and self.users:
                return await handler(request)
            cookie = request.cookies.get(COOKIE, "")
            if cookie in self.sessions:
                if request.headers.get("Upgrade", "").lower() == "websocket":
                    self._connected(self.sessions[cookie])
                return await handler(request)
            token = request.query.get("token")
            if self.token and token is not None:
                if hmac.compare_digest(token.encode(), self.token.encode()):
                    return self._signed_in(_redirect("/"), self.reader)
                return web.Response(status=403, text="Wrong token.\n")
            if self.users and request.method == "GET" and request.path == "/":
                return _redirect("/login")
            hint = "sign in at /login" if self.users else "open the URL jmid review printed"
            return web.Response(status=401, text=f"Sign in first: {hint}.\n")

        return guard

    async def _from_gateway(self, request, handler):
        """A gateway's backend answers the gateway only (its key, in constant time)."""
        from JMIDAnomalyLib.apps.webreview.gateway import BACKEND_HEADER

        given = request.headers.get(BACKEND_HEADER, "")
        if not hmac.compare_digest(given.encode(), self.backend_key.encode()):
            return self._web.Response(status=403, text="Not through the review gateway.\n")
        if request.headers.get("Upgrade", "").lower() == "websocket":
            self._connected(self.reader)
        return await handler(request)

    def _connected(self, reader: str) -> None:
        """A reader's page opened its websocket: tell the review whose marks follow."""
        if callable(self.on_reader):
            self.on_reader(reader)

    async def _login_page(self, request, problem: str = ""):
        note = f"<p style='color:#b00'>{html.escape(problem)}</p>" if problem else ""
        body = (
            "<!doctype html><title>JMID review: sign in</title>"
            "<form method='post' action='/login' style='font:16px sans-serif;margin:4em'>"
            f"<h2>JMID review</h2>{note}"
            "<p><label>Reader <input name='name' id='name' autofocus></label></p>"
            "<p><label>Password <input name='password' id='password' type='password'>"
            "</label></p><p><button id='sign-in' type='submit'>Sign in</button></p></form>"
        )
        return self._web.Response(text=body, content_type="text/html", status=401 if note else 200)

    async def _login(self, request):
        form = await request.post()
        name, password = str(form.get("name", "")), str(form.get("password", ""))
        stored = self.users.get(name, "scrypt$16384$8$1$AAAA$AAAA")  # same work either way
        if check_password(password, stored) and name in self.users:
            return self._signed_in(_redirect("/"), name)
        return await self._login_page(request, "Unknown reader or wrong password.")


def _redirect(location: str):
    from aiohttp import web

    return web.Response(status=302, headers={"Location": location})
