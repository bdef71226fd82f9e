"""The main job on the built-in demo data, end to end.

1. build the demo cohort (real CT anatomy, planted findings, reports; reused when it exists);
2. import labels from its reports;
3. crop the trained organs of every case through the crop cache, from the cohort's own organ
   segmentations (the demo does not run a segmentation model: ``jmid segment`` or
   ``jmid analyze --seg-model`` do that with an nnU-Net folder);
4. train each organ's k-fold ensemble (demo preset, ``mil_local``) on all cases but a held-out
   test set (36% of the cases, whole patients, stratified on the reports' labels:
   :mod:`~JMIDAnomalyLib.demo.holdout`), into a model bundle
   (reused when its configuration is unchanged; an interrupted run resumes);
5. evaluate the out-of-fold predictions (metrics, ROC, confusion and reliability PNGs), the
   bundle on the test set (held-out AUC, per-case flags against the planted findings), and on
   cases made from another patient (:mod:`~JMIDAnomalyLib.demo.other_anatomy`);
6. analyze a few test cases with heatmaps (scores.json, overview.png, a Slicer scene each)
   and measure how far each heatmap lies from the planted finding;
7. write a Slicer scene of one case with its organs and planted findings.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from JMIDAnomalyLib.common.devices import available_cores
from JMIDAnomalyLib.common.errors import JMIDError
from JMIDAnomalyLib.common.progress import Progress
from JMIDAnomalyLib.common.sharding import Shard
from JMIDAnomalyLib.demo.cohort import build_cohort, built_cohort
from JMIDAnomalyLib.demo.holdout import (
    evaluate_test_set,
    metrics_lines,
    split_test_set,
    test_set_table,
)
from JMIDAnomalyLib.demo.other_anatomy import TRAINING_PIXEL_MM, evaluate_other_patient
from JMIDAnomalyLib.demo.reports import label_check
from JMIDAnomalyLib.imaging.crop_batch import build_crop_cache, inputs_of
from JMIDAnomalyLib.imaging.crop_cache import CropCache
from JMIDAnomalyLib.imaging.crops import CropConfig
from JMIDAnomalyLib.imaging.manifest import cohort_rows
from JMIDAnomalyLib.imaging.volumes import read_ct, read_label_map
from JMIDAnomalyLib.labels.labeling import LabelOptions, label_reports

logger = logging.getLogger(__name__)


#: How the demo trains (besides DemoSettings): the organ's interior only (3 mm in from its
#: surface), the rest filled with tissue (the published mask crop leaves the outline and the
#: neighbours, which small models learn instead of focal lesions; a deeper cut erases the
#: lesions near the surface), a higher learning rate for training from scratch, positives
#: weighted for the rare classes, and the focal loss, which weights the cases the model still
#: gets wrong (a mass model that learnt "a dark spot" scores cysts higher than masses; focal
#: loss lets it learn the difference sooner). See README, Training.
DEMO_TRAINING = {
    "lr": 2e-3,
    "loss": "focal",
    "class_weighting": True,
    # The organ's interior, framed by its own median attenuation: a fixed tissue value (94 HU)
    # framed a fatty liver as one large dark region, and the models saw no mass in it (README,
    # Training; docs/experiments.md).
    "crop": {"margin_mm": -3.0, "fill_hu": "median"},
    # Thresholds whose out-of-fold specificity is at least 0.8 with 95% confidence: at the
    # point estimate, calcification's balanced point sat at 0.80 out of fold and at 0.79 on
    # 396 more cases (README, Evaluation).
    "specificity_confidence": 0.95,
}


@dataclass
class DemoSettings:
    """Sizes of the demo run (the defaults finish in 12-15 minutes on 2 CPU cores, longer
    on slower ones): 1,200 cases, 3 folds of 22 epochs on the 64% of them that are not held
    out. The test set (36% of the cases, whole patients: 433, some 65 per liver class) measures
    a held-out AUC to within about +-0.04 (95% CI) and calibration (README, Training);
    ``other_cases`` cases of another patient are scored as well (0: none)."""

    cases: int = 1200
    seed: int = 0
    organs: tuple[str, ...] = ("liver",)
    folds: int = 3
    epochs: int = 22
    holdout: int = 3
    model: str = "mil_local"
    test_fraction: float = 0.36
    other_cases: int = 100


@dataclass
class DemoResult:
    """What :func:`run_demo` did, with the figures its summary prints."""

    out: Path
    cohort: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    crop_status: Counter = field(default_factory=Counter)
    crops_from_cache: int = 0
    label_check: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)  # organ -> {"minutes", "reused", "metrics"}
    tests: dict = field(default_factory=dict)  # organ -> evaluate_test_set's summary
    others: dict = field(default_factory=dict)  # the same on cases of another patient
    analyses: list = field(default_factory=list)  # per held-out case: dict
    files: dict[str, Path] = field(default_factory=dict)

    def table(self) -> str:
        """The demo's summary as printed by ``jmid demo``."""
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
        for organ, run in self.training.items():
            how = "reused" if run["reused"] else f"trained in {run['minutes']:.1f} min"
            lines += metrics_lines(
                f"{organ} ensemble ({how}), out-of-fold:",
                run["metrics"],
                "ECE raw -> calibrated",
                lambda m: f"{m['ece_raw']:.3f} -> {m['ece']:.3f}",
            )
        for organ, test in self.tests.items():
            lines += test_set_table(organ, test)
        for organ, test in self.others.items():
            where = f"cases of another patient ({TRAINING_PIXEL_MM:g} mm pixels)"
            lines += test_set_table(organ, test, where)
        if self.analyses:
            lines += [
                "",
                "held-out cases analyzed (heatmap: distance from its top 5% to the "
                "planted finding):",
            ]
            for a in self.analyses:
                lines.append(f"  {a['case']}: {a['seconds']:.1f} s; {a['summary']}")
        return "\n".join(lines)


def _log_progress(fraction: float, message: str) -> None:
    logger.info("[%3.0f%%] %s", 100 * fraction, message)


def run_demo(
    out: Path, settings: DemoSettings | None = None, progress: Progress = _log_progress
) -> DemoResult:
    """Run the demo into ``out`` (see the module docstring); a second run reuses what the
    first made (cohort, crops, bundle)."""
    settings = settings or DemoSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = DemoResult(out)
    cohort_dir = out / "cohort"
    result.cohort = _cohort(cohort_dir, settings, progress)
    progress(0.3, "importing labels from the reports")
    result.labels = label_reports(cohort_dir / "reports.csv", out / "labels", LabelOptions())
    truth = json.loads((cohort_dir / "truth.json").read_text())
    names = {int(k): v for k, v in json.loads((cohort_dir / "labels.json").read_text()).items()}
    progress(0.32, "cropping organs (crop cache)")
    _crop_cohort(out, settings, result, progress)
    result.label_check = label_check(truth, out / "labels")
    test_cases = split_test_set(
        truth, settings.test_fraction, settings.seed, out / "labels", settings.organs
    )
    held_out = _held_out(truth, settings, test_cases)
    bundles = []
    for n, organ in enumerate(settings.organs):
        span = 0.45 / len(settings.organs)
        bundle, result.training[organ] = _train_organ(
            out,
            organ,
            settings,
            test_cases,
            lambda f, m, n=n, span=span: progress(0.4 + span * (n + f), m),
        )
        bundles.append(bundle)
        if test_cases:
            progress(0.4 + span * (n + 1), f"evaluating the {organ} ensemble on the test set")
            result.tests[organ] = evaluate_test_set(out, organ, bundle, test_cases, truth)
    if settings.other_cases:
        progress(0.85, "scoring cases of another patient")
        result.others = evaluate_other_patient(
            out / "other_patient", settings.organs, bundles, settings.other_cases, settings.seed
        )
    progress(0.87, "analyzing held-out cases")
    result.analyses = _analyze_held_out(out, truth, held_out, bundles, progress)
    progress(0.97, "writing a Slicer scene of one case")
    result.files = {
        "cohort": cohort_dir,
        "contact sheet": cohort_dir / "contact_sheet.png",
        "labels": out / "labels",
        "crop cache": out / "crop_cache",
        **{f"{o} bundle": out / "training" / o / "bundle" for o in settings.organs},
        **{f"{o} evaluation": out / "evaluation" / o for o in settings.organs},
        **({"other patient": out / "other_patient"} if result.others else {}),
        **{f"analysis {a['case']}": out / "analysis" / a["case"] for a in result.analyses},
        "scene": _planted_scene(out, cohort_dir, truth, names),
    }
    progress(1.0, "done")
    return result


def _cohort(cohort_dir: Path, settings: DemoSettings, progress: Progress) -> dict:
    """The demo cohort's summary: the one in ``cohort_dir`` when it has the same size and
    seed, else a new one built there."""
    previous = built_cohort(cohort_dir, settings.cases, settings.seed)
    if previous is not None:
        progress(0.0, "reusing the demo cohort")
        return previous
    progress(0.0, f"building the demo cohort ({settings.cases} cases)")
    return build_cohort(
        cohort_dir,
        settings.cases,
        settings.seed,
        progress=lambda f, m: progress(0.3 * f, f"cohort: {m}"),
    )


def _crop_cohort(out: Path, settings: DemoSettings, result: DemoResult, progress: Progress) -> None:
    """Crop the trained organs of every case into the crop cache with the training's settings
    (:func:`demo_crop_config`), a process per core, indexed by file: training and the test set
    then read no CT. Counts the crop statuses and the cases cached before in ``result``."""
    cohort_dir = out / "cohort"
    rows = cohort_rows(cohort_dir / "images", cohort_dir / "segs", str(cohort_dir / "labels.json"))
    config = demo_crop_config()
    summary = build_crop_cache(
        rows,
        out / "crop_cache",
        settings.organs,
        config,
        Shard(),
        workers=available_cores(),
        progress=lambda f, m: progress(0.32 + 0.08 * f, f"cropping: {m}"),
    )
    if summary.failures:
        raise JMIDError(
            f"cropping {summary.failures[0].case_id} failed: {summary.failures[0].reason}"
        )
    cache = CropCache(out / "crop_cache")
    for row in rows:
        for organ in settings.organs:
            crops = cache.case_refs(inputs_of(row), (organ,), config)
            result.crop_status.update(crop.status for crop, _ in crops)
    result.crops_from_cache = summary.count("skipped")


def demo_crop_config() -> CropConfig:
    """The crop settings the demo trains on: the ``demo`` preset with
    :data:`DEMO_TRAINING`'s overrides (what ``TrainConfig.crop_config`` resolves)."""
    from JMIDAnomalyLib.training.config import TrainConfig

    return TrainConfig(crop_preset="demo", crop=DEMO_TRAINING["crop"]).crop_config()


def _held_out(truth: list[dict], settings: DemoSettings, test_cases: list[str]) -> list[str]:
    """The cases to analyze with heatmaps: the last test cases (never trained on) with a
    planted finding of 10 mm or more in a trained organ (else any finding there, else any)."""
    test = [r for r in truth if r["case_id"] in set(test_cases)]
    found = []
    for least_mm in (10.0, 0.0, None):
        found = [
            r["case_id"]
            for r in test
            if least_mm is None
            or any(
                f["organ"] in settings.organs and f["size_mm"] >= least_mm for f in r["findings"]
            )
        ]
        if len(found) >= settings.holdout:
            break
    return found[-settings.holdout :] if settings.holdout else []


def _train_organ(
    out: Path, organ: str, settings: DemoSettings, test_cases: list[str], progress: Progress
) -> tuple[Path, dict]:
    import shutil
    import time

    from JMIDAnomalyLib.training.config import TrainConfig
    from JMIDAnomalyLib.training.evaluation import evaluate_oof
    from JMIDAnomalyLib.training.job import train

    run = out / "training" / organ
    config = TrainConfig.for_cohort(
        out / "cohort",
        out / "labels",
        run,
        out / "crop_cache",
        organ=organ,
        folds=settings.folds,
        epochs=settings.epochs,
        model=settings.model,
        seed=settings.seed,
        exclude_cases=sorted(test_cases),
        **DEMO_TRAINING,
    )
    saved = run / "config.json"
    same = saved.exists() and json.loads(saved.read_text()) == config.to_dict()
    reused = same and (run / "bundle" / "bundle.json").exists()
    start = time.perf_counter()
    if not reused:
        if not same:
            shutil.rmtree(run, ignore_errors=True)
        progress(0.0, f"training the {organ} ensemble ({settings.folds} folds)")
        train(config, resume=same, progress=lambda f, m: progress(0.95 * f, f"{organ}: {m}"))
    minutes = (time.perf_counter() - start) / 60
    progress(0.95, f"evaluating the {organ} ensemble")
    summary = evaluate_oof(run / "bundle", run / "oof_predictions.csv", out / "evaluation" / organ)
    return run / "bundle", {"minutes": minutes, "reused": reused, "metrics": summary["classes"]}


def _analyze_held_out(
    out: Path, truth: list[dict], held_out: list[str], bundles: list[Path], progress: Progress
) -> list[dict]:
    from JMIDAnomalyLib.imaging.geometry import Grid, hot_spot_lps
    from JMIDAnomalyLib.inference.analyze_job import analyze_case
    from JMIDAnomalyLib.inference.predictor import AnomalyPredictor

    if not held_out:
        return []
    predictor = AnomalyPredictor(bundles)
    cohort = out / "cohort"
    by_case = {r["case_id"]: r for r in truth}
    rows = []
    for n, case in enumerate(held_out):
        progress(0.85 + 0.12 * n / len(held_out), f"analyzing {case}")
        analysis = analyze_case(
            cohort / "images" / f"{case}.nii.gz",
            predictor,
            out / "analysis" / case,
            cohort / "segs" / f"{case}.nii.gz",
            cohort / "labels.json",
        )
        grid = Grid.from_image(analysis.label_map)
        parts = []
        for organ in analysis.organs:
            if not organ.scores:
                parts.append(f"{organ.key} {organ.status}")
                continue
            flagged = ", ".join(organ.flagged) or "nothing flagged"
            text = f"{organ.key}: {flagged}"
            planted = [
                f
                for f in by_case[case]["findings"]
                if f["organ"] == organ.organ
                and (f["side"] or None) == organ.side
                and f["size_mm"] > 0
            ]
            centre = None if organ.heatmap is None else hot_spot_lps(organ.heatmap, grid)
            if planted and centre is not None:
                # Measure against a planted finding of the explained class; when there is
                # none (the explained class is a false positive), against the nearest finding.
                candidates = [f for f in planted if f["cls"] == organ.explained_class] or planted
                distances = [
                    float(np.linalg.norm(centre - np.array(f["centre_lps"]))) for f in candidates
                ]
                distance = min(distances)
                f = candidates[distances.index(distance)]
                text += (
                    f"; planted {f['cls']} {f['size_mm']:.0f} mm, heatmap "
                    f"({organ.explained_class}) {distance:.0f} mm from it"
                )
            parts.append(text)
        rows.append({"case": case, "seconds": analysis.seconds, "summary": "; ".join(parts)})
    return rows


def _planted_scene(out: Path, cohort_dir: Path, truth: list[dict], names: dict) -> Path:
    from slicer import vtkMRMLScene

    from JMIDAnomalyLib.scene.cases import add_case_to_scene
    from JMIDAnomalyLib.scene.mrml import float_map_to_overlay_node, save_scene

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
    return save_scene(scene, out / "scene.mrb")
