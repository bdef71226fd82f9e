"""Putting a case into an MRML scene: CT, organ segmentation and heatmap overlays."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import SimpleITK as sitk

from JMIDAnomalyLib.scene import mrml


@dataclass
class CaseNodes:
    """The nodes :func:`add_case_to_scene` created."""

    volume: object
    segmentation: object | None = None
    heatmaps: dict[str, object] = field(default_factory=dict)
    scores: object | None = None
    report: object | None = None


def add_case_to_scene(
    scene,
    ct: sitk.Image,
    label_map: sitk.Image | None = None,
    label_names: Mapping[int, str] | None = None,
    heatmaps: Mapping[str, sitk.Image] | None = None,
    name: str = "CT",
) -> CaseNodes:
    """Add a CT, its organ segmentation and heatmaps to ``scene``.

    Args:
        scene: the MRML scene (``slicer.mrmlScene`` in Slicer, a new ``vtkMRMLScene`` outside).
        ct: the CT (LPS geometry).
        label_map: organ label map on any grid; shown as a segmentation referencing the CT.
        label_names: label value -> segment name.
        heatmaps: overlay name -> float map; each becomes a colour-map overlay volume.
        name: the CT node name (no patient identifiers).
    """
    nodes = CaseNodes(mrml.image_to_volume_node(ct, scene, name))
    if label_map is not None:
        nodes.segmentation = mrml.label_map_to_segmentation_node(
            label_map, label_names or {}, scene, f"{name} organs", nodes.volume
        )
    for heatmap_name, heatmap in (heatmaps or {}).items():
        nodes.heatmaps[heatmap_name] = mrml.float_map_to_overlay_node(heatmap, scene, heatmap_name)
    return nodes


def import_segmentation_for_volume(
    volume_node,
    label_map_path,
    label_table_path=None,
    organs_only: bool = True,
    name: str | None = None,
):
    """Load a label map file as a segmentation of ``volume_node`` (in the node's scene).

    The label map must lie on the volume's grid. With ``organs_only`` and a label table, only
    the seven abdominal organs are kept (TotalSegmentator names, see ``organs.py``).

    Returns:
        The new ``vtkMRMLSegmentationNode``.

    Raises:
        InputError: unreadable files, or a label map on another grid.
    """
    from JMIDAnomalyLib.imaging.label_tables import read_segmentation, select_organs

    ct = mrml.volume_node_to_image(volume_node)
    label_map, names = read_segmentation(label_map_path, ct, label_table_path, required=False)
    if organs_only and names:
        label_map, names = select_organs(label_map, names)
    return mrml.label_map_to_segmentation_node(
        label_map,
        names,
        volume_node.GetScene(),
        name or f"{volume_node.GetName()} organs",
        volume_node,
    )


SCORE_COLUMNS = ("organ", "side", "class", "probability", "threshold", "flag", "spread", "note")
_TEXT_COLUMNS = ("organ", "side", "class", "note")


def add_analysis_to_scene(scene, ct: sitk.Image, analysis, name: str = "CT") -> CaseNodes:
    """Add an analysis (:class:`~JMIDAnomalyLib.inference.predictor.CaseAnalysis`) of ``ct``
    to ``scene``: the CT and what :func:`add_results_to_scene` adds."""
    volume = mrml.image_to_volume_node(ct, scene, name)
    return add_results_to_scene(
        scene,
        volume,
        analysis.heatmap_images(),
        [o.to_dict() for o in analysis.organs],
        analysis.label_map,
        analysis.label_names,
    )


def add_results_to_scene(
    scene,
    volume_node,
    heatmaps: Mapping[str, sitk.Image],
    organs: list[dict],
    label_map: sitk.Image | None = None,
    label_names: Mapping[int, str] | None = None,
    segmentation_node=None,
    report_text: str = "",
) -> CaseNodes:
    """The results of one analysis of ``volume_node`` as nodes (``<CT>`` = its name).

    Creates ``<CT> organs`` from ``label_map`` (unless ``segmentation_node`` is given), one
    ``<CT> heatmap <organ>[_<side>]`` colour-map overlay per heatmap, the ``<CT> scores`` table
    (organ, side, class, probability, threshold, flag, spread: one row per organ, side and
    class; ``organs`` are ``scores.json`` organ entries) and, with a report, the
    ``<CT> report`` text node.
    """
    name = volume_node.GetName()
    nodes = CaseNodes(volume_node, segmentation_node)
    if segmentation_node is None and label_map is not None:
        nodes.segmentation = mrml.label_map_to_segmentation_node(
            label_map, label_names or {}, scene, f"{name} organs", volume_node
        )
    for key, heatmap in heatmaps.items():
        nodes.heatmaps[key] = mrml.float_map_to_overlay_node(
            heatmap, scene, f"{name} heatmap {key}"
        )
    nodes.scores = scores_table_node(scene, organs, f"{name} scores")
    if report_text:
        nodes.report = scene.AddNewNodeByClass("vtkMRMLTextNode", f"{name} report")
        nodes.report.SetText(report_text)
    return nodes


def scores_table_node(scene, organs: list[dict], name: str):
    """A vtkMRMLTableNode with one row per organ, side and class (numbers as numbers); the
    note is the organ's (``scores.json``: whether its crop is unlike the bundle's training data).

    ``organs`` are ``scores.json`` organ entries (``OrganResult.to_dict()``)."""
    import vtk

    node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = node.GetTable()
    columns = {}
    for column in SCORE_COLUMNS:
        array = (
            vtk.vtkStringArray()
            if column in _TEXT_COLUMNS
            else (vtk.vtkIntArray() if column == "flag" else vtk.vtkDoubleArray())
        )
        array.SetName(column)
        table.AddColumn(array)
        columns[column] = array
    for organ in organs:
        for score in organ["scores"]:
            columns["organ"].InsertNextValue(organ["organ"])
            columns["side"].InsertNextValue(organ.get("side") or "")
            columns["class"].InsertNextValue(score["class"])
            columns["probability"].InsertNextValue(score["probability"])
            columns["threshold"].InsertNextValue(score["threshold"])
            columns["flag"].InsertNextValue(int(score["flag"]))
            columns["spread"].InsertNextValue(score["spread"])
            columns["note"].InsertNextValue(organ.get("note", ""))
    node.Modified()
    return node


def score_rows(node) -> list[dict]:
    """The rows of a scores table node (:func:`scores_table_node`) as dicts, in table order."""
    table = node.GetTable()
    rows = []
    for r in range(table.GetNumberOfRows()):
        row = {}
        for column in SCORE_COLUMNS:
            value = table.GetValueByName(r, column)
            if column in _TEXT_COLUMNS:
                row[column] = value.ToString()
            else:
                row[column] = value.ToInt() if column == "flag" else value.ToDouble()
        rows.append(row)
    return rows
