"""MRML conversion with real slicer-core nodes, and scene files Slicer opens."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import vtk
from JMIDAnomalyLib.common.organs import ORGAN_COLORS, TOTALSEGMENTATOR_ORGANS
from JMIDAnomalyLib.imaging.geometry import Grid, centroid_lps
from JMIDAnomalyLib.imaging.label_tables import select_organs
from JMIDAnomalyLib.scene import mrml
from JMIDAnomalyLib.scene.cases import add_case_to_scene, import_segmentation_for_volume
from slicer import vtkMRMLScene
from test_geometry import CENTER, ORIENTATIONS, sphere_volume


def _matrix(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def test_volume_node_round_trip_on_the_real_ct(example_ct):
    scene = vtkMRMLScene()
    node = mrml.image_to_volume_node(example_ct, scene, "CT")
    expected = np.diag([-1.0, -1.0, 1.0, 1.0]) @ Grid.from_image(example_ct).affine()
    np.testing.assert_allclose(_matrix(node), expected, atol=1e-9)
    back = mrml.volume_node_to_image(node)
    np.testing.assert_array_equal(
        sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(example_ct)
    )
    assert Grid.from_image(back).difference(Grid.from_image(example_ct), 1e-6) is None


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_planted_sphere_keeps_its_ras_position_through_mrml(orientation):
    image = sphere_volume(ORIENTATIONS[orientation])
    node = mrml.image_to_volume_node(image, vtkMRMLScene(), "sphere")
    array = sitk.GetArrayFromImage(image) > 0
    # Centroid in RAS computed from the node's own matrix and its voxel array.
    kji = np.argwhere(array).mean(axis=0)
    ras = _matrix(node) @ np.array([kji[2], kji[1], kji[0], 1.0])
    lps_expected = centroid_lps(array, Grid.from_image(image))
    np.testing.assert_allclose(ras[:3], lps_expected * [-1, -1, 1], atol=1e-6)
    assert np.linalg.norm(ras[:3] * [-1, -1, 1] - CENTER) < 0.4


def test_label_map_becomes_named_coloured_segments(example_ct, example_seg, label_names):
    scene = vtkMRMLScene()
    volume = mrml.image_to_volume_node(example_ct, scene, "CT")
    organs, names = select_organs(example_seg, label_names)
    node = mrml.label_map_to_segmentation_node(organs, names, scene, "Organs", volume)
    assert mrml.segment_names(node) == list(names.values())
    segmentation = node.GetSegmentation()
    array = sitk.GetArrayViewFromImage(organs)
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        value = {v: k for k, v in names.items()}[segment.GetName()]
        organ = TOTALSEGMENTATOR_ORGANS[segment.GetName()][0]
        np.testing.assert_allclose(segment.GetColor(), ORGAN_COLORS[organ], atol=1e-6)
        labelmap = segment.GetRepresentation("Binary labelmap")
        voxels = vtk.util.numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars())
        assert int(np.sum(voxels == segment.GetLabelValue())) == int(np.sum(array == value))
    # No helper nodes left behind.
    assert scene.GetFirstNodeByClass("vtkMRMLLabelMapVolumeNode") is None


def test_heatmap_overlay_display(example_ct):
    scene = vtkMRMLScene()
    heat = sitk.Cast(sitk.Clamp(example_ct, sitk.sitkFloat32, 0, 400), sitk.sitkFloat32) / 400.0
    node = mrml.float_map_to_overlay_node(heat, scene, "heatmap liver")
    display = node.GetDisplayNode()
    assert display.GetColorNodeID() == mrml.HEATMAP_COLOR_NODE_ID
    assert scene.GetNodeByID(mrml.HEATMAP_COLOR_NODE_ID) is not None
    assert display.GetAutoWindowLevel() == 0 and display.GetApplyThreshold() == 1
    assert 0 < display.GetLowerThreshold() < 0.05, "zero must be thresholded out (transparent)"
    assert display.GetWindowLevelMin() == pytest.approx(
        0.0
    ) and display.GetWindowLevelMax() == pytest.approx(1.0)


@pytest.mark.parametrize("suffix", [".mrb", ".mrml"])
def test_scene_saves_and_loads_back(example_ct, reference_data, tmp_path, suffix):
    scene = vtkMRMLScene()
    volume = mrml.image_to_volume_node(example_ct, scene, "CT")
    import_segmentation_for_volume(volume, reference_data.ct_seg, reference_data.labels_json)
    heat = sitk.Cast(example_ct > 200, sitk.sitkFloat32)
    mrml.float_map_to_overlay_node(heat, scene, "heatmap")
    path = mrml.save_scene(scene, tmp_path / f"case{suffix}")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    loaded = mrml.load_scene(path)
    ct = mrml.volume_node_to_image(loaded.GetFirstNodeByName("CT"))
    np.testing.assert_array_equal(
        sitk.GetArrayViewFromImage(ct), sitk.GetArrayViewFromImage(example_ct)
    )
    assert Grid.from_image(ct).difference(Grid.from_image(example_ct), 1e-4) is None
    segmentation = loaded.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    assert {"liver", "spleen", "kidney_left", "kidney_right"} <= set(
        mrml.segment_names(segmentation)
    )
    heatmap = loaded.GetFirstNodeByName("heatmap").GetDisplayNode()
    assert (
        heatmap.GetColorNodeID() == mrml.HEATMAP_COLOR_NODE_ID and heatmap.GetApplyThreshold() == 1
    )


def test_add_case_to_scene(example_ct, example_seg, label_names):
    scene = vtkMRMLScene()
    organs, names = select_organs(example_seg, label_names, organs=("liver", "spleen"))
    nodes = add_case_to_scene(
        scene, example_ct, organs, names, {"heatmap liver": sitk.Cast(organs, sitk.sitkFloat32)}
    )
    assert mrml.segment_names(nodes.segmentation) == ["liver", "spleen"]
    assert set(nodes.heatmaps) == {"heatmap liver"}


def test_bad_scene_paths(tmp_path):
    with pytest.raises(mrml.InputError, match=r"\.mrb \(data bundle\) or \.mrml"):
        mrml.save_scene(vtkMRMLScene(), tmp_path / "scene.zip")
    bad = tmp_path / "broken.mrb"
    bad.write_bytes(b"not a zip")
    with pytest.raises(mrml.InputError, match="not a Slicer data bundle"):
        mrml.load_scene(bad)


def test_segmentation_node_back_to_label_map(example_ct, example_seg, label_names):
    scene = vtkMRMLScene()
    volume = mrml.image_to_volume_node(example_ct, scene, "CT")
    organs, names = select_organs(example_seg, label_names)
    node = mrml.label_map_to_segmentation_node(organs, names, scene, "Organs", volume)
    labels, back_names = mrml.segmentation_node_to_label_map(node, volume)
    assert back_names == names
    assert Grid.from_image(labels).difference(Grid.from_image(example_ct), 1e-4) is None
    np.testing.assert_array_equal(
        sitk.GetArrayViewFromImage(labels), sitk.GetArrayViewFromImage(organs)
    )
