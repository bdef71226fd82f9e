"""The background-worker protocol with a real worker process and the real demo bundle."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from JMIDAnomalyLib.inference.analyze_job import AnalyzeConfig
from JMIDAnomalyLib.worker.client import WorkerClient


def _held_out_config(out_dir: Path, demo: Path, case: str | None = None) -> AnalyzeConfig:
    cohort = demo / "cohort"
    case = case or next((demo / "analysis").iterdir()).name
    return AnalyzeConfig(
        ct=str(cohort / "images" / f"{case}.nii.gz"),
        out=str(out_dir / case),
        bundles=[str(demo / "training" / "liver" / "bundle")],
        seg=str(cohort / "segs" / f"{case}.nii.gz"),
        seg_labels=str(cohort / "labels.json"),
        scene=False,
    )


@pytest.fixture
def client():
    worker = WorkerClient()
    yield worker
    worker.close()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_worker_analyzes_cases_with_progress_and_reuses_its_models(client, demo_run, tmp_path):
    _, demo, _ = demo_run
    events = []
    first = client.analyze(_held_out_config(tmp_path, demo))
    done = client.wait(first, timeout=300, on_event=events.append)
    assert done.kind == "result", done.data
    kinds = [e.kind for e in events]
    assert "ready" in kinds and kinds.index("ready") < kinds.index("started")
    fractions = [e.data["fraction"] for e in events if e.kind == "progress" and e.job == first]
    assert len(fractions) >= 3 and fractions == sorted(fractions) and fractions[-1] == 1.0
    result = done.data["result"]
    assert result["models_reused"] is False
    scores = json.loads((Path(result["out"]) / "scores.json").read_text())
    assert [o["organ"] for o in result["organs"]] == [o["organ"] for o in scores["organs"]]
    assert (Path(result["out"]) / "heatmap_liver.nii.gz").is_file()
    pid = client.pid
    # A second case: same process, bundle still loaded.
    second_case = sorted(p.stem.split(".")[0] for p in (demo / "cohort" / "images").iterdir())[0]
    second = client.wait(client.analyze(_held_out_config(tmp_path, demo, second_case)), 300)
    assert second.kind == "result" and second.data["result"]["models_reused"] is True
    assert client.pid == pid
    # Bad input: a clear error, the worker survives it.
    bad = _held_out_config(tmp_path, demo)
    bad.ct, bad.out = str(tmp_path / "missing.nii.gz"), str(tmp_path / "bad")
    error = client.wait(client.analyze(bad), 60)
    assert error.kind == "error" and error.data["input_error"]
    assert "missing.nii.gz" in error.message and client.pid == pid
    assert not Path(bad.out).exists()
    assert not client.busy


def test_cancel_kills_the_process_tree_and_a_crash_is_reported(client):
    job = client.submit("ping", seconds=120)
    deadline = time.monotonic() + 60
    while not any(e.kind == "started" and e.job == job for e in client.poll()):
        assert time.monotonic() < deadline, "the worker never started the job"
        time.sleep(0.05)
    pid = client.pid
    assert client.cancel() == [job]
    assert _gone(pid)
    assert any(e.kind == "cancelled" and e.job == job for e in client.poll())
    # The next request starts a fresh worker.
    answer = client.wait(client.submit("ping"), 60)
    assert answer.kind == "result" and answer.data["result"]["pid"] != pid
    # A worker that dies is reported for the job it had, with its status.
    job = client.submit("ping", seconds=120)
    time.sleep(0.5)
    os.kill(client.pid, signal.SIGKILL)
    crash = client.wait(job, 30)
    assert crash.kind == "error" and not crash.data["input_error"]
    assert "killed (signal 9)" in crash.message
    assert not client.alive and not client.busy


@pytest.fixture
def broker(tmp_path):
    """The shared worker's broker on a socket; yields its path."""
    import subprocess
    import sys

    path = str(tmp_path / "w.sock")
    process = subprocess.Popen([sys.executable, "-P", "-m", "JMIDAnomalyLib.worker.broker", path])
    deadline = time.monotonic() + 60
    while not Path(path).exists():
        assert process.poll() is None and time.monotonic() < deadline, "no broker"
        time.sleep(0.05)
    yield path
    process.terminate()
    process.wait(timeout=30)


def _started(client, job, timeout=120) -> None:
    deadline = time.monotonic() + timeout
    while not any(e.kind == "started" and e.job == job for e in client.poll()):
        assert time.monotonic() < deadline, f"job {job} never started"
        time.sleep(0.05)


def test_readers_share_one_worker_through_the_broker_queue(broker, demo_run, tmp_path):
    """Two readers' clients, one worker: jobs queue first come first served, each reader gets
    its own events under its own ids, the models are loaded once, and one reader's Cancel or
    leaving does not touch the other's jobs."""
    from JMIDAnomalyLib.worker.remote import RemoteWorkerClient

    _, demo, _ = demo_run
    alice, bob = RemoteWorkerClient(broker), RemoteWorkerClient(broker)
    first = alice.analyze(_held_out_config(tmp_path / "a", demo))
    second_case = sorted(p.stem.split(".")[0] for p in (demo / "cohort" / "images").iterdir())[0]
    queued = bob.analyze(_held_out_config(tmp_path / "b", demo, second_case))
    assert first == queued == "1"  # each reader's own ids
    bob_events: list = []
    done = alice.wait(first, timeout=300)
    assert done.kind == "result" and done.data["result"]["models_reused"] is False
    after = bob.wait(queued, timeout=300, on_event=bob_events.append)
    assert after.kind == "result" and after.data["result"]["models_reused"] is True
    assert Path(after.data["result"]["out"]).parent == tmp_path / "b"
    fractions = [e.data["fraction"] for e in bob_events if e.kind == "progress"]
    assert fractions and fractions[-1] == 1.0  # bob saw his own progress
    # Alice cancels her running job: Bob's queued job still runs.
    long = alice.submit("ping", seconds=120)
    _started(alice, long)
    short = bob.submit("ping", seconds=0)
    assert alice.cancel() == [long]
    assert alice.wait(long, timeout=30).kind == "cancelled"
    assert bob.wait(short, timeout=120).kind == "result"
    # Alice leaves with a job queued behind Bob's: it is dropped, Bob's finishes.
    running = bob.submit("ping", seconds=1)
    alice.submit("ping", seconds=60)
    alice.close()
    assert bob.wait(running, timeout=120).kind == "result"
    assert not bob.busy
    bob.close()
