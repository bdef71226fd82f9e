"""The main job end to end, through the installed `jmid` command."""

from __future__ import annotations

import json
import subprocess

import SimpleITK as sitk
from JMIDAnomalyLib.geometry import Grid
from JMIDAnomalyLib.mrml import load_scene, segment_names, volume_node_to_image


def test_demo_writes_a_scene_slicer_opens(jmid_command, example_ct, tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [*jmid_command, "demo", "--out", str(out)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "liver" in result.stdout and "kidney_left" in result.stdout

    names = json.loads((out / "organs.json").read_text())
    assert {"liver", "spleen", "pancreas", "kidney_left", "kidney_right"} <= set(names.values())
    organs = sitk.ReadImage(str(out / "organs.nii.gz"))
    assert Grid.from_image(organs).difference(Grid.from_image(example_ct), 1e-4) is None

    scene = load_scene(out / "scene.mrb")
    ct = volume_node_to_image(scene.GetFirstNodeByName("Example CT"))
    assert ct.GetSize() == example_ct.GetSize()
    segmentation = scene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    assert segment_names(segmentation) == list(names.values())


def test_scene_command_keeps_only_abdominal_organs(jmid_command, reference_data, tmp_path):
    out = tmp_path / "case.mrml"
    command = [*jmid_command, "scene", "--ct", str(reference_data.ct_small), "--seg",
               str(reference_data.ct_small_seg), "--labels", str(reference_data.labels_json),
               "--out", str(out)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    names = segment_names(load_scene(out).GetFirstNodeByClass("vtkMRMLSegmentationNode"))
    assert "liver" in names and "aorta" not in names
