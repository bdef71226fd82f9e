"""The main job end to end, through the installed `jmid` command."""

from __future__ import annotations

import csv
import json
import random
import subprocess

import SimpleITK as sitk
from JMIDAnomalyLib.common.organs import ORGAN_CLASSES
from JMIDAnomalyLib.demo.holdout import split_test_set
from JMIDAnomalyLib.imaging.geometry import Grid
from JMIDAnomalyLib.models.bundle import load_bundle
from JMIDAnomalyLib.scene.mrml import load_scene, segment_names, volume_node_to_image


def test_demo_runs_end_to_end_and_reuses_its_cache(demo_run):
    """The whole main job at a reduced size: every output exists and is valid."""
    command, out, result = demo_run
    assert "24 reports labelled" in result.stdout and "(0 cases from the cache)" in result.stdout
    assert "liver ensemble (trained in" in result.stdout and "out-of-fold" in result.stdout
    for deprecation in ("FutureWarning", "DeprecationWarning"):  # none of a library's own
        assert deprecation not in result.stderr, result.stderr[-2000:]
    summary = json.loads((out / "labels" / "summary.json").read_text())
    assert summary["reports_labelled"] == 24
    assert (out / "cohort" / "contact_sheet.png").stat().st_size > 0
    # Training and evaluation.
    bundle = load_bundle(out / "training" / "liver" / "bundle")
    assert len(bundle.models) == 2 and bundle.meta["model"] == "mil_local"
    metrics = json.loads((out / "evaluation" / "liver" / "metrics.json").read_text())
    assert metrics["organ"] == "liver" and any("auc" in c for c in metrics["classes"])
    pngs = list((out / "evaluation" / "liver").glob("*.png"))
    assert pngs and all(p.stat().st_size > 5000 for p in pngs)
    # The held-out test set: whole patients, never trained on, evaluated by the bundle.
    assert "on the held-out test set" in result.stdout
    truth = json.loads((out / "cohort" / "truth.json").read_text())
    excluded = set(bundle.meta["config"]["exclude_cases"])
    patients = {r["patient_id"] for r in truth if r["case_id"] in excluded}
    assert excluded == {r["case_id"] for r in truth if r["patient_id"] in patients}
    assert 0 < len(excluded) < len(truth)
    test_metrics = json.loads((out / "evaluation" / "liver" / "test" / "metrics.json").read_text())
    assert test_metrics["cases"] == len(excluded)
    # ...against the planted findings (the reports' label noise is for training only).
    with (out / "evaluation" / "liver" / "test" / "predictions.csv").open(encoding="utf-8") as f:
        labelled = {(r["case_id"], r["class"]): r["label"] for r in csv.DictReader(f)}
    planted = {
        (r["case_id"], f["cls"]) for r in truth for f in r["findings"] if f["organ"] == "liver"
    }
    assert {k for k, v in labelled.items() if v == "1" and k[1] != "nofinding"} == {
        k for k in planted if k[0] in excluded
    }
    # Cases of another patient (the DICOM series at 3 mm), scored against their planted findings.
    assert "on cases of another patient (3 mm pixels) (4 cases" in result.stdout
    other = out / "other_patient"
    other_cases = json.loads((other / "cohort" / "cohort.json").read_text())
    assert other_cases["source_enhanced"] and other_cases["source"][0].endswith("ct.nii.gz")
    spacing = sitk.ReadImage(str(other / "cohort" / "images" / "case_0001.nii.gz")).GetSpacing()
    assert abs(spacing[0] - 3.0) < 0.05 and abs(spacing[1] - 3.0) < 0.05  # not the series' 0.98
    other_metrics = json.loads(
        (other / "evaluation" / "liver" / "test" / "metrics.json").read_text()
    )
    assert other_metrics["cases"] == 4
    # Analysis of the held-out case: never trained on, all outputs valid.
    (analysis,) = (out / "analysis").iterdir()
    assert analysis.name in bundle.meta["config"]["exclude_cases"]
    scores = json.loads((analysis / "scores.json").read_text())
    liver = next(o for o in scores["organs"] if o["organ"] == "liver")
    assert liver["status"] in ("ok", "partial") and liver["heatmap"]
    assert (analysis / "overview.png").stat().st_size > 10_000
    heat = sitk.ReadImage(str(analysis / liver["heatmap"]))
    expected = sitk.ReadImage(str(out / "cohort" / "images" / f"{analysis.name}.nii.gz"))
    assert Grid.from_image(heat).difference(Grid.from_image(expected), 1e-3) is None
    names = segment_names(
        load_scene(analysis / "scene.mrb").GetFirstNodeByClass("vtkMRMLSegmentationNode")
    )
    assert "liver" in names
    # The planted-findings scene of one case.
    scene = load_scene(out / "scene.mrb")
    segmentation = scene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    assert {"liver", "spleen", "kidney_left", "kidney_right"} <= set(segment_names(segmentation))
    ct_node = scene.GetNodeByID(segmentation.GetNodeReferenceID("referenceImageGeometryRef")) or (
        scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
    )
    ct = volume_node_to_image(ct_node)
    case = ct_node.GetName()
    expected = sitk.ReadImage(str(out / "cohort" / "images" / f"{case}.nii.gz"))
    assert Grid.from_image(ct).difference(Grid.from_image(expected), 1e-3) is None
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "(24 cases from the cache)" in again.stdout and "liver ensemble (reused)" in again.stdout


def test_scene_command_keeps_only_abdominal_organs(jmid_command, reference_data, tmp_path):
    out = tmp_path / "case.mrml"
    command = [
        *jmid_command,
        "scene",
        "--ct",
        str(reference_data.ct_small),
        "--seg",
        str(reference_data.ct_small_seg),
        "--labels",
        str(reference_data.labels_json),
        "--out",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    names = segment_names(load_scene(out).GetFirstNodeByClass("vtkMRMLSegmentationNode"))
    assert "liver" in names and "aorta" not in names


def test_test_set_is_whole_patients_with_the_training_cases_case_mix(tmp_path):
    """The held-out split keeps each patient's exams together and holds out the same share of
    every combination of reported classes (a plain draw of patients does not)."""
    rng = random.Random(3)
    classes = list(ORGAN_CLASSES["liver"])
    truth, rows = [], []
    for n in range(600):
        case = f"case_{n:04d}"
        truth.append({"case_id": case, "patient_id": f"P{rng.randrange(380):04d}"})
        stated = {c for c in ("cyst", "SOL", "calcification") if rng.random() < 0.15}
        rows.append({"case_id": case, "side": "", **{c: str(int(c in stated)) for c in classes}})
    rows[0]["nofinding"] = "1"
    with (tmp_path / "liver.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    test = set(split_test_set(truth, 0.36, 0, tmp_path, ("liver",)))
    patients = {r["patient_id"] for r in truth if r["case_id"] in test}
    assert test == {r["case_id"] for r in truth if r["patient_id"] in patients}
    assert abs(len(test) / len(truth) - 0.36) < 0.01
    strata: dict[str, list[bool]] = {}
    for row in rows:
        key = "+".join(c for c in ("cyst", "SOL", "calcification") if row[c] == "1")
        strata.setdefault(key, []).append(row["case_id"] in test)
    shares = {k: sum(v) / len(v) for k, v in strata.items() if len(v) >= 50}
    assert len(shares) >= 4 and all(abs(s - 0.36) < 0.03 for s in shares.values()), shares
    assert split_test_set(truth, 0.36, 0, tmp_path, ("liver",)) == sorted(test)
    assert set(split_test_set(truth, 0.36, 1, tmp_path, ("liver",))) != test
    assert split_test_set(truth, 0.0, 0, tmp_path, ("liver",)) == []
