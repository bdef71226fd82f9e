"""The main job on the built-in demo data.

Runs the stages that exist, end to end: build the demo cohort (real CT anatomy, planted
findings, reports), import labels from its reports, crop every organ of every case through the
crop cache (from the cohort's own organ segmentations; ``jmid segment`` runs a model instead),
and write a Slicer scene of one case with its organs and planted findings. Re-running reuses
the cohort and the cached crops. Training, evaluation and analysis join as they land.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk

from .cohort import build_cohort
from .cropcache import CropCache
from .crops import CropConfig
from .imageio import read_ct, read_label_map
from .labels.labeling import LabelOptions, label_reports

logger = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


@dataclass
class DemoResult:
    out: Path
    cohort: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    crop_status: Counter = field(default_factory=Counter)
    crops_from_cache: int = 0
    label_check: dict = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    def table(self) -> str:
        c = self.cohort
        lines = [
            f"cohort      {c['cases']} cases, {c['patients']} patients, "
            f"{c['cases_with_findings']} with findings ({c['findings_left_out_of_reports']} "
            "findings left out of the reports as label noise)",
            f"labels      {self.labels['reports_labelled']} reports labelled, "
            f"{len(self.labels['rows_skipped'])} skipped",
            f"crops       {sum(self.crop_status.values())} organ crops: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.crop_status.items()))
            + f" ({self.crops_from_cache} cases from the cache)",
            "",
            f"{'planted finding':36s} {'planted':>8s} {'in reports':>11s} {'labelled':>9s}",
        ]
        for kind, (planted, reported, labelled) in sorted(self.label_check.items()):
            lines.append(f"{kind:36s} {planted:8d} {reported:11d} {labelled:9d}")
        return "\n".join(lines)


def _log_progress(fraction: float, message: str) -> None:
    logger.info("[%3.0f%%] %s", 100 * fraction, message)


def run_demo(
    out: Path, cases: int = 60, seed: int = 0, progress: Progress = _log_progress
) -> DemoResult:
    """Run the demo into ``out`` (see the module docstring)."""
    from slicer import vtkMRMLScene

    from .mrml import float_map_to_overlay_node, save_scene
    from .scenes import add_case_to_scene

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = DemoResult(out)
    cohort_dir = out / "cohort"
    summary_file = cohort_dir / "cohort.json"
    previous = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    if previous.get("cases") == cases and previous.get("seed") == seed:
        progress(0.0, "reusing the demo cohort")
        result.cohort = previous
    else:
        progress(0.0, f"building the demo cohort ({cases} cases)")
        result.cohort = build_cohort(
            cohort_dir, cases, seed, progress=lambda f, m: progress(0.6 * f, f"cohort: {m}")
        )
    progress(0.6, "importing labels from the reports")
    result.labels = label_reports(cohort_dir / "reports.csv", out / "labels", LabelOptions())
    truth = json.loads((cohort_dir / "truth.json").read_text())
    names = {int(k): v for k, v in json.loads((cohort_dir / "labels.json").read_text()).items()}
    progress(0.65, "cropping organs (crop cache)")
    cache = CropCache(out / "crop_cache")
    config = CropConfig.preset("demo")
    for i, record in enumerate(truth):
        case = record["case_id"]
        ct = read_ct(cohort_dir / "images" / f"{case}.nii.gz")
        seg = read_label_map(cohort_dir / "segs" / f"{case}.nii.gz", reference=ct)
        crops, hit = cache.get(ct, seg, names, config=config)
        result.crops_from_cache += int(hit)
        result.crop_status.update(c.status for c in crops)
        progress(0.65 + 0.25 * (i + 1) / len(truth), f"cropped {case}")
    result.label_check = _label_check(truth, out / "labels")
    progress(0.9, "writing a Slicer scene of one case")
    shown = next((r for r in truth if r["findings"]), truth[0])
    case = shown["case_id"]
    ct = read_ct(cohort_dir / "images" / f"{case}.nii.gz")
    seg = read_label_map(cohort_dir / "segs" / f"{case}.nii.gz", reference=ct)
    scene = vtkMRMLScene()
    add_case_to_scene(scene, ct, seg, names, name=case)
    findings = sitk.ReadImage(str(cohort_dir / "findings" / f"{case}.nii.gz"))
    float_map_to_overlay_node(
        sitk.Cast(findings > 0, sitk.sitkFloat32), scene, f"{case} planted findings"
    )
    result.files = {
        "cohort": cohort_dir,
        "contact sheet": cohort_dir / "contact_sheet.png",
        "labels": out / "labels",
        "crop cache": out / "crop_cache",
        "scene": save_scene(scene, out / "scene.mrb"),
    }
    progress(1.0, "done")
    return result


def _label_check(truth: list[dict], labels_dir: Path) -> dict[str, tuple[int, int, int]]:
    """Per planted kind: (planted, mentioned in reports, labelled positive by the importer)."""
    import csv

    positives: set[tuple[str, str, str, str]] = set()
    for organ in ("liver", "spleen", "kidney", "pancreas", "gallbladder"):
        with (labels_dir / f"{organ}.csv").open(encoding="utf-8") as f:
            for row in csv.DictReader(f):
                for cls, value in row.items():
                    if value == "1":
                        positives.add((row["case_id"], organ, row["side"], cls))
    table: dict[str, list[int]] = {}
    for record in truth:
        for f in record["findings"]:
            cell = table.setdefault(f"{f['organ']}.{f['cls']}", [0, 0, 0])
            cell[0] += 1
            cell[1] += int(f["reported"])
            cell[2] += int((record["case_id"], f["organ"], f["side"] or "", f["cls"]) in positives)
    return {k: tuple(v) for k, v in table.items()}
