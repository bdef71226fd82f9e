"""Manifest rows (case id, patient id, CT) for the CT series of a DICOM tree, found with
pydicom without reading pixels.

Only each file's header up to the pixel data is read (``stop_before_pixels``), so a tree of
tens of thousands of exams is listed at the speed of the file system. A series is a CT row when
its Modality is CT and it has at least two slices (localizers and dose reports are left out,
with a note). The row's ``ct`` is the series' folder, or its first file where the folder holds
several series (what :func:`~JMIDAnomalyLib.imaging.volumes.read_ct` accepts); ``patient_id``
is the PatientID tag.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

_TAGS = ["Modality", "SeriesInstanceUID", "PatientID", "SeriesNumber", "ImagePositionPatient"]


@dataclass
class _Series:
    modality: str
    patient_id: str
    number: str
    files: list[Path] = field(default_factory=list)


def _headers(root: Path):
    """(path, dataset) for every DICOM file under ``root`` (other files are passed over)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(folder) / name
            try:
                yield path, pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
            except (InvalidDicomError, OSError, EOFError, ValueError):
                continue


def _collect(root: Path) -> dict[str, _Series]:
    series: dict[str, _Series] = {}
    for path, ds in _headers(root):
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not uid:  # anonymised without one: the folder and series number group the slices
            uid = f"{path.parent}|{ds.get('SeriesNumber', '')}|{ds.get('Modality', '')}"
        entry = series.get(uid)
        if entry is None:
            entry = series[uid] = _Series(
                str(ds.get("Modality", "") or ""),
                str(ds.get("PatientID", "") or ""),
                str(ds.get("SeriesNumber", "") or ""),
            )
        entry.files.append(path)
    return series


def scan_dicom_tree(root: Path, notes: list[str]) -> list[tuple[str, str, str]]:
    """The CT series under ``root`` as (case_id, patient_id, ct) rows of a manifest; what was
    left out goes into ``notes``."""
    series = _collect(root)
    per_folder: dict[Path, int] = defaultdict(int)
    for entry in series.values():
        for folder in {p.parent for p in entry.files}:
            per_folder[folder] += 1
    rows, used = [], set()
    for uid, entry in sorted(series.items(), key=lambda kv: str(kv[1].files[0])):
        folders = sorted({p.parent for p in entry.files})
        where = folders[0].relative_to(root).as_posix()
        if entry.modality != "CT":
            notes.append(f"{where}: a {entry.modality or 'unknown'} series, not CT: left out")
            continue
        if len(entry.files) < 2 or len(folders) > 1:
            why = "fewer than 2 slices" if len(entry.files) < 2 else "spread over several folders"
            notes.append(f"{where}: series {entry.number or uid[-8:]} has {why}: left out")
            continue
        folder = folders[0]
        alone = per_folder[folder] == 1
        case = "_".join(folder.relative_to(root).parts) or root.name
        if not alone:
            case += f"_s{entry.number or uid[-8:]}"
        while case in used:
            case += "_"
        used.add(case)
        ct = folder if alone else sorted(entry.files)[0]
        rows.append((case, entry.patient_id, str(ct)))
    return rows
