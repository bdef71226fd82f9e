"""Label maps with their label tables, and our organs selected from them.

:func:`read_segmentation` is the one reader of organ segmentations (label map on the CT's grid
and its table); :func:`read_label_names` reads a label table in any of the formats of
:mod:`~JMIDAnomalyLib.imaging.label_formats`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from JMIDAnomalyLib.common.atomic import atomic_output
from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.common.organs import ORGANS, TOTALSEGMENTATOR_ORGANS
from JMIDAnomalyLib.imaging import label_formats
from JMIDAnomalyLib.imaging.geometry import Grid, place_on_grid
from JMIDAnomalyLib.imaging.volumes import read_label_map, volume_stem


def read_label_names(path: str | os.PathLike) -> dict[int, str]:
    """Read a label table, whatever its format: value -> structure name (0 never included).

    Formats (:mod:`~JMIDAnomalyLib.imaging.label_formats`): JSON (``{"1": "spleen"}`` or an
    nnU-Net ``dataset.json``), CSV/TSV with id and name columns, Slicer colour tables
    (``.ctbl``, ``.txt``), and segmentation files that carry their table (a NIfTI label map with
    TotalSegmentator's header extension, a Slicer ``.seg.nrrd``).

    Raises:
        InputError: no such file, or not a label table (naming the file and the problem).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such label table file")
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz", ".seg.nrrd")):
        table = embedded_label_names(path)
        if table is None:
            raise InputError(path, "this segmentation file carries no label table")
        return table
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(path, "a label table must be UTF-8 text") from None
    if name.endswith(".json") or text.lstrip().startswith("{"):
        return label_formats.parse_json_table(path, text)
    if name.endswith(label_formats.COLOR_TABLE_SUFFIXES):
        return label_formats.parse_color_table(path, text)
    return label_formats.parse_csv_table(path, text)


def embedded_label_names(seg_path: str | os.PathLike) -> dict[int, str] | None:
    """The label table a segmentation file carries itself (TotalSegmentator's NIfTI header
    extension, a Slicer ``.seg.nrrd``); None when it carries none."""
    path = Path(seg_path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return label_formats.nifti_extension_table(path)
    kind, dicom_file = _dicom_segmentation(path)
    if kind == "RTSTRUCT":
        from JMIDAnomalyLib.imaging.rtstruct import roi_names

        return roi_names(dicom_file)
    if kind == "SEG":
        import pydicom

        header = pydicom.dcmread(dicom_file, stop_before_pixels=True)
        return {
            int(s.SegmentNumber): str(s.SegmentLabel).strip().lower().replace(" ", "_")
            for s in header.SegmentSequence
        }
    if not name.endswith(".seg.nrrd"):
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(path, f"cannot be read as a segmentation ({str(exc)[-160:]})") from None
    fields = {k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys()}
    segments = label_formats.seg_nrrd_segments(fields)
    if not segments:
        return None
    if len({s["layer"] for s in segments}) > 1:  # merged on reading: values 1..n in order
        return {n: s["name"] for n, s in enumerate(segments, start=1)}
    return {s["value"]: s["name"] for s in segments}


def _dicom_segmentation(path: str | os.PathLike) -> tuple[str | None, Path | None]:
    """(``SEG`` or ``RTSTRUCT``, the file) when ``path`` is or holds one; (None, None) for
    volume files and other folders."""
    from JMIDAnomalyLib.imaging.dicom_seg import find_dicom_seg
    from JMIDAnomalyLib.imaging.rtstruct import find_rtstruct
    from JMIDAnomalyLib.imaging.volumes import VOLUME_SUFFIXES

    if Path(path).name.lower().endswith(VOLUME_SUFFIXES) or not Path(path).exists():
        return None, None
    for kind, find in (("SEG", find_dicom_seg), ("RTSTRUCT", find_rtstruct)):
        found = find(path)
        if found is not None:
            return kind, found
    return None, None


def default_label_table(seg_path: Path) -> Path:
    """``seg.nii.gz`` -> ``seg.json`` (the table ``jmid segment`` writes beside its output)."""
    return seg_path.with_name(volume_stem(seg_path) + ".json")


def segmentation_label_names(
    seg_path: str | os.PathLike,
    given: str | os.PathLike | None = None,
    option: str = "--seg-labels",
    required: bool = True,
) -> dict[int, str]:
    """The label table of a segmentation: ``given`` (any format of :func:`read_label_names`),
    else the one the file carries, else the JSON beside it (``seg.json`` for ``seg.nii.gz``).

    Raises:
        InputError: ``required`` and none of them exists (naming ``option``).
    """
    if given:
        return read_label_names(given)
    embedded = embedded_label_names(seg_path) if Path(seg_path).is_file() else None
    if embedded is not None:
        return embedded
    beside = default_label_table(Path(seg_path))
    if beside.is_file():
        return read_label_names(beside)
    if required:
        raise InputError(seg_path, f"the segmentation carries no label table; pass {option}")
    return {}


def read_segmentation(
    seg_path: str | os.PathLike,
    reference: sitk.Image,
    given: str | os.PathLike | None = None,
    option: str = "--seg-labels",
    required: bool = True,
) -> tuple[sitk.Image, dict[int, str]]:
    """An organ segmentation on the CT's grid with its label table: the one reader of organ
    segmentations that every command and the Slicer module use.

    Args:
        seg_path: a label map (NIfTI, NRRD, MetaImage, DICOM), a DICOM SEG or RTSTRUCT (file,
            or a folder holding it; placed on the CT through the patient coordinates) or a
            Slicer ``.seg.nrrd``
            (several layers are merged: each segment gets the value of its place in the file,
            and a voxel in overlapping segments keeps the first); a ``.seg.nrrd`` saved on a
            sub-extent of the CT is placed on the CT's grid.
        reference: the CT.
        given / option / required: the label table, when the file does not carry it (see
            :func:`segmentation_label_names`).

    Returns:
        (uint8/uint16 label map on ``reference``'s grid, value -> structure name).
    """
    kind, dicom_file = _dicom_segmentation(seg_path)
    if kind == "SEG":  # DICOM SEG and RTSTRUCT carry their segment names
        from JMIDAnomalyLib.imaging.dicom_seg import read_dicom_seg

        return read_dicom_seg(dicom_file, reference)
    if kind == "RTSTRUCT":
        from JMIDAnomalyLib.imaging.rtstruct import read_rtstruct

        return read_rtstruct(dicom_file, reference)
    names = segmentation_label_names(seg_path, given, option, required)
    if Path(seg_path).name.lower().endswith(".seg.nrrd"):
        return _read_seg_nrrd(Path(seg_path), reference), names
    return read_label_map(seg_path, reference=reference), names


def _read_seg_nrrd(path: Path, reference: sitk.Image) -> sitk.Image:
    """A ``.seg.nrrd`` as one label map on ``reference``'s grid."""
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(path, f"cannot be read as a segmentation ({str(exc)[-160:]})") from None
    fields = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys()}
    segments = label_formats.seg_nrrd_segments(fields)
    count = image.GetNumberOfComponentsPerPixel()
    layers = (
        [sitk.VectorIndexSelectionCast(image, i) for i in range(count)] if count > 1 else [image]
    )
    if len({s["layer"] for s in segments}) > 1:
        arrays = [sitk.GetArrayViewFromImage(layer) for layer in layers]
        merged = np.zeros(arrays[0].shape, dtype=np.uint16 if len(segments) > 255 else np.uint8)
        for n, segment in enumerate(segments, start=1):
            merged[(arrays[segment["layer"]] == segment["value"]) & (merged == 0)] = n
        label_map = sitk.GetImageFromArray(merged)
        label_map.CopyInformation(layers[0])
    else:
        label_map = layers[0]
    grid = Grid.from_image(reference)
    placed = place_on_grid(label_map, grid)  # a file saved on a sub-extent of the CT too
    if placed is None:
        problem = grid.difference(Grid.from_image(label_map))
        raise InputError(path, f"the segmentation does not lie on the CT's grid: {problem}")
    return sitk.Cast(placed, sitk.sitkUInt16 if len(segments) > 255 else sitk.sitkUInt8)


def write_label_names(names: Mapping[int, str], path: str | os.PathLike) -> None:
    """Write a label table ``{"1": "liver", ...}`` (what :func:`read_label_names` reads)."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps({str(k): v for k, v in names.items()}, indent=1), "utf-8")


def select_organs(
    label_map: sitk.Image,
    names: Mapping[int, str],
    organ_names: Mapping[str, tuple[str, str | None]] = TOTALSEGMENTATOR_ORGANS,
    organs: tuple[str, ...] = ORGANS,
) -> tuple[sitk.Image, dict[int, str]]:
    """Keep only the structures that are our organs, relabelled 1..n in organ order.

    Args:
        label_map: a segmentation model's label map.
        names: its label value -> structure name table.
        organ_names: structure name -> (organ, side), e.g. TotalSegmentator's ``kidney_left``.
        organs: which organs to keep.

    Returns:
        (label map, names): the new label map on the same grid, and value -> structure name for
        the structures present in it (an organ absent from the CT gets no label).
    """
    array = sitk.GetArrayViewFromImage(label_map)
    present = set(np.unique(array).tolist())
    by_name = {v: k for k, v in names.items()}
    wanted = [
        (structure, organ_side)
        for structure, organ_side in organ_names.items()
        if organ_side[0] in organs and by_name.get(structure) in present
    ]
    wanted.sort(key=lambda item: (ORGANS.index(item[1][0]), item[1][1] or ""))
    lut = np.zeros(max(names, default=0) + 1, dtype=np.uint8)
    new_names: dict[int, str] = {}
    for new_value, (structure, _) in enumerate(wanted, start=1):
        lut[by_name[structure]] = new_value
        new_names[new_value] = structure
    if array.max() >= lut.size:
        lut = np.pad(lut, (0, int(array.max()) + 1 - lut.size))
    out = sitk.GetImageFromArray(lut[array])
    out.CopyInformation(label_map)
    return out, new_names
