"""The main job end to end, through the installed `jmid` command."""

from __future__ import annotations

import json
import subprocess

import SimpleITK as sitk
from JMIDAnomalyLib.geometry import Grid
from JMIDAnomalyLib.mrml import load_scene, segment_names, volume_node_to_image


def test_demo_runs_end_to_end_and_reuses_its_cache(jmid_command, tmp_path):
    out = tmp_path / "demo"
    command = [*jmid_command, "demo", "--out", str(out), "--cases", "4", "--seed", "1"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "4 reports labelled" in result.stdout and "(0 cases from the cache)" in result.stdout
    summary = json.loads((out / "labels" / "summary.json").read_text())
    assert summary["reports_labelled"] == 4
    assert (out / "cohort" / "contact_sheet.png").stat().st_size > 0
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
    assert again.returncode == 0 and "(4 cases from the cache)" in again.stdout


def test_scene_command_keeps_only_abdominal_organs(jmid_command, reference_data, tmp_path):
    out = tmp_path / "case.mrml"
    command = [*jmid_command, "scene", "--ct", str(reference_data.ct_small), "--seg",
               str(reference_data.ct_small_seg), "--labels", str(reference_data.labels_json),
               "--out", str(out)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    names = segment_names(load_scene(out).GetFirstNodeByClass("vtkMRMLSegmentationNode"))
    assert "liver" in names and "aorta" not in names
