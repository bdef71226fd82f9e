"""Another patient: how a demo bundle does on anatomy it never saw.

The demo's cohort, its test set included, is made from one real CT. These cases are made from
the example DICOM series instead (another patient: contrast-enhanced, 0.98 x 0.98 x 2 mm, 20
slices of the upper abdomen) with TotalSegmentator's organ map of it, first resampled to the
example CT's 3 mm pixels, so that they differ from the training cases in anatomy and contrast
but not in pixel size (the models are sensitive to pixel size: README, The demo cohort). The
bundle is scored on them against their planted findings, as on the held-out test set.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from JMIDAnomalyLib.common.progress import Progress
from JMIDAnomalyLib.demo.cohort import build_cohort, built_cohort
from JMIDAnomalyLib.demo.holdout import evaluate_test_set
from JMIDAnomalyLib.demo.reference_data import ReferenceData, fetch_reference_data
from JMIDAnomalyLib.imaging.geometry import resample_to_size
from JMIDAnomalyLib.imaging.label_tables import read_segmentation, write_label_names
from JMIDAnomalyLib.imaging.volumes import read_ct, write_image
from JMIDAnomalyLib.labels.labeling import label_reports

#: The in-plane pixels of the example CT the demo cohort is made from (mm).
TRAINING_PIXEL_MM = 3.0


def series_source(
    data: ReferenceData, folder: Path, in_plane_mm: float | None = TRAINING_PIXEL_MM
) -> tuple[str, str, str]:
    """The example DICOM series and its organ map as cohort input (CT, segmentation, table):
    as stored (``in_plane_mm`` None), or written into ``folder`` on ``in_plane_mm`` pixels,
    slices kept: low-pass filtered as scikit-image's ``resize(anti_aliasing=True)`` (a
    Gaussian of sigma (factor - 1) / 2 pixels), then linear; the map by nearest neighbour."""
    if in_plane_mm is None:
        return (str(data.dicom_dir), str(data.dicom_seg), "")
    ct = read_ct(data.dicom_dir)
    seg, names = read_segmentation(data.dicom_seg, ct)
    own = np.asarray(ct.GetSpacing())
    spacing = np.array([in_plane_mm, in_plane_mm, own[2]])
    size = np.maximum(1, np.round(np.asarray(ct.GetSize()) * own / spacing)).astype(int)
    size_zyx = tuple(int(v) for v in size[::-1])
    sigma_mm = np.maximum(0.0, (spacing / own - 1) / 2) * own
    smooth = sitk.SmoothingRecursiveGaussian(ct, [float(max(s, 1e-3)) for s in sigma_mm])
    files = (folder / "ct.nii.gz", folder / "seg.nii.gz", folder / "seg.json")
    folder.mkdir(parents=True, exist_ok=True)
    write_image(sitk.Cast(resample_to_size(smooth, size_zyx), sitk.sitkInt16), files[0])
    write_image(resample_to_size(seg, size_zyx, "nearest"), files[1])
    write_label_names(names, files[2])
    return tuple(str(f) for f in files)


def other_patient_cohort(
    folder: Path,
    cases: int,
    seed: int,
    in_plane_mm: float | None = TRAINING_PIXEL_MM,
    progress: Progress | None = None,
) -> list[dict]:
    """``cases`` cases from the other patient in ``folder``/cohort (reused when it holds them)
    and their reports' labels in ``folder``/labels; returns the cohort's truth."""
    cohort = folder / "cohort"
    if built_cohort(cohort, cases, seed) is None:
        source = series_source(fetch_reference_data(), folder / "source", in_plane_mm)
        build_cohort(cohort, cases, seed, progress=progress, source=source, source_enhanced=True)
    label_reports(cohort / "reports.csv", folder / "labels")
    return json.loads((cohort / "truth.json").read_text())


def evaluate_other_patient(
    folder: Path,
    organs: tuple[str, ...],
    bundles: list[Path],
    cases: int,
    seed: int,
    in_plane_mm: float | None = TRAINING_PIXEL_MM,
    progress: Progress | None = None,
) -> dict:
    """Build ``cases`` cases from the other patient into ``folder`` (reused when it holds
    them) and score each organ's bundle on them: organ -> :func:`evaluate_test_set`'s summary
    (organs the series does not show are left out)."""
    truth = other_patient_cohort(folder, cases, seed, in_plane_mm, progress)
    shown = set(json.loads((folder / "cohort" / "labels.json").read_text()).values())
    results = {}
    for organ, bundle in zip(organs, bundles, strict=True):
        if any(name.split("_")[0] == organ for name in shown):
            ids = [t["case_id"] for t in truth]
            results[organ] = evaluate_test_set(folder, organ, bundle, ids, truth)
    return results


def recalibrated_on_other_patient(
    folder: Path,
    bundle: Path,
    cases: int,
    seed: int,
    fit: int,
    in_plane_mm: float | None = TRAINING_PIXEL_MM,
) -> dict:
    """A site's recalibration (``jmid calibrate``), with the other patient as the site: its
    ``cases`` cases built into ``folder`` (:func:`other_patient_cohort`), ``bundle`` fitted
    again on the first ``fit`` of them with their reports' labels, and the bundle before and
    after scored on the rest against their planted findings: {"before": ..., "after": ...},
    each :func:`evaluate_test_set`'s summary."""
    from JMIDAnomalyLib.training.recalibration import recalibrate

    truth = other_patient_cohort(folder, cases, seed, in_plane_mm)
    ids = [t["case_id"] for t in truth]
    site = folder / "site_bundle"  # ours: fitted again each run (another bundle, another fit)
    shutil.rmtree(site, ignore_errors=True)
    site.with_suffix(".zip").unlink(missing_ok=True)
    recalibrate(
        bundle, folder / "labels", folder / "cohort", folder / "crop_cache", site, cases=ids[:fit]
    )
    rest = ids[fit:]
    return {
        "fit_cases": fit,
        "before": evaluate_test_set(folder, "liver", bundle, rest, truth),
        "after": evaluate_test_set(folder, "liver", site, rest, truth),
    }
