"""The JMIDAnomaly module's Logic (reading and error analysis) and JMIDTrainer's Logic, on a
real MRML scene with a real worker process and the real demo bundle."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import vtk
from conftest import REPO
from JMIDAnomalyLib.apps.trainer import TrainerLogic
from JMIDAnomalyLib.imaging.geometry import Grid
from JMIDAnomalyLib.imaging.volumes import read_ct
from JMIDAnomalyLib.review.error_analysis import ReviewSession
from JMIDAnomalyLib.review.feedback import FEEDBACK_COLUMNS, FeedbackLog
from JMIDAnomalyLib.review.queue import ReviewQueue
from JMIDAnomalyLib.review.reading import ReadingLogic, ensure_slice_views
from JMIDAnomalyLib.scene.cases import import_segmentation_for_volume, score_rows
from JMIDAnomalyLib.scene.mrml import (
    HEATMAP_COLOR_NODE_ID,
    image_to_volume_node,
    volume_node_to_image,
)
from slicer import vtkMRMLScene
from vtk.util.numpy_support import vtk_to_numpy


@pytest.fixture
def reading():
    logic = ReadingLogic(vtkMRMLScene())
    yield logic
    logic.shutdown()


def test_apply_runs_in_the_worker_and_fills_the_scene(reading, demo_run):
    _, demo, _ = demo_run
    case = next((demo / "analysis").iterdir()).name
    cohort = demo / "cohort"
    scene = reading.scene
    volume = image_to_volume_node(read_ct(cohort / "images" / f"{case}.nii.gz"), scene, "Case A")
    segmentation = import_segmentation_for_volume(
        volume, cohort / "segs" / f"{case}.nii.gz", cohort / "labels.json"
    )
    report = "肝S6に嚢胞を認めます。"
    job = reading.start_analysis(
        volume, [demo / "training" / "liver" / "bundle"], segmentation, report_text=report
    )
    # The GUI's timer path: process_events never waits, whatever the worker is doing.
    slowest, result, progress = 0.0, None, []
    deadline = time.monotonic() + 300
    while result is None:
        assert time.monotonic() < deadline, "no result"
        start = time.perf_counter()
        events = reading.process_events()
        slowest = max(slowest, time.perf_counter() - start)
        progress += [e for e in events if e.kind == "progress"]
        result = next(
            (e for e in events if e.job == job and e.kind != "progress" and e.kind != "started"),
            None,
        )
        time.sleep(0.02)
    assert result.kind == "result", result.data
    assert progress and slowest < 1.0
    nodes = result.data["nodes"]
    assert nodes.volume is volume and nodes.segmentation is segmentation
    # Heatmap overlay: named, on the CT's grid, colour map, zero thresholded away, shown.
    heat = nodes.heatmaps["liver"]
    assert heat.GetName() == "Case A heatmap liver"
    assert (
        Grid.from_image(volume_node_to_image(heat)).difference(
            Grid.from_image(volume_node_to_image(volume)), 1e-4
        )
        is None
    )
    display = heat.GetDisplayNode()
    assert display.GetColorNodeID() == HEATMAP_COLOR_NODE_ID and display.GetApplyThreshold()
    composites = [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode") for i in range(3)]
    assert all(c.GetForegroundVolumeID() == heat.GetID() for c in composites)
    assert all(c.GetBackgroundVolumeID() == volume.GetID() for c in composites)
    # Scores table equals what the worker computed; the report is in the scene.
    organs = result.data["result"]["organs"]
    expected = [(o["organ"], s["class"], s["probability"]) for o in organs for s in o["scores"]]
    got = [(r["organ"], r["class"], r["probability"]) for r in score_rows(nodes.scores)]
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    assert np.allclose([g[2] for g in got], [e[2] for e in expected], atol=1e-5)
    assert nodes.report.GetText() == report and nodes.report.GetName() == "Case A report"
    # Centring on the organ puts every slice view through its segment's centre.
    red, yellow, green = ensure_slice_views(scene)

    def assert_centred(ras):
        assert abs(red.GetSliceToRAS().GetElement(2, 3) - ras[2]) < 1e-3
        assert abs(yellow.GetSliceToRAS().GetElement(0, 3) - ras[0]) < 1e-3
        assert abs(green.GetSliceToRAS().GetElement(1, 3) - ras[1]) < 1e-3

    reading.centre_on_organ(nodes, "liver")
    assert_centred(
        segmentation.GetSegmentCenterRAS(
            segmentation.GetSegmentation().GetSegmentIdBySegmentName("liver")
        )
    )
    # Selecting a row shows its heatmap, organs as outlines, and centres the views where the
    # model looked: the centroid of the heatmap's top 5 %, computed here from the node's voxels.
    reading.show_heatmap(nodes, None)
    assert segmentation.GetDisplayNode().GetOpacity2DFill() > 0
    assert reading.select_score_row(nodes, 0) == "liver"
    assert composites[0].GetForegroundVolumeID() == heat.GetID()
    assert segmentation.GetDisplayNode().GetOpacity2DFill() == 0
    dims = heat.GetImageData().GetDimensions()
    voxels = vtk_to_numpy(heat.GetImageData().GetPointData().GetScalars()).reshape(dims[::-1])
    top = voxels >= np.quantile(voxels[voxels > 0], 0.95)
    ijk = [*np.argwhere(top)[:, ::-1].mean(axis=0), 1.0]
    matrix = vtk.vtkMatrix4x4()
    heat.GetIJKToRASMatrix(matrix)
    assert_centred([sum(matrix.GetElement(r, c) * ijk[c] for c in range(4)) for r in range(3)])
    reading.set_heatmap_opacity(0.3)
    assert all(abs(c.GetForegroundOpacity() - 0.3) < 1e-6 for c in composites)
    # Temporary CT copies and results are gone; shutting down removes the work folder.
    assert not any(reading.work_dir.rglob("*.nii.gz"))
    reading.shutdown()
    assert not reading.work_dir.exists()


def test_error_analysis_steps_through_mistakes_and_keeps_marks(reading, demo_run, tmp_path):
    _, demo, _ = demo_run
    predictions = demo / "evaluation" / "liver" / "predictions.csv"
    feedback = tmp_path / "feedback.csv"
    session = ReviewSession(
        reading, predictions, demo / "cohort", feedback, [demo / "training" / "liver" / "bundle"]
    )
    items = session.queue.select(organ="liver", outcomes=("FP", "FN"))
    assert len(items) >= 2
    margins = [abs(i.probability - session.queue.threshold(i)) for i in items]
    assert margins == sorted(margins, reverse=True)
    assert {i.outcome(session.queue.threshold(i)) for i in items} <= {"FP", "FN"}
    only_fn = session.queue.select(organ="liver", outcomes=("FN",), threshold=0.99)
    assert only_fn and all(i.label == 1 and i.probability < 0.99 for i in only_fn)
    session.queue.select(organ="liver", outcomes=("FP", "FN"))

    def show() -> None:
        job = session.show_current()
        if job is not None:
            assert session.handle(reading.wait(job, 300))
        assert session.nodes is not None and "liver" in session.nodes.heatmaps

    show()
    first = session.queue.current
    # The report sentence that produced the label, when the report had one.
    report = session.nodes.report
    assert (report.GetText() if report is not None else "") == first.evidence
    session.mark("agree")
    session.step(1)
    show()
    session.mark("model_wrong", "lesion is a vessel")
    rows = list(csv.DictReader(feedback.open(encoding="utf-8")))
    assert [r["verdict"] for r in rows] == ["agree", "model_wrong"]
    assert rows[1]["comment"] == "lesion is a vessel" and list(rows[0]) == FEEDBACK_COLUMNS
    # Back to the first item: its heatmap comes from the cache, no new analysis.
    assert session.step(-1) is None and session.nodes is not None
    volumes = [scene_node.GetName() for scene_node in _nodes(reading.scene, "vtkMRMLVolumeNode")]
    assert volumes.count(first.case_id) == 1, "the previous step's nodes were not removed"
    assert len(FeedbackLog(feedback)) == 2


class RecordingView:
    """A front end that writes down what the controller shows (the Slicer Widget and the
    browser page implement the same calls with their widgets)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        if not name.startswith("show_") and name != "set_running":
            raise AttributeError(name)
        return lambda *args: self.calls.append((name, *args))

    def last(self, name):
        return next((c for c in reversed(self.calls) if c[0] == name), None)


def test_one_controller_drives_reading_and_error_analysis(reading, demo_run, tmp_path):
    from JMIDAnomalyLib.review.controller import ReadingController

    _, demo, _ = demo_run
    bundle = demo / "training" / "liver" / "bundle"
    view = RecordingView()
    controller = ReadingController(reading, view)
    # Reading: a case the controller opens itself (as the browser does), analyzed in the worker.
    case = next((demo / "analysis").iterdir()).name
    cohort = demo / "cohort"
    volume, segmentation = controller.open_file(
        cohort / "images" / f"{case}.nii.gz",
        str(cohort / "segs" / f"{case}.nii.gz"),
        str(cohort / "labels.json"),
    )
    job = controller.analyze(volume, [bundle], segmentation)
    assert view.last("set_running") == ("set_running", True, "Analysis queued...")
    event = controller.wait(job, 300)
    assert event.kind == "result", event.message
    assert view.last("set_running") == ("set_running", False, "Done.")
    assert any(c[0] == "show_progress" and 0 <= c[1] <= 1 for c in view.calls)
    shown = view.last("show_results")[1]
    assert shown is controller.nodes and "liver" in shown.heatmaps
    assert controller.select_row(0) == "liver" and controller.shown_heatmap() == "liver"
    # Error analysis: the first mistake, its heatmap computed in the worker, then marked.
    review = controller.open_review(
        demo / "evaluation" / "liver" / "predictions.csv", cohort, tmp_path / "fb.csv", [bundle]
    )
    job = controller.review_filter(organ="liver")
    assert volume.GetScene() is None, "the case opened for reading was removed"
    item = view.last("show_review_item")[1]
    assert item["position"] == 1 and item["total"] == len(review.queue.items) >= 1
    if job is not None:
        assert controller.wait(job, 300).kind == "result"
    assert controller.nodes is review.nodes and view.last("show_results")[1] is review.nodes
    controller.mark("label_wrong", "not in the report")
    assert view.last("show_review_item")[1]["verdict"] == "label_wrong"
    assert [r["verdict"] for r in csv.DictReader((tmp_path / "fb.csv").open())] == ["label_wrong"]
    # Cancel: the running job ends as cancelled, and the view is told.
    volume, segmentation = controller.open_file(
        cohort / "images" / f"{case}.nii.gz",
        str(cohort / "segs" / f"{case}.nii.gz"),
        str(cohort / "labels.json"),
    )
    job = controller.analyze(volume, [bundle], segmentation)
    controller.cancel()
    assert controller.wait(job, 60).kind == "cancelled"
    assert view.last("set_running") == ("set_running", False, "Cancelled.")


def _nodes(scene, cls):
    return [scene.GetNthNodeByClass(i, cls) for i in range(scene.GetNumberOfNodesByClass(cls))]


_MARKER = """
import sys
sys.path.insert(0, {lib!r})
from JMIDAnomalyLib.review.feedback import FeedbackLog
from JMIDAnomalyLib.review.queue import ReviewQueue
queue = ReviewQueue({predictions!r})
items = queue.select(outcomes=("FP", "FN", "TP", "TN"))
log = FeedbackLog({feedback!r})
for n in range(10**6):
    log.mark(items[n % len(items)], "label_wrong", "mark %d" % n)
    print(n + 1, flush=True)
"""


def test_feedback_marks_survive_a_kill(demo_run, tmp_path):
    _, demo, _ = demo_run
    predictions = demo / "evaluation" / "liver" / "predictions.csv"
    feedback = tmp_path / "feedback.csv"
    code = _MARKER.format(
        lib=str(REPO / "JMIDAnomaly"), predictions=str(predictions), feedback=str(feedback)
    )
    marker = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    acknowledged = 0
    while acknowledged < 40:
        acknowledged = int(marker.stdout.readline())
    marker.kill()  # SIGKILL, most likely in the middle of rewriting the file
    marker.wait()
    log = FeedbackLog(feedback)  # parses: never a half-written file
    items = ReviewQueue(predictions).select(outcomes=("FP", "FN", "TP", "TN"))
    assert len(log) >= min(acknowledged, len(items))
    assert all(row["verdict"] == "label_wrong" for row in log.rows.values())


def test_trainer_logic_runs_the_jmid_jobs(demo_run, tmp_path):
    _, demo, _ = demo_run
    logic = TrainerLogic()
    summary = logic.import_labels(demo / "cohort" / "reports.csv", tmp_path / "labels")
    assert summary == json.loads((demo / "labels" / "summary.json").read_text())
    metrics = logic.evaluate(
        demo / "training" / "liver" / "bundle",
        tmp_path / "eval",
        oof=demo / "training" / "liver" / "oof_predictions.csv",
    )
    assert metrics["organ"] == "liver" and (tmp_path / "eval" / "predictions.csv").is_file()
    ct = demo / "cohort" / "images" / f"{next((demo / 'analysis').iterdir()).name}.nii.gz"
    # JMIDTrainer's Logic runs any jmid command line through the CLI's main (the core's Logic
    # does not depend on its own command line).
    from JMIDAnomalyLib.apps.cli.main import main

    assert main(["info", "--ct", str(ct)]) == 0
    assert main(["info", "--ct", str(tmp_path / "none.nii.gz")]) == 2
