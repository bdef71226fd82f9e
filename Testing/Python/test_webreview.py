"""The browser review end to end: the installed ``jmid review`` (trame-slicer, offscreen VTK)
against the demo bundle, driven by headless Chromium through Playwright.

Screenshots go to ``$JMID_TEST_ARTIFACTS`` (default ``Testing/artifacts/``, git-ignored).
Chromium comes from Debian (``chromium``; ``scripts/setup.sh`` installs it where it can). The
test skips without it, unless ``JMID_REQUIRE_BROWSER=1`` (CI), where it fails.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from JMIDAnomalyLib.common.organs import ORGAN_CLASSES

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("JMID_TEST_ARTIFACTS", REPO / "Testing" / "artifacts"))
_UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def page():
    if not Path(CHROMIUM).exists():
        message = "Debian's chromium is not installed (scripts/setup.sh installs it as root)"
        if os.environ.get("JMID_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1080})
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def review_server(demo_run, jmid_command, tmp_path):
    """``jmid review`` on the demo's predictions with a copy of its bundle whose calibration
    is sure to change the scores; yields (url, feedback CSV, process, that bundle)."""
    _, demo, _ = demo_run
    feedback = tmp_path / "feedback.csv"
    bundle = _recalibrated_bundle(demo / "training" / "liver" / "bundle", tmp_path / "bundle")
    command = _review_of_errors(jmid_command, demo, feedback, "--reader", "dr_test", bundle=bundle)
    url, process = _serve(command, tmp_path / "review.log")
    yield url, feedback, process, bundle
    _stop(process)


def _recalibrated_bundle(bundle: Path, out: Path) -> Path:
    """A copy of ``bundle`` with a Platt map on every class. The test demo's one-epoch models
    may rank no class, and then calibration keeps the raw scores (identity), which would leave
    nothing to tell the calibrated values from the raw ones."""
    shutil.copytree(bundle, out)
    meta = json.loads((out / "bundle.json").read_text(encoding="utf-8"))
    meta["calibration"] = {c: {"method": "platt", "a": 3.0, "b": -0.5} for c in meta["classes"]}
    (out / "bundle.json").write_text(json.dumps(meta), encoding="utf-8")
    return out


def _review_of_errors(
    jmid_command, demo: Path, feedback: Path, *extra: str, bundle: Path | None = None
) -> list[str]:
    """``jmid review`` of the demo's liver predictions (by its bundle, or ``bundle``), marks
    into ``feedback``."""
    return [
        *jmid_command,
        "review",
        "--bundle",
        str(bundle or demo / "training" / "liver" / "bundle"),
        "--cases",
        str(demo / "evaluation" / "liver" / "predictions.csv"),
        "--data-root",
        str(demo / "cohort"),
        "--feedback",
        str(feedback),
        *extra,
    ]


def _own_addresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses (``hostname -I``; none is fine)."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout
    except OSError:
        return []
    return [a for a in out.split() if "." in a and not a.startswith("127.")]


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    finally:
        process.kill()


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def _settled(locator, previous: bytes | None = None, timeout: float = 20.0) -> bytes:
    """A screenshot once the streamed views stopped changing (and differ from ``previous``)."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        time.sleep(0.7)
        shot = locator.screenshot()
        if shot == last and shot != previous:
            return shot
        last = shot
    return last


def _choose(page, field_id: str, text: str) -> None:
    """Pick ``text`` in a Vuetify select."""
    page.locator(f".v-field:has(#{field_id})").click()
    page.locator(".v-overlay .v-list-item-title").get_by_text(text, exact=True).click()


def _save(name: str, png: bytes) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / name).write_bytes(png)


def test_browser_review_reads_a_case_and_marks_a_false_positive(review_server, page, demo_run):
    url, feedback, process, bundle = review_server
    _, demo, _ = demo_run
    base = _base(url)
    assert page.goto(base).status == 401  # no token: nothing but a sign-in hint
    assert page.goto(base + "?token=wrong").status == 403
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(base + "ws", headers=_UPGRADE))
    assert refused.value.code == 401  # and no websocket: no state
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(url)
    assert page.url.startswith(base) and "token" not in page.url  # now in a cookie
    views = page.locator(".v-main")
    # Load a case from the predictions CSV and analyze it in the background worker.
    page.locator(".v-field:has(#case-select)").click()
    case = page.locator(".v-overlay .v-list-item-title").first.inner_text()
    page.locator(".v-overlay .v-list-item-title").first.click()
    page.locator("#status", has_text=f"{case} loaded").wait_for()
    page.click("#analyze")
    from playwright.sync_api import expect

    expect(page.locator("#cancel")).to_be_enabled()  # running: the page is live meanwhile
    page.locator("#score-row-0").wait_for(timeout=180_000)
    page.locator("#status", has_text="Done.").wait_for()
    rows = page.locator("#scores tbody tr")
    cells = [rows.nth(i).locator("td").all_inner_texts() for i in range(rows.count())]
    assert {c[0] for c in cells} == {"liver"}
    assert [c[1] for c in cells] == list(ORGAN_CLASSES["liver"])
    assert all(0 <= float(c[2]) <= 1 and 0 < float(c[3]) <= 1 for c in cells)
    # What is shown is the bundle's calibration of the ensemble, not its raw probability.
    calibrated, raw, outside = _liver_scores(demo, bundle, case)
    np.testing.assert_allclose([float(c[2]) for c in cells], calibrated, atol=6e-4)
    assert np.abs(calibrated - raw).max() > 0.01
    # A crop unlike the bundle's training data is said so above the scores, and only then.
    assert page.locator("#domain-note").count() == int(outside)
    # Select the organ: the views centre where the model looked and show its heatmap.
    page.click("#score-row-0")
    page.locator("#status", has_text="Centred on liver").wait_for()
    thumb = page.locator(".v-slider:has(#opacity) .v-slider-thumb")
    thumb.focus()
    page.keyboard.press("Home")  # opacity 0: the heatmap layer is invisible
    hidden = _settled(views)
    page.keyboard.press("End")  # opacity 1
    shown = _settled(views, hidden)
    changed = np.abs(_pixels(shown) - _pixels(hidden)).max(axis=2) > 40
    assert changed.sum() > 200, "the heatmap overlay did not appear in the slice views"
    _save("review-heatmap.png", shown)
    page.locator("#overlay").uncheck()
    off = _settled(views, shown)
    assert (np.abs(_pixels(off) - _pixels(shown)).max(axis=2) > 40).sum() > 200
    page.locator("#overlay").check()
    _settled(views, off)
    # Error analysis: false positives only, step to the second one, mark it.
    _choose(page, "review-outcome", "false positives")
    page.click("#review-next")
    page.locator("#review-item", has_text="1 /").wait_for()
    assert "-> FP" in page.inner_text("#review-item")
    page.locator("#status", has_text="Done.").wait_for(timeout=180_000)
    page.click("#review-next")
    page.locator("#review-item", has_text="2 /").wait_for()
    page.locator("#status", has_text="Done.").wait_for(timeout=180_000)
    item = page.inner_text("#review-item")
    assert "-> FP" in item and page.inner_text("#evidence")
    page.fill("#comment", "heatmap on the gallbladder")
    page.click("#mark-model_wrong")
    page.locator("#marks", has_text="1 marks saved").wait_for()
    _save("review-error-analysis.png", page.screenshot())
    with feedback.open(encoding="utf-8", newline="") as f:
        marks = list(csv.DictReader(f))
    assert len(marks) == 1
    mark = marks[0]
    assert (mark["verdict"], mark["outcome"], mark["comment"]) == (
        "model_wrong",
        "FP",
        "heatmap on the gallbladder",
    )
    assert item.split(": ")[1].startswith(f"{mark['case_id']} liver {mark['class']}")
    assert mark["reader"] == "dr_test"
    # Patient data stays out of the URLs (and so out of any access log).
    assert requested and not any(mark["case_id"] in u or "token" in u for u in requested[1:])
    with (demo / "evaluation" / "liver" / "predictions.csv").open(encoding="utf-8") as f:
        predicted = {(r["case_id"], r["class"]): r for r in csv.DictReader(f)}
    source = predicted[(mark["case_id"], mark["class"])]
    assert abs(float(mark["probability"]) - float(source["probability"])) < 1e-4
    assert float(mark["probability"]) >= float(mark["threshold"]) and source["label"] == "0"
    # The keyboard marks too (A = agree), replacing the earlier verdict of the same item.
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("a")
    page.locator("#review-item", has_text="[agree]").wait_for()
    with feedback.open(encoding="utf-8", newline="") as f:
        assert [r["verdict"] for r in csv.DictReader(f)] == ["agree"]
    assert process.poll() is None


def _liver_scores(demo: Path, bundle: Path, case: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """(calibrated, raw) liver probabilities of a demo case, by ``bundle`` here, and whether
    its crop is outside the bundle's training data."""
    from JMIDAnomalyLib.imaging.label_tables import read_label_names
    from JMIDAnomalyLib.imaging.volumes import read_ct, read_label_map
    from JMIDAnomalyLib.inference.predictor import AnomalyPredictor

    cohort = demo / "cohort"
    ct = read_ct(cohort / "images" / f"{case}.nii.gz")
    seg = read_label_map(cohort / "segs" / f"{case}.nii.gz", reference=ct)
    names = read_label_names(cohort / "labels.json")
    predictor = AnomalyPredictor([bundle], device="cpu")
    (liver,) = predictor.analyze(ct, seg, names, explain="none").organs
    return (
        np.array([s.probability for s in liver.scores]),
        np.array([s.raw_probability for s in liver.scores]),
        liver.outside_training_data,
    )


def _serve(command: list[str], log_path: Path) -> tuple[str, subprocess.Popen]:
    """Start ``command`` + ``--port P``; returns (the sign-in URL it prints, process) once it
    serves."""
    port = _free_port()
    log = log_path.open("w")
    process = subprocess.Popen(
        [*command, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 120
    while True:
        printed = re.search(r"JMID review: (\S+)", log_path.read_text())
        if printed:
            return printed.group(1), process
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("jmid review did not serve:\n" + log_path.read_text())
        time.sleep(0.5)


def _base(url: str) -> str:
    """``http://127.0.0.1:PORT/`` of a sign-in URL."""
    return url.split("?", 1)[0].removesuffix("login")


def test_browser_review_of_one_ct(demo_run, jmid_command, page, tmp_path):
    """``--ct`` with its organ label map: the CT is on show at once; Cancel stops an analysis;
    Analyze gives scores; the worker's log is on the page."""
    _, demo, _ = demo_run
    cohort = demo / "cohort"
    case = sorted((cohort / "images").glob("*.nii.gz"))[-1].name.removesuffix(".nii.gz")
    command = [
        *jmid_command,
        "review",
        "--bundle",
        str(demo / "training" / "liver" / "bundle"),
        "--ct",
        str(cohort / "images" / f"{case}.nii.gz"),
        "--seg",
        str(cohort / "segs" / f"{case}.nii.gz"),
        "--seg-labels",
        str(cohort / "labels.json"),
        "--explain",
        "none",
    ]
    url, process = _serve(command, tmp_path / "review.log")
    try:
        # Served on 127.0.0.1 only: the machine's other addresses refuse the port.
        port = int(_base(url).rsplit(":", 1)[1].strip("/"))
        for address in _own_addresses():
            with pytest.raises(OSError), socket.create_connection((address, port), timeout=2):
                pass
        page.goto(url)
        page.locator("#status", has_text=f"{case} loaded").wait_for()
        assert page.locator("#review").count() == 0  # no predictions: no error analysis
        # Cancel stops the worker (it is still loading the models); Analyze works again.
        page.click("#analyze")
        page.click("#cancel")
        page.locator("#status", has_text="Cancelled.").wait_for()
        assert page.locator("#score-row-0").count() == 0
        page.click("#analyze")
        page.locator("#score-row-0").wait_for(timeout=180_000)
        assert page.locator("#scores tbody tr").count() == len(ORGAN_CLASSES["liver"])
        page.click("#score-row-0")
        page.locator("#status", has_text="Centred on liver").wait_for()
        page.get_by_text("Worker log").click()
        assert "analyzing the liver" in page.inner_text("#log")
    finally:
        _stop(process)


def test_review_command_rejects_bad_input(demo_run, jmid_command, tmp_path):
    _, demo, _ = demo_run
    bundle = str(demo / "training" / "liver" / "bundle")
    predictions = str(demo / "evaluation" / "liver" / "predictions.csv")
    cases = [
        (["--bundle", str(tmp_path / "none"), "--cases", predictions], "none"),
        (["--bundle", bundle, "--cases", predictions], "--data-root"),
        (["--bundle", bundle, "--ct", str(tmp_path / "ct.nii.gz")], "ct.nii.gz"),
    ]
    for args, named in cases:
        result = subprocess.run(
            [*jmid_command, "review", *args, "--port", "0"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2, result.stderr
        assert "error:" in result.stderr and named in result.stderr
        assert "Traceback" not in result.stderr


def test_two_readers_each_with_their_own_case_and_marks(demo_run, jmid_command, tmp_path):
    """``--users``: two readers in two browser contexts at once, each on their own case, each
    marking; both readers' marks are in the store; kill -9 of the server loses none."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    from JMIDAnomalyLib.apps.webreview.access import add_user
    from JMIDAnomalyLib.review.feedback import FeedbackLog
    from playwright.sync_api import sync_playwright

    _, demo, _ = demo_run
    users, feedback = tmp_path / "users.txt", tmp_path / "feedback.csv"
    readers = {"dr_ito": "first password", "dr_sato": "second password"}
    for name, password in readers.items():
        add_user(users, name, password)
    command = _review_of_errors(
        jmid_command, demo, feedback, "--users", str(users), "--explain", "none"
    )
    url, process = _serve(command, tmp_path / "review.log")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            pages = {}
            for name, password in readers.items():
                page = browser.new_context().new_page()
                page.set_default_timeout(120_000)
                page.goto(url)
                page.fill("#name", name)
                page.fill("#password", password)
                page.click("#sign-in")
                pages[name] = page
            opened = {}
            for i, (name, page) in enumerate(pages.items()):  # both pages are open now
                page.locator(".v-field:has(#case-select)").click()
                choice = page.locator(".v-overlay .v-list-item-title").nth(i)
                opened[name] = choice.inner_text()
                choice.click()
            assert opened["dr_ito"] != opened["dr_sato"]
            for name, page in pages.items():
                page.locator("#status", has_text=f"{opened[name]} loaded").wait_for()
            for name, page in pages.items():  # each still shows its own case
                assert opened[name] in page.inner_text("#status"), name
                page.click("#review-next")
                page.locator("#review-item", has_text="1 /").wait_for()
                page.click("#mark-agree" if name == "dr_ito" else "#mark-label_wrong")
                page.locator("#marks", has_text="1 marks saved").wait_for()
            browser.close()
        process.kill()  # kill -9 of the server mid-session
        process.wait()
        marks = {r["reader"]: r["verdict"] for r in FeedbackLog(feedback).all_rows()}
        assert marks == {"dr_ito": "agree", "dr_sato": "label_wrong"}
        # each reader had a review process of their own; they end with the server
        log = (tmp_path / "review.log").read_text()
        started = re.findall(r"review process (\d+) serves", log)
        assert len(started) == 2
        started += re.findall(r"review process (\d+) is the readers' shared worker", log)
        assert len(started) == 3
        deadline = time.monotonic() + 20
        while any(Path(f"/proc/{pid}").exists() for pid in started):
            assert time.monotonic() < deadline, "a reader's review outlived the server"
            time.sleep(0.5)
    finally:
        _stop(process)
