"""A bundle's calibration and thresholds fitted again on a site's own labelled cases
(``jmid calibrate``).

A bundle's calibration maps and thresholds are fitted on its training cases' out-of-fold scores,
so they hold where new cases resemble those. On other scanners and patients the raw scores may
run higher or lower while still ranking the cases well: the demo's bundle ranks another
patient's cases at AUC 0.80-1.00 per class and flags all 50 of its normal livers (README, The
demo cohort). :func:`recalibrate` scores a site's own cases, labelled from their reports
(``jmid labels``), with the bundle's models, fits each class's map and threshold on them as
training does (:func:`~JMIDAnomalyLib.models.calibration.fit`,
:func:`~JMIDAnomalyLib.training.job.choose_thresholds` with the bundle's own threshold rule),
and writes a new bundle with the same models and training domain. A class with fewer than
``min_cases`` (:data:`MIN_CASES`) positives or negatives among the cases keeps the bundle's map
and threshold.
The bundle given is never changed, and the new one records how many cases it was refitted on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.models import calibration as calibration_maps
from JMIDAnomalyLib.models.bundle import load_bundle, save_bundle
from JMIDAnomalyLib.training.data import label_arrays
from JMIDAnomalyLib.training.evaluation import score_labelled
from JMIDAnomalyLib.training.job import choose_thresholds

#: Positives (and negatives) a class needs among the site's cases to be fitted again.
MIN_CASES = 10
#: Bundle metadata that :func:`~JMIDAnomalyLib.models.bundle.save_bundle` writes itself.
_WRITTEN_BY_SAVE = ("format", "folds", "versions", "domain")


def _refit(bundle, labels, raw, known, min_cases: int) -> tuple[dict, dict, list[str]]:
    """The bundle's maps and thresholds with those of each class that has ``min_cases``
    positives and negatives fitted on (N, K) labels, raw scores and known-masks; and those
    classes. The others are left out of the fit (no map, no threshold, no warning for them)."""
    classes = bundle.classes
    counts = [labels[known[:, k] > 0, k] for k in range(len(classes))]
    eligible = np.array([min(y.sum(), len(y) - y.sum()) >= min_cases for y in counts])
    known = known * eligible[None, :]
    fitted = calibration_maps.fit(labels, raw, known, classes)
    config = bundle.meta.get("config", {})
    chosen = choose_thresholds(
        labels,
        calibration_maps.calibrate(fitted, raw, classes),
        known,
        classes,
        config.get("threshold_rule", "balanced"),
        config.get("min_specificity", 0.0),
        config.get("specificity_confidence", 0.0),
    )
    refitted = [cls for cls, ok in zip(classes, eligible, strict=True) if ok]
    calibration = {**bundle.calibration, **{cls: fitted[cls] for cls in refitted}}
    thresholds = {**bundle.thresholds, **{cls: chosen[cls] for cls in refitted}}
    return calibration, thresholds, refitted


def recalibrate(
    bundle_path: str | os.PathLike,
    labels_dir: str | os.PathLike,
    data_root: str | os.PathLike,
    crop_cache: str | os.PathLike,
    out: str | os.PathLike,
    device: str = "auto",
    min_cases: int = MIN_CASES,
    cases: Sequence[str] | None = None,
) -> dict:
    """Write ``out``: the bundle with its calibration and thresholds fitted on the labelled
    cases in ``data_root`` (the cohort layout: images/, segs/, labels.json; ``cases``: only
    these) for each class with ``min_cases`` positives and negatives among them. Returns a
    summary: cases, the classes refitted and kept, and per refitted class the threshold before
    and after.

    Raises:
        InputError: ``out`` exists already, or no class has ``min_cases`` positives and
            negatives among the cases (checked before anything is written).
    """
    out = Path(out)
    if min_cases < 2:
        raise InputError("--min-cases", f"must be 2 or more, not {min_cases}")
    if out.exists() or out.with_suffix(".zip").exists():
        raise InputError(out, "exists already: give a new name for the recalibrated bundle")
    bundle = load_bundle(bundle_path)
    samples, raw, _ = score_labelled(bundle, labels_dir, data_root, crop_cache, device, cases)
    labels, known = label_arrays(samples)
    calibration, thresholds, refitted = _refit(bundle, labels, raw, known, min_cases)
    if not refitted:
        raise InputError(
            labels_dir,
            f"no class has {min_cases} positives and {min_cases} negatives among the "
            f"{len(samples)} {bundle.organ} cases: nothing to fit",
        )
    meta = {k: v for k, v in bundle.meta.items() if k not in _WRITTEN_BY_SAVE}
    meta.update(calibration=calibration, thresholds=thresholds)
    meta["recalibrated"] = {
        "cases": len(samples),
        "classes": refitted,
        "from": Path(bundle_path).name,
    }
    save_bundle(out, meta, [m.state_dict() for m in bundle.models], bundle.domain)
    return {
        "organ": bundle.organ,
        "cases": len(samples),
        "refitted": refitted,
        "kept": [c for c in bundle.classes if c not in refitted],
        "thresholds": {c: (bundle.thresholds[c], thresholds[c]) for c in refitted},
    }
