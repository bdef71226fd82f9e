"""An analysis as DICOM for PACS (``jmid analyze --dicom-out``), when the CT came as DICOM.

``out/dicom/`` receives ``seg.dcm``, the organ segmentation as a DICOM SEG, and one DICOM
Parametric Map per heatmap (``heatmap_<organ>[_<side>].dcm``), each a new series of the CT's
study (its Study Instance UID and Frame of Reference, new series and instance UIDs), written
with highdicom. The scores stay in ``scores.json`` beside them (not a DICOM SR): the JSON is what
the other outputs and the worker already carry.
"""

from __future__ import annotations

import os
from pathlib import Path

from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.imaging.volumes import VOLUME_SUFFIXES, dicom_series_files


def dicom_sources(ct_path: str | os.PathLike) -> list[str]:
    """The CT's slice files for ``--dicom-out``.

    Raises:
        InputError: the CT is a volume file, not a DICOM series (or a bad series).
    """
    if Path(ct_path).name.lower().endswith(VOLUME_SUFFIXES):
        raise InputError(
            ct_path, "--dicom-out needs the CT as a DICOM series (a folder or a slice)"
        )
    return dicom_series_files(ct_path)


def write_dicom_results(folder: Path, analysis, ct_files: list[str]) -> list[str]:
    """Write ``folder/dicom/``: the organ SEG and a Parametric Map per heatmap.

    Args:
        folder: the results folder being written.
        analysis: the :class:`~JMIDAnomalyLib.inference.predictor.CaseAnalysis`.
        ct_files: the CT's slice files in the order it was read (:func:`dicom_sources`).

    Returns:
        The names of the files written.
    """
    import SimpleITK as sitk

    from JMIDAnomalyLib.imaging.dicom_seg import write_dicom_seg, write_parametric_map
    from JMIDAnomalyLib.imaging.label_tables import select_organs

    target = folder / "dicom"
    target.mkdir()
    organs, names = select_organs(analysis.label_map, analysis.label_names)
    written = [write_dicom_seg(organs, names, ct_files, target / "seg.dcm").name]
    for key, image in analysis.heatmap_images().items():
        result = next(o for o in analysis.organs if o.key == key)
        explanation = f"{analysis.explain} heatmap of {result.explained_class} ({key})"
        path = write_parametric_map(
            sitk.GetArrayFromImage(image),
            ct_files,
            target / f"heatmap_{key}.dcm",
            "JMID heatmap",
            explanation,
        )
        written.append(path.name)
    return written
