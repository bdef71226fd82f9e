"""RT Structure Sets (RTSTRUCT) as organ segmentations, read with pydicom.

Radiotherapy contours are planar polygons in patient coordinates (LPS, mm). Each ROI's closed
planar contours are placed on the CT slice they lie on, through the CT's geometry, and filled
(scikit-image's ``polygon2mask``; nested contours of one ROI alternate inside and outside, so a
ring has its hole). Voxels whose centres lie inside a polygon belong to the ROI; where ROIs
overlap, a voxel keeps the first ROI in the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.imaging.dicom_seg import find_dicom_object
from JMIDAnomalyLib.imaging.geometry import Grid

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"


def find_rtstruct(path: str | os.PathLike) -> Path | None:
    """The RTSTRUCT file ``path`` is, or the one a folder holds; None when it is none."""
    return find_dicom_object(path, RTSTRUCT_SOP_CLASS)


def roi_names(path: Path) -> dict[int, str]:
    """Label value -> ROI name (lower case, spaces as underscores), in the file's ROI order."""
    import pydicom

    header = pydicom.dcmread(path, stop_before_pixels=True)
    return {n: _name(roi.ROIName) for n, roi in enumerate(header.StructureSetROISequence, 1)}


def read_rtstruct(path: Path, reference: sitk.Image) -> tuple[sitk.Image, dict[int, str]]:
    """An RTSTRUCT's ROIs as a label map on ``reference``'s grid: (label map, value -> name).

    Raises:
        InputError: not a readable RTSTRUCT, or a contour that does not lie on a CT slice.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        rois = list(ds.StructureSetROISequence)
        contours = {int(c.ReferencedROINumber): c for c in ds.ROIContourSequence}
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types
        raise InputError(path, f"cannot be read as an RT structure set ({exc})") from None
    grid = Grid.from_image(reference)
    labels = np.zeros(grid.shape_zyx, dtype=np.uint16 if len(rois) > 255 else np.uint8)
    names = {}
    for value, roi in enumerate(rois, start=1):
        names[value] = _name(roi.ROIName)
        item = contours.get(int(roi.ROINumber))
        mask = _roi_mask(path, item, grid, roi.ROIName) if item is not None else None
        if mask is not None:
            labels[mask & (labels == 0)] = value
    return grid.image_from_array(labels), names


def _roi_mask(path: Path, item, grid: Grid, name: str) -> np.ndarray:
    from skimage.draw import polygon2mask  # scikit-image (an nnU-Net dependency)

    mask = np.zeros(grid.shape_zyx, dtype=bool)
    plane = grid.shape_zyx[1:]
    for contour in getattr(item, "ContourSequence", []):
        if str(getattr(contour, "ContourGeometricType", "CLOSED_PLANAR")) != "CLOSED_PLANAR":
            continue
        points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
        ijk = grid.physical_to_index(points)
        k = int(round(float(ijk[:, 2].mean())))
        if np.abs(ijk[:, 2] - k).max() > 0.5:
            raise InputError(path, f"a contour of '{name}' does not lie on a slice of the CT")
        if 0 <= k < mask.shape[0]:
            mask[k] ^= polygon2mask(plane, ijk[:, [1, 0]])  # (row, column) = (j, i)
    return mask


def _name(text: str) -> str:
    return str(text).strip().lower().replace(" ", "_")
