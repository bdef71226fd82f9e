"""Dataset manifests: one row per CT, the input of every ``--manifest`` command.

A manifest is a CSV (or Parquet, with pandas and pyarrow installed) with the columns
``case_id, patient_id, ct, seg, seg_labels, report_id``: ``ct`` is a volume file or a DICOM
series (its folder, or one of its files where a folder holds several series); ``seg`` an organ
segmentation (label map, ``.seg.nrrd``, DICOM SEG or RTSTRUCT) and ``seg_labels`` its label
table, both optional; ``patient_id`` groups a patient's exams in cross-validation (default the
case id); ``report_id`` the report's case id when it differs. Relative paths are relative to the
manifest's folder.

:func:`scan_dataset` writes one from the layouts users have:

- ``cohort``: ``images/<case>.nii.gz``, ``segs/<case>.nii.gz``, ``labels.json`` (``jmid cohort``);
- ``nnunet``: nnU-Net raw, ``imagesTr/<case>_0000.nii.gz`` (and ``imagesTs/``), ``labelsTr/``,
  ``dataset.json``;
- ``published``: the published dataset, ``<organ>/jmid_XXXXXXX_0000.nii.gz``;
- ``folder``: volume files (NIfTI, NRRD, MetaImage) anywhere under a folder;
- ``dicom``: a DICOM tree, one row per CT series (read with pydicom, pixels not read).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Mapping
from dataclasses import astuple, dataclass, replace
from pathlib import Path

from JMIDAnomalyLib.common.atomic import atomic_output
from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.imaging.dicom_tree import scan_dicom_tree
from JMIDAnomalyLib.imaging.volumes import VOLUME_SUFFIXES, volume_stem

COLUMNS = ("case_id", "patient_id", "ct", "seg", "seg_labels", "report_id")
LAYOUTS = ("cohort", "nnunet", "published", "folder", "dicom")
_FORBIDDEN_IN_IDS = set('/\\:*?"<>|') | {"\n", "\r", "\t"}


@dataclass(frozen=True)
class ManifestRow:
    """One CT of a dataset (paths absolute once read)."""

    case_id: str
    patient_id: str
    ct: str
    seg: str = ""
    seg_labels: str = ""
    report_id: str = ""

    @property
    def group(self) -> str:
        """The cross-validation group: the patient, else the case itself."""
        return self.patient_id or self.case_id


def _check_rows(rows: list[ManifestRow], source: str | Path) -> None:
    seen: dict[str, int] = {}
    for number, row in enumerate(rows, start=2):
        where = f"row {number}"
        if not row.case_id:
            raise InputError(source, f"{where}: case_id is empty")
        if set(row.case_id) & _FORBIDDEN_IN_IDS or row.case_id.startswith("."):
            raise InputError(source, f"{where}: case_id '{row.case_id}' cannot be a file name")
        if row.case_id in seen:
            raise InputError(
                source, f"{where}: case_id '{row.case_id}' repeats row {seen[row.case_id]}"
            )
        seen[row.case_id] = number
        if not row.ct:
            raise InputError(source, f"{where} ({row.case_id}): the ct column is empty")


def _records(path: Path) -> list[dict]:
    if path.suffix.lower() == ".parquet":
        try:
            import pandas as pd
        except ImportError:
            raise InputError(path, "reading Parquet needs pandas and pyarrow") from None
        return pd.read_parquet(path).fillna("").astype(str).to_dict("records")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise InputError(path, "is not UTF-8 text (a manifest is a CSV file)") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("case_id", "ct") if c not in (reader.fieldnames or [])]
    if missing:
        raise InputError(path, f"not a manifest: no {', '.join(missing)} column")
    return list(reader)


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    """The rows of a manifest, paths made absolute against its folder.

    Raises:
        InputError: unreadable, no ``case_id``/``ct`` column, an empty or repeated case id, a
            case id that cannot be a file name, or an empty ``ct``.
    """
    path = Path(path)
    base = Path(os.path.abspath(path)).parent
    rows = []
    for record in _records(path):
        values = {c: str(record.get(c) or "").strip() for c in COLUMNS}
        for column in ("ct", "seg", "seg_labels"):
            if values[column] and not Path(values[column]).is_absolute():
                values[column] = os.path.normpath(base / values[column])
        rows.append(ManifestRow(**values))
    _check_rows(rows, path)
    return rows


def _relative(value: str, base: Path) -> str:
    if not value:
        return value
    absolute = Path(os.path.abspath(value))  # symbolic links kept as they are
    try:
        return absolute.relative_to(base).as_posix()
    except ValueError:
        return str(absolute)


def write_manifest(rows: Iterable[ManifestRow], path: str | os.PathLike) -> Path:
    """Write a manifest CSV atomically, paths relative to its folder where they lie under it.

    Raises:
        InputError: ``path`` exists and is not a manifest (a user's file is never replaced), or
            the rows break a manifest's rules.
    """
    path = Path(path)
    rows = list(rows)
    _check_rows(rows, path)
    if path.exists():
        try:
            _records(path)
        except InputError:
            raise InputError(path, "exists and is not a manifest; it is left as it is") from None
    base = Path(os.path.abspath(path)).parent
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        values = dict(zip(COLUMNS, astuple(row), strict=True))
        for column in ("ct", "seg", "seg_labels"):
            values[column] = _relative(values[column], base)
        writer.writerow(values[c] for c in COLUMNS)
    with atomic_output(path) as tmp:
        if path.suffix.lower() == ".parquet":
            _write_parquet(buffer.getvalue(), tmp, path)
        else:
            tmp.write_text(buffer.getvalue(), encoding="utf-8")
    return path


def _write_parquet(text: str, tmp: Path, path: Path) -> None:
    try:
        import pandas as pd
    except ImportError:
        raise InputError(path, "writing Parquet needs pandas and pyarrow") from None
    pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False).to_parquet(tmp, index=False)


def _volumes(folder: Path, recursive: bool = False) -> list[Path]:
    if not folder.is_dir():
        return []
    found = folder.rglob("*") if recursive else folder.iterdir()
    out = []
    for p in found:
        name = p.name.lower()
        hidden = any(part.startswith(".") for part in p.relative_to(folder).parts)
        if p.is_file() and not hidden and any(name.endswith(s) for s in VOLUME_SUFFIXES):
            if not name.endswith((".seg.nrrd", ".raw")):
                out.append(p)
    return sorted(out)


def _channel_zero(files: list[Path]) -> dict[str, Path]:
    """``<case>_0000.nii.gz`` files by case id (nnU-Net's channel suffix removed)."""
    return {volume_stem(p)[:-5]: p for p in files if volume_stem(p).endswith("_0000")}


def cohort_rows(images: Path, segs: Path, table: str = "") -> list[ManifestRow]:
    """The rows of CTs in ``images`` with label maps of the same file name in ``segs`` (the
    cohort layout; a CT without one gets an empty ``seg``) and the label table ``table``."""
    rows = []
    for ct in _volumes(Path(images)):
        case = volume_stem(ct)
        seg = Path(segs) / ct.name
        if not seg.exists():
            rows.append(ManifestRow(case, case, str(ct)))
            continue
        rows.append(ManifestRow(case, case, str(ct), str(seg), table))
    return rows


def _scan_cohort(root: Path) -> list[ManifestRow]:
    table = root / "labels.json"
    return cohort_rows(root / "images", root / "segs", str(table) if table.exists() else "")


def _scan_nnunet(root: Path) -> list[ManifestRow]:
    table = root / "dataset.json"
    rows = []
    for images, labels in (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
        for case, ct in sorted(_channel_zero(_volumes(root / images)).items()):
            seg = root / labels / ct.name.replace("_0000", "", 1)
            has_seg = seg.exists()
            rows.append(
                ManifestRow(
                    case,
                    case,
                    str(ct),
                    str(seg) if has_seg else "",
                    str(table) if has_seg and table.exists() else "",
                )
            )
    return rows


def _scan_published(root: Path) -> list[ManifestRow]:
    cases: dict[str, Path] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for case, ct in _channel_zero(_volumes(folder)).items():
            cases.setdefault(case, ct)  # a case filed under several organs is one CT
    return [ManifestRow(case, case, str(ct)) for case, ct in sorted(cases.items())]


def _scan_folder(root: Path) -> list[ManifestRow]:
    rows = []
    for ct in _volumes(root, recursive=True):
        parts = [*ct.relative_to(root).parent.parts, volume_stem(ct)]
        case = "_".join(parts)
        rows.append(ManifestRow(case, case, str(ct)))
    return rows


def detect_layout(root: str | os.PathLike) -> str:
    """Which of :data:`LAYOUTS` a folder is in.

    Raises:
        InputError: not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "is not a folder")
    if (root / "images").is_dir() and (root / "segs").is_dir():
        return "cohort"
    if (root / "imagesTr").is_dir() or (root / "imagesTs").is_dir():
        return "nnunet"
    subfolders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if subfolders and any(_channel_zero(_volumes(p)) for p in subfolders):
        return "published"
    if _volumes(root, recursive=True):
        return "folder"
    return "dicom"


def scan_dataset(
    root: str | os.PathLike, layout: str = "auto", segs: str | os.PathLike | None = None
) -> tuple[list[ManifestRow], list[str]]:
    """The manifest rows of a dataset folder, and notes on what was left out.

    Args:
        root: the dataset's folder.
        layout: one of :data:`LAYOUTS`, or ``auto`` (:func:`detect_layout`).
        segs: a folder of segmentations named ``<case_id>.nii.gz`` with label tables
            ``<case_id>.json`` (what ``jmid segment --manifest`` writes); they fill ``seg``
            and ``seg_labels`` where present.

    Raises:
        InputError: not a folder, an unknown layout, or no CT found.
    """
    root = Path(root).resolve()
    layout = detect_layout(root) if layout == "auto" else layout
    notes: list[str] = []
    if layout == "dicom":
        rows = [ManifestRow(*found) for found in scan_dicom_tree(root, notes)]
    elif layout in LAYOUTS:
        rows = {
            "cohort": _scan_cohort,
            "nnunet": _scan_nnunet,
            "published": _scan_published,
            "folder": _scan_folder,
        }[layout](root)
    else:
        raise InputError("--layout", f"'{layout}' is not one of auto, {', '.join(LAYOUTS)}")
    if not rows:
        raise InputError(root, f"no CT found in the {layout} layout")
    if segs is not None:
        rows = [_with_seg(row, Path(segs).resolve()) for row in rows]
    return rows, notes


def _with_seg(row: ManifestRow, segs: Path) -> ManifestRow:
    seg, table = segs / f"{row.case_id}.nii.gz", segs / f"{row.case_id}.json"
    if not seg.is_file():
        return row
    return replace(row, seg=str(seg), seg_labels=str(table) if table.is_file() else "")


def join_reports(
    rows: Iterable[ManifestRow], patients: Mapping[str, str]
) -> tuple[list[ManifestRow], int]:
    """Patient ids from a report export (case id -> patient id); the report id is the case id
    where a report exists. Returns the rows and how many had a report."""
    out, matched = [], 0
    for row in rows:
        if row.case_id in patients:
            matched += 1
            row = replace(row, patient_id=patients[row.case_id], report_id=row.case_id)
        out.append(row)
    return out, matched
