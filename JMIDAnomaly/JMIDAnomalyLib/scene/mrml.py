"""Conversion between library images and MRML nodes, and scene files Slicer opens.

Uses MRML classes only (``from slicer import vtkMRML...``) with the scene passed in, so the same
code runs inside Slicer and, through the ``slicer-core`` package, in plain Python.

Geometry: MRML stores IJK->RAS; the library's images are LPS. ``IJKToRAS = diag(-1, -1, 1, 1)
@ IJKToLPS``. Voxel arrays keep their (K, J, I) memory order; nothing is flipped.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import vtk
from slicer import (
    vtkMRMLApplicationLogic,
    vtkMRMLColorLogic,
    vtkMRMLScene,
    vtkSlicerSegmentationsModuleLogic,
)
from vtk.util import numpy_support

from JMIDAnomalyLib.common.atomic import atomic_output
from JMIDAnomalyLib.common.errors import InputError, JMIDError
from JMIDAnomalyLib.common.organs import structure_color
from JMIDAnomalyLib.imaging.geometry import Grid

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Colour map of heatmap overlays; a default Slicer colour node (present in every Slicer scene).
HEATMAP_COLOR_NODE_ID = "vtkMRMLPETProceduralColorNodePET-Heat"


def ensure_default_colors(scene: vtkMRMLScene) -> None:
    """Add Slicer's default colour nodes to ``scene`` if it lacks them (outside Slicer)."""
    if scene.GetNodeByID(HEATMAP_COLOR_NODE_ID) is None:
        logic = vtkMRMLColorLogic()
        logic.SetMRMLScene(scene)
        logic.SetMRMLScene(None)


def ijk_to_ras_matrix(grid: Grid) -> vtk.vtkMatrix4x4:
    """The MRML IJK->RAS matrix of a grid."""
    matrix = vtk.vtkMatrix4x4()
    ras = LPS_TO_RAS @ grid.affine()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(ras[r, c]))
    return matrix


def grid_from_volume_node(node) -> Grid:
    """The LPS grid of a volume node (from its IJK->RAS matrix and image dimensions)."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    lps = LPS_TO_RAS @ ras
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    dims = node.GetImageData().GetDimensions()
    return Grid(
        tuple(int(v) for v in dims),
        tuple(float(v) for v in spacing),
        tuple(float(v) for v in lps[:3, 3]),
        tuple(float(v) for v in direction.ravel()),
    )


def _image_data_from_array(array_zyx: np.ndarray) -> vtk.vtkImageData:
    array_zyx = np.ascontiguousarray(array_zyx)
    image_data = vtk.vtkImageData()
    image_data.SetDimensions(array_zyx.shape[2], array_zyx.shape[1], array_zyx.shape[0])
    scalars = numpy_support.numpy_to_vtk(array_zyx.ravel(), deep=True)
    image_data.GetPointData().SetScalars(scalars)
    return image_data


def image_to_volume_node(
    image: sitk.Image,
    scene: vtkMRMLScene,
    name: str,
    node_class: str = "vtkMRMLScalarVolumeNode",
):
    """Add ``image`` to ``scene`` as a volume node with the exact IJK->RAS geometry.

    Args:
        image: a 3D scalar image (LPS geometry).
        scene: the MRML scene to add to.
        name: the node name.
        node_class: ``vtkMRMLScalarVolumeNode`` or ``vtkMRMLLabelMapVolumeNode``.

    Returns:
        The new node, with default display node.
    """
    node = scene.AddNewNodeByClass(node_class, name)
    node.SetAndObserveImageData(_image_data_from_array(sitk.GetArrayFromImage(image)))
    node.SetIJKToRASMatrix(ijk_to_ras_matrix(Grid.from_image(image)))
    node.CreateDefaultDisplayNodes()
    return node


def volume_node_to_image(node) -> sitk.Image:
    """The voxels and geometry of a volume node as a library image (LPS)."""
    image_data = node.GetImageData()
    if image_data is None:
        raise InputError(node.GetName(), "the volume node has no image data")
    dims = image_data.GetDimensions()
    array = numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars())
    array = array.reshape(dims[2], dims[1], dims[0]).copy()
    return grid_from_volume_node(node).image_from_array(array)


def label_map_to_segmentation_node(
    label_map: sitk.Image,
    names: Mapping[int, str],
    scene: vtkMRMLScene,
    name: str = "Segmentation",
    reference_node=None,
    colors: Mapping[int, tuple[float, float, float]] | None = None,
):
    """Add a label map as a segmentation node with one named, coloured segment per label.

    Args:
        label_map: integer label image (LPS); 0 is background.
        names: label value -> segment name. Labels present in the map but missing here are
            named ``label_<value>``; names of labels absent from the map make no segment.
        scene: the MRML scene.
        name: the segmentation node name.
        reference_node: the CT volume node; its geometry becomes the segmentation's reference.
        colors: label value -> RGB (0..1); by default the organ colours, else stable hues.

    Returns:
        The segmentation node with a display node.
    """
    ensure_default_colors(scene)
    array = sitk.GetArrayViewFromImage(label_map)
    present = [int(v) for v in np.unique(array) if v != 0]
    max_label = max(present, default=0)
    color_table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", f"{name}_labels")
    color_table.SetTypeToUser()
    color_table.SetNumberOfColors(max_label + 1)
    color_table.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
    for value in range(1, max_label + 1):
        segment_name = names.get(value, f"label_{value}")
        rgb = (colors or {}).get(value) or structure_color(segment_name)
        color_table.SetColor(value, segment_name, *rgb, 1.0)
    labels_node = image_to_volume_node(
        sitk.Cast(label_map, sitk.sitkUInt16 if max_label > 255 else sitk.sitkUInt8),
        scene,
        f"{name}_labelmap",
        "vtkMRMLLabelMapVolumeNode",
    )
    labels_node.GetDisplayNode().SetAndObserveColorNodeID(color_table.GetID())
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference_node or labels_node)
    try:
        if not vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
            labels_node, segmentation
        ):
            raise JMIDError(f"importing the label map into segmentation '{name}' failed")
    finally:
        scene.RemoveNode(labels_node)
        scene.RemoveNode(color_table)
    segmentation.CreateDefaultDisplayNodes()
    return segmentation


def segmentation_node_to_label_map(
    segmentation_node, reference_volume_node
) -> tuple[sitk.Image, dict[int, str]]:
    """A segmentation node as a label map on the reference volume's grid.

    Returns:
        (label map, names): label value i + 1 is the i-th segment; names maps value -> segment name.
    """
    scene = segmentation_node.GetScene()
    labels_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__jmid_export")
    try:
        ids = vtk.vtkStringArray()
        segmentation_node.GetSegmentation().GetSegmentIDs(ids)
        if not vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, ids, labels_node, reference_volume_node
        ):
            raise JMIDError(f"exporting segmentation '{segmentation_node.GetName()}' failed")
        image = volume_node_to_image(labels_node)
    finally:
        scene.RemoveNode(labels_node)
    names = {i + 1: name for i, name in enumerate(segment_names(segmentation_node))}
    return sitk.Cast(image, sitk.sitkUInt16 if len(names) > 255 else sitk.sitkUInt8), names


def segment_names(segmentation_node) -> list[str]:
    """The segment names of a segmentation node, in segment order."""
    seg = segmentation_node.GetSegmentation()
    return [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())]


def float_map_to_overlay_node(
    image: sitk.Image,
    scene: vtkMRMLScene,
    name: str,
    value_range: tuple[float, float] | None = None,
    lower_threshold: float | None = None,
    color_node_id: str = HEATMAP_COLOR_NODE_ID,
):
    """Add a float map (e.g. a heatmap) as a volume node shown as a colour-map overlay.

    Voxels below ``lower_threshold`` are thresholded out, so zero is transparent when the node is
    shown as the foreground layer of the slice views.

    Args:
        image: float image on any grid (usually the CT's).
        value_range: window (min, max) of the colour map; default the map's 0..max.
        lower_threshold: default 1% of the window's maximum (just above zero).

    Returns:
        The scalar volume node, with its display node set up.
    """
    ensure_default_colors(scene)
    node = image_to_volume_node(sitk.Cast(image, sitk.sitkFloat32), scene, name)
    values = sitk.GetArrayViewFromImage(image)
    low, high = value_range or (0.0, float(values.max()) if values.size else 1.0)
    if high <= low:
        high = low + 1.0
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(color_node_id)
    display.SetAutoWindowLevel(0)
    display.SetWindowLevelMinMax(low, high)
    display.SetAutoThreshold(0)
    display.SetApplyThreshold(1)
    display.SetLowerThreshold(
        low + 0.01 * (high - low) if lower_threshold is None else lower_threshold
    )
    display.SetUpperThreshold(max(high, float(values.max()) if values.size else high))
    return node


def _storable_nodes(scene: vtkMRMLScene):
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        if node.IsA("vtkMRMLStorableNode") and not node.GetHideFromEditors():
            yield node


def save_scene(scene: vtkMRMLScene, path: str | os.PathLike) -> Path:
    """Save ``scene`` to a Slicer data bundle (``.mrb``) or a scene file (``.mrml``).

    A ``.mrb`` is a zip of a folder holding ``<name>.mrml`` and its data, as Slicer writes it.
    A ``.mrml`` is written with its data files in a ``<name>_data/`` folder beside it. Output
    appears only when complete.
    """
    path = Path(path).absolute()
    suffix = path.suffix.lower()
    if suffix not in (".mrb", ".mrml"):
        raise InputError(path, "a scene is saved as .mrb (data bundle) or .mrml")
    path.parent.mkdir(parents=True, exist_ok=True)
    for node in _storable_nodes(scene):
        if node.GetStorageNode() is None:
            node.AddDefaultStorageNode()
    app_logic = vtkMRMLApplicationLogic()
    app_logic.SetMRMLScene(scene)
    try:
        if suffix == ".mrb":
            with tempfile.TemporaryDirectory(dir=path.parent) as work:
                bundle = Path(work) / path.stem
                bundle.mkdir()
                if not app_logic.SaveSceneToSlicerDataBundleDirectory(str(bundle), None):
                    raise JMIDError(f"{path}: writing the scene bundle failed")
                with (
                    atomic_output(path) as tmp,
                    zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z,
                ):
                    for file in sorted(bundle.rglob("*")):
                        z.write(file, file.relative_to(work))
        else:
            data_dir = path.with_name(f"{path.stem}_data")
            with atomic_output(data_dir, is_dir=True) as tmp_dir:
                bundle = Path(tmp_dir)
                if not app_logic.SaveSceneToSlicerDataBundleDirectory(str(bundle), None):
                    raise JMIDError(f"{path}: writing the scene failed")
                written = next(bundle.glob("*.mrml"))
                text = written.read_text(encoding="utf-8")
                written.unlink()
            # Data paths in the .mrml are relative ("Data/x.nrrd"): point them into the data folder.
            text = text.replace('fileName="Data/', f'fileName="{data_dir.name}/Data/')
            with atomic_output(path) as tmp:
                tmp.write_text(text, encoding="utf-8")
    finally:
        app_logic.SetMRMLScene(None)
    return path


def load_scene(path: str | os.PathLike) -> vtkMRMLScene:
    """Load a ``.mrml`` or ``.mrb`` written by Slicer or :func:`save_scene` into a new scene."""
    path = Path(path).absolute()
    if not path.exists():
        raise InputError(path, "no such scene file")
    scene = vtkMRMLScene()
    if path.suffix.lower() == ".mrb":
        with tempfile.TemporaryDirectory() as work:
            try:
                with zipfile.ZipFile(path) as z:
                    z.extractall(work)
            except zipfile.BadZipFile:
                raise InputError(path, "not a Slicer data bundle (not a zip file)") from None
            found = sorted(Path(work).rglob("*.mrml"))
            if not found:
                raise InputError(path, "the bundle holds no .mrml scene file")
            _import(scene, found[0], path)
    else:
        _import(scene, path, path)
    return scene


def _import(scene: vtkMRMLScene, mrml: Path, source: Path) -> None:
    scene.SetURL(str(mrml))
    scene.SetRootDirectory(str(mrml.parent))
    if not scene.Import():
        raise InputError(source, "Slicer's scene reader could not import this scene")
