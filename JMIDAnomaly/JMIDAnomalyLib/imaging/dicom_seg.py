"""DICOM Segmentation objects (SEG), in and out, through highdicom.

- :func:`read_dicom_seg`: a SEG file (or a folder holding one) as an organ label map on the CT's
  grid, with its segment labels as the label table. The SEG's frames are placed through their
  physical positions (highdicom builds the volume and its LPS affine), so a SEG covering only
  some slices of the CT, or referencing it in another slice order, still lands on the right
  voxels.
- :func:`write_dicom_seg`: an organ label map as a SEG of the CT series it was made on (the
  source study's identifiers, new series and instance UIDs), for sending back to PACS;
- :func:`write_parametric_map`: a float map on the CT's grid (a heatmap) as a DICOM Parametric
  Map of that series.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.imaging.geometry import Grid, resample_to_grid

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def find_dicom_object(path: str | os.PathLike, sop_class: str) -> Path | None:
    """The DICOM file of SOP class ``sop_class`` that ``path`` is, or the first one a folder
    holds (headers only); None when there is none."""
    import pydicom

    path = Path(path)
    if not path.exists():
        return None
    candidates = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    for candidate in candidates:
        if candidate.name.lower().endswith((".nii", ".nii.gz", ".nrrd", ".mha", ".json")):
            continue
        try:
            header = pydicom.dcmread(
                candidate, stop_before_pixels=True, specific_tags=["SOPClassUID"]
            )
        except Exception:  # noqa: BLE001 - not DICOM
            continue
        if str(getattr(header, "SOPClassUID", "")) == sop_class:
            return candidate
    return None


def find_dicom_seg(path: str | os.PathLike) -> Path | None:
    """The DICOM SEG file ``path`` is, or the one a folder holds; None when it is none."""
    return find_dicom_object(path, SEG_SOP_CLASS)


def read_dicom_seg(path: Path, reference: sitk.Image) -> tuple[sitk.Image, dict[int, str]]:
    """A DICOM SEG as a label map on ``reference``'s grid: (label map, segment number -> name).

    Segment names are the segments' labels in lower case with spaces as underscores
    (``Kidney left`` -> ``kidney_left``), so TotalSegmentator-style names map to our organs.

    Raises:
        InputError: not a readable SEG, or a SEG that is no regular 3D volume.
    """
    import highdicom as hd  # highdicom 0.28: SEG as a Volume with its affine

    try:
        seg = hd.seg.segread(path)
        volume = seg.get_volume(combine_segments=True, skip_overlap_checks=True)
    except Exception as exc:  # noqa: BLE001 - highdicom and pydicom raise many types
        raise InputError(path, f"cannot be read as a DICOM segmentation ({exc})") from None
    names = {
        int(item.SegmentNumber): str(item.SegmentLabel).strip().lower().replace(" ", "_")
        for item in seg.SegmentSequence
    }
    array = np.asarray(volume.array)
    dtype = np.uint16 if max(names, default=0) > 255 else np.uint8
    image = sitk.GetImageFromArray(array.astype(dtype))  # (slice, row, column) = (z, y, x)
    spacing, direction = volume.spacing, volume.direction  # per array axis; columns in LPS
    image.SetSpacing((spacing[2], spacing[1], spacing[0]))
    image.SetDirection(
        tuple(np.stack([direction[:, 2], direction[:, 1], direction[:, 0]], 1).ravel())
    )
    image.SetOrigin(volume.position)
    return resample_to_grid(image, Grid.from_image(reference), "nearest"), names


def write_dicom_seg(
    label_map: sitk.Image,
    names: Mapping[int, str],
    ct_files: list[str],
    path: str | os.PathLike,
    series_description: str = "JMID Anomaly organs",
) -> Path:
    """Write an organ label map as a DICOM SEG of its CT series (atomically).

    Args:
        label_map: labels on the CT's grid, array (z, y, x) in the order of ``ct_files``.
        names: label value -> segment name.
        ct_files: the CT's slice files, in the order the CT was read (GDCM's).
        path: the SEG file to write.

    Returns:
        ``path``.
    """
    import highdicom as hd
    import pydicom

    from JMIDAnomalyLib.common.atomic import atomic_output

    sources = [_source(pydicom.dcmread(f), f) for f in ct_files]
    labels = sitk.GetArrayViewFromImage(label_map)
    present = [v for v in sorted(names) if np.any(labels == v)]
    masks = np.stack([labels == v for v in present], axis=-1)  # (frames, rows, cols, segments)
    descriptions = _segment_descriptions([names[v] for v in present])
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=masks.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_description=series_description,
        **_new_series(9100),
    )
    with atomic_output(path) as tmp:
        seg.save_as(tmp)
    return Path(path)


def _source(dataset, path):
    """A CT slice as a SEG source: SOP class and instance UIDs from the file meta information
    where an export left them out of the data set (in memory only; the file is not changed)."""
    meta = getattr(dataset, "file_meta", None)
    for key, meta_key in (
        ("SOPClassUID", "MediaStorageSOPClassUID"),
        ("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
    ):
        if not str(getattr(dataset, key, "")) and meta is not None and meta.get(meta_key):
            setattr(dataset, key, str(meta.get(meta_key)))
        if not str(getattr(dataset, key, "")):
            raise InputError(path, f"the slice has no {key}: a DICOM SEG cannot reference it")
    return dataset


def write_parametric_map(
    values: np.ndarray,
    ct_files: list[str],
    path: str | os.PathLike,
    label: str,
    explanation: str,
    series_number: int = 9200,
) -> Path:
    """Write a float map on the CT's grid as a DICOM Parametric Map of its series (atomically).

    Args:
        values: (z, y, x) float32 on the CT's grid, z in the order of ``ct_files``.
        ct_files: the CT's slice files, in the order the CT was read.
        path: the file to write.
        label / explanation: what the values are (the real world value mapping's LUT label
            (at most 16 characters) and explanation).
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from JMIDAnomalyLib.common.atomic import atomic_output

    sources = [_source(pydicom.dcmread(f), f) for f in ct_files]
    array = np.ascontiguousarray(values, dtype=np.float32)
    low, high = float(array.min()), float(array.max())
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=label[:16],
        lut_explanation=explanation[:64],
        unit=codes.UCUM.NoUnits,
        value_range=(low, high if high > low else low + 1.0),
        intercept=0.0,
        slope=1.0,
    )
    pmap = hd.pm.ParametricMap(
        source_images=sources,
        pixel_array=array,
        **_new_series(series_number),
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[
            hd.VOILUTTransformation(
                window_center=(low + high) / 2, window_width=max(high - low, 1e-6)
            )
        ],
        content_label="HEATMAP",
        content_description=explanation[:64],
    )
    with atomic_output(path) as tmp:
        pmap.save_as(tmp)
    return Path(path)


def _segment_descriptions(labels: list[str]) -> list:
    """highdicom segment descriptions (segments 1..n) of organs found by JMID Anomaly."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from JMIDAnomalyLib import __version__

    algorithm = hd.AlgorithmIdentificationSequence(
        name="JMID Anomaly", version=__version__, family=codes.cid7162.ArtificialIntelligence
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=label,
            segmented_property_category=codes.SCT.Organ,
            segmented_property_type=codes.SCT.Organ,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for n, label in enumerate(labels, start=1)
    ]


def _new_series(series_number: int) -> dict:
    """The attributes of a new series (and its one instance) written by JMID Anomaly."""
    import highdicom as hd

    from JMIDAnomalyLib import __version__

    return {
        "series_instance_uid": hd.UID(),
        "series_number": series_number,
        "sop_instance_uid": hd.UID(),
        "instance_number": 1,
        "manufacturer": "JMID Anomaly",
        "manufacturer_model_name": "JMID Anomaly",
        "software_versions": __version__,
        "device_serial_number": "0",
    }
