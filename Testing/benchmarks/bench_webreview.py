"""Browser review responsiveness: how long a reader waits for each step of ``jmid review``.

Starts the installed ``jmid review`` on a demo run's bundle, predictions and cohort and drives it
with headless Chromium (Playwright, Debian's chromium), timing in the page: server start, page
ready, opening a case, the analysis (worker start included, then a second case with the models
loaded), Analyze until the page shows it running and Cancel until it shows it cancelled (the
server answers while the worker works), a score-row click until the views show the organ, and
error-analysis steps (a new item through the worker, a revisited one from the heatmap cache).

With ``--readers N`` it measures several readers instead: N readers in a users file, the
multi-reader server (``--users``: a review process per reader), N browser contexts at once,
each signing in, opening its own case, stepping to an error-analysis item and marking it; it
prints the median and worst time of each step over the readers (``--json``: as JSON) and checks
that the store holds every reader's mark.

``--screenshot PNG`` saves the page as the single reader left it (an error-analysis item with
its scores and heatmap): the README's screenshot of the review comes from this on the demo.

Usage: .venv/bin/python Testing/benchmarks/bench_webreview.py --demo jmid-demo [--port 8765]
       [--screenshot review.png]
       .venv/bin/python Testing/benchmarks/bench_webreview.py --demo jmid-demo --readers 10
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, required=True, help="a jmid demo output folder")
    parser.add_argument("--organ", default="liver")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--readers", type=int, default=0, help="several readers at once")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--screenshot", type=Path, help="save the page at the end as this PNG")
    args = parser.parse_args()
    if args.readers:
        return _several_readers(args)
    work = Path(tempfile.mkdtemp(prefix="bench-review-"))
    t = time.perf_counter()
    server, url = _start_review(args, work / "feedback.csv")
    if not url:
        print("jmid review exited", file=sys.stderr)
        return 1
    figures = {"server start (s)": time.perf_counter() - t}
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page(viewport={"width": 1440, "height": 1080})
            page.set_default_timeout(300_000)
            figures.update(_drive(page, url))
            if args.screenshot:
                page.screenshot(path=str(args.screenshot))
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    for name, value in figures.items():
        print(f"{name:48s} {value:8.2f}")
    return 0


def _start_review(args, feedback: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """The installed ``jmid review`` on the demo's predictions (marks into ``feedback``) and
    the sign-in URL it prints once it serves ("" when it exited first)."""
    command = [
        str(Path(sys.executable).with_name("jmid")),
        "review",
        "--bundle",
        str(args.demo / "training" / args.organ / "bundle"),
        "--cases",
        str(args.demo / "evaluation" / args.organ / "predictions.csv"),
        "--data-root",
        str(args.demo / "cohort"),
        "--feedback",
        str(feedback),
        *extra,
        "--port",
        str(args.port or _free_port()),
    ]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = next((ln.split(": ", 1)[1].strip() for ln in server.stdout if "JMID review: " in ln), "")
    return server, url


def _timed(action, until) -> float:
    t = time.perf_counter()
    action()
    until()
    return time.perf_counter() - t


def _drive(page, url: str) -> dict[str, float]:
    f: dict[str, float] = {}
    f["page ready (s)"] = _timed(
        lambda: page.goto(url), lambda: page.locator("#case-select").wait_for()
    )
    titles = page.locator(".v-overlay .v-list-item-title")

    def open_case(n: int) -> None:
        page.locator(".v-field:has(#case-select)").click()
        case = titles.nth(n).inner_text()
        titles.nth(n).click()
        page.locator("#status", has_text=f"{case} loaded").wait_for()

    f["open a case (s)"] = _timed(lambda: open_case(0), lambda: None)
    cancel = page.locator("#cancel")
    f["Analyze -> running shown (s)"] = _timed(
        lambda: page.click("#analyze"),
        lambda: page.wait_for_function("!document.querySelector('#cancel').disabled"),
    )
    f["Cancel -> cancelled (s)"] = _timed(
        cancel.click, lambda: page.locator("#status", has_text="Cancelled.").wait_for()
    )
    f["analysis, new worker (s)"] = _timed(
        lambda: page.click("#analyze"), lambda: page.locator("#score-row-0").wait_for()
    )
    open_case(1)
    f["analysis, models loaded (s)"] = _timed(
        lambda: page.click("#analyze"), lambda: page.locator("#score-row-0").wait_for()
    )
    f["score row -> views centred (s)"] = _timed(
        lambda: page.click("#score-row-0"),
        lambda: page.locator("#status", has_text="Centred on").wait_for(),
    )
    done = page.locator("#status", has_text="Done.")
    f["review: first item, heatmap in worker (s)"] = _timed(
        lambda: page.click("#review-next"),
        lambda: (page.locator("#review-item", has_text="1 /").wait_for(), done.wait_for()),
    )
    page.click("#review-next")
    page.locator("#review-item", has_text="2 /").wait_for()
    done.wait_for()
    f["review: back to a cached item (s)"] = _timed(
        lambda: page.click("#review-previous"),
        lambda: page.locator("#status", has_text="from the cache").wait_for(),
    )
    return f


def _several_readers(args) -> int:
    import asyncio
    import json
    import statistics

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "JMIDAnomaly"))
    from JMIDAnomalyLib.apps.webreview.access import add_user
    from JMIDAnomalyLib.review.feedback import FeedbackLog

    work = Path(tempfile.mkdtemp(prefix="bench-readers-"))
    readers = {f"reader_{i:02d}": f"password {i:02d}" for i in range(args.readers)}
    for name, password in readers.items():
        add_user(work / "users.txt", name, password)
    feedback = work / "feedback.csv"
    server, url = _start_review(
        args, feedback, "--users", str(work / "users.txt"), "--explain", "none"
    )
    if not url:
        print("jmid review exited", file=sys.stderr)
        return 1
    steps: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    try:
        asyncio.run(_readers_at_once(url, readers, steps))
    finally:
        server.terminate()
        server.wait(timeout=60)
    wall = time.perf_counter() - t0
    marks = {row["reader"] for row in FeedbackLog(feedback).all_rows()}
    figures = {
        step: {"median_s": statistics.median(times), "worst_s": max(times), "n": len(times)}
        for step, times in steps.items()
    }
    result = {"readers": args.readers, "wall_s": wall, "marks_stored": len(marks), **figures}
    shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{args.readers} readers at once, {wall:.1f} s in all; marks stored {len(marks)}")
        for step, f in figures.items():
            print(f"  {step:36s} median {f['median_s']:6.2f} s   worst {f['worst_s']:6.2f} s")
    return 0 if marks == set(readers) else 1


async def _readers_at_once(url: str, readers: dict[str, str], steps) -> None:
    import asyncio

    from playwright.async_api import async_playwright

    async def timed(step: str, action) -> None:
        t = time.perf_counter()
        await action
        steps.setdefault(step, []).append(time.perf_counter() - t)

    async def reader(browser, i: int, name: str, password: str) -> None:
        page = await (await browser.new_context()).new_page()
        page.set_default_timeout(600_000)
        await page.goto(url)
        await page.fill("#name", name)
        await page.fill("#password", password)

        async def sign_in():
            await page.click("#sign-in")
            await page.locator("#case-select").wait_for()

        await timed("sign in -> page ready", sign_in())
        await page.locator(".v-field:has(#case-select)").click()
        titles = page.locator(".v-overlay .v-list-item-title")
        choice = titles.nth(i % await titles.count())
        case = await choice.inner_text()
        await timed(
            "open a case",
            _then(choice.click(), page.locator("#status", has_text=f"{case} loaded").wait_for()),
        )
        await timed(
            "review: next item shown",
            _then(
                page.click("#review-next"), page.locator("#review-item", has_text="1 /").wait_for()
            ),
        )
        await timed(
            "mark saved",
            _then(
                page.click("#mark-agree"),
                page.locator("#marks", has_text="1 marks saved").wait_for(),
            ),
        )

    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        await asyncio.gather(*(reader(browser, i, *kv) for i, kv in enumerate(readers.items())))
        await browser.close()


async def _then(first, second) -> None:
    await first
    await second


if __name__ == "__main__":
    sys.exit(main())
