"""The built-in demo cohort: real CT anatomy with planted findings and matching reports.

``build_cohort(out, cases=60, seed=0)`` writes (deterministic for a seed):

    out/images/case_0001.nii.gz      CT (int16 HU), a deformed copy of the real example CT (or
                                     of the source CT given: ``jmid cohort --source-ct``)
    out/segs/case_0001.nii.gz        its organ label map (label table: out/labels.json)
    out/findings/case_0001.nii.gz    planted finding masks (value = finding label in truth.json)
    out/reports.csv                  the reports, J-MID export format (specimen columns)
    out/truth.json                   per case: patient, findings (organ, side, class, size,
                                     centre in LPS mm, reported or left out by label noise)
    out/cohort.json                  a summary; out/contact_sheet.png slices through findings

The example CT is a non-contrast scan (liver about 50 HU), while the lesion values planted here
(and the reports they stand for) are those of portal-venous phase CT, the phase most abdominal
reports are written on. Each case is therefore given a portal-venous enhancement first: the
parenchyma of each organ is raised by a per-case amount (:data:`ENHANCEMENT_HU`), which puts a
water-density cyst about 100 HU below the liver, as on real contrast CT. Liver findings are
planted three times as often as the others (the demo trains the liver), so that a cohort of a
few hundred cases carries enough positives per liver class to train the demo ensemble and to
measure it on a held-out test set (about 16% of the cases per liver class, 5% per other kind).
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from JMIDAnomalyLib.common.atomic import atomic_output
from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.common.organs import TOTALSEGMENTATOR_ORGANS, organ_key
from JMIDAnomalyLib.common.progress import Progress
from JMIDAnomalyLib.demo.deformation import deform_case
from JMIDAnomalyLib.demo.planting import FINDING_KINDS, PlantedFinding, Planter
from JMIDAnomalyLib.demo.reference_data import fetch_reference_data
from JMIDAnomalyLib.demo.reports import write_report
from JMIDAnomalyLib.imaging.geometry import Grid
from JMIDAnomalyLib.imaging.label_tables import read_segmentation, select_organs
from JMIDAnomalyLib.imaging.volumes import read_ct, read_label_map, write_image

logger = logging.getLogger(__name__)

FINDING_RATE = 0.6  # share of cases with at least one finding

#: Portal-venous enhancement (HU added to the organ's parenchyma, drawn per case).
ENHANCEMENT_HU: dict[str, tuple[float, float]] = {
    "liver": (45.0, 65.0),
    "spleen": (55.0, 75.0),
    "kidney": (90.0, 130.0),
    "pancreas": (35.0, 55.0),
}

#: Relative frequency of each kind in :data:`FINDING_KINDS` (liver classes three times as often).
KIND_WEIGHTS = np.array([3.0 if organ == "liver" else 1.0 for organ, _ in FINDING_KINDS])


def _patients(n: int, rng: np.random.Generator) -> list[str]:
    """Patient ids for n exams: most patients have one exam, some two or three."""
    ids, patient = [], 0
    while len(ids) < n:
        patient += 1
        ids += [f"P{patient:04d}"] * int(rng.choice([1, 1, 1, 2, 3]))
    return ids[:n]


def _plant(planter: Planter, organ: str, cls: str, labels: np.ndarray, names: dict[int, str], rng):
    side = rng.choice(["left", "right"]) if organ == "kidney" else None
    if side and organ_key(organ, side) not in planter.masks:
        return None  # a source segmentation without that kidney (a slab above it)
    if organ == "liver" and cls == "cyst":
        return planter.lesion("liver", None, "cyst", (8, 40), (0, 15))
    if organ == "liver" and cls == "SOL":
        contrast = (-80, -40) if rng.random() < 0.7 else (40, 80)
        return planter.lesion("liver", None, "SOL", (10, 40), contrast, soft=True, absolute=False)
    if organ == "liver" and cls == "fatty_liver":
        return planter.fatty_liver()
    if organ == "liver" and cls == "calcification":
        return planter.lesion("liver", None, "calcification", (4, 10), (400, 800))
    if organ == "spleen" and cls == "deformation":
        value = {v: k for k, v in names.items()}["spleen"]
        return planter.enlarge("spleen", labels, value)
    if organ == "spleen" and cls == "cyst":
        return planter.lesion("spleen", None, "cyst", (5, 25), (0, 15))
    if organ == "kidney" and cls == "cyst":
        return planter.lesion("kidney", side, "cyst", (6, 30), (0, 15))
    if organ == "kidney" and cls == "calcification":
        return planter.lesion("kidney", side, "calcification", (3, 8), (600, 1200))
    if organ == "pancreas" and cls == "SOL":
        return planter.lesion(
            "pancreas", None, "SOL", (8, 20), (-60, -30), soft=True, absolute=False
        )
    if organ == "pancreas" and cls == "pancreatic_duct_dilation":
        return planter.duct()
    if organ == "gallbladder" and cls == "gallstone":
        return planter.lesion("gallbladder", None, "gallstone", (4, 15), (200, 900))
    raise ValueError(f"unknown finding {organ} {cls}")


def read_source(source: tuple[str, str, str] | None = None) -> tuple[sitk.Image, sitk.Image, dict]:
    """The anatomy a cohort is made from: (CT, organ label map, label names) of ``source``
    (CT, segmentation, label table or ""), else of the real example CT. Read once per process
    while its files are unchanged (the cases are deformed copies, and nothing changes the images
    read): reading and checking the example CT took a fifth of each case's build.

    Raises:
        InputError: unreadable files, a segmentation off the CT's grid, or none of our organs.
    """
    files = [p for p in source if p] if source is not None else []
    stamps = tuple((p, s.st_ino, s.st_mtime_ns, s.st_size) for p in files if (s := _stat(p)))
    return _read_source(source, stamps)


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None  # reading it says what is wrong


@functools.lru_cache(maxsize=2)
def _read_source(source: tuple[str, str, str] | None, stamps: tuple) -> tuple:
    """:func:`read_source`, cached by the files' paths, inodes, times and sizes (``stamps``)."""
    if source is None:
        data = fetch_reference_data()
        ct = read_ct(data.ct)
        label_map, names = read_label_map(data.ct_seg, ct), data.label_names()
    else:
        ct_path, seg_path, table = source
        ct = read_ct(ct_path)
        label_map, names = read_segmentation(seg_path, ct, table or None, "--source-labels")
    organs, organ_names = select_organs(label_map, names)
    if not organ_names:
        where = source[1] if source else "example segmentation"
        raise InputError(where, "names none of the abdominal organs (liver, spleen, kidneys...)")
    return ct, organs, organ_names


def build_case(
    index: int,
    seed: int,
    out: str,
    label_noise: float,
    patient: str,
    source: tuple[str, str, str] | None = None,
    source_enhanced: bool = False,
) -> dict:
    """Make case ``index`` (1-based) from ``source`` (:func:`read_source`) and write its files;
    returns its truth record. ``source_enhanced``: the source CT is contrast-enhanced already,
    so its organs get no portal-venous enhancement (the example CT is non-contrast)."""
    rng = np.random.default_rng([seed, index])
    source_ct, organs, names = read_source(source)
    ct, labels_image = deform_case(source_ct, organs, rng)
    grid = Grid.from_image(ct)
    ct_array = sitk.GetArrayFromImage(ct).astype(np.float32)
    labels = sitk.GetArrayFromImage(labels_image)
    masks = {}  # organ key (liver, kidney_left, adrenal_right ...) -> mask
    for value, structure in names.items():
        organ, side = TOTALSEGMENTATOR_ORGANS[structure]
        masks[organ_key(organ, side)] = (labels == value).astype(np.uint8)
    for key, mask in masks.items():
        low, high = ENHANCEMENT_HU.get(key.split("_")[0], (0.0, 0.0))
        if high > 0:
            rise = float(rng.uniform(low, high))  # drawn either way: the same cases follow
            if not source_enhanced:
                ct_array[mask > 0] += rise
    finding_mask = np.zeros(labels.shape, np.uint8)
    planter = Planter(ct_array, masks, grid, rng, finding_mask)
    planted: list[PlantedFinding] = []
    if rng.random() < FINDING_RATE:
        count = int(rng.choice([1, 1, 1, 2, 2, 3]))
        weights = KIND_WEIGHTS / KIND_WEIGHTS.sum()
        picks = rng.choice(len(FINDING_KINDS), count, replace=False, p=weights)
        kinds = [FINDING_KINDS[i] for i in picks]
        for organ, cls in kinds:
            if organ in ("spleen", "pancreas", "gallbladder", "liver") and organ not in masks:
                continue
            finding = _plant(planter, organ, cls, labels, names, rng)
            if finding is not None:
                finding.reported = bool(rng.random() >= label_noise)
                planted.append(finding)
    case = f"case_{index:04d}"
    root = Path(out)
    image = grid.image_from_array(np.clip(np.round(ct_array), -1024, 3071).astype(np.int16))
    write_image(image, root / "images" / f"{case}.nii.gz")
    write_image(grid.image_from_array(labels.astype(np.uint8)), root / "segs" / f"{case}.nii.gz")
    write_image(grid.image_from_array(finding_mask), root / "findings" / f"{case}.nii.gz")
    text_ja, text_en, structured = write_report(planted, rng)
    return {
        "case_id": case,
        "patient_id": patient,
        "findings": [f.to_dict() for f in planted],
        "report": [f"{case}.nii.gz", patient, text_ja, text_en, structured],
        "organ_labels": {str(k): v for k, v in names.items()},
    }


def _one_thread() -> None:
    """A pool worker computes on one thread: the workers already use every core, and two
    workers of two threads each took 42 s for 200 cases against 31 s (2 cores)."""
    import torch

    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _write_records(out: Path, records: list[dict]) -> list[dict]:
    """The cohort's reports, truth and label table from the cases' records; returns the truth."""
    with atomic_output(out / "reports.csv") as tmp:
        with tmp.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file_name", "患者ID", "所見", "findings_Eng", "所見_JSON"])
            writer.writerows(r["report"] for r in records)
    truth = [{k: r[k] for k in ("case_id", "patient_id", "findings")} for r in records]
    with atomic_output(out / "truth.json") as tmp:
        tmp.write_text(json.dumps(truth, indent=1), encoding="utf-8")
    with atomic_output(out / "labels.json") as tmp:
        tmp.write_text(json.dumps(records[0]["organ_labels"], indent=1), encoding="utf-8")
    return truth


def built_cohort(out: str | os.PathLike, cases: int, seed: int) -> dict | None:
    """The summary of the cohort in ``out`` when it was built with ``cases`` and ``seed``."""
    summary_file = Path(out) / "cohort.json"
    previous = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    return previous if (previous.get("cases"), previous.get("seed")) == (cases, seed) else None


def build_cohort(
    out: str | os.PathLike,
    cases: int = 60,
    seed: int = 0,
    label_noise: float = 0.1,
    workers: int | None = None,
    progress: Progress | None = None,
    source: tuple[str, str, str] | None = None,
    source_enhanced: bool = False,
) -> dict:
    """Build the demo cohort into ``out``; returns the summary also written to cohort.json.

    ``source``: (CT, organ segmentation, label table or "") to make the cases from any real
    anatomy (default: the example CT); it is read and checked before anything is written.
    ``source_enhanced``: that CT is contrast-enhanced already (:func:`build_case`)."""
    out = Path(out)
    if source is not None:
        source = tuple(str(Path(p).resolve()) if p else "" for p in source)
    read_source(source)  # checked (and the example data fetched) before the workers start
    out.mkdir(parents=True, exist_ok=True)
    patients = _patients(cases, np.random.default_rng([seed, 0]))
    workers = workers or min(4, os.cpu_count() or 1)
    records = [None] * cases
    with ProcessPoolExecutor(workers, initializer=_one_thread) as pool:
        futures = [
            pool.submit(
                build_case, i + 1, seed, str(out), label_noise, patients[i], source, source_enhanced
            )
            for i in range(cases)
        ]
        for done, future in enumerate(futures, start=1):
            records[done - 1] = future.result()
            if progress:
                progress(done / cases, f"case {done}/{cases}")
    truth = _write_records(out, records)
    kinds = Counter(f"{f['organ']}.{f['cls']}" for r in truth for f in r["findings"])
    summary = {
        "cases": cases,
        "seed": seed,
        "label_noise": label_noise,
        "source": list(source) if source else "example CT",
        "source_enhanced": source_enhanced,
        "patients": len(set(patients)),
        "cases_with_findings": sum(bool(r["findings"]) for r in truth),
        "findings": dict(sorted(kinds.items())),
        "findings_left_out_of_reports": sum(
            not f["reported"] for r in truth for f in r["findings"]
        ),
        "size_mb": round(sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6, 1),
    }
    from JMIDAnomalyLib.demo.contact_sheet import contact_sheet

    contact_sheet(out, truth, out / "contact_sheet.png")
    with atomic_output(out / "cohort.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary
