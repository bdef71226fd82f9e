"""Browser review responsiveness: how long a reader waits for each step of ``jmid review``.

Starts the installed ``jmid review`` on a demo run's bundle, predictions and cohort and drives it
with headless Chromium (Playwright, Debian's chromium), timing in the page: server start, page
ready, opening a case, the analysis (worker start included, then a second case with the models
loaded), Analyze until the page shows it running and Cancel until it shows it cancelled (the
server answers while the worker works), a score-row click until the views show the organ, and
error-analysis steps (a new item through the worker, a revisited one from the heatmap cache).

Usage: .venv/bin/python Testing/benchmarks/bench_webreview.py --demo jmid-demo [--port 8765]
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
    args = parser.parse_args()
    jmid = Path(sys.executable).with_name("jmid")
    port = args.port or _free_port()
    work = Path(tempfile.mkdtemp(prefix="bench-review-"))
    command = [
        str(jmid),
        "review",
        "--bundle",
        str(args.demo / "training" / args.organ / "bundle"),
        "--cases",
        str(args.demo / "evaluation" / args.organ / "predictions.csv"),
        "--data-root",
        str(args.demo / "cohort"),
        "--feedback",
        str(work / "feedback.csv"),
        "--port",
        str(port),
    ]
    t = time.perf_counter()
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = ""
    for line in server.stdout:  # the sign-in URL it prints once it serves
        if line.startswith("JMID review: "):
            url = line.split(": ", 1)[1].strip()
            break
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
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    for name, value in figures.items():
        print(f"{name:48s} {value:8.2f}")
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
