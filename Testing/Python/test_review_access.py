"""Sign-in of the browser review and the shared feedback store, on a real aiohttp server and
real SQLite: no session -> 401 and no websocket; wrong token -> 403; the token or a reader's
password -> a cookie session; a gateway's backend answers its key only; concurrent readers'
marks and a kill -9 lose nothing."""

from __future__ import annotations

import asyncio
import csv
import subprocess
import sys

import pytest
from aiohttp import WSServerHandshakeError, web
from aiohttp.test_utils import TestClient, TestServer
from conftest import REPO
from JMIDAnomalyLib.apps.cli.main import main
from JMIDAnomalyLib.apps.webreview.access import (
    COOKIE,
    Access,
    add_user,
    check_password,
    hash_password,
    read_users,
)
from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.review.feedback import FEEDBACK_COLUMNS, FeedbackLog
from JMIDAnomalyLib.review.queue import ReviewItem


def _app(access: Access) -> web.Application:
    async def page(_):
        return web.Response(text="the review page")

    async def socket(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("state")
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/ws", socket)
    access.install(app)
    return app


def _run(coroutine):
    return asyncio.new_event_loop().run_until_complete(coroutine)


def test_the_token_is_needed_for_the_page_and_the_websocket():
    access = Access.create(reader="dr_a")

    async def scenario():
        async with TestClient(TestServer(_app(access))) as client:
            assert (await client.get("/")).status == 401
            with pytest.raises(WSServerHandshakeError) as refused:
                await client.ws_connect("/ws")
            assert refused.value.status == 401
            assert (await client.get("/?token=wrong")).status == 403
            assert not client.session.cookie_jar.filter_cookies(client.make_url("/"))
            signed = await client.get(f"/?token={access.token}", allow_redirects=False)
            assert signed.status == 302 and signed.headers["Location"] == "/"
            assert "HttpOnly" in signed.headers["Set-Cookie"]
            assert "SameSite=Strict" in signed.headers["Set-Cookie"]
            page = await client.get("/")
            assert page.status == 200 and await page.text() == "the review page"
            ws = await client.ws_connect("/ws")
            assert await ws.receive_str() == "state"
            await ws.close()

    _run(scenario())
    assert list(access.sessions.values()) == ["dr_a"]


def test_readers_sign_in_with_passwords(tmp_path):
    users = tmp_path / "users.txt"
    add_user(users, "alice", "correct horse")
    add_user(users, "bob", "battery staple")
    assert set(read_users(users)) == {"alice", "bob"}
    assert oct(users.stat().st_mode & 0o777) == "0o600"
    assert "correct horse" not in users.read_text()
    access = Access.create(str(users))
    seen = []
    access.on_reader = seen.append

    async def scenario():
        server = TestServer(_app(access))
        async with TestClient(server) as alice, TestClient(server) as bob:
            first = await alice.get("/", allow_redirects=False)
            assert first.status == 302 and first.headers["Location"] == "/login"
            wrong = await bob.post("/login", data={"name": "bob", "password": "nope nope"})
            assert wrong.status == 401 and "wrong password" in await wrong.text()
            for client, name, password in (
                (alice, "alice", "correct horse"),
                (bob, "bob", "battery staple"),
            ):
                response = await client.post(
                    "/login", data={"name": name, "password": password}, allow_redirects=False
                )
                assert response.status == 302 and COOKIE in response.cookies
            for client in (alice, bob):  # each page's websocket names its reader
                ws = await client.ws_connect("/ws")
                assert await ws.receive_str() == "state"
                await ws.close()

    _run(scenario())
    assert seen == ["alice", "bob"]


def test_a_readers_review_answers_the_gateway_only():
    from JMIDAnomalyLib.apps.webreview.gateway import BACKEND_HEADER

    seen = []
    access = Access(backend_key="k" * 32, reader="dr_d", on_reader=seen.append)

    async def scenario():
        async with TestClient(TestServer(_app(access))) as client:
            assert (await client.get("/")).status == 403
            assert (await client.get("/", headers={BACKEND_HEADER: "wrong"})).status == 403
            assert (await client.get("/", headers={BACKEND_HEADER: "k" * 32})).status == 200
            ws = await client.ws_connect("/ws", headers={BACKEND_HEADER: "k" * 32})
            assert await ws.receive_str() == "state"
            await ws.close()

    _run(scenario())
    assert seen == ["dr_d"]


def test_passwords_and_users_files():
    stored = hash_password("s3cret pass")
    assert stored.startswith("scrypt$16384$8$1$") and check_password("s3cret pass", stored)
    assert not check_password("s3cret pasS", stored) and not check_password("x", "garbage")


def test_bad_users_files_are_named(tmp_path):
    bad = tmp_path / "users.txt"
    bad.write_text("alice:plaintext\n")
    with pytest.raises(InputError, match="line 1"):
        read_users(bad)
    with pytest.raises(InputError, match="does not exist"):
        read_users(tmp_path / "none.txt")
    with pytest.raises(InputError, match="8 characters"):
        add_user(tmp_path / "new.txt", "carol", "short")
    assert not (tmp_path / "new.txt").exists()


def test_review_user_command_reads_the_password_from_stdin(tmp_path):
    users = tmp_path / "users.txt"
    command = [sys.executable, "-m", "JMIDAnomalyLib.apps.cli.main", "review-user"]
    result = subprocess.run(
        [*command, "--users", str(users), "--name", "dr_b"],
        input="long enough password\n",
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO / "JMIDAnomaly"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert check_password("long enough password", read_users(users)["dr_b"])
    assert main(["review-user", "--users", str(tmp_path / "u2.txt"), "--name", "a:b"]) == 2


def _item(n: int) -> ReviewItem:
    return ReviewItem(f"case_{n:03d}", f"p{n}", "liver", "", "cyst", 0.7, 0, "0", "")


_MARKER = """
import sys
sys.path.insert(0, {lib!r})
from JMIDAnomalyLib.review.feedback import FeedbackLog
from JMIDAnomalyLib.review.queue import ReviewItem
log = FeedbackLog({feedback!r}, reader={reader!r})
for n in range({count}):
    log.mark(ReviewItem("case_%03d" % n, "p", "liver", "", "cyst", 0.7, 0, "0", ""), "agree")
    print(n + 1, flush=True)
"""


def _marker(feedback, reader: str, count: int) -> subprocess.Popen:
    code = _MARKER.format(
        lib=str(REPO / "JMIDAnomaly"), feedback=str(feedback), reader=reader, count=count
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_two_readers_mark_at_once_and_a_kill_loses_no_saved_mark(tmp_path):
    feedback = tmp_path / "feedback.csv"
    readers = [_marker(feedback, name, 150) for name in ("alice", "bob")]
    for process in readers:
        assert process.wait(timeout=300) == 0
    with feedback.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == FEEDBACK_COLUMNS
    assert sorted((r["reader"], r["case_id"]) for r in rows) == sorted(
        (name, f"case_{n:03d}") for name in ("alice", "bob") for n in range(150)
    )
    assert len(FeedbackLog(feedback, reader="alice")) == 150
    # kill -9 in the middle of marking: every acknowledged mark is in the store
    carol = _marker(feedback, "carol", 10**6)
    acknowledged = 0
    while acknowledged < 60:
        acknowledged = int(carol.stdout.readline())
    carol.kill()
    carol.wait()
    assert len(FeedbackLog(feedback, reader="carol")) >= acknowledged
    assert len(FeedbackLog(feedback, reader="alice")) == 150


def test_an_old_feedback_csv_is_imported(tmp_path):
    feedback = tmp_path / "feedback.csv"
    with feedback.open("w", encoding="utf-8", newline="") as f:
        old = [c for c in FEEDBACK_COLUMNS if c != "reader"]
        writer = csv.DictWriter(f, fieldnames=old)
        writer.writeheader()
        writer.writerow({c: "x" for c in old} | {"case_id": "case_001", "verdict": "agree"})
    log = FeedbackLog(feedback, reader="")
    assert [r["case_id"] for r in log.all_rows()] == ["case_001"]
    log.reader = "dr_c"
    log.mark(_item(2), "model_wrong", "vessel")
    with feedback.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["case_id"], r["reader"]) for r in rows] == [("case_001", ""), ("case_002", "dr_c")]
